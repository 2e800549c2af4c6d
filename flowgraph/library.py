"""The library of today's sparse attention patterns, and a registry of every named pattern.

Each constructor returns a :class:`flowgraph.Pattern` given by :class:`flowgraph.StepRule` s: every
row is a union of a few arithmetic progressions, so nothing of size n×n is ever made, patterns
build at n = 1,048,576 in milliseconds and :func:`flowgraph.check` reads them with its interval
engine. Conventions: ``M[q, k]`` is True iff query q attends key k, positions are 0-based, and a
causal pattern keeps k ≤ q (a query attends itself).

One window convention holds in the whole library, the same as :func:`flowgraph.local`:
``window`` counts the keys on one side *including the query*, causal ``q − window < k ≤ q``,
bidirectional ``|q − k| < window``. This is Hugging Face transformers' ``sliding_window``
(``masking_utils.sliding_window_overlay``: ``kv_idx > q_idx − sliding_window``) and the xformers
local mask of Mistral's reference code. FlashAttention's ``window_size=(left, right)`` keeps
``q − left ≤ k ≤ q + right``: that is ``window = left + 1`` (transformers passed ``left =
sliding_window`` until huggingface/transformers#40163, attending one key more than its other
backends). Longformer's ``attention_window`` w counts both sides (w/2 each): ``window = w/2 + 1``.

:data:`LIBRARY` describes every named pattern — the constructors here and those of
:mod:`flowgraph.patterns` — with its parameters, their defaults given n, their ranges and its
directions; ``flowgraph check`` and the dashboard build patterns through it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowgraph import _validate
from flowgraph import patterns as _classic
from flowgraph.keys import KeySpans
from flowgraph.pattern import Pattern
from flowgraph.patterns import _interval_rule, _rules_fit
from flowgraph.rule import StepRule

__all__ = [
    "LIBRARY",
    "Param",
    "Spec",
    "bigbird",
    "block_causal",
    "dilated_window",
    "document",
    "longformer",
    "moba",
    "nsa",
    "prefix_lm",
    "sinks_window",
    "sliding_window",
]

MEMORY_LIMIT_BYTES = _validate.MEMORY_LIMIT_BYTES
MAX_SEED = 2**63 - 1


# --- shared pieces ---------------------------------------------------------------------------
def _positions(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def _window(q: np.ndarray, n: int, window: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """The library's window of each query: causal q − window < k ≤ q, else |q − k| < window."""
    lo = np.maximum(0, q - window + 1)
    hi = q if causal else np.minimum(n - 1, q + window - 1)
    return lo, hi


def _seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {value!r} ({type(value).__name__})")
    return _validate.int_in_range("seed", value, 0, MAX_SEED, "a numpy Generator seed")


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def _earlier_blocks(nb: int, k: int, seed: int) -> np.ndarray:
    """(nb, k) int64: for query block i, min(k, i) distinct earlier blocks (−1 pads), drawn as
    ``rng.choice(i, size=min(k, i), replace=False)`` for i = 1, 2, … with
    ``rng = numpy.random.default_rng(seed)`` (no draw where there is nothing to choose)."""
    rng = np.random.default_rng(seed)
    chosen_bk = np.full((nb, k), -1, dtype=np.int64)
    for i in range(1, nb):
        take = min(k, i)
        if take:
            chosen_bk[i, :take] = np.sort(rng.choice(i, size=take, replace=False))
    return chosen_bk


def _own_and_chosen(n: int, block: int, chosen_bk: np.ndarray) -> StepRule:
    """Own block up to the query, plus each row block's chosen (earlier, whole) blocks."""
    q = _positions(n)
    qb = q // block
    starts: list[np.ndarray] = [qb * block]
    counts: list[np.ndarray] = [q - qb * block + 1]
    for t in range(chosen_bk.shape[1]):
        blk_n = chosen_bk[qb, t]
        used_n = blk_n >= 0
        starts.append(np.where(used_n, blk_n * block, 0))
        counts.append(np.where(used_n, block, 0))  # an earlier block is never the short last one
    return StepRule(n, starts, counts, [1] * len(starts))


