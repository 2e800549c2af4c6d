"""The compiled inner loop of the interval engine (numba, ``nogil`` so chunks run in threads).

An interval [lo, hi] is packed into one int64 key ``lo << 32 | hi`` (positions are < 2³¹), so
that sorting keys sorts intervals by their start and one buffer holds both ends.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_SHIFT = np.int64(32)
_LOW = np.int64(0xFFFFFFFF)
_INITIAL = 1024  # gather-buffer length to start with; it doubles, then compacts


@nb.njit(cache=True, nogil=True)
def _pack(lo: int, hi: int) -> np.int64:
    return (np.int64(lo) << _SHIFT) | np.int64(hi)


@nb.njit(cache=True, nogil=True)
def _merge_in_place(keys: np.ndarray, m: int) -> int:
    """Merge the sorted intervals keys[:m] (overlapping or adjacent ones join); returns their
    new number."""
    if m == 0:
        return 0
    out = 0
    cur_lo = keys[0] >> _SHIFT
    cur_hi = keys[0] & _LOW
    for i in range(1, m):
        lo = keys[i] >> _SHIFT
        hi = keys[i] & _LOW
        if lo <= cur_hi + 1:
            if hi > cur_hi:
                cur_hi = hi
        else:
            keys[out] = (cur_lo << _SHIFT) | cur_hi
            out += 1
            cur_lo, cur_hi = lo, hi
    keys[out] = (cur_lo << _SHIFT) | cur_hi
    return out + 1


@nb.njit(cache=True, nogil=True)
def _compact(keys: np.ndarray, m: int) -> int:
    keys[:m].sort()
    return _merge_in_place(keys, m)


@nb.njit(cache=True, nogil=True)
def _room(buf: np.ndarray, m: int, limit: int, compacted: bool):
    """Make room for one more key: double the buffer up to ``limit``, then fold what it holds
    into its merged form (at most n/2 + 1 intervals) and grow only if that is not enough."""
    if m < buf.size:
        return buf, m, compacted
    if buf.size >= limit:
        m = _compact(buf, m)
        compacted = True
        if m < buf.size // 2:
            return buf, m, compacted
    grown = np.empty(2 * buf.size, np.int64)
    grown[:m] = buf[:m]
    return grown, m, compacted


@nb.njit(cache=True, nogil=True)
def _kway_merge(keys: np.ndarray, seg: np.ndarray, out: np.ndarray) -> int:
    """Merge T sorted segments keys[seg[t]:seg[t+1]] into out as disjoint intervals; returns
    their number. O(m·T): T is the few terms of a rule."""
    num = seg.size - 1
    pos = seg[:-1].copy()
    m_out = 0
    have = False
    cur_lo = np.int64(0)
    cur_hi = np.int64(0)
    while True:
        best = -1
        best_key = np.int64(0)
        for t in range(num):
            if pos[t] < seg[t + 1] and (best < 0 or keys[pos[t]] < best_key):
                best = t
                best_key = keys[pos[t]]
        if best < 0:
            break
        pos[best] += 1
        lo = best_key >> _SHIFT
        hi = best_key & _LOW
        if have and lo <= cur_hi + 1:
            if hi > cur_hi:
                cur_hi = hi
        else:
            if have:
                out[m_out] = (cur_lo << _SHIFT) | cur_hi
                m_out += 1
            cur_lo, cur_hi, have = lo, hi, True
    if have:
        out[m_out] = (cur_lo << _SHIFT) | cur_hi
        m_out += 1
    return m_out


@nb.njit(cache=True, nogil=True)
def advance_rows(
    q0: int,
    q1: int,
    n: int,
    causal: bool,
    start_tn: np.ndarray,
    count_tn: np.ndarray,
    stride_t: np.ndarray,
    identity: bool,
    prev_ptr: np.ndarray,
    prev_keys: np.ndarray,
    store: bool,
    limit: int,
):
    """Reach sets of queries q0..q1−1 after one more step.

    R_next[q] = ∪ over keys j of the step's row q of R_prev[j] (R_prev = identity when
    ``identity``). Returns (covered, miss_q, miss_k, ptr, keys): target pairs reached in these
    rows, the first row with a missing target key and that key (−1 when none), and — when
    ``store`` — the merged intervals of every row (ptr has q1 − q0 + 1 entries from 0). A row's
    gather buffer grows to ``limit`` keys, then is compacted (merged in place) as it fills.
    """
    num_terms = stride_t.size
    buf = np.empty(min(_INITIAL, max(limit, 2)), np.int64)
    merged = np.empty(_INITIAL, np.int64)
    seg = np.zeros(num_terms + 1, np.int64)
    rows = q1 - q0
    out_ptr = np.zeros(rows + 1, np.int64)
    out_keys = np.empty(_INITIAL if store else 0, np.int64)
    used = 0
    covered = np.int64(0)
    miss_q = -1
    miss_k = -1
    for q in range(q0, q1):
        m = 0
        in_order = True  # each term's intervals arrive sorted
        compacted = False
        for t in range(num_terms):
            seg[t] = m
            c = count_tn[t, q]
            s = start_tn[t, q]
            st = stride_t[t]
            if c <= 0:
                continue
            last = np.int64(-1)
            if identity and st == 1:
                buf, m, compacted = _room(buf, m, limit, compacted)
                buf[m] = _pack(s, s + c - 1)
                m += 1
            elif identity:
                for i in range(c):
                    j = s + i * st
                    buf, m, compacted = _room(buf, m, limit, compacted)
                    buf[m] = _pack(j, j)
                    m += 1
            else:
                for i in range(c):
                    j = s + i * st
                    for e in range(prev_ptr[j], prev_ptr[j + 1]):
                        key = prev_keys[e]
                        if key < last:
                            in_order = False
                        last = key
                        if m == buf.size:
                            buf, m, compacted = _room(buf, m, limit, compacted)
                        buf[m] = key
                        m += 1
        seg[num_terms] = m
        if merged.size < m:
            merged = np.empty(max(m, 2 * merged.size), np.int64)
        if compacted or not in_order:
            merged[:m] = buf[:m]
            k = _compact(merged, m)
        else:
            k = _kway_merge(buf, seg, merged)
        # coverage of the target keys 0..lim by the k disjoint, non-adjacent intervals
        lim = q if causal else n - 1
        for i in range(k):
            lo = merged[i] >> _SHIFT
            if lo > lim:
                break
            hi = min(merged[i] & _LOW, lim)
            covered += hi - lo + 1
        if miss_q < 0:
            if k == 0 or (merged[0] >> _SHIFT) > 0:
                miss_q, miss_k = q, 0
            elif (merged[0] & _LOW) < lim:
                miss_q, miss_k = q, (merged[0] & _LOW) + 1
        if store:
            if used + k > out_keys.size:
                grown = np.empty(max(2 * out_keys.size, used + k), np.int64)
                grown[:used] = out_keys[:used]
                out_keys = grown
            out_keys[used : used + k] = merged[:k]
            used += k
            out_ptr[q - q0 + 1] = used
    return covered, miss_q, miss_k, out_ptr, out_keys[:used].copy()


@nb.njit(cache=True, nogil=True)
def rule_block_counts(
    start_tn: np.ndarray, count_tn: np.ndarray, stride_t: np.ndarray, n: int, block: int
) -> np.ndarray:
    """Entries of a disjoint rule in each (query block, key block) of side ``block``: per row
    and term, the progression's keys in each key block it spans, by arithmetic."""
    nb_ = (n + block - 1) // block
    out = np.zeros((nb_, nb_), np.int64)
    for q in range(n):
        row = q // block
        for t in range(stride_t.size):
            c = count_tn[t, q]
            if c <= 0:
                continue
            a = start_tn[t, q]
            st = stride_t[t]
            last = a + (c - 1) * st
            for b in range(a // block, last // block + 1):
                lo = max(a, b * block)
                hi = min(last, b * block + block - 1)
                i_lo = (lo - a + st - 1) // st
                i_hi = (hi - a) // st
                if i_hi >= i_lo:
                    out[row, b] += i_hi - i_lo + 1
    return out


@nb.njit(cache=True, nogil=True)
def _row_merged(start_tn, count_tn, stride_t, q, buf, merged, seg):
    """Row q of a rule as merged intervals (a stride-1 term is one interval); returns the
    possibly grown buffers and the number k of intervals in merged[:k]."""
    num_terms = stride_t.size
    m = 0
    for t in range(num_terms):
        seg[t] = m
        c = count_tn[t, q]
        if c <= 0:
            continue
        s = start_tn[t, q]
        st = stride_t[t]
        pieces = 1 if st == 1 else c
        if m + pieces > buf.size:
            grown = np.empty(max(2 * buf.size, m + pieces), np.int64)
            grown[:m] = buf[:m]
            buf = grown
        if st == 1:
            buf[m] = _pack(s, s + c - 1)
            m += 1
        else:
            for i in range(c):
                buf[m] = _pack(s + i * st, s + i * st)
                m += 1
    seg[num_terms] = m
    if merged.size < m:
        merged = np.empty(max(m, 2 * merged.size), np.int64)
    return buf, merged, _kway_merge(buf, seg, merged)  # each term's keys ascend


@nb.njit(cache=True, nogil=True)
def union_degrees(
    start_tn: np.ndarray, count_tn: np.ndarray, stride_t: np.ndarray, n: int
) -> tuple[np.ndarray, np.int64]:
    """Keys per row of a rule whose terms may overlap, and its entries with key > query."""
    deg = np.zeros(n, np.int64)
    violations = np.int64(0)
    buf = np.empty(_INITIAL, np.int64)
    merged = np.empty(_INITIAL, np.int64)
    seg = np.zeros(stride_t.size + 1, np.int64)
    for q in range(n):
        buf, merged, k = _row_merged(start_tn, count_tn, stride_t, q, buf, merged, seg)
        for i in range(k):
            lo = merged[i] >> _SHIFT
            hi = merged[i] & _LOW
            deg[q] += hi - lo + 1
            if hi > q:
                violations += hi - max(lo, q + 1) + 1
    return deg, violations


@nb.njit(cache=True, nogil=True)
def union_block_counts(
    start_tn: np.ndarray, count_tn: np.ndarray, stride_t: np.ndarray, n: int, block: int
) -> np.ndarray:
    """:func:`rule_block_counts` for a rule whose terms may overlap (rows merged first)."""
    nb_ = (n + block - 1) // block
    out = np.zeros((nb_, nb_), np.int64)
    buf = np.empty(_INITIAL, np.int64)
    merged = np.empty(_INITIAL, np.int64)
    seg = np.zeros(stride_t.size + 1, np.int64)
    for q in range(n):
        buf, merged, k = _row_merged(start_tn, count_tn, stride_t, q, buf, merged, seg)
        for i in range(k):
            lo = merged[i] >> _SHIFT
            hi = merged[i] & _LOW
            for b in range(lo // block, hi // block + 1):
                out[q // block, b] += min(hi, b * block + block - 1) - max(lo, b * block) + 1
    return out
