"""The Entities-as-Experts entity memory (Févry et al. 2020, §2.1), vectorised and streaming.

Each mention (a BIO span) asks the entity table a question: h = W_f·[x_start ; x_end] is a query,
the (N, d_entity) table E is both the keys and the values, and W_b·(softmax(E·h)ᵀ·E) is written
back at the mention's start. It is attention with q = h and k = v = E, so it runs the way flash
attention does: over blocks of entities with a running maximum and log-sum-exp, never holding a
mentions × N matrix, in the forward *and* the backward (which recomputes each block's scores).

Scope and caveats:

- Mentions are found with tensor operations only (:func:`find_mentions`); there is no Python loop
  over mentions or positions. The only loop is over blocks of entities (N / ``block_size``
  iterations), which is what keeps the memory at O(mentions × block_size).
- Training mode uses the full softmax over all N entities; eval mode the softmax over the
  ``top_k`` largest logits (found by a streaming top-k, also block by block). The loss, when gold
  ids are given, is the full-softmax cross-entropy in both modes, so validation and training
  losses compare.
- This is the torch path; it runs on any device torch does. A CUDA kernel from :mod:`gpu` is not
  wired in. Sums run in the input dtype (float32 or float64; half precision is not a target).

Tensor suffixes: b batch, n tokens, c model width, m mentions, k entities, j the entities of one
block, d entity width, t the top-k.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowgraph.gpu.reference import check_finite, softmax_limit
from flowgraph.models.attention import check_param_bytes

__all__ = ["DEFAULT_BLOCK_SIZE", "EntityMemory", "entity_attention", "find_mentions"]

OUTSIDE, BEGIN, INSIDE = 0, 1, 2
# Entities per block: big enough that each block is a few large matrix products, small enough
# that a block's scores (mentions × block_size floats, 10 MB at 300 mentions) stay far below the
# table. Measured on CPU with benchmarks/entity_memory.py; 4096-32768 are within a few percent.
DEFAULT_BLOCK_SIZE = 8192


# --- validation ----------------------------------------------------------------------------------
def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_int_tensor(name: str, t: object, ndim: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.device.type == "meta":  # its values are checked (ranges, spans): it must have some
        raise ValueError(f"{name} is on the meta device, which holds no values")


def _check_float_tensor(name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")


def _check_bio(bio_bn: Tensor) -> None:
    _check_int_tensor("bio_bn", bio_bn, 2)
    bad_bn = (bio_bn < OUTSIDE) | (bio_bn > INSIDE)
    if bad_bn.any():
        b, n = (int(i) for i in bad_bn.nonzero()[0])
        raise ValueError(
            f"bio_bn must hold 0 (O), 1 (B) or 2 (I), got {int(bio_bn[b, n])} "
            f"at position ({b}, {n})"
        )


def _check_x(x_bnc: object, bio_bn: Tensor, d_model: int, weight: Tensor) -> None:
    if not isinstance(x_bnc, Tensor):
        raise TypeError(f"x_bnc must be a torch.Tensor, got {type(x_bnc).__name__}")
    if x_bnc.dim() != 3 or x_bnc.shape[2] != d_model:
        raise ValueError(
            f"x_bnc must have shape (batch, tokens, d_model={d_model}), got {tuple(x_bnc.shape)}"
        )
    if x_bnc.shape[:2] != bio_bn.shape:
        raise ValueError(
            f"x_bnc (batch, tokens) = {tuple(x_bnc.shape[:2])} disagrees with "
            f"bio_bn shape {tuple(bio_bn.shape)}; expected the same batch and tokens"
        )
    if x_bnc.dtype != weight.dtype or x_bnc.device != weight.device:
        raise TypeError(
            f"x_bnc must match the module's parameters ({weight.dtype} on {weight.device}), "
            f"got {x_bnc.dtype} on {x_bnc.device}"
        )
    if bio_bn.device != x_bnc.device:
        raise ValueError(
            f"expected x_bnc and bio_bn on one device, got {x_bnc.device} and {bio_bn.device}"
        )


def _check_entity_ids(
    entity_ids_bn: Tensor, bio_bn: Tensor, b_m: Tensor, s_m: Tensor, n_entities: int
) -> None:
    _check_int_tensor("entity_ids_bn", entity_ids_bn, 2)
    if entity_ids_bn.shape != bio_bn.shape:
        raise ValueError(
            f"entity_ids_bn shape {tuple(entity_ids_bn.shape)} disagrees with bio_bn shape "
            f"{tuple(bio_bn.shape)}; expected one id per token"
        )
    if entity_ids_bn.device != bio_bn.device:
        raise ValueError(
            f"expected entity_ids_bn and bio_bn on one device, "
            f"got {entity_ids_bn.device} and {bio_bn.device}"
        )
    # Only ids at mention starts are read, so padding elsewhere (e.g. -100) is allowed.
    gold_m = entity_ids_bn[b_m, s_m]
    bad_m = (gold_m < 0) | (gold_m >= n_entities)
    if bad_m.any():
        i = int(bad_m.nonzero()[0])
        raise ValueError(
            f"entity_ids_bn at mention start ({int(b_m[i])}, {int(s_m[i])}) is {int(gold_m[i])}, "
            f"expected 0 ≤ id < n_entities = {n_entities}"
        )


# --- mentions ------------------------------------------------------------------------------------
def find_mentions(bio_bn: Tensor) -> Tensor:
    """The (batch, start, end) of every mention in ``bio_bn``, as an (m, 3) int64 tensor.

    A mention is a B (1) and the longest run of I (2) after it; ``end`` is inclusive and may be
    the last position. An I with no B before it (at position 0, or after an O) starts nothing.
    Rows come in (batch, start) order. Tensor operations only: for every position, the first
    non-I at or after it is a reversed running minimum, and a B at p ends just before the first
    non-I after p.

    >>> find_mentions(torch.tensor([[2, 1, 2, 0, 1, 1, 2]]))
    tensor([[0, 1, 2],
            [0, 4, 4],
            [0, 5, 6]])

    Raises ``TypeError`` for a non-integer tensor, ``ValueError`` for a shape other than
    (batch, tokens) or a value outside {0, 1, 2}.
    """
    _check_bio(bio_bn)
    batch, n = bio_bn.shape
    pos_n = torch.arange(n, device=bio_bn.device)
    stop_bn = torch.where(bio_bn != INSIDE, pos_n, n)  # I tokens never stop a span
    next_stop_bn = stop_bn.flip(1).cummin(1).values.flip(1)
    # A stop at n past the end: a span running to the last token ends at n - 1, not n - 2.
    past_end_b1 = torch.full((batch, 1), n, dtype=next_stop_bn.dtype, device=bio_bn.device)
    stop_after_bn = torch.cat([next_stop_bn[:, 1:], past_end_b1], dim=1)
    b_m, s_m = (bio_bn == BEGIN).nonzero(as_tuple=True)
    e_m = stop_after_bn[b_m, s_m] - 1
    return torch.stack([b_m, s_m, e_m], dim=1)


# --- attention over the entity table -------------------------------------------------------------
class _EntityAttention(torch.autograd.Function):
    """o = softmax(h·Eᵀ)·E and nll = logsumexp(h·Eᵀ) − (h·Eᵀ)[gold], block by block over E.

    Saves h, E, the log-sum-exp and o (O(m·d + N·d), E by reference); the backward recomputes
    each block's scores from them. Autograd through a Python block loop would instead keep every
    block's scores and probabilities, which add up to the m × N matrices this avoids.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        h_md: Tensor,
        e_kd: Tensor,
        gold_m: Tensor | None,
        block_size: int,
        need_out: bool,
    ) -> tuple[Tensor, Tensor]:
        m, d = h_md.shape
        run_max_m = h_md.new_full((m,), -float("inf"))
        run_sum_m = h_md.new_zeros(m)
        o_md = h_md.new_zeros(m, d)
        for k0 in range(0, e_kd.shape[0], block_size):
            blk_jd = e_kd[k0 : k0 + block_size]
            s_mj = h_md @ blk_jd.T
            new_max_m = torch.maximum(run_max_m, s_mj.amax(dim=1))
            rescale_m = torch.exp(run_max_m - new_max_m)  # 0 on the first block (exp(−inf))
            p_mj = s_mj.sub_(new_max_m[:, None]).exp_()
            run_sum_m = run_sum_m * rescale_m + p_mj.sum(dim=1)
            if need_out:
                o_md.mul_(rescale_m[:, None]).addmm_(p_mj, blk_jd)
            run_max_m = new_max_m
        lse_m = run_max_m + torch.log(run_sum_m)
        if need_out:
            o_md.div_(run_sum_m[:, None])
        nll_m = lse_m.clone()
        if gold_m is not None:
            nll_m -= (h_md * e_kd[gold_m]).sum(dim=1)
        ctx.save_for_backward(h_md, e_kd, lse_m, o_md, gold_m)
        ctx.block_size, ctx.need_out = block_size, need_out
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        if not need_out:
            ctx.mark_non_differentiable(o_md)
        return o_md, nll_m

    @staticmethod
    @once_differentiable  # a second derivative would need the blocks again: not supported
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, do_md: Tensor | None, dnll_m: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        h_md, e_kd, lse_m, o_md, gold_m = ctx.saved_tensors
        need_h, need_e = ctx.needs_input_grad[:2]
        if not ctx.need_out:
            do_md = None
        m = h_md.shape[0]
        dh_md = torch.zeros_like(h_md) if need_h else None
        de_kd = torch.zeros_like(e_kd) if need_e else None
        if (do_md is None and dnll_m is None) or not (need_h or need_e):
            return dh_md, de_kd, None, None, None
        # ds = p ⊙ (dp − rowsum(do ⊙ o) + dnll) − dnll·onehot(gold), with dp = do·Eᵀ. The scores
        # and dp share one product with [h ; do]; then [p | ds] times [do ; h] gives the block's dE
        # in one product too (pᵀ·do from o = p·E, dsᵀ·h from s = h·Eᵀ).
        shift_m = h_md.new_zeros(m)
        if dnll_m is not None:
            shift_m += dnll_m
        if do_md is not None:
            shift_m -= (do_md * o_md).sum(dim=1)
            q_2md = torch.cat([h_md, do_md])
            v_2md = torch.cat([do_md, h_md])
        else:
            q_2md = h_md
        for k0 in range(0, e_kd.shape[0], ctx.block_size):
            blk_jd = e_kd[k0 : k0 + ctx.block_size]
            g_j2m = blk_jd @ q_2md.T  # [sᵀ | dpᵀ]
            p_jm = g_j2m[:, :m].sub_(lse_m).exp_()
            if do_md is not None:
                ds_jm = g_j2m[:, m:].add_(shift_m).mul_(p_jm)
            else:
                ds_jm = p_jm * shift_m
            if need_h:
                dh_md.addmm_(ds_jm.T, blk_jd)
            if need_e:
                if do_md is not None:
                    torch.mm(g_j2m, v_2md, out=de_kd[k0 : k0 + ctx.block_size])
                else:
                    torch.mm(ds_jm, h_md, out=de_kd[k0 : k0 + ctx.block_size])
        if gold_m is not None and dnll_m is not None:
            if need_h:
                dh_md -= dnll_m[:, None] * e_kd[gold_m]
            if need_e:
                de_kd.index_add_(0, gold_m, dnll_m[:, None] * h_md, alpha=-1)
        return dh_md, de_kd, None, None, None


