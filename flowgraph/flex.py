"""FlexAttention in and out: patterns from ``mask_mod`` functions and ``BlockMask`` s, and back.

PyTorch's FlexAttention (``torch.nn.attention.flex_attention``) is where attention patterns are
written today: a ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` and the ``BlockMask`` that
``create_block_mask`` makes from it. :func:`from_mask_mod` reads a mask_mod into a
:class:`flowgraph.Pattern` without materialising n² (tiles decided by interval rules, see
:mod:`flowgraph._mask_eval`); :func:`from_block_mask` reads a BlockMask, refining its partial
blocks through its mask_mod; :func:`to_mask_mod` and :func:`to_block_mask` turn any pattern step
into index arithmetic FlexAttention runs. torch is imported by these functions only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.keys import KeySpans
from flowgraph.pattern import Pattern
from flowgraph.rule import StepRule

__all__ = ["from_block_mask", "from_mask_mod", "to_block_mask", "to_mask_mod"]

RUN_BYTES = 24  # a run of keys kept per row term: start, count and a temporary (int64)


def _mask_mod_name(mask_mod: object) -> str:
    return getattr(mask_mod, "__name__", None) or type(mask_mod).__name__


def _check_mask_mod(mask_mod: object) -> str:
    if not callable(mask_mod):
        raise TypeError(f"mask_mod must be a function (b, h, q_idx, kv_idx) -> bool tensor, "
                        f"got {type(mask_mod).__name__}")  # fmt: skip
    try:
        inspect.signature(mask_mod).bind(0, 0, 0, 0)
    except TypeError as exc:
        raise TypeError(
            f"mask_mod {_mask_mod_name(mask_mod)} must take four arguments (b, h, q_idx, "
            f"kv_idx) as FlexAttention calls it: {exc}"
        ) from None
    except ValueError:  # a builtin without a signature: FlexAttention will tell
        pass
    return _mask_mod_name(mask_mod)


def key_spans_for(key_span: Any, n: int, kv_len: int | None) -> KeySpans | None:
    """The compressed keys a ``key_span`` argument describes (None: keys are the tokens)."""
    if key_span is None:
        if kv_len is not None and kv_len != n:
            raise ValueError(
                f"kv_len={kv_len} differs from n={n}: give key_span= (an int block, a "
                "(size, stride) pair or an (m, 2) array of token spans) to say which tokens "
                "each key stands for"
            )
        return None
    if isinstance(key_span, KeySpans):
        spans = key_span
        if spans.n != n:
            raise ValueError(f"key_span covers n={spans.n} tokens, expected n={n}")
    elif isinstance(key_span, (int, np.integer)) and not isinstance(key_span, bool):
        spans = KeySpans.blocks(n, int(key_span), m=kv_len)
    elif (
        isinstance(key_span, tuple)
        and len(key_span) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in key_span)
    ):
        spans = KeySpans.blocks(n, int(key_span[0]), int(key_span[1]), m=kv_len)
    else:
        spans = KeySpans.from_array(key_span, n)
    if kv_len is not None and spans.m != kv_len:
        raise ValueError(
            f"key_span describes {spans.m} keys but kv_len={kv_len}: give one span per key"
        )
    return spans


def rule_from_runs(
    n: int, keys: int, row_r: np.ndarray, lo_r: np.ndarray, hi_r: np.ndarray
) -> StepRule:
    """A rule whose row q holds the runs (row_r == q) as stride-1 terms."""
    counts_n = np.bincount(row_r, minlength=n) if row_r.size else np.zeros(n, np.int64)
    num_terms = max(1, int(counts_n.max()))
    first_n = np.zeros(n, np.int64)
    np.cumsum(counts_n[:-1], out=first_n[1:])
    rank_r = np.arange(row_r.size) - first_n[row_r]
    start_tn = np.zeros((num_terms, n), np.int64)
    count_tn = np.zeros((num_terms, n), np.int64)
    start_tn[rank_r, row_r] = lo_r
    count_tn[rank_r, row_r] = hi_r - lo_r + 1
    return StepRule(n, list(start_tn), list(count_tn), [1] * num_terms, keys=keys)


def _runs_fit(what: str, n: int, runs: int, max_bytes: int) -> None:
    _validate.memory(what, RUN_BYTES * (runs + n), max_bytes)


def from_mask_mod(
    mask_mod: Callable[..., Any],
    n: int,
    *,
    kv_len: int | None = None,
    key_span: Any = None,
    heads: int | None = None,
    batch: int | None = None,
    causal: bool = True,
    name: str | None = None,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Pattern:
    """A pattern from a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``.

    Parameters
    ----------
    mask_mod : as FlexAttention takes it: index tensors in, a bool tensor out (True = attend).
    n : queries (tokens).
    kv_len : keys (default n). Fewer keys than tokens are *compressed* keys: give ``key_span``.
    key_span : which tokens each key stands for — an int B (key j = tokens [jB, jB+B−1]), a
        ``(size, stride)`` pair (overlapping spans, as NSA's compression), an (m, 2) array of
        inclusive [first, last] spans, or a :class:`flowgraph.keys.KeySpans`.
    heads : evaluate ``h = 0..heads−1``, one step per head (check a layer of them with
        ``fg.stack(p, layers=L, mode="heads")``). Without it a mask_mod that reads h is refused.
    batch : the b passed to the mask_mod (default 0).
    causal : the check's target (k ≤ q) and whether k > q entries are reported as leaks.
    max_bytes : refuse (ValueError) before any work a pattern that cannot fit.

    The mask_mod is decided tile by tile with interval arithmetic and evaluated exactly only on
    tiles it leaves undecided (n² work never happens for index-arithmetic masks; an operation the
    rules do not know falls back to exact evaluation of every pair, in bounded chunks). A
    mask_mod that raises, returns a non-bool, or reads data that does not cover n positions gets
    a ValueError naming it.

    Examples
    --------
    >>> import flowgraph as fg
    >>> def cmp_mask(b, h, q_idx, kv_idx):            # NSA compression with the bug
    ...     return q_idx <= (kv_idx + 1) * 64 - 1
    >>> r = fg.check(fg.from_mask_mod(cmp_mask, n=4096, kv_len=64, key_span=64))
    >>> r.causality_violations > 0, r.causality_witness
    (True, (0, 0, 1))
    """
    from flowgraph import _mask_eval  # torch: imported here, not by `import flowgraph`

    label = _check_mask_mod(mask_mod)
    n = _validate.positions("n", n)
    if kv_len is not None:
        kv_len = _validate.positions("kv_len", kv_len)
    spans = key_spans_for(key_span, n, kv_len)
    m = n if spans is None else spans.m
    heads = None if heads is None else _validate.positive_int("heads", heads)
    b_value = 0 if batch is None else _validate.int_in_range("batch", batch, 0, 2**31 - 1)
    causal = _validate.flag("causal", causal)
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    # every row keeps at least one term: refuse what cannot fit before evaluating anything
    _runs_fit(f"from_mask_mod(n={n}) with {heads or 1} head(s)", n, n * (heads or 1), max_bytes)
    import torch

    b = torch.tensor(b_value, dtype=torch.int32)
    rules = []
    fallbacks = set()
    exact = 0
    for head in range(heads or 1):
        h = torch.tensor(head, dtype=torch.int32) if heads else _mask_eval._Forbidden("h")
        try:
            rows = _mask_eval.read_mask(mask_mod, n, m, b, h, label)
        except _mask_eval.ArgumentUsed as exc:
            raise ValueError(
                f"mask_mod {label} depends on h (the head index): pass heads=H to read one "
                "step per head"
            ) from exc
        _runs_fit(f"the runs of mask_mod {label}", n, rows.row_r.size, max_bytes)
        rules.append(rule_from_runs(n, m, rows.row_r, rows.lo_r, rows.hi_r))
        exact += rows.exact_pairs
        if rows.fallback is not None:
            fallbacks.add(rows.fallback)
    params: dict[str, Any] = {"mask_mod": label, "exact_pairs": exact}
    if heads:
        params["heads"] = heads
    if fallbacks:
        params["fallback"] = sorted(fallbacks)
    if spans is not None:
        params["kv_len"] = m
        params["key_span"] = spans.params
    return Pattern.from_rules(
        name or label, n, causal, rules, params, max_bytes=max_bytes,
        what=f"mask_mod {label}", key_spans=None if spans is None else [spans] * len(rules),
    )  # fmt: skip


# --- patterns out ------------------------------------------------------------------------------
def _key_rule(pattern: Pattern, step: int) -> StepRule:
    rules = pattern.key_rules
    if rules is not None:
        return rules[step]
    m = pattern.key_step(step)
    row_r, lo_r, hi_r = csr_runs(m)
    return rule_from_runs(pattern.n, m.shape[1], row_r, lo_r, hi_r)


def csr_runs(m: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of consecutive keys of each row of a sorted CSR: (row, first key, last key)."""
    n = m.shape[0]
    rows_e = np.repeat(np.arange(n, dtype=np.int64), np.diff(m.indptr))
    keys_e = m.indices.astype(np.int64)
    if keys_e.size == 0:
        return rows_e, keys_e, keys_e
    new = np.ones(keys_e.size, bool)
    new[1:] = (rows_e[1:] != rows_e[:-1]) | (keys_e[1:] != keys_e[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, keys_e.size - 1)
    return rows_e[first], keys_e[first], keys_e[last]


def to_mask_mod(pattern: Pattern, step: int = 0) -> Callable[..., Any]:
    """A FlexAttention mask_mod equal to step ``step`` of ``pattern`` (over its keys: a
    compressed step's kv_idx is the key index).

    Index arithmetic from the step's rule — per term ``kv − start[q]`` is a multiple of the
    stride below ``count[q]·stride`` — with O(terms · n) captured tensors, never an n² table.
    It broadcasts any index shapes and works under ``torch.vmap`` and ``torch.compile``.
    """
    import torch

    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    step = _validate.int_in_range(
        "step", step, 0, pattern.num_steps - 1, f"the pattern has {pattern.num_steps} steps"
    )
    start_tn, count_tn, stride_t = _key_rule(pattern, step).terms()
    used = [t for t in range(stride_t.size) if count_tn[t].any()]
    starts = [torch.from_numpy(np.array(start_tn[t])) for t in used]
    spans = [torch.from_numpy(np.array(count_tn[t] * stride_t[t])) for t in used]
    strides = [int(stride_t[t]) for t in used]

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        hit = (q_idx < 0) & (kv_idx < 0)  # all False, in the broadcast shape and dtype
        for start_n, span_n, stride in zip(starts, spans, strides, strict=True):
            offset = kv_idx - start_n[q_idx]
            term = (offset >= 0) & (offset < span_n[q_idx])
            if stride > 1:
                term = term & (offset % stride == 0)
            hit = hit | term
        return hit

    mask_mod.__name__ = f"{pattern.name}_step{step}".replace("/", "_").replace("×", "x")
    return mask_mod


def _block_counts(
    pattern: Pattern, step: int, block_q: int, block_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Entries per (query block, key block) of a step and each block's area."""
    n, m = pattern.n, pattern.num_keys(step)
    rule = _key_rule(pattern, step)
    start_tn, count_tn, stride_t = rule.terms()
    nbq, nbk = -(-n // block_q), -(-m // block_k)
    counts = np.zeros((nbq, nbk), np.int64)
    q_n = np.arange(n)
    if rule.disjoint and np.all(stride_t == 1):
        for t in range(stride_t.size):
            live = np.flatnonzero(count_tn[t] > 0)
            lo, hi = start_tn[t, live], start_tn[t, live] + count_tn[t, live] - 1
            first, last = lo // block_k, hi // block_k
            reps = last - first + 1
            run = np.repeat(np.arange(live.size), reps)
            blk = first[run] + np.arange(run.size) - np.repeat(np.cumsum(reps) - reps, reps)
            cover = (
                np.minimum(hi[run], blk * block_k + block_k - 1)
                - np.maximum(lo[run], blk * block_k)
                + 1
            )
            np.add.at(counts, (q_n[live][run] // block_q, blk), cover)
    else:
        mask = pattern.key_step(step)
        rows = np.repeat(q_n // block_q, np.diff(mask.indptr))
        np.add.at(counts, (rows, mask.indices // block_k), 1)
    rows_b = np.minimum(block_q, n - np.arange(nbq) * block_q)
    cols_b = np.minimum(block_k, m - np.arange(nbk) * block_k)
    return counts, rows_b[:, None] * cols_b[None, :]


def to_block_mask(pattern: Pattern, step: int = 0, *, block: int | tuple[int, int] = 128) -> Any:
    """A FlexAttention ``BlockMask`` of step ``step``: blocks that are all on become full blocks
    (no mask_mod call), partly-on blocks carry :func:`to_mask_mod`, empty blocks are skipped.
    ``flex_attention(q, k, v, block_mask=p.to_block_mask())`` then computes the masked
    attention of that step (n need not be a multiple of the block)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    mask_mod = to_mask_mod(pattern, step)  # validates pattern and step
    if isinstance(block, tuple):
        if len(block) != 2:
            raise ValueError(f"block must be an int or a (q, kv) pair, got {block!r}")
        block_q = _validate.positive_int("block[0]", block[0])
        block_k = _validate.positive_int("block[1]", block[1])
    else:
        block_q = block_k = _validate.positive_int("block", block)
    counts, area = _block_counts(pattern, step, block_q, block_k)
    full = counts == area
    partial = (counts > 0) & ~full

    def pack(on_qk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        num_q = on_qk.sum(axis=1).astype(np.int32)
        # on blocks first, in key order (a stable sort of "off" puts them in front)
        order_qk = np.argsort(~on_qk, axis=1, kind="stable").astype(np.int32)
        return (
            torch.from_numpy(num_q)[None, None],
            torch.from_numpy(np.ascontiguousarray(order_qk))[None, None],
        )

    kv_num, kv_idx = pack(partial)
    full_num, full_idx = pack(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(block_q, block_k), mask_mod=mask_mod,
        seq_lengths=(pattern.n, pattern.num_keys(step)),
    )  # fmt: skip


def from_block_mask(
    block_mask: Any,
    *,
    key_span: Any = None,
    batch: int = 0,
    causal: bool = True,
    name: str = "block_mask",
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Pattern:
    """A pattern from a FlexAttention ``BlockMask``: its full blocks as they are, its partial
    blocks refined through its ``mask_mod`` (the block layout alone overstates the entries of a
    sliding window or a document mask several times). One step per head when the BlockMask has
    H > 1 (check a layer with ``fg.stack(p, layers=L, mode="heads")``); ``batch`` picks b."""
    import torch

    from flowgraph import _mask_eval

    needed = ("kv_num_blocks", "kv_indices", "BLOCK_SIZE", "seq_lengths", "mask_mod")
    if any(not hasattr(block_mask, a) for a in needed):
        raise TypeError(
            "block_mask must be a torch.nn.attention.flex_attention.BlockMask, got "
            f"{type(block_mask).__name__}"
        )
    n, m = (int(v) for v in block_mask.seq_lengths)
    spans = key_spans_for(key_span, n, m)
    causal = _validate.flag("causal", causal)
    kv_num = block_mask.kv_num_blocks.cpu().numpy()
    kv_idx = block_mask.kv_indices.cpu().numpy()
    full_num = block_mask.full_kv_num_blocks
    full_idx = block_mask.full_kv_indices
    full_num = None if full_num is None else full_num.cpu().numpy()
    full_idx = None if full_idx is None else full_idx.cpu().numpy()
    batches, heads_n = kv_num.shape[:2]
    batch = _validate.int_in_range("batch", batch, 0, max(batches, 1) - 1, f"B={batches}")
    bq, bk = (int(v) for v in block_mask.BLOCK_SIZE)
    mask_mod = block_mask.mask_mod
    label = _mask_mod_name(mask_mod)

    def blocks(num: np.ndarray, idx: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
        num_q, idx_qk = num[batch, h], idx[batch, h]
        rows = np.repeat(np.arange(num_q.size), num_q)
        cols = np.concatenate([idx_qk[i, : num_q[i]] for i in range(num_q.size)] or [[]])
        return rows.astype(np.int64) * bq, cols.astype(np.int64) * bk

    rules = []
    for h in range(heads_n):
        pieces = []
        if full_num is not None:
            q0, k0 = blocks(full_num, full_idx, h)
            pieces.append(_mask_eval._records(q0, np.minimum(q0 + bq, n), k0,
                                              np.minimum(k0 + bk, m)))  # fmt: skip
        q0, k0 = blocks(kv_num, kv_idx, h)
        b_t = torch.tensor(batch, dtype=torch.int32)
        h_t = torch.tensor(h, dtype=torch.int32)
        pieces.extend(_mask_eval._evaluate_leaves(mask_mod, b_t, h_t, q0, k0, bq, bk, n, m, label))
        row_r = np.concatenate([p[0] for p in pieces]).astype(np.int64)
        lo_r = np.concatenate([p[1] for p in pieces]).astype(np.int64)
        hi_r = np.concatenate([p[2] for p in pieces]).astype(np.int64)
        row_r, lo_r, hi_r = _mask_eval._merge(row_r, lo_r, hi_r, m)
        _runs_fit(f"from_block_mask(n={n})", n, row_r.size, max_bytes)
        rules.append(rule_from_runs(n, m, row_r, lo_r, hi_r))
    params: dict[str, Any] = {"mask_mod": label, "block": (bq, bk)}
    if heads_n > 1:
        params["heads"] = heads_n
    return Pattern.from_rules(
        name, n, causal, rules, params, max_bytes=max_bytes, what=f"block_mask {label}",
        key_spans=None if spans is None else [spans] * len(rules),
    )  # fmt: skip