# --- windows ---------------------------------------------------------------------------------
def sliding_window(
    n: int, window: int, causal: bool = True, *, max_bytes: int = MEMORY_LIMIT_BYTES
) -> Pattern:
    """Sliding-window attention (Longformer; Mistral 7B) in one step.

    Models the local attention of Longformer (Beltagy, Peters, Cohan 2020, arXiv:2004.05150) and
    Mistral 7B's sliding window (Jiang et al. 2023, arXiv:2310.06825; HF transformers
    ``sliding_window``). Mask: causal ``q − window < k ≤ q`` (``window`` keys, the query
    included), bidirectional ``|q − k| < window`` (2·window − 1 keys). This is exactly
    :func:`flowgraph.local` (the patterns compare equal); HF's ``sliding_window=4096`` is
    ``window=4096``, FlashAttention's ``window_size=(left, 0)`` is ``window=left + 1`` and
    Longformer's ``attention_window=w`` is ``window=w // 2 + 1``.

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.sliding_window(8, window=3)
    >>> p.dense()[5].nonzero()[0].tolist(), p == fg.local(8, 3)
    ([3, 4, 5], True)
    """
    n = _validate.positions("n", n)
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    causal = _validate.flag("causal", causal)
    what = f"sliding_window(n={n}, window={window})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    lo, hi = _window(_positions(n), n, window, causal)
    return Pattern.from_rules(
        "sliding_window", n, causal, [_interval_rule(n, lo, hi)], {"window": window},
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


def dilated_window(
    n: int,
    window: int,
    dilation: int,
    causal: bool = True,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """Longformer's dilated sliding window: ``window`` keys a side, ``dilation`` apart.

    Beltagy, Peters, Cohan 2020 (arXiv:2004.05150, §3.1 "Dilated Sliding Window"): the keys
    q − i·d for 0 ≤ i < window (causal), and also q + i·d when bidirectional — row q is one
    arithmetic progression of stride d = dilation. Mask: ``(q − k) mod d = 0`` and
    ``0 ≤ (q − k)/d < window`` (causal), ``|q − k|/d < window`` (bidirectional).
    ``dilation=1`` is :func:`sliding_window`.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fg.dilated_window(16, window=3, dilation=4).dense()[13].nonzero()[0].tolist()
    [5, 9, 13]
    """
    n = _validate.positions("n", n)
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    d = _validate.int_in_range("dilation", dilation, 1, n, f"1 ≤ dilation ≤ n, n={n}")
    causal = _validate.flag("causal", causal)
    what = f"dilated_window(n={n}, window={window}, dilation={d})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = _positions(n)
    back = np.minimum(window - 1, q // d)
    ahead = 0 if causal else np.minimum(window - 1, (n - 1 - q) // d)
    rule = StepRule(n, q - d * back, back + 1 + ahead, d)
    return Pattern.from_rules(
        "dilated_window", n, causal, [rule], {"window": window, "dilation": d},
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


def sinks_window(
    n: int, window: int, sinks: int = 4, *, max_bytes: int = MEMORY_LIMIT_BYTES
) -> Pattern:
    """StreamingLLM: attention sinks plus a causal sliding window (always causal).

    Xiao, Tian, Chen, Han, Lewis 2023, "Efficient Streaming Language Models with Attention
    Sinks" (arXiv:2309.17453; github.com/mit-han-lab/streaming-llm, whose cache keeps
    ``start_size=4`` sink tokens and ``recent_size`` recent ones). Mask: ``k ≤ q`` and
    (``k < sinks`` or ``q − k < window``). ``sinks=0`` is :func:`sliding_window`.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fg.sinks_window(16, window=3, sinks=2).dense()[10].nonzero()[0].tolist()
    [0, 1, 8, 9, 10]
    """
    n = _validate.positions("n", n)
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    sinks = _validate.int_in_range("sinks", sinks, 0, n, f"0 ≤ sinks ≤ n, n={n}")
    what = f"sinks_window(n={n}, window={window}, sinks={sinks})"
    max_bytes = _rules_fit(what, n, 2, max_bytes)
    q = _positions(n)
    lo = np.maximum(0, q - window + 1)
    # the sinks below the window start only, so that the two terms never share a key
    rule = StepRule(n, [np.int64(0), lo], [np.minimum(sinks, lo), q - lo + 1], [1, 1])
    return Pattern.from_rules(
        "sinks_window", n, True, [rule], {"window": window, "sinks": sinks},
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


# --- global tokens -----------------------------------------------------------------------------
def _global_positions(n: int, global_tokens: object) -> np.ndarray:
    """Sorted global positions from a count (the first g tokens) or a sequence of positions."""
    if isinstance(global_tokens, numbers.Integral) and not isinstance(global_tokens, bool):
        g = _validate.int_in_range(
            "global_tokens", global_tokens, 0, n, f"the first g positions are global, n={n}"
        )
        return _positions(g)
    if isinstance(global_tokens, (str, bytes)) or not isinstance(
        global_tokens, (Sequence, np.ndarray)
    ):
        raise TypeError(
            "global_tokens must be an int (the first g tokens) or a sequence of positions, "
            f"got {type(global_tokens).__name__}"
        )
    arr = np.asarray(global_tokens)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"global_tokens must hold integer positions, got {global_tokens!r:.60}")
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"global_tokens[{i}]={int(arr[i])} must be a position in 0..{n - 1} (n={n})"
        )
    pos = np.sort(arr.astype(np.int64))
    twice = np.flatnonzero(np.diff(pos) == 0)
    if twice.size:
        raise ValueError(f"global_tokens holds position {int(pos[twice[0]])} twice")
    return pos


def _runs(pos: np.ndarray) -> list[tuple[int, int]]:
    """Sorted distinct positions as maximal runs [a, b] of consecutive positions."""
    if pos.size == 0:
        return []
    cut = np.flatnonzero(np.diff(pos) > 1)
    first = np.concatenate([[0], cut + 1])
    last = np.concatenate([cut, [pos.size - 1]])
    return [(int(pos[a]), int(pos[b])) for a, b in zip(first, last, strict=True)]


def longformer(
    n: int,
    window: int,
    global_tokens: int | Sequence[int],
    causal: bool = False,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """Longformer: a sliding window plus global tokens, in one step.

    Beltagy, Peters, Cohan 2020 (arXiv:2004.05150, §3.1 "Global Attention"). A global token
    attends every position and every position attends it (symmetric); ``global_tokens`` is a
    count g (positions 0..g−1, as [CLS] or a question's tokens) or a sequence of positions.
    With G the global set, mask: ``q ∈ G`` or ``k ∈ G`` or ``|q − k| < window``; causal keeps
    also ``k ≤ q`` (the window becomes ``q − window < k``). Longformer's ``attention_window=w``
    is ``window=w // 2 + 1`` (see :func:`sliding_window`).

    Examples
    --------
    >>> import flowgraph as fg
    >>> m = fg.longformer(8, window=2, global_tokens=[0]).dense()
    >>> m[5].nonzero()[0].tolist(), bool(m[0].all())
    ([0, 4, 5, 6], True)
    """
    n = _validate.positions("n", n)
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    pos = _global_positions(n, global_tokens)
    causal = _validate.flag("causal", causal)
    runs = _runs(pos)
    terms = 1 + len(runs) * (1 if causal else 2)
    what = f"longformer(n={n}, window={window}, {pos.size} global tokens)"
    max_bytes = _rules_fit(what, n, terms, max_bytes)
    q = _positions(n)
    is_global_n = np.zeros(n, dtype=np.bool_)
    is_global_n[pos] = True
    lo, hi = _window(q, n, window, causal)
    row_hi = q if causal else np.int64(n - 1)
    starts: list[Any] = [np.where(is_global_n, 0, lo)]
    counts: list[Any] = [np.where(is_global_n, row_hi + 1, hi - lo + 1)]
    for a, b in runs:  # the part of each run of global keys outside the window (a global row
        # already holds every key)
        left_hi = np.minimum(b, lo - 1)
        starts.append(np.int64(a))
        counts.append(np.where(is_global_n, 0, np.maximum(0, left_hi - a + 1)))
        if not causal:  # causal: the window ends at q, so nothing of a run lies right of it
            right_lo = np.maximum(a, hi + 1)
            starts.append(right_lo)
            counts.append(np.where(is_global_n, 0, np.maximum(0, b - right_lo + 1)))
    rule = StepRule(n, starts, counts, [1] * len(starts))
    shown: int | list[int] = (
        int(global_tokens) if isinstance(global_tokens, numbers.Integral) else pos.tolist()
    )
    return Pattern.from_rules(
        "longformer", n, causal, [rule], {"window": window, "global_tokens": shown},
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


def _bigbird_random_blocks(
    nb: int, half: int, left: int, right: int, random_blocks: int, seed: int, causal: bool
) -> np.ndarray:
    """(nb, random_blocks) int64, −1 padded: the random key blocks of each query block (see
    :func:`bigbird` for the draw)."""
    rng = np.random.default_rng(seed)
    chosen_br = np.full((nb, random_blocks), -1, dtype=np.int64)
    if random_blocks == 0:
        return chosen_br
    for i in range(nb):
        if i < left or i >= nb - right:
            continue  # a global query block attends every block: nothing to draw
        wl, wr = max(0, i - half), min(nb - 1, i + half)
        limit = wl if causal else nb  # causal: only blocks before the window
        spans = [(0, left - 1), (wl, wr), (nb - right, nb - 1)]
        excluded = _merge([(a, min(b, limit - 1)) for a, b in spans if a <= min(b, limit - 1)])
        size = limit - sum(b - a + 1 for a, b in excluded)
        take = min(random_blocks, size)
        if take == 0:
            continue
        blk = np.sort(rng.choice(size, size=take, replace=False)).astype(np.int64)
        for a, b in excluded:  # index among the candidates → block: skip each excluded run
            blk += (blk >= a) * (b - a + 1)
        chosen_br[i, :take] = blk
    return chosen_br


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def bigbird(
    n: int,
    block: int,
    window_blocks: int = 3,
    global_blocks: int = 2,
    random_blocks: int = 3,
    seed: int = 0,
    causal: bool = False,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """BigBird-ITC block-sparse attention: window, global and random blocks, in one step.

    Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences" (arXiv:2007.14062,
    Appendix D; HF ``BigBirdBlockSparseAttention``: block 64, 3 window blocks, first and last
    block global, 3 random blocks). Positions form nb = ⌈n/block⌉ blocks (the last may be
    short); ``qb = ⌊q/block⌋``, ``kb = ⌊k/block⌋``. The global blocks are the first
    ⌈global_blocks/2⌉ and the last ⌊global_blocks/2⌋. Mask: ``qb`` global, or ``kb`` global,
    or ``|qb − kb| ≤ (window_blocks − 1)/2``, or ``kb ∈ R[qb]``; causal keeps also ``k ≤ q``.

    R[i] (random blocks) are drawn once, reproducibly: ``rng = numpy.random.default_rng(seed)``;
    for each non-global query block i in increasing order, with C_i the ascending blocks that
    are neither global nor in i's window (and, causal, before it), ``R[i] =
    C_i[rng.choice(len(C_i), size=min(random_blocks, len(C_i)), replace=False)]`` (no draw when
    that size is 0).

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.bigbird(64, block=8, random_blocks=1, seed=0)
    >>> p.block_layout(8)[0, 3].astype(int).tolist()   # globals 0, 7; window 2..4; random 5
    [1, 0, 1, 1, 1, 1, 0, 1]
    """
    n = _validate.positions("n", n)
    block = _validate.int_in_range("block", block, 1, n, f"1 ≤ block ≤ n, n={n}")
    nb = _blocks(n, block)
    where = f"n={n} holds {nb} block(s) of {block}"
    window_blocks = _validate.int_in_range("window_blocks", window_blocks, 1, 2 * nb - 1, where)
    if window_blocks % 2 == 0:
        raise ValueError(
            f"window_blocks must be odd (the query's block and (window_blocks − 1)/2 blocks on "
            f"each side), got window_blocks={window_blocks}"
        )
    global_blocks = _validate.int_in_range("global_blocks", global_blocks, 0, nb, where)
    random_blocks = _validate.int_in_range("random_blocks", random_blocks, 0, nb, where)
    seed_ = _seed(seed)
    if seed_ is None:
        raise TypeError("seed must be an int (the random blocks are drawn from it), got None")
    causal = _validate.flag("causal", causal)
    what = f"bigbird(n={n}, block={block})"
    max_bytes = _rules_fit(what, n, 3 + random_blocks, max_bytes)
    half = (window_blocks - 1) // 2
    left, right = (global_blocks + 1) // 2, global_blocks // 2
    blk = np.arange(nb, dtype=np.int64)
    global_b = (blk < left) | (blk >= nb - right)
    wl_b, wr_b = np.maximum(0, blk - half), np.minimum(nb - 1, blk + half)
    # three disjoint block ranges per query block: the left globals, the window without the
    # globals, the right globals without the left ones
    ranges = [
        (np.zeros(nb, np.int64), np.full(nb, left - 1, np.int64)),
        (np.maximum(wl_b, left), np.minimum(wr_b, nb - right - 1)),
        (np.full(nb, max(nb - right, left), np.int64), np.full(nb, nb - 1, np.int64)),
    ]
    q = _positions(n)
    qb = q // block
    row_global_n = global_b[qb]
    cap_n = q if causal else np.int64(n - 1)
    starts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for t, (lo_b, hi_b) in enumerate(ranges):
        lo_n, hi_n = lo_b[qb], hi_b[qb]
        start_n = lo_n * block
        end_n = np.minimum(np.minimum(n - 1, (hi_n + 1) * block - 1), cap_n)
        count_n = np.where(lo_n <= hi_n, np.maximum(0, end_n - start_n + 1), 0)
        if t == 0:  # a global query attends every key: its whole row is this term
            start_n = np.where(row_global_n, 0, start_n)
            count_n = np.where(row_global_n, cap_n + 1, count_n)
        else:
            count_n = np.where(row_global_n, 0, count_n)
        starts.append(start_n)
        counts.append(count_n)
    chosen_br = _bigbird_random_blocks(nb, half, left, right, random_blocks, seed_, causal)
    for t in range(random_blocks):
        blk_n = chosen_br[qb, t]
        used_n = blk_n >= 0
        starts.append(np.where(used_n, blk_n * block, 0))
        counts.append(np.where(used_n, np.minimum(n, (blk_n + 1) * block) - blk_n * block, 0))
    rule = StepRule(n, starts, counts, [1] * len(starts))
    params = {
        "block": block, "window_blocks": window_blocks, "global_blocks": global_blocks,
        "random_blocks": random_blocks, "seed": seed_,
    }  # fmt: skip
    return Pattern.from_rules("bigbird", n, causal, [rule], params, max_bytes=max_bytes, what=what)


# --- documents, prefixes, blocks ------------------------------------------------------------
def _lengths(lengths: object) -> np.ndarray:
    """Document lengths as int64 (each ≥ 1; their sum is n, within int32 positions)."""
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, (Sequence, np.ndarray)):
        raise TypeError(
            f"lengths must be a sequence of document lengths, got {type(lengths).__name__}"
        )
    arr = np.asarray(lengths)
    if arr.size == 0:
        raise ValueError("lengths must hold at least one document length, got an empty sequence")
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths must hold integers, got {lengths!r:.60}")
    bad = np.flatnonzero(arr < 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lengths[{i}] must be ≥ 1 (a document), got lengths[{i}]={int(arr[i])}")
    arr = arr.astype(np.int64)
    total = int(arr.sum())
    if total > _validate.MAX_POSITIONS:
        raise ValueError(
            f"lengths sum to n={total}, above 2**31 − 1 = {_validate.MAX_POSITIONS} "
            "(positions are stored as int32)"
        )
    return arr


def document(
    lengths: Sequence[int] | np.ndarray,
    causal: bool = True,
    window: int | None = None,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """Document masking of packed sequences: a query attends only its own document.

    Packing several documents into one sequence with a block-diagonal mask, as in the Llama 3
    pre-training (Grattafiori et al. 2024, arXiv:2407.21783, §3.4: "attention mask that prevents
    self-attention between different documents"), FlashAttention's varlen ``cu_seqlens`` and
    FlexAttention's document mask. n = sum(lengths); D(q) is the document of position q. Mask:
    ``D(k) = D(q)``, and ``k ≤ q`` when causal; a ``window`` also keeps only
    ``q − window < k`` (causal) or ``|q − k| < window`` (the :func:`sliding_window` convention).

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.document([3, 2, 3])
    >>> p.n, p.dense()[4].nonzero()[0].tolist(), p.dense()[7].nonzero()[0].tolist()
    (8, [3, 4], [5, 6, 7])
    """
    lengths_d = _lengths(lengths)
    n = int(lengths_d.sum())
    causal = _validate.flag("causal", causal)
    if window is not None:
        window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    what = f"document(n={n}, {lengths_d.size} documents)"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = _positions(n)
    first_d = np.cumsum(lengths_d) - lengths_d
    doc_n = np.repeat(np.arange(lengths_d.size), lengths_d)
    first_n = first_d[doc_n]
    last_n = first_n + lengths_d[doc_n] - 1
    lo, hi = first_n, (q if causal else last_n)
    if window is not None:
        w_lo, w_hi = _window(q, n, window, causal)
        lo, hi = np.maximum(lo, w_lo), np.minimum(hi, w_hi)
    return Pattern.from_rules(
        "document", n, causal, [_interval_rule(n, lo, hi)],
        {"documents": int(lengths_d.size), "window": window}, max_bytes=max_bytes, what=what,
    )  # fmt: skip


def prefix_lm(n: int, prefix: int, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Prefix LM: bidirectional inside the prefix, causal after it, in one step.

    Raffel et al. 2020 (T5, arXiv:1910.10683, §3.2.1 "prefix LM") and Dong et al. 2019 (UniLM,
    arXiv:1905.03197). Mask: ``k ≤ q`` or ``k < prefix`` — row q is the keys
    ``0..max(q, prefix − 1)``. The pattern is not causal (a prefix token reads later prefix
    tokens), so ``causal`` is False and :func:`flowgraph.check`'s target is every pair: it
    reports the pairs (q, k) with ``k > max(q, prefix − 1)`` as missing — the continuation is
    never seen before it is generated — with witness ``(0, prefix)``; full information only
    when ``prefix = n``. ``prefix=0`` is the causal mask.

    Examples
    --------
    >>> import flowgraph as fg
    >>> m = fg.prefix_lm(6, prefix=3).dense()
    >>> m[0].nonzero()[0].tolist(), m[4].nonzero()[0].tolist()
    ([0, 1, 2], [0, 1, 2, 3, 4])
    """
    n = _validate.positions("n", n)
    prefix = _validate.int_in_range("prefix", prefix, 0, n, f"0 ≤ prefix ≤ n, n={n}")
    what = f"prefix_lm(n={n}, prefix={prefix})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = _positions(n)
    rule = StepRule(n, 0, np.maximum(q, prefix - 1) + 1, 1)
    return Pattern.from_rules(
        "prefix_lm", n, False, [rule], {"prefix": prefix}, max_bytes=max_bytes, what=what
    )


def block_causal(n: int, block: int, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Block-causal (chunked) attention: a query attends its own block and every earlier one.

    The frame-causal mask of autoregressive video models (a frame's tokens see the whole frame
    and the past, e.g. CausVid, Yin et al. 2024, arXiv:2412.07772) and of block diffusion /
    chunked training (Arriola et al. 2025, arXiv:2503.09573). Mask: ``⌊k/block⌋ ≤ ⌊q/block⌋``
    — row q is the keys ``0..min(n, (⌊q/block⌋ + 1)·block) − 1``; the last block may be short.
    Causal by blocks, not by tokens (a query reads later tokens of its block), so ``causal`` is
    False: :func:`flowgraph.check` reports the keys of later blocks as missing, witness
    ``(0, block)``. ``block=1`` is the causal mask.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fg.block_causal(10, block=4).dense()[5].nonzero()[0].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    n = _validate.positions("n", n)
    block = _validate.int_in_range("block", block, 1, n, f"1 ≤ block ≤ n, n={n}")
    what = f"block_causal(n={n}, block={block})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = _positions(n)
    rule = StepRule(n, 0, np.minimum(n, (q // block + 1) * block), 1)
    return Pattern.from_rules(
        "block_causal", n, False, [rule], {"block": block}, max_bytes=max_bytes, what=what
    )


# --- routed blocks -----------------------------------------------------------------------------
def moba(
    n: int,
    block: int,
    top_k: int,
    seed: int | None = None,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """MoBA (Mixture of Block Attention): a query's own block plus blocks a gate picks (causal).

    Lu et al. 2025, "MoBA: Mixture of Block Attention for Long-Context LLMs" (arXiv:2502.13189;
    github.com/MoonshotAI/MoBA). Positions form blocks of ``block`` (``moba_chunk_size``); a
    query always attends its own block up to itself, and the gate adds earlier blocks. As in
    MoBA's code, ``top_k`` (``moba_topk``) counts the own block: ``top_k − 1`` earlier blocks.
    ``qb = ⌊q/block⌋``, ``kb = ⌊k/block⌋``.

    - ``seed=None``: the candidate set the gate chooses from — ``kb = qb`` and ``k ≤ q``, or
      ``kb < qb``: every key ``k ≤ q`` (dense causal). A gate can only remove from it, so its
      check is an upper bound on what any routing keeps.
    - ``seed`` an int: one draw a router might make, per query block (MoBA's gate picks per
      query token; a block-level draw is one of its choices): ``rng =
      numpy.random.default_rng(seed)``; for query block i = 1, 2, …, ``S[i] = rng.choice(i,
      size=min(top_k − 1, i), replace=False)`` (no draw when that is 0). Mask: ``kb = qb`` and
      ``k ≤ q``, or ``kb ∈ S[qb]``.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fg.moba(16, block=4, top_k=2).edges() == fg.dense(16).edges()
    True
    >>> [int(r.sum()) for r in fg.moba(16, block=4, top_k=2, seed=0).block_layout(4)[0]]
    [1, 2, 2, 2]
    """
    n = _validate.positions("n", n)
    block = _validate.int_in_range("block", block, 1, n, f"1 ≤ block ≤ n, n={n}")
    nb = _blocks(n, block)
    top_k = _validate.int_in_range(
        "top_k", top_k, 1, nb, f"the own block and top_k − 1 earlier ones; n={n} holds {nb}"
    )
    seed_ = _seed(seed)
    what = f"moba(n={n}, block={block}, top_k={top_k})"
    params = {"block": block, "top_k": top_k, "seed": seed_}
    if seed_ is None:
        max_bytes = _rules_fit(what, n, 1, max_bytes)
        rule = StepRule(n, 0, _positions(n) + 1, 1)
    else:
        max_bytes = _rules_fit(what, n, top_k, max_bytes)
        rule = _own_and_chosen(n, block, _earlier_blocks(nb, top_k - 1, seed_))
    return Pattern.from_rules("moba", n, True, [rule], params, max_bytes=max_bytes, what=what)


def nsa(
    n: int,
    cmp_block: int = 32,
    cmp_stride: int = 16,
    sel_block: int = 64,
    sel_blocks: int = 16,
    window: int = 512,
    *,
    seed: int | None = None,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """Native Sparse Attention as its three branches, one step each (causal).

    Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse
    Attention" (arXiv:2502.11089, §3.3; defaults from §4.1: l = 32, d = 16, l' = 64, n = 16,
    w = 512). The branches are summed by gates inside one layer, so one NSA layer is the union
    of the steps: ``fg.stack(p, layers=1, mode="heads")``; ``p`` itself checks them one after
    another, as three layers would (quadratic in n through the dense candidate step: for
    n ≤ 16,384).

    1. Compression: compressed key j stands for tokens ``j·d .. j·d + l − 1`` (l = cmp_block,
       d = cmp_stride; :meth:`flowgraph.KeySpans.blocks`); query q attends the keys whose span
       has ended: ``j·d + l − 1 ≤ q``. Queries q < l − 1 attend none (their rows are empty).
    2. Selection over blocks of l' = sel_block tokens, ``qb = ⌊q/l'⌋``, ``kb = ⌊k/l'⌋``. With
       ``seed=None`` the candidate set the top-n choice is made from: ``k ≤ q`` (every causal
       block, the query's own cut at q). With an int seed one draw of it per query block, as
       :func:`moba` draws: the own block and ``min(sel_blocks − 1, qb)`` earlier blocks (NSA
       picks them from the compression scores, and its experiments always keep the first block
       and two local ones, which a random draw does not promise).
    3. Sliding window: ``q − window < k ≤ q`` (the :func:`sliding_window` convention).

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.nsa(64, cmp_block=8, cmp_stride=4, sel_block=16, sel_blocks=2, window=8)
    >>> p.num_keys(0), p.key_step(0)[[6, 7, 12]].sum(axis=1).tolist()
    (16, [0, 1, 2])
    >>> fg.check(fg.stack(p, layers=1, mode="heads")).full_information
    True
    """
    n = _validate.positions("n", n)
    l = _validate.int_in_range("cmp_block", cmp_block, 1, n, f"1 ≤ cmp_block ≤ n, n={n}")  # noqa: E741
    d = _validate.int_in_range(
        "cmp_stride", cmp_stride, 1, l,
        f"1 ≤ cmp_stride ≤ cmp_block = {l}: NSA's compressed keys overlap or tile the tokens",
    )  # fmt: skip
    sel_block = _validate.int_in_range("sel_block", sel_block, 1, n, f"1 ≤ sel_block ≤ n, n={n}")
    nb = _blocks(n, sel_block)
    sel_blocks = _validate.int_in_range(
        "sel_blocks", sel_blocks, 1, nb, f"n={n} holds {nb} block(s) of {sel_block}"
    )
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    seed_ = _seed(seed)
    what = f"nsa(n={n})"
    max_bytes = _rules_fit(what, n, 2 + (1 if seed_ is None else sel_blocks), max_bytes)
    spans = KeySpans.blocks(n, size=l, stride=d)
    q = _positions(n)
    ended_n = np.where(q >= l - 1, (q - l + 1) // d + 1, 0)  # keys j with j·d + l − 1 ≤ q
    compression = StepRule(n, 0, ended_n, 1, keys=spans.m)
    if seed_ is None:
        selection = StepRule(n, 0, q + 1, 1)
    else:
        selection = _own_and_chosen(n, sel_block, _earlier_blocks(nb, sel_blocks - 1, seed_))
    lo, hi = _window(q, n, window, True)
    params = {
        "cmp_block": l, "cmp_stride": d, "sel_block": sel_block, "sel_blocks": sel_blocks,
        "window": window, "seed": seed_,
    }  # fmt: skip
    return Pattern.from_rules(
        "nsa", n, True, [compression, selection, _interval_rule(n, lo, hi)], params,
        max_bytes=max_bytes, what=what, key_spans=[spans, None, None],
    )  # fmt: skip


# --- the registry ------------------------------------------------------------------------------
Values = Mapping[str, Any]  # "n" and the parameters resolved before this one


@dataclass(frozen=True)
class Param:
    """One parameter of a named pattern: its range and default given n (and the parameters
    before it), as ``flowgraph check`` and the dashboard offer it.

    ``kind`` is ``"int"`` or ``"ints"`` (a list, each in the range); ``optional`` parameters
    take None as a value (no window, no seed); ``default=None`` means required."""

    name: str
    help: str
    low: Callable[[Values], int]
    high: Callable[[Values], int]
    range_text: str
    default: Callable[[Values], int | None] | None = None
    default_text: str = ""
    kind: str = "int"
    optional: bool = False

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    def bounds(self, values: Values) -> tuple[int, int]:
        """(low, high) for these values of n and the earlier parameters."""
        return int(self.low(values)), int(self.high(values))

    def default_for(self, values: Values) -> int | None:
        return None if self.default is None else self.default(values)


@dataclass(frozen=True)
class Spec:
    """A named pattern: its constructor, parameters and directions.

    ``directions`` lists the directions it exists in, the default first: ``("causal",
    "bidirectional")`` offers the choice, a single entry fixes it. ``n_from`` names the
    parameter n is derived from (``document``: the sum of its lengths)."""

    name: str
    constructor: Callable[..., Pattern]
    summary: str
    source: str
    params: tuple[Param, ...]
    directions: tuple[str, ...]
    n_from: str | None = None

    @property
    def choice(self) -> bool:
        """Both causal and bidirectional exist."""
        return len(self.directions) == 2

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolve(self, n: int | None, values: Values | None = None) -> dict[str, Any]:
        """n and every parameter: the given ``values`` (None means the default) and the defaults
        given n. Unknown names, missing required ones, values outside the ranges and an n that
        contradicts ``n_from`` are ValueErrors naming them."""
        values = dict(values or {})
        unknown = [k for k in values if k not in self.names]
        if unknown:
            have = ", ".join(self.names) or "none"
            raise ValueError(
                f"{self.name} takes no parameter {unknown[0]!r}; its parameters: {have}"
            )
        missing = [p.name for p in self.params if p.required and values.get(p.name) is None]
        if missing:
            p = self.param(missing[0])
            raise ValueError(f"{self.name} needs {p.name} ({p.help}; {p.range_text})")
        if self.n_from is not None:
            total = int(_lengths(values[self.n_from]).sum())
            if n is not None and n != total:
                raise ValueError(
                    f"n={n} but the {self.n_from} of {self.name} sum to {total}: n is their sum "
                    "(leave n out)"
                )
            n = total
        out: dict[str, Any] = {"n": _validate.positions("n", n)}
        for p in self.params:
            value = values.get(p.name)
            if value is None:
                out[p.name] = p.default_for(out)
            elif p.kind == "int":  # checked here too: the later defaults are computed from it
                low, high = p.bounds(out)
                why = f"{p.range_text}, n={out['n']}"
                out[p.name] = _validate.int_in_range(p.name, value, low, high, why)
            else:
                out[p.name] = value
        return out

    def build(
        self, n: int | None, values: Values | None = None, causal: bool | None = None
    ) -> Pattern:
        """The pattern for n, ``values`` and a direction (None: the default one)."""
        kwargs = self.resolve(n, values)
        n = kwargs.pop("n")
        if causal is not None:
            causal = _validate.flag("causal", causal)
            if ("causal" if causal else "bidirectional") not in self.directions:
                raise ValueError(
                    f"{self.name} is {self.directions[0]} by definition; it has no "
                    f"{'causal' if causal else 'bidirectional'} variant"
                )
        if self.choice:
            kwargs["causal"] = self.directions[0] == "causal" if causal is None else causal
        if self.n_from is not None:
            return self.constructor(kwargs.pop(self.n_from), **kwargs)
        return self.constructor(n, **kwargs)


def _n(v: Values) -> int:
    return int(v["n"])


def _sqrt(v: Values) -> int:
    return max(1, math.isqrt(_n(v)))


def _nb(key: str) -> Callable[[Values], int]:
    return lambda v: _blocks(_n(v), int(v[key]))


def _const(x: int) -> Callable[[Values], int]:
    return lambda v: x


def _upto(x: int, high: Callable[[Values], int]) -> Callable[[Values], int]:
    """The default x where the range allows it, else the range's top (small n)."""
    return lambda v: min(x, high(v))


def _p_window(help: str = "keys a side, the query included") -> Param:
    return Param("window", help, _const(1), _n, "1 ≤ window ≤ n", _sqrt, "⌊√n⌋")


def _p_block(default: Callable[[Values], int] = _sqrt, text: str = "⌊√n⌋") -> Param:
    return Param("block", "positions per block", _const(1), _n, "1 ≤ block ≤ n", default, text)


_P_STRIDE = Param("stride", "the stride l", _const(1), _n, "1 ≤ stride ≤ n", _sqrt, "⌊√n⌋")
_P_SEED = Param(
    "seed", "numpy Generator seed of the random choice (none: the candidate set)", _const(0),
    _const(MAX_SEED), "0 ≤ seed < 2⁶³", lambda v: None, "none", optional=True,
)  # fmt: skip
_BOTH = ("causal", "bidirectional")
_P_SUMMARY = Param(
    "summary",
    "summary columns c per block",
    _const(1),
    lambda v: int(v["stride"]),
    "1 ≤ summary ≤ stride",
    _const(1),
    "1",
)

LIBRARY: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("dense", _classic.dense, "full attention", "", (), _BOTH),
        Spec(
            "local",
            _classic.local,
            "a sliding window (the same as sliding_window)",
            "",
            (Param("window", "keys a side, the query included", _const(1), _n, "1 ≤ window ≤ n"),),
            _BOTH,
        ),
        Spec(
            "strided",
            _classic.strided,
            "OpenAI's strided pattern",
            "Child et al. 2019, arXiv:1904.10509",
            (_P_STRIDE,),
            _BOTH,
        ),
        Spec(
            "fixed",
            _classic.fixed,
            "OpenAI's fixed pattern",
            "Child et al. 2019, arXiv:1904.10509",
            (
                _P_STRIDE,
                _P_SUMMARY,
            ),
            _BOTH,
        ),
        Spec(
            "fixed_heads",
            _classic.fixed_heads,
            "OpenAI's fixed pattern, one mask per head",
            "Child et al. 2019, arXiv:1904.10509",
            (
                _P_STRIDE,
                _P_SUMMARY,
                Param(
                    "heads",
                    "heads (num_verts): head h relays through the h-th summary sub-block",
                    _const(1),
                    lambda v: int(v["stride"]) // int(v["summary"]),
                    "1 ≤ heads ≤ stride // summary",
                    lambda v: min(4, int(v["stride"]) // int(v["summary"])),
                    "4",
                ),
            ),
            _BOTH,
        ),
        Spec(
            "ltr",
            _classic.ltr,
            "left-to-right full information",
            "Daras et al. 2020, arXiv:1911.12287",
            (_P_STRIDE,),
            ("bidirectional",),
        ),
        Spec(
            "rtl",
            _classic.rtl,
            "right-to-left full information",
            "Daras et al. 2020, arXiv:1911.12287",
            (_P_STRIDE,),
            ("bidirectional",),
        ),
        Spec(
            "star",
            _classic.star,
            "every position through one hub",
            "",
            (
                Param(
                    "hub",
                    "the hub position",
                    _const(0),
                    lambda v: _n(v) - 1,
                    "0 ≤ hub ≤ n − 1",
                    _const(0),
                    "0",
                ),
            ),
            ("bidirectional",),
        ),
        Spec(
            "sliding_window",
            sliding_window,
            "Mistral / Longformer sliding window",
            "Beltagy et al. 2020, arXiv:2004.05150; Jiang et al. 2023, arXiv:2310.06825",
            (_p_window(),),
            _BOTH,
        ),
        Spec(
            "dilated_window",
            dilated_window,
            "Longformer's dilated sliding window",
            "Beltagy et al. 2020, arXiv:2004.05150",
            (
                _p_window(),
                Param(
                    "dilation",
                    "the gap d between window keys",
                    _const(1),
                    _n,
                    "1 ≤ dilation ≤ n",
                    _upto(2, _n),
                    "2",
                ),
            ),
            _BOTH,
        ),
        Spec(
            "sinks_window",
            sinks_window,
            "StreamingLLM: attention sinks + a causal window",
            "Xiao et al. 2023, arXiv:2309.17453",
            (
                _p_window(),
                Param(
                    "sinks",
                    "the first tokens every query attends",
                    _const(0),
                    _n,
                    "0 ≤ sinks ≤ n",
                    _upto(4, _n),
                    "4",
                ),
            ),
            ("causal",),
        ),
        Spec(
            "longformer",
            longformer,
            "Longformer: a window + global tokens",
            "Beltagy et al. 2020, arXiv:2004.05150",
            (
                _p_window(),
                Param(
                    "global_tokens",
                    "the first g tokens are global",
                    _const(0),
                    _n,
                    "0 ≤ global_tokens ≤ n",
                    _upto(1, _n),
                    "1",
                ),
            ),
            ("bidirectional", "causal"),
        ),
        Spec(
            "bigbird",
            bigbird,
            "BigBird-ITC: window, global and random blocks",
            "Zaheer et al. 2020, arXiv:2007.14062",
            (
                _p_block(),
                Param(
                    "window_blocks",
                    "blocks of the window (odd)",
                    _const(1),
                    lambda v: 2 * _nb("block")(v) - 1,
                    "odd, 1 ≤ window_blocks ≤ 2·nb − 1",
                    _upto(3, lambda v: 2 * _nb("block")(v) - 1),
                    "3",
                ),
                Param(
                    "global_blocks",
                    "global blocks: the first ⌈g/2⌉ and the last ⌊g/2⌋",
                    _const(0),
                    _nb("block"),
                    "0 ≤ global_blocks ≤ nb",
                    _upto(2, _nb("block")),
                    "2",
                ),
                Param(
                    "random_blocks",
                    "random key blocks per query block",
                    _const(0),
                    _nb("block"),
                    "0 ≤ random_blocks ≤ nb",
                    _upto(3, _nb("block")),
                    "3",
                ),
                Param(
                    "seed",
                    "numpy Generator seed of the random blocks",
                    _const(0),
                    _const(MAX_SEED),
                    "0 ≤ seed < 2⁶³",
                    _const(0),
                    "0",
                ),
            ),
            ("bidirectional", "causal"),
        ),
        Spec(
            "document",
            document,
            "document masking of packed sequences",
            "",
            (
                Param(
                    "lengths",
                    "the document lengths, n = their sum",
                    _const(1),
                    _const(_validate.MAX_POSITIONS),
                    "each ≥ 1",
                    kind="ints",
                ),
                Param(
                    "window",
                    "an optional window inside each document",
                    _const(1),
                    _n,
                    "1 ≤ window ≤ n",
                    lambda v: None,
                    "none",
                    optional=True,
                ),
            ),
            _BOTH,
            n_from="lengths",
        ),
        Spec(
            "prefix_lm",
            prefix_lm,
            "prefix LM: bidirectional prefix, causal after",
            "Raffel et al. 2020, arXiv:1910.10683",
            (
                Param(
                    "prefix",
                    "tokens of the bidirectional prefix",
                    _const(0),
                    _n,
                    "0 ≤ prefix ≤ n",
                    lambda v: _n(v) // 2,
                    "n // 2",
                ),
            ),
            ("bidirectional",),
        ),
        Spec(
            "block_causal",
            block_causal,
            "block-causal (chunked) attention",
            "Arriola et al. 2025, arXiv:2503.09573",
            (_p_block(),),
            ("bidirectional",),
        ),
        Spec(
            "moba",
            moba,
            "MoBA: own block + top-k gated blocks",
            "Lu et al. 2025, arXiv:2502.13189",
            (
                _p_block(),
                Param(
                    "top_k",
                    "blocks per query, its own included",
                    _const(1),
                    _nb("block"),
                    "1 ≤ top_k ≤ nb",
                    _upto(3, _nb("block")),
                    "3",
                ),
                _P_SEED,
            ),
            ("causal",),
        ),
        Spec(
            "nsa",
            nsa,
            "NSA: compression, selection and window branches",
            "Yuan et al. 2025, arXiv:2502.11089",
            (
                Param(
                    "cmp_block",
                    "tokens per compressed key (l)",
                    _const(1),
                    _n,
                    "1 ≤ cmp_block ≤ n",
                    _upto(32, _n),
                    "32",
                ),
                Param(
                    "cmp_stride",
                    "tokens between compressed keys (d)",
                    _const(1),
                    lambda v: int(v["cmp_block"]),
                    "1 ≤ cmp_stride ≤ cmp_block",
                    lambda v: min(16, int(v["cmp_block"])),
                    "16",
                ),
                Param(
                    "sel_block",
                    "tokens per selection block (l')",
                    _const(1),
                    _n,
                    "1 ≤ sel_block ≤ n",
                    _upto(64, _n),
                    "64",
                ),
                Param(
                    "sel_blocks",
                    "selected blocks per query (n)",
                    _const(1),
                    _nb("sel_block"),
                    "1 ≤ sel_blocks ≤ nb",
                    _upto(16, _nb("sel_block")),
                    "16",
                ),
                Param(
                    "window",
                    "keys of the sliding window",
                    _const(1),
                    _n,
                    "1 ≤ window ≤ n",
                    _upto(512, _n),
                    "512",
                ),
                _P_SEED,
            ),
            ("causal",),
        ),
    )
}