def entity_attention(
    h_md: Tensor,
    e_kd: Tensor,
    gold_m: Tensor | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    need_out: bool = True,
) -> tuple[Tensor, Tensor]:
    """Attention of queries ``h_md`` over the table ``e_kd`` (keys = values), streamed in blocks.

    Returns ``(o_md, nll_m)``: o = softmax(h·Eᵀ)·E, shape (m, d), and per query the cross-entropy
    logsumexp(h·Eᵀ) − h·E[gold] (the plain logsumexp when ``gold_m`` is None), shape (m,). Both
    are differentiable in h and E; the gradients equal dense autograd's, but no (m, N) matrix is
    ever held — the peak extra memory is a few (m, ``block_size``) blocks. With
    ``need_out=False`` the value product is skipped (o comes back as zeros, not differentiable),
    for when only the loss is wanted.

    Raises ``ValueError`` for shapes that disagree, a non-positive ``block_size`` or gold ids out
    of range; ``TypeError`` for h and E of different dtypes or devices, or non-integer gold ids.
    """
    _check_float_tensor("h_md", h_md)
    _check_float_tensor("e_kd", e_kd)
    if h_md.dim() != 2 or e_kd.dim() != 2 or h_md.shape[1] != e_kd.shape[1]:
        raise ValueError(
            f"expected h_md (m, d) and e_kd (N, d) with one d, "
            f"got {tuple(h_md.shape)} and {tuple(e_kd.shape)}"
        )
    if h_md.dtype != e_kd.dtype or h_md.device != e_kd.device:
        raise TypeError(
            f"expected h_md and e_kd of one dtype on one device, got {h_md.dtype} on "
            f"{h_md.device} and {e_kd.dtype} on {e_kd.device}"
        )
    if e_kd.shape[0] == 0:
        raise ValueError("e_kd must hold at least one entity row, got shape (0, d): a softmax "
                         "over no entities is undefined")  # fmt: skip
    _check_positive_int("block_size", block_size)
    if not isinstance(need_out, bool):
        raise TypeError(f"need_out must be True or False, got {need_out!r}")
    if gold_m is not None:
        _check_int_tensor("gold_m", gold_m, 1)
        if gold_m.shape[0] != h_md.shape[0]:
            raise ValueError(
                f"gold_m has {gold_m.shape[0]} ids, expected one per query ({h_md.shape[0]})"
            )
        if gold_m.numel() and (int(gold_m.min()) < 0 or int(gold_m.max()) >= e_kd.shape[0]):
            raise ValueError(
                f"gold_m must lie in [0, {e_kd.shape[0]}), got ids from {int(gold_m.min())} "
                f"to {int(gold_m.max())}"
            )
        if gold_m.device != h_md.device:
            raise ValueError(
                f"expected h_md and gold_m on one device, got {h_md.device} and {gold_m.device}"
            )
    # NaN or inf in a query or an entity leaves no softmax to compute
    check_finite(h_md=h_md, e_kd=e_kd)
    o_md, nll_m = _EntityAttention.apply(h_md, e_kd, gold_m, block_size, need_out)
    if h_md.device.type != "meta" and not bool(torch.isfinite(nll_m).all()):
        raise ValueError(
            f"the logits h_md·e_kdᵀ overflow {h_md.dtype} (|h_md| up to "
            f"{float(h_md.abs().max()):.3g}, |e_kd| up to {float(e_kd.abs().max()):.3g}); "
            "scale the queries or the entities down, or compute in float64"
        )
    return o_md, nll_m


