"""Pattern constructors: dense, local, the OpenAI strided and fixed patterns (Child et al. 2019),
the bidirectional LTR/RTL full-information patterns (Daras et al. 2020), a star, and patterns from
user masks or DeepSpeed-style block layouts; OpenAI's multi-head fixed layout (``fixed_heads``).

Every constructor builds its CSR steps with vectorised index arithmetic (no n×n temporaries), so
n = 65536 patterns take well under a second. Published definitions are implemented as written,
including where they lose information (for instance LTR/RTL when the stride does not divide n):
:func:`flowgraph.check` is there to say so. ``stride`` defaults to ⌊√n⌋.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.pattern import Pattern
from flowgraph.rule import StepRule

MEMORY_LIMIT_BYTES = _validate.MEMORY_LIMIT_BYTES
# Peak bytes per entry while a constructor builds its steps (int64 index temporaries), measured
# with tracemalloc at n = 4096..65536: 23–32. A kept step costs 5–9.
BUILD_BYTES_PER_ENTRY = 32

__all__ = [
    "dense",
    "fixed",
    "fixed_heads",
    "from_block_layout",
    "from_masks",
    "local",
    "ltr",
    "rtl",
    "star",
    "strided",
]


# --- CSR builders ------------------------------------------------------------------------------
def _runs(n: int, start: np.ndarray, count: np.ndarray, step: int = 1) -> sp.csr_array:
    """Row q holds the keys start[q] + step·j for 0 ≤ j < count[q] (an arithmetic run)."""
    count = np.maximum(count.astype(np.int64), 0)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(count, out=indptr[1:])
    row = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = np.arange(indptr[-1], dtype=np.int64) - indptr[row]
    indices = (start.astype(np.int64)[row] + step * offset).astype(np.int32)
    data = np.ones(indices.size, dtype=np.bool_)
    return sp.csr_array((data, indices, indptr), shape=(n, n))


def _columns(n: int, cols: np.ndarray, causal: bool) -> sp.csr_array:
    """Every row attends the sorted key set ``cols`` (only the keys ≤ q when causal)."""
    q = np.arange(n)
    count = np.searchsorted(cols, q, side="right") if causal else np.full(n, cols.size)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(count, out=indptr[1:])
    offset = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], count)
    indices = cols.astype(np.int32)[offset]
    return sp.csr_array((np.ones(indices.size, np.bool_), indices, indptr), shape=(n, n))


def _interval(n: int, lo: np.ndarray, hi: np.ndarray) -> sp.csr_array:
    """Row q holds the keys lo[q] ≤ k ≤ hi[q]."""
    return _runs(n, lo, hi - lo + 1)


# --- entry counts, before anything is built ----------------------------------------------------
# Closed forms (Python ints, no arrays), so that a size too large to build is refused at once;
# tests/test_bad_input.py checks each against the built pattern's edges.


def _sum_mod(n: int, l: int) -> int:  # noqa: E741
    """Σ_{q<n} (q mod l)."""
    m, t = divmod(n, l)
    return m * l * (l - 1) // 2 + t * (t - 1) // 2


def _fixed_columns(n: int, l: int, c: int, causal: bool) -> int:  # noqa: E741
    """Entries of the fixed pattern's summary step: keys k with k mod l ≥ l − c (and k ≤ q when
    causal, where key k is attended by the n − k queries q ≥ k)."""
    m, t = divmod(n, l)
    total = 0
    # residues r in [a, b) share the number of keys: m + 1 below t, m from t on
    for a, b, count in ((l - c, max(l - c, t), m + 1), (max(l - c, t), l, m)):
        if b <= a or count == 0:
            continue
        if not causal:
            total += (b - a) * count * n
            continue
        sum_r = (a + b - 1) * (b - a) // 2
        total += count * (n * (b - a) - sum_r) - (b - a) * l * count * (count - 1) // 2
    return total


def _check_build(what: str, n: int, entries: int, max_bytes: object) -> None:
    """Refuse a pattern too large to build (its memory, then int32 positions)."""
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    need = entries * BUILD_BYTES_PER_ENTRY
    _validate.memory(f"{what} with {entries:,} entries", need, max_bytes)
    _validate.positions("n", n)


# --- rules ---------------------------------------------------------------------------------
RULE_BYTES_PER_TERM_ROW = 24  # a term's start and count (int64) per row, and one temporary


def _rules_fit(what: str, n: int, terms: int, max_bytes: object) -> int:
    """Refuse, before any array is made, a pattern whose rules alone cannot fit."""
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    _validate.memory(
        f"{what}: its rules ({terms} terms × n)", terms * n * RULE_BYTES_PER_TERM_ROW, max_bytes
    )
    _validate.positions("n", n)
    return max_bytes


def _interval_rule(n: int, lo: np.ndarray, hi: np.ndarray) -> StepRule:
    """Row q holds the keys lo[q] ≤ k ≤ hi[q]."""
    return StepRule(n, lo, hi - lo + 1, 1)


def _residue_count(n: int, r: int, step: int, upto: np.ndarray | None) -> np.ndarray | int:
    """#{k ≡ r (mod step), r ≤ k ≤ upto} per row (upto None: k ≤ n − 1 for every row)."""
    if upto is None:
        return (n - 1 - r) // step + 1 if r <= n - 1 else 0
    return np.where(upto >= r, (upto - r) // step + 1, 0)


def _diagonal_except(q: np.ndarray, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal as a term, left out of the rows ``skip`` (where another term holds it)."""
    return q, np.where(skip, 0, 1)


# --- constructors ------------------------------------------------------------------------------
def dense(n: int, causal: bool = True, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Full attention in one step: k ≤ q when causal, every pair otherwise.

    Every constructor keeps its steps as rules (a few numbers per query, see
    :mod:`flowgraph.rule`): it refuses, with a ValueError and before allocating, only rules that
    would need more than ``max_bytes``; a step's CSR is built when first used, and refused there
    past ``max_bytes`` (about 8 bytes an entry).
    """
    n = _validate.positive_int("n", n)
    causal = _validate.flag("causal", causal)
    what = f"dense(n={n})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = np.arange(n, dtype=np.int64)
    rule = StepRule(n, 0, q + 1 if causal else n, 1)
    return Pattern.from_rules("dense", n, causal, [rule], max_bytes=max_bytes, what=what)


def local(
    n: int, window: int, causal: bool = True, *, max_bytes: int = MEMORY_LIMIT_BYTES
) -> Pattern:
    """A sliding window in one step: causal q−window < k ≤ q, else |q−k| < window."""
    n = _validate.positive_int("n", n)
    window = _validate.int_in_range("window", window, 1, n, f"1 ≤ window ≤ n, n={n}")
    causal = _validate.flag("causal", causal)
    what = f"local(n={n}, window={window})"
    max_bytes = _rules_fit(what, n, 1, max_bytes)
    q = np.arange(n, dtype=np.int64)
    lo = np.maximum(0, q - window + 1)
    hi = q if causal else np.minimum(n - 1, q + window - 1)
    return Pattern.from_rules(
        "local", n, causal, [_interval_rule(n, lo, hi)], {"window": window},
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


def strided(
    n: int,
    stride: int | None = None,
    causal: bool = True,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """OpenAI's strided pattern (Child et al. 2019, §4.3), l = stride.

    Causal: step 1 max(0, q−l) ≤ k ≤ q; step 2 (q−k) mod l = 0 and k ≤ q.
    Bidirectional: step 1 |q−k| ≤ l; step 2 (q−k) mod l = 0.
    """
    n = _validate.positive_int("n", n)
    l = _validate.stride_for(n, stride)  # noqa: E741  # the paper's name for the stride
    causal = _validate.flag("causal", causal)
    what = f"strided(n={n}, stride={l})"
    max_bytes = _rules_fit(what, n, 2, max_bytes)
    q = np.arange(n, dtype=np.int64)
    if causal:
        step1 = _interval_rule(n, np.maximum(0, q - l), q)
        step2 = StepRule(n, q % l, q // l + 1, l)
    else:
        step1 = _interval_rule(n, np.maximum(0, q - l), np.minimum(n - 1, q + l))
        step2 = StepRule(n, q % l, (n - 1 - q % l) // l + 1, l)
    return Pattern.from_rules(
        "strided", n, causal, [step1, step2], {"stride": l}, max_bytes=max_bytes, what=what
    )


_FIXED_RULE_SUMMARY = 8  # up to this summary width a residue term each; wider: CSR, as before


def fixed(
    n: int,
    stride: int | None = None,
    summary: int = 1,
    causal: bool = True,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """OpenAI's fixed pattern, l = stride, c = summary.

    Step 1 ⌊k/l⌋ = ⌊q/l⌋; step 2 k mod l ≥ l−c; both also k ≤ q when causal. The summary step
    is a rule of c residue terms for c ≤ 8, and a CSR built at once for wider summaries.
    """
    n = _validate.positive_int("n", n)
    l = _validate.stride_for(n, stride)  # noqa: E741
    c = _validate.int_in_range("summary", summary, 1, l, f"1 ≤ summary ≤ stride, stride={l}")
    causal = _validate.flag("causal", causal)
    what = f"fixed(n={n}, stride={l}, summary={c})"
    params = {"stride": l, "summary": c}
    if c > _FIXED_RULE_SUMMARY:
        m, t = divmod(n, l)
        step1 = n + _sum_mod(n, l) if causal else m * l * l + t * t
        entries = step1 + _fixed_columns(n, l, c, causal)
        _check_build(what, n, entries, max_bytes)
        q = np.arange(n)
        lo = (q // l) * l
        hi = q if causal else np.minimum(n - 1, lo + l - 1)
        cols = np.flatnonzero(np.arange(n) % l >= l - c)
        steps = [_interval(n, lo, hi), _columns(n, cols, causal)]
        return Pattern("fixed", n, causal, steps, params)
    max_bytes = _rules_fit(what, n, 1 + c, max_bytes)
    q = np.arange(n, dtype=np.int64)
    lo = (q // l) * l
    hi = q if causal else np.minimum(n - 1, lo + l - 1)
    residues = range(l - c, l)
    upto = q if causal else None
    step2 = StepRule(n, list(residues), [_residue_count(n, r, l, upto) for r in residues],
                     [l] * c)  # fmt: skip
    return Pattern.from_rules(
        "fixed", n, causal, [_interval_rule(n, lo, hi), step2], params,
        max_bytes=max_bytes, what=what,
    )  # fmt: skip


def fixed_heads(
    n: int,
    stride: int | None = None,
    summary: int = 1,
    heads: int = 4,
    causal: bool = True,
    *,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """OpenAI's fixed pattern as its block-sparse code builds it: one mask per head, l = stride,
    c = summary (``get_blocksparse_obj(attn_mode="fixed")`` in openai/sparse_attention, with
    ``num_verts = heads``, c = ``vertsize`` · blocksize and l = ``local_attn_ctx``).

    Head h attends its own block, ⌊k/l⌋ = ⌊q/l⌋, and the summary positions
    l − (h+1)·c ≤ k mod l < l − h·c (head 0 the last c of every block, as :func:`fixed`; later
    heads earlier sub-blocks); k ≤ q when causal. Head 0 is ``fixed(n, l, c)`` merged into one
    step. Needs heads · c ≤ l. The steps are the heads (``params["steps_are"] == "heads"``): check
    L layers of it with ``fg.stack(p, layers=L, mode="heads")`` — upstream's n_heads a multiple of
    num_verts is ``heads=`` there, head h using step h mod num_verts.
    """
    n = _validate.positive_int("n", n)
    l = _validate.stride_for(n, stride)  # noqa: E741
    c = _validate.int_in_range("summary", summary, 1, l, f"1 ≤ summary ≤ stride, stride={l}")
    heads = _validate.int_in_range(
        "heads", heads, 1, l // c, f"heads · summary ≤ stride, stride={l}, summary={c}"
    )
    causal = _validate.flag("causal", causal)
    what = f"fixed_heads(n={n}, stride={l}, summary={c}, heads={heads})"
    terms_per_head = 1 + c * (1 if causal else 2)
    max_bytes = _rules_fit(what, n, heads * terms_per_head, max_bytes)
    q = np.arange(n, dtype=np.int64)
    blk = q // l
    lo = blk * l
    hi = q if causal else np.minimum(n - 1, lo + l - 1)
    rules = []
    for h in range(heads):
        # the own block is the interval; a summary residue adds its keys in the other blocks
        # (earlier ones, and later ones when bidirectional), so the terms stay disjoint
        starts: list[Any] = [lo]
        counts: list[Any] = [hi - lo + 1]
        strides = [1]
        for r in range(l - (h + 1) * c, l - h * c):
            starts.append(np.int64(r))
            counts.append(blk)  # r < l: the residue has a key in every earlier block
            strides.append(l)
            if not causal:
                after = r + (blk + 1) * l
                starts.append(np.where(after <= n - 1, after, 0))
                counts.append(np.where(after <= n - 1, (n - 1 - after) // l + 1, 0))
                strides.append(l)
        rules.append(StepRule(n, starts, counts, strides))
    params = {"stride": l, "summary": c, "heads": heads, "steps_are": "heads"}
    return Pattern.from_rules(
        "fixed_heads", n, causal, rules, params, max_bytes=max_bytes, what=what
    )


def ltr(n: int, stride: int | None = None, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Daras et al.'s left-to-right full-information pattern (bidirectional), l = stride.

    Step 1 q − (q mod l) ≤ k ≤ q; step 2 k = q or k mod l = l−1.
    """
    n = _validate.positive_int("n", n)
    l = _validate.stride_for(n, stride)  # noqa: E741
    what = f"ltr(n={n}, stride={l})"
    max_bytes = _rules_fit(what, n, 3, max_bytes)
    q = np.arange(n, dtype=np.int64)
    step1 = _interval_rule(n, q - q % l, q)
    diag_start, diag_count = _diagonal_except(q, q % l == l - 1)
    step2 = StepRule(n, [np.int64(l - 1), diag_start],
                     [np.int64(_residue_count(n, l - 1, l, None)), diag_count], [l, 1])  # fmt: skip
    return Pattern.from_rules(
        "ltr", n, False, [step1, step2], {"stride": l}, max_bytes=max_bytes, what=what
    )


def rtl(n: int, stride: int | None = None, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Daras et al.'s right-to-left full-information pattern (bidirectional), l = stride.

    Step 1 q ≤ k < min(n, (⌊q/l⌋+1)·l); step 2 k = q or k mod l = 0.
    """
    n = _validate.positive_int("n", n)
    l = _validate.stride_for(n, stride)  # noqa: E741
    what = f"rtl(n={n}, stride={l})"
    max_bytes = _rules_fit(what, n, 3, max_bytes)
    q = np.arange(n, dtype=np.int64)
    step1 = _interval_rule(n, q, np.minimum(n, (q // l + 1) * l) - 1)
    diag_start, diag_count = _diagonal_except(q, q % l == 0)
    step2 = StepRule(n, [np.int64(0), diag_start],
                     [np.int64(_residue_count(n, 0, l, None)), diag_count], [l, 1])  # fmt: skip
    return Pattern.from_rules(
        "rtl", n, False, [step1, step2], {"stride": l}, max_bytes=max_bytes, what=what
    )


def star(n: int, hub: int = 0, *, max_bytes: int = MEMORY_LIMIT_BYTES) -> Pattern:
    """Every position attends the hub and itself, the hub attends all; two identical steps.

    Full information with O(n) edges, through a single bottleneck token (see ``check(flow=True)``).
    """
    n = _validate.positive_int("n", n)
    hub = _validate.int_in_range("hub", hub, 0, n - 1, f"a position of the pattern, n={n}")
    what = f"star(n={n})"
    max_bytes = _rules_fit(what, n, 3, max_bytes)
    q = np.arange(n, dtype=np.int64)
    spoke = (q != hub).astype(np.int64)
    rule = StepRule(n, [q, np.int64(hub), np.int64(0)], [spoke, spoke, np.where(spoke, 0, n)],
                    [1, 1, 1])  # fmt: skip
    return Pattern.from_rules(
        "star", n, False, [rule, rule], {"hub": hub}, max_bytes=max_bytes, what=what
    )


def _as_mask(mask: Any, i: int) -> Any:
    """One user mask as a scipy sparse matrix or an ndarray (a ragged nested list is refused)."""
    if sp.issparse(mask):
        return mask
    try:
        return np.asarray(mask)
    except ValueError as exc:  # numpy: "setting an array element with a sequence..."
        raise ValueError(f"masks[{i}] is not a rectangular array: {exc}") from None


def from_masks(
    masks: Any,
    causal: bool,
    name: str = "custom",
    *,
    key_span: Any = None,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """A pattern from user masks: one (n, n) mask, an (steps, n, n) array, or a sequence of masks.

    Each mask is a dense bool array or a scipy sparse bool matrix; all must share n. A causal
    pattern's masks may still hold entries with k > q: :func:`flowgraph.check` counts them.

    ``key_span`` makes the masks non-square, (n, m), over m compressed (downsampled) keys: an
    int B (key j = tokens jB..jB+B−1), a (size, stride) pair, an (m, 2) array of inclusive token
    spans or a :class:`flowgraph.keys.KeySpans` — as :func:`flowgraph.from_mask_mod` takes it.
    """
    if key_span is not None:
        return _from_key_masks(masks, causal, name, key_span, max_bytes)
    causal = _validate.flag("causal", causal)
    if sp.issparse(masks):
        steps: Sequence[Any] = [masks]
    elif isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            steps = [masks]
        elif masks.ndim == 3:
            steps = list(masks)
        else:
            raise ValueError(f"masks must be (n, n) or (steps, n, n), got shape {masks.shape}")
    elif isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        steps = list(masks)
        if steps and not sp.issparse(steps[0]) and np.ndim(steps[0]) == 1:
            steps = [_as_mask(masks, 0)]  # a nested list that is one (n, n) mask
    else:
        raise TypeError(
            "masks must be an array, a scipy sparse matrix or a sequence of them, "
            f"got {type(masks).__name__}"
        )
    if not steps:
        raise ValueError("masks must hold at least one mask, got an empty sequence")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    steps = [_as_mask(m, i) for i, m in enumerate(steps)]
    for i, m in enumerate(steps):  # named here as masks[i], the caller's argument
        if m.dtype != np.bool_:
            raise TypeError(
                f"masks[{i}] must be boolean, got dtype {m.dtype}; "
                "convert with mask.astype(bool) if 0/1 values are meant"
            )
    shapes = [m.shape for m in steps]
    for i, shape in enumerate(shapes):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"masks[{i}] must be square (n, n), got shape {tuple(shape)}")
        if shape[0] != shapes[0][0]:
            raise ValueError(
                f"masks[{i}] has n={shape[0]} but masks[0] has n={shapes[0][0]}; "
                "all masks must share n"
            )
    if shapes[0][0] == 0:
        raise ValueError("masks must have n ≥ 1, got n=0")
    entries = sum(int(m.nnz) if sp.issparse(m) else int(np.count_nonzero(m)) for m in steps)
    _check_build(f"from_masks(n={shapes[0][0]})", shapes[0][0], entries, max_bytes)
    return Pattern(name, shapes[0][0], causal, steps)


_LAYOUT_MODES = ("heads", "steps")  # from_block_layout: what a layout's slices are


def _from_key_masks(
    masks: Any, causal: bool, name: str, key_span: Any, max_bytes: object
) -> Pattern:
    """from_masks over compressed keys: every mask is (n, m)."""
    from flowgraph.flex import key_spans_for

    causal = _validate.flag("causal", causal)
    if sp.issparse(masks) or (isinstance(masks, np.ndarray) and masks.ndim == 2):
        steps = [masks]
    elif isinstance(masks, np.ndarray) and masks.ndim == 3:
        steps = list(masks)
    elif isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)) and masks:
        steps = list(masks)
    else:
        raise TypeError("masks must be an (n, m) mask, an (steps, n, m) array or a list of them")
    shapes = {tuple(np.shape(m)) if not sp.issparse(m) else m.shape for m in steps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"masks must all be (n, m) with the same shape, got {sorted(shapes)}")
    n, m = next(iter(shapes))
    spans = key_spans_for(key_span, _validate.positive_int("n", n), m)
    entries = sum(int(x.nnz) if sp.issparse(x) else int(np.count_nonzero(x)) for x in steps)
    _check_build(f"from_masks(n={n}, keys={m})", n, entries, max_bytes)
    return Pattern(name, n, causal, steps, {"kv_len": m}, key_spans=[spans] * len(steps))


def from_block_layout(
    layout: Any,
    block: int,
    causal: bool,
    name: str = "block",
    n: int | None = None,
    *,
    mode: str | None = None,
    causal_diagonal: bool | None = None,
    max_bytes: int = MEMORY_LIMIT_BYTES,
) -> Pattern:
    """A pattern from a DeepSpeed-style block layout: (slices, nb, nb) or (nb, nb) bool.

    Block (i, j) on means every query of block i attends every key of block j. ``n`` defaults to
    nb·block and may be smaller (the last block is then partial).

    Parameters
    ----------
    layout : (nb, nb), or (slices, nb, nb) with ``mode`` saying what the slices are.
    mode : ``"heads"`` — the slices are the heads of one layer (DeepSpeed's and OpenAI's
        ``(num_heads, nb, nb)`` layouts): information moves through their union, so the pattern
        has one step, the union, and ``params["heads"]`` says how many were joined; check it as
        one layer with ``fg.check(p)``, or as L layers with ``fg.stack(p, layers=L)``.
        ``"steps"`` — the slices are sequential steps, one pattern step each. A layout with more
        than one slice must name its mode (ValueError otherwise); a 2-D one needs none.
    causal_diagonal : True cuts the diagonal blocks to k ≤ q — what DeepSpeed computes when a
        causal ``attn_mask`` is passed, and OpenAI's block-sparse callback; False keeps them
        whole, which is what a DeepSpeed layout alone means. Default: ``causal``. Blocks above the
        diagonal are kept either way, so ``check`` reports them (with the verdict without them).

    Raises
    ------
    TypeError : a layout that is not boolean.
    ValueError : a bad shape, a missing or unknown ``mode``, ``causal_diagonal=True`` on a
        bidirectional pattern, an ``n`` outside the last block, or more than ``max_bytes``.
    """
    layout_snn = layout.toarray() if sp.issparse(layout) else np.asarray(layout)  # nb × nb: small
    if layout_snn.dtype != np.bool_:
        raise TypeError(f"layout must be boolean, got dtype {layout_snn.dtype}")
    if layout_snn.ndim == 2:
        layout_snn = layout_snn[None]
    if layout_snn.ndim != 3 or layout_snn.shape[1] != layout_snn.shape[2]:
        raise ValueError(
            f"layout must be (slices, nb, nb) or (nb, nb), got shape {np.shape(layout)}"
        )
    block = _validate.positive_int("block", block)
    causal = _validate.flag("causal", causal)
    cut = causal if causal_diagonal is None else _validate.flag("causal_diagonal", causal_diagonal)
    if cut and not causal:
        raise ValueError(
            "causal_diagonal=True cuts the diagonal blocks to k ≤ q, which needs causal=True; "
            "got causal=False (pass causal_diagonal=False or leave it out)"
        )
    if mode is not None and mode not in _LAYOUT_MODES:
        raise ValueError(f"mode must be 'heads', 'steps' or None, got mode={mode!r}")
    nb = layout_snn.shape[1]
    if nb == 0:
        raise ValueError("layout must have nb ≥ 1 blocks, got nb=0")
    slices = layout_snn.shape[0]
    if slices == 0:
        raise ValueError(f"layout must hold at least one step, got shape {np.shape(layout)}")
    if slices > 1 and mode is None:
        raise ValueError(
            f"layout has {slices} slices (shape {np.shape(layout)}): choose what they are — "
            "mode='heads' for the heads of one layer (DeepSpeed's (num_heads, nb, nb) layouts; "
            "information moves through their union) or mode='steps' for sequential steps"
        )
    full = nb * block
    n = (
        full
        if n is None
        else _validate.int_in_range(
            "n", n, full - block + 1, full, f"the layout covers {nb} blocks of {block}"
        )
    )
    params: dict[str, Any] = {"block": block, "causal_diagonal": cut}
    if mode is not None:
        params["mode"] = mode
    if mode == "heads":
        params["heads"] = slices
        layout_snn = layout_snn.any(axis=0, keepdims=True)  # a block any head attends
    # every on block becomes block² entries before the cut to n and to k ≤ q
    entries = int(np.count_nonzero(layout_snn)) * block * block
    _check_build(f"from_block_layout(nb={nb}, block={block})", full, entries, max_bytes)
    steps = []
    for layout_nn in layout_snn:
        m = sp.kron(sp.csr_array(layout_nn), sp.csr_array(np.ones((block, block), np.bool_)))
        m = sp.csr_array(m, dtype=np.bool_)[:n, :n]
        if cut:
            rows, cols = m.nonzero()
            same_block = rows // block == cols // block
            keep = ~same_block | (cols <= rows)
            m = sp.csr_array(
                (np.ones(int(keep.sum()), np.bool_), (rows[keep], cols[keep])), shape=(n, n)
            )
        steps.append(m)
    return Pattern(name, n, causal, steps, params)
