"""Metric tensor attention and quadratic attention: the torch reference and the public entry point.

Metric attention (seed ``002``), per head h: a projection ``p_bhnk`` (p = P·x), a symmetric metric
M (k×k) stored packed as its upper triangle including the diagonal, row-major —
(0,0), (0,1), …, (0,k−1), (1,1), (1,2), …, (k−1,k−1): ``L = k(k+1)/2`` numbers per head — scores
``r = scale · p·M·pᵀ`` (scale = 1/√k by default), an optional causal mask (k ≤ q) and an optional
:class:`gpu.SparseMask` (ANDed with the causal mask), ``s = softmax(r)`` over the allowed keys, and
the scores applied to the same projection: ``t = s·p``. A query with no allowed key gets zeros and
zero gradients, never NaN.

It is computed as ``q = p·M`` followed by attention whose keys and values are both p, one query
block at a time, so neither the (n, n) scores nor the seed's (n(n+1)/2, k(k+1)/2) tensor is ever
materialised: memory is O(b·h·block·n) for the dense/causal path and follows the mask's tiles
with a mask (as :func:`gpu.reference.sparse_attention_reference`'s does).

Quadratic attention (the seed's general form): per head one full c×c matrix U, ``r = scale ·
x·U·xᵀ``, values from their own projection (:func:`quadratic_attention_reference`).

Everything here is plain torch, so autograd differentiates it; the references compute float16 and
bfloat16 inputs in float32, float64 in float64, and return the input dtype. On a CUDA device with
CuPy, :func:`metric_attention` runs the kernels (``gpu/_metric_cuda.py``); otherwise torch's fused
SDPA with q = p·M, k = v = p for unmasked calls below float64, and the reference for the rest.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F

from flowgraph.gpu.backend import backend_for
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import (
    DTYPES,
    _per_head,
    _tile_table,
    check_finite,
    softmax_limit,
    sparse_attention_reference,
)

__all__ = [
    "check_metric_inputs",
    "metric_attention",
    "metric_attention_reference",
    "pack_index",
    "pack_symmetric",
    "packed_size",
    "quadratic_attention_reference",
    "unpack_symmetric",
]

QUERY_BLOCK = 64  # queries per step of the dense/causal reference: memory b·h·64·n scores


# --- packing ------------------------------------------------------------------------------------
def packed_size(k: int) -> int:
    """L = k(k+1)/2, the packed length of a symmetric k×k matrix."""
    return k * (k + 1) // 2


def _triangular_k(length: int) -> int | None:
    """k with k(k+1)/2 == length, or None when length is not triangular."""
    k = (math.isqrt(8 * length + 1) - 1) // 2
    return k if k >= 1 and packed_size(k) == length else None


@functools.lru_cache(maxsize=64)
def _pack_index(k: int, device: torch.device) -> torch.Tensor:
    # a normal tensor even when first asked for under torch.inference_mode(): the cached index
    # is later saved for backward, which inference tensors refuse
    with torch.inference_mode(False):
        return pack_index(k).to(device)


def pack_index(k: int) -> torch.Tensor:
    """(k, k) int64: entry [i, j] is the packed position of M[i, j] (= that of M[j, i]).

    >>> pack_index(3).tolist()
    [[0, 1, 2], [1, 3, 4], [2, 4, 5]]
    """
    i, j = torch.triu_indices(k, k)  # row-major upper triangle, diagonal included
    index = torch.empty(k, k, dtype=torch.int64)
    positions = torch.arange(i.numel())
    index[i, j] = positions
    index[j, i] = positions
    return index


def pack_symmetric(m_hkk: torch.Tensor, *, atol: float | None = None) -> torch.Tensor:
    """(..., k, k) symmetric → (..., k(k+1)/2): the upper triangle including the diagonal,
    row-major, (0,0), (0,1), …, (0,k−1), (1,1), …, (k−1,k−1).

    Raises ValueError when the matrix is not square or not symmetric: ``max|M − Mᵀ|`` must be at
    most ``atol`` (default 16·eps of the dtype times ``max|M|``, for a product like (A + Aᵀ)/2
    computed in floating point). Differentiable.

    >>> m = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    >>> pack_symmetric(m).tolist()
    [1.0, 2.0, 3.0]
    """
    if not isinstance(m_hkk, torch.Tensor):
        raise TypeError(f"m_hkk must be a torch.Tensor, got {type(m_hkk).__name__}")
    if m_hkk.dim() < 2 or m_hkk.shape[-1] != m_hkk.shape[-2] or m_hkk.shape[-1] < 1:
        raise ValueError(f"m_hkk must be (..., k, k) with k ≥ 1, got shape {tuple(m_hkk.shape)}")
    if not m_hkk.is_floating_point():
        raise TypeError(f"m_hkk must be a floating point tensor, got dtype {m_hkk.dtype}")
    k = m_hkk.shape[-1]
    if atol is not None and (
        isinstance(atol, bool) or not isinstance(atol, numbers.Real) or not 0 <= atol < math.inf
    ):
        raise ValueError(f"atol must be None or a finite number ≥ 0, got atol={atol!r}")
    if m_hkk.numel() and m_hkk.device.type != "meta":  # a meta tensor has no values to check
        detached = m_hkk.detach()
        bad = int((~torch.isfinite(detached)).sum())
        if bad:
            raise ValueError(
                f"m_hkk must be symmetric with finite entries, got {bad} nan or inf entries"
            )
        asym = float((detached - detached.mT).abs().max())
        if atol is None:
            atol = 16 * torch.finfo(m_hkk.dtype).eps * float(detached.abs().max())
        if not asym <= atol:
            raise ValueError(
                f"m_hkk must be symmetric, got max|m_hkk − m_hkkᵀ| = {asym:.3g} > atol={atol:.3g}; "
                "symmetrise it with (m + m.mT) / 2"
            )
    i, j = torch.triu_indices(k, k, device=m_hkk.device)
    return m_hkk[..., i, j]


def unpack_symmetric(m_packed_hl: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """(..., k(k+1)/2) → (..., k, k) symmetric, the inverse of :func:`pack_symmetric`.

    ``k`` is inferred from the last dimension L when None; ValueError when L is not k(k+1)/2.
    Differentiable: an off-diagonal packed entry appears twice, so its gradient is the sum of
    the gradients of M[i, j] and M[j, i].

    >>> unpack_symmetric(torch.tensor([1.0, 2.0, 3.0])).tolist()
    [[1.0, 2.0], [2.0, 3.0]]
    """
    if not isinstance(m_packed_hl, torch.Tensor):
        raise TypeError(f"m_packed_hl must be a torch.Tensor, got {type(m_packed_hl).__name__}")
    if m_packed_hl.dim() < 1:
        raise ValueError("m_packed_hl must have at least one dimension (..., L), got a scalar")
    length = m_packed_hl.shape[-1]
    inferred = _triangular_k(length)
    if k is None:
        if inferred is None:
            raise ValueError(
                f"m_packed_hl has L={length} entries in its last dimension, which is not "
                "k(k+1)/2 for any k ≥ 1 (1, 3, 6, 10, …)"
            )
        k = inferred
    else:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be None or an int ≥ 1, got k={k!r}")
        if packed_size(int(k)) != length:
            raise ValueError(
                f"m_packed_hl has L={length} entries, expected k(k+1)/2={packed_size(int(k))} "
                f"for k={k}"
            )
        k = int(k)
    return m_packed_hl[..., _pack_index(k, m_packed_hl.device)]


# --- the blockwise attention with keys shared across roles --------------------------------------
def _blockwise_attention(
    q_bhnd: torch.Tensor,
    k_bhnd: torch.Tensor,
    v_bhne: torch.Tensor,
    scale: float,
    causal: bool,
    block: int = QUERY_BLOCK,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ) · v without a mask (causal or not), one query block at a time: the
    scores of a step are (b, h, block, keys ≤ n). Inputs in the working dtype; k and v may be
    the same tensor (as in metric attention) or broadcast views."""
    n = q_bhnd.shape[2]
    outs = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        keys = stop if causal else n  # a causal block never sees a key past its last query
        s = (q_bhnd[:, :, start:stop] @ k_bhnd[:, :, :keys].transpose(-1, -2)) * scale
        if causal:
            rows = torch.arange(start, stop, device=s.device)[:, None]
            s = s.masked_fill(torch.arange(keys, device=s.device) > rows, -math.inf)
        # every row has a key (k = q at least), so the softmax is finite once an overflowed
        # score (+inf) is given its limit
        outs.append(torch.softmax(softmax_limit(s), dim=-1) @ v_bhne[:, :, :keys])
    return torch.cat(outs, dim=2)