@torch.no_grad()
def _streaming_topk(h_md: Tensor, e_kd: Tensor, k: int, block_size: int) -> Tensor:
    """Indices (m, k) of each query's k largest logits h·Eᵀ, merged block by block."""
    m = h_md.shape[0]
    val_mt = h_md.new_empty(m, 0)
    idx_mt = torch.empty(m, 0, dtype=torch.long, device=h_md.device)
    for k0 in range(0, e_kd.shape[0], block_size):
        s_mj = h_md @ e_kd[k0 : k0 + block_size].T
        blk_val_mt, blk_idx_mt = s_mj.topk(min(k, s_mj.shape[1]), dim=1)
        val_mt = torch.cat([val_mt, blk_val_mt], dim=1)
        idx_mt = torch.cat([idx_mt, blk_idx_mt + k0], dim=1)
        val_mt, keep_mt = val_mt.topk(min(k, val_mt.shape[1]), dim=1)
        idx_mt = idx_mt.gather(1, keep_mt)
    return idx_mt


def _topk_attention(h_md: Tensor, e_kd: Tensor, k: int, block_size: int) -> Tensor:
    """softmax over each query's top-k logits, times those k rows of E: (m, d)."""
    idx_mt = _streaming_topk(h_md.detach(), e_kd.detach(), k, block_size)
    # The k logits are recomputed from gathered rows so that autograd reaches h and E (the
    # selection itself has no gradient); this holds m·k·d numbers, independent of N.
    top_mtd = e_kd[idx_mt]
    logits_mt = softmax_limit(torch.einsum("mtd,md->mt", top_mtd, h_md))  # +inf: the limit
    alpha_mt = torch.softmax(logits_mt, dim=1)
    return torch.einsum("mt,mtd->md", alpha_mt, top_mtd)


# --- the module ----------------------------------------------------------------------------------
class EntityMemory(nn.Module):
    """Entities-as-Experts entity memory: each mention attends over a table of N entities.

    Parameters
    ----------
    d_model, n_entities, d_entity
        Token width c, number of entities N and entity width d. ``W_f = Linear(2·c, d)``,
        ``W_b = Linear(d, c)``, ``E`` an (N, d) parameter (no bias).
    top_k
        Entities kept by the eval-mode softmax (1 ≤ top_k ≤ N).
    block_size
        Entities per streamed block; memory is O(mentions × block_size), not O(mentions × N).

    ``forward(x_bnc, bio_bn, entity_ids_bn=None) -> (loss, y_bnc)``: ``x_bnc`` (batch, tokens,
    c) float; ``bio_bn`` (batch, tokens) ints in {0 = O, 1 = B, 2 = I}; ``entity_ids_bn``
    (batch, tokens) ints, read at mention starts only. ``y_bnc`` has W_b·(αᵀ·E) at each
    mention's start and zeros elsewhere; α is the softmax over all N logits in training mode and
    over the top-k in eval mode. ``loss`` is the mean full-softmax cross-entropy of the gold ids
    over the mentions (0, still differentiable, when there are none), or None without ids.

    Raises ``ValueError`` for bio values outside {0, 1, 2}, shapes that disagree and ids out of
    range at a mention start; ``TypeError`` for a wrong dtype or device.
    """

    def __init__(
        self,
        d_model: int,
        n_entities: int,
        d_entity: int,
        *,
        top_k: int = 100,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__()
        for name, value in [
            ("d_model", d_model),
            ("n_entities", n_entities),
            ("d_entity", d_entity),
            ("top_k", top_k),
            ("block_size", block_size),
        ]:
            _check_positive_int(name, value)
        if top_k > n_entities:
            raise ValueError(f"top_k must be ≤ n_entities = {n_entities}, got {top_k}")
        params = 2 * d_model * d_entity + d_entity + d_entity * d_model + d_model
        check_param_bytes(
            f"EntityMemory(n_entities={n_entities}, d_entity={d_entity})",
            params + n_entities * d_entity,
            n_entities * d_entity * 4,  # torch.randn's draw before the scaling
        )
        self.d_model, self.n_entities, self.d_entity = d_model, n_entities, d_entity
        self.top_k, self.block_size = top_k, block_size
        self.W_f = nn.Linear(2 * d_model, d_entity)
        self.W_b = nn.Linear(d_entity, d_model)
        # Rows of unit expected norm: the first logits E·h are of the order of |h|, so the initial
        # softmax is neither uniform nor one-hot.
        self.E = nn.Parameter(torch.randn(n_entities, d_entity) * d_entity**-0.5)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_entities={self.n_entities}, d_entity={self.d_entity}, "
            f"top_k={self.top_k}, block_size={self.block_size}"
        )

    def forward(
        self, x_bnc: Tensor, bio_bn: Tensor, entity_ids_bn: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor]:
        spans_m3 = find_mentions(bio_bn)  # validates bio_bn
        _check_x(x_bnc, bio_bn, self.d_model, self.W_f.weight)
        check_finite(x_bnc=x_bnc)
        b_m, s_m, e_m = spans_m3.unbind(dim=1)
        gold_m = None
        if entity_ids_bn is not None:
            _check_entity_ids(entity_ids_bn, bio_bn, b_m, s_m, self.n_entities)
            gold_m = entity_ids_bn[b_m, s_m]
        h_md = self.W_f(torch.cat([x_bnc[b_m, s_m], x_bnc[b_m, e_m]], dim=1))
        if self.training:
            o_md, nll_m = entity_attention(h_md, self.E, gold_m, block_size=self.block_size)
        else:
            o_md = _topk_attention(h_md, self.E, self.top_k, self.block_size)
            if gold_m is not None:
                _, nll_m = entity_attention(
                    h_md, self.E, gold_m, block_size=self.block_size, need_out=False
                )
        # In place on a fresh tensor: an out-of-place index_put would copy all of y once more.
        y_bnc = torch.zeros_like(x_bnc).index_put_((b_m, s_m), self.W_b(o_md))
        # With no mentions the sum is an empty sum: 0, and still part of the graph.
        loss = None if gold_m is None else nll_m.sum() / max(len(nll_m), 1)
        return loss, y_bnc