def _masked_causal_attention(
    q_bhnk: torch.Tensor, p_bhnk: torch.Tensor, mask: SparseMask, scale: float
) -> torch.Tensor:
    """softmax(scale·q·pᵀ)·p over the keys ``mask`` allows AND whose token is ≤ the query's,
    walking the mask's forward CSR one query block at a time as the kernel does: each p tile is
    the key and the value tile. Causality compares tokens (``perm_hn`` maps stored positions to
    tokens), since a permuted mask's causal AND is not block-structured in the stored order."""
    b, h, n, k = p_bhnk.shape
    block, nb, heads_m = mask.block, mask.num_blocks, mask.heads
    q, p = q_bhnk, p_bhnk
    if mask.perm_hn is not None:
        q, p = _per_head(q, mask.perm_hn), _per_head(p, mask.perm_hn)
        tokens = mask.perm_hn.long()
    else:
        tokens = torch.arange(n, device=p.device).expand(heads_m, n)
    pad = nb * block - n  # padded queries see nothing (−1), padded keys are never ≤ a query (n)
    q_tok = F.pad(tokens, (0, pad), value=-1).reshape(heads_m, nb, block)
    k_tok = F.pad(tokens, (0, pad), value=n).reshape(heads_m, nb, block)
    q5, p5 = (F.pad(x, (0, 0, 0, pad)).reshape(b, h, nb, block, k) for x in (q, p))

    tiles, slots, valid, lengths = _tile_table(mask)
    heads = torch.arange(h, device=p.device)[:, None]
    mask_heads = torch.arange(heads_m, device=p.device)[:, None]
    outs = []
    for i in range(nb):
        width = int(lengths[:, i].max())
        if width == 0:  # no query of this block attends anything
            outs.append(q5.new_zeros(b, h, block, k))
            continue
        tile, slot, ok = tiles[:, i, :width], slots[:, i, :width], valid[:, i, :width]
        partial = ok & (slot >= 0)
        allowed = (ok & (slot < 0))[..., None, None].expand(-1, -1, block, block).clone()
        allowed[partial] = mask.unpacked_bits(slot[partial])  # (H_mask, K, block_q, block_k)
        allowed &= k_tok[mask_heads, tile][:, :, None, :] <= q_tok[:, i, None, :, None]
        allowed = allowed.permute(0, 2, 1, 3).reshape(1, heads_m, block, width * block)

        pt = p5[:, :, tile[0]] if heads_m == 1 else p5[:, heads, tile]
        pt = pt.reshape(b, h, width * block, k)  # the keys and the values
        s = (q5[:, :, i] @ pt.transpose(-1, -2)) * scale
        s = softmax_limit(s.masked_fill(~allowed, -math.inf))
        m = s.amax(-1, keepdim=True).detach()  # the softmax does not depend on m
        m = torch.where(torch.isfinite(m), m, 0.0)  # a query with no key: exp(−inf) = 0
        w = torch.exp(s - m)
        total = w.sum(-1, keepdim=True)
        outs.append((w @ pt) / torch.where(total > 0, total, 1.0))

    out = torch.cat(outs, dim=2)[:, :, :n]
    if torch.is_grad_enabled():  # + an exact 0 that depends on q and p: an empty mask still
        out = out + q[..., :0].sum() + p[..., :0].sum()  # yields (zero) gradients
    if mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
    return out


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale(scale: object, dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got scale={scale}")
    return float(scale)


def _causal_flag(causal: object) -> bool:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    return causal


def metric_attention_reference(
    p_bhnk: torch.Tensor,
    m_packed_hl: torch.Tensor,
    causal: bool = True,
    mask: SparseMask | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Metric tensor attention in plain torch (differentiable w.r.t. p and the packed metric).

    Per head h, with M = unpack_symmetric(m_packed_hl[h]): r = scale·p·M·pᵀ (scale = 1/√k by
    default), keys k ≤ q only when ``causal``, AND the keys ``mask`` allows when given, softmax
    over the allowed keys, t = s·p. A query with no allowed key gets zeros and zero gradients.

    Computed as q = p·M, then attention with keys = values = p, one query block at a time
    (with a mask: over the mask's tiles — by :func:`gpu.reference.sparse_attention_reference`,
    or with causal, by a walk of the same CSR that also compares tokens, as the kernel does);
    the (b, h, n, n) scores are never materialised. Inputs are assumed valid; use
    :func:`metric_attention` for the checked entry point.

    Parameters
    ----------
    p_bhnk : (b, h, n, k) projection.
    m_packed_hl : (h, k(k+1)/2) packed symmetric metrics, one per head.
    causal : attend keys k ≤ q only.
    mask : optional :class:`gpu.SparseMask` (1 or h heads, n positions, p's device).
    scale : score scale, default 1/√k.

    Returns
    -------
    (b, h, n, k) tensor of p's dtype.
    """
    k = p_bhnk.shape[-1]
    scale = _scale(scale, k)
    work = _work_dtype(p_bhnk.dtype)
    p = p_bhnk.to(work)
    m_hkk = unpack_symmetric(m_packed_hl.to(work), k)
    q = torch.einsum("bhnk,hkj->bhnj", p, m_hkk)  # p·M (M symmetric: M = Mᵀ)
    if mask is None:
        out = _blockwise_attention(q, p, p, scale, causal)
    elif causal:
        out = _masked_causal_attention(q, p, mask, scale)
    else:
        out = sparse_attention_reference(q, p, p, mask, scale)
    return out.to(p_bhnk.dtype)


def quadratic_attention_reference(
    x_bnc: torch.Tensor,
    u_hcc: torch.Tensor,
    v_bhnd: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """The seed's general quadratic form: per head h one full (not necessarily symmetric) c×c
    matrix U, r[q, k] = scale · x[q]·U·x[k]ᵀ (scale = 1/√c by default), causal k ≤ q when asked,
    softmax over the keys, out = s·v with values from their own projection ``v_bhnd``.

    Computed as (x·U) against keys x one query block at a time (no (n, n) tensor); differentiable
    w.r.t. x, U and v. Returns (b, h, n, d) in x's dtype.
    """
    for name, t, dims in (("x_bnc", x_bnc, 3), ("u_hcc", u_hcc, 3), ("v_bhnd", v_bhnd, 4)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    b, n, c = x_bnc.shape
    h = u_hcc.shape[0]
    if min(b, n, c, h) < 1:
        raise ValueError(f"x_bnc and u_hcc must have no empty dimension, got {tuple(x_bnc.shape)}")
    if u_hcc.shape != (h, c, c):
        raise ValueError(f"u_hcc must be (h, c, c) with c={c}, got shape {tuple(u_hcc.shape)}")
    if v_bhnd.shape[:3] != (b, h, n) or v_bhnd.shape[3] < 1:
        raise ValueError(
            f"v_bhnd must be (b, h, n, d)=({b}, {h}, {n}, d ≥ 1), got shape {tuple(v_bhnd.shape)}"
        )
    for name, t in (("u_hcc", u_hcc), ("v_bhnd", v_bhnd)):
        if t.device != x_bnc.device:
            raise ValueError(
                f"expected x_bnc and {name} on one device, got {x_bnc.device} and {t.device}"
            )
    causal = _causal_flag(causal)
    scale = _scale(scale, c)
    check_finite(x_bnc=x_bnc, u_hcc=u_hcc, v_bhnd=v_bhnd)
    work = _work_dtype(x_bnc.dtype)
    x = x_bnc.to(work)
    q = torch.einsum("bnc,hcd->bhnd", x, u_hcc.to(work))  # x·U per head
    keys = x[:, None].expand(b, h, n, c)
    return _blockwise_attention(q, keys, v_bhnd.to(work), scale, causal).to(x_bnc.dtype)


# --- the checked entry point --------------------------------------------------------------------
def check_metric_inputs(
    p_bhnk: torch.Tensor,
    m_packed_hl: torch.Tensor,
    causal: bool,
    mask: SparseMask | None,
    scale: float | None,
) -> float:
    """Check the arguments of :func:`metric_attention`; return the scale to use.

    Raises TypeError/ValueError naming the argument, its value and what was expected.
    """
    if not isinstance(p_bhnk, torch.Tensor):
        raise TypeError(f"p_bhnk must be a torch.Tensor, got {type(p_bhnk).__name__}")
    if p_bhnk.dim() != 4:
        raise ValueError(f"p_bhnk must be 4-D (b, h, n, k), got shape {tuple(p_bhnk.shape)}")
    if min(p_bhnk.shape) < 1:
        raise ValueError(f"p_bhnk must have no empty dimension, got shape {tuple(p_bhnk.shape)}")
    if p_bhnk.dtype not in DTYPES:
        raise TypeError(
            f"p_bhnk must be float16, bfloat16, float32 or float64, got dtype {p_bhnk.dtype}"
        )
    _, h, n, k = p_bhnk.shape
    if not isinstance(m_packed_hl, torch.Tensor):
        raise TypeError(f"m_packed_hl must be a torch.Tensor, got {type(m_packed_hl).__name__}")
    if tuple(m_packed_hl.shape) != (h, packed_size(k)):
        raise ValueError(
            f"m_packed_hl must be (h, k(k+1)/2)=({h}, {packed_size(k)}) for p_bhnk of shape "
            f"{tuple(p_bhnk.shape)}, got shape {tuple(m_packed_hl.shape)}"
        )
    if m_packed_hl.dtype != p_bhnk.dtype:
        raise TypeError(
            f"m_packed_hl must have the dtype of p_bhnk ({p_bhnk.dtype}), got "
            f"{m_packed_hl.dtype}; cast it with m_packed_hl.to(p_bhnk.dtype)"
        )
    if m_packed_hl.device != p_bhnk.device:
        raise ValueError(
            f"expected p_bhnk and m_packed_hl on one device, got {p_bhnk.device} and "
            f"{m_packed_hl.device}"
        )
    _causal_flag(causal)
    if mask is not None:
        if not isinstance(mask, SparseMask):
            raise TypeError(f"mask must be None or a gpu.SparseMask, got {type(mask).__name__}")
        if mask.heads not in (1, h):
            raise ValueError(
                f"mask has heads={mask.heads}, expected 1 or the heads of p_bhnk, h={h}"
            )
        if mask.n != n:
            raise ValueError(f"mask has n={mask.n}, expected the n of p_bhnk, n={n}")
        if mask.device != p_bhnk.device:
            raise ValueError(
                f"expected p_bhnk and mask on one device, got {p_bhnk.device} and "
                f"{mask.device}; move the mask with mask.to(p_bhnk.device)"
            )
    scale = _scale(scale, k)
    check_finite(p_bhnk=p_bhnk, m_packed_hl=m_packed_hl)
    return scale


def metric_attention(
    p_bhnk: torch.Tensor,
    m_packed_hl: torch.Tensor,
    causal: bool = True,
    mask: SparseMask | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Metric tensor attention, differentiable: t = softmax(scale·p·M·pᵀ)·p per head, over the
    keys allowed by ``causal`` (k ≤ q) AND ``mask``; see :func:`metric_attention_reference`.

    ``p_bhnk`` is (b, h, n, k), float16/bfloat16/float32/float64; ``m_packed_hl`` is
    (h, k(k+1)/2) of the same dtype and device, each row the packed upper triangle of a
    symmetric M (:func:`pack_symmetric`); ``mask`` has n positions and 1 or h heads on p's
    device; ``scale`` defaults to 1/√k. Inputs are checked before any work. When
    :func:`gpu.backend_for` says ``"cupy"`` the CUDA kernels run (``gpu._metric_cuda``: float32,
    float16 and bfloat16 inputs, float32 accumulation, the half types on tensor cores, k ≤ 128
    padded to 16/32/64/128),
    unless :func:`gpu._metric_cuda.unsupported_reason` names something they cannot do (float64,
    k > 128, ...). The torch path runs
    ``F.scaled_dot_product_attention(p·M, p, p)`` without a mask below float64, and
    :func:`metric_attention_reference` otherwise.

    >>> p_bhnk = torch.randn(2, 3, 10, 4)
    >>> m_packed_hl = pack_symmetric(torch.eye(4).expand(3, 4, 4))
    >>> metric_attention(p_bhnk, m_packed_hl).shape
    torch.Size([2, 3, 10, 4])
    """
    scale = check_metric_inputs(p_bhnk, m_packed_hl, causal, mask, scale)
    if backend_for(p_bhnk) == "cupy":  # pragma: no cover - needs a GPU and CuPy
        from flowgraph.gpu import _metric_cuda

        needs_grad = torch.is_grad_enabled() and (p_bhnk.requires_grad or m_packed_hl.requires_grad)
        if _metric_cuda.unsupported_reason(p_bhnk, mask, needs_grad) is None:
            return _metric_cuda.metric_attention_cuda(p_bhnk, m_packed_hl, causal, mask, scale)
    if mask is None and p_bhnk.dtype != torch.float64:
        return _sdpa_metric_attention(p_bhnk, m_packed_hl, causal, scale)
    return metric_attention_reference(p_bhnk, m_packed_hl, causal, mask, scale)


def _sdpa_metric_attention(
    p_bhnk: torch.Tensor, m_packed_hl: torch.Tensor, causal: bool, scale: float
) -> torch.Tensor:
    """Without a mask and below float64, torch's fused attention with q = p·M and k = v = p:
    several times faster than the reference's Python loop over query blocks on a CPU, without
    (n, n) scores either, and the baseline the kernel is to be measured against. Float64 (tests)
    keeps the reference, where SDPA would fall back to its materialising math path."""
    m_hkk = unpack_symmetric(m_packed_hl, p_bhnk.shape[-1])
    q_bhnk = torch.einsum("bhnk,hkj->bhnj", p_bhnk, m_hkk)
    return F.scaled_dot_product_attention(q_bhnk, p_bhnk, p_bhnk, is_causal=causal, scale=scale)
