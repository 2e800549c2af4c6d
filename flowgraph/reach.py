"""Reachability through the steps of a pattern, on packed bitsets.

``R_s[q]`` is the set of keys whose information has reached position q after s steps, stored as a
row of n bits (uint64 words, bit k of row q is word k//64, bit k%64). ``R_0`` is the identity and
``R_{s+1}[q] = OR over keys a of step s's row q of R_s[a]``: a boolean sparse × dense product.

A plain product costs nnz(step)·n/64 word operations. The published patterns are far cheaper
than that because their rows nest: a causal strided row is the row l positions earlier plus one
key, a summary row is every other summary row, an LTR row is the summary columns plus the
diagonal. Rows are therefore visited shortest first and each row reuses an already computed row
whose key set equals its own or its own minus one key (the first, the last or the diagonal),
costing one OR instead of one per key. Anything else falls back to the plain OR over its keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.pattern import Pattern

__all__ = ["Reach", "pack_rows", "reach_bytes", "reachability", "unpack_rows"]

_WORD = 64
_GATHER_ROWS = 256  # rows gathered at once in the fallback OR: bounds its temporary memory
_PACK_ROWS = 1024  # rows densified at once when packing a mask


def words_for(n: int) -> int:
    return -(-n // _WORD)


def reach_bytes(n: int) -> int:
    """Peak memory of the packed engine at n: two n×n bit matrices, a densified block of rows
    while packing, and a few chunks of target rows."""
    row = words_for(n) * 8
    return 2 * n * row + _PACK_ROWS * n + 4 * 4096 * row


def pack_rows(dense_rn: np.ndarray) -> np.ndarray:
    """Pack a (rows, n) bool array into (rows, ⌈n/64⌉) uint64 words, little bit order."""
    rows, n = dense_rn.shape
    packed_rb = np.packbits(dense_rn, axis=1, bitorder="little")
    out_rb = np.zeros((rows, words_for(n) * 8), dtype=np.uint8)
    out_rb[:, : packed_rb.shape[1]] = packed_rb
    return out_rb.view("<u8")


def unpack_rows(words_rw: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: (rows, W) uint64 → (rows, n) bool."""
    bits_rb = np.unpackbits(
        np.ascontiguousarray(words_rw).view(np.uint8), axis=1, bitorder="little"
    )
    return bits_rb[:, :n].astype(np.bool_)


def _pack_mask(mask: sp.csr_array) -> np.ndarray:
    n = mask.shape[0]
    out_nw = np.empty((n, words_for(n)), dtype="<u8")
    for q0 in range(0, n, _PACK_ROWS):
        q1 = min(n, q0 + _PACK_ROWS)
        out_nw[q0:q1] = pack_rows(mask[q0:q1].toarray())
    return out_nw


def _or_rows(reach_nw: np.ndarray, keys: np.ndarray, out_w: np.ndarray) -> None:
    """out_w = OR of reach_nw[keys], gathering at most _GATHER_ROWS rows at a time."""
    np.bitwise_or.reduce(reach_nw[keys[:_GATHER_ROWS]], axis=0, out=out_w)
    for i in range(_GATHER_ROWS, keys.size, _GATHER_ROWS):
        out_w |= np.bitwise_or.reduce(reach_nw[keys[i : i + _GATHER_ROWS]], axis=0)


def advance(reach_nw: np.ndarray | None, mask: sp.csr_array) -> np.ndarray:
    """One step: the packed R_{s+1} from R_s (None stands for the identity R_0)."""
    if reach_nw is None:
        return _pack_mask(mask)
    out_nw = np.zeros_like(reach_nw)
    indptr, indices = mask.indptr, mask.indices
    itemsize = indices.itemsize
    seen: dict[bytes, int] = {}  # key set (as bytes) → a row of out_nw already holding its OR
    for q in np.argsort(np.diff(indptr), kind="stable").tolist():
        a, b = int(indptr[q]), int(indptr[q + 1])
        if a == b:
            continue
        keys = indices[a:b]
        key = keys.tobytes()
        hit = seen.get(key)
        if hit is not None:
            out_nw[q] = out_nw[hit]
        elif b - a == 1:
            out_nw[q] = reach_nw[keys[0]]
        else:
            diag = int(np.searchsorted(keys, q))
            drops = (b - a - 1, 0, diag) if diag < b - a and keys[diag] == q else (b - a - 1, 0)
            for i in drops:
                hit = seen.get(key[: i * itemsize] + key[(i + 1) * itemsize :])
                if hit is not None:
                    np.bitwise_or(out_nw[hit], reach_nw[keys[i]], out=out_nw[q])
                    break
            else:
                _or_rows(reach_nw, keys, out_nw[q])
        seen[key] = q
    return out_nw


def target_rows(n: int, causal: bool, q0: int, q1: int) -> np.ndarray:
    """Packed target set of queries q0..q1−1: keys k ≤ q when causal, all n keys otherwise."""
    w = words_for(n)
    limit_r = (np.arange(q0, q1) + 1) if causal else np.full(q1 - q0, n)
    word_start_w = np.arange(w) * _WORD
    bits_rw = np.clip(limit_r[:, None] - word_start_w[None, :], 0, _WORD).astype(np.uint64)
    # (1 << bits) − 1 without overflowing at bits = 64
    full = np.uint64(0xFFFFFFFFFFFFFFFF)
    shifted = np.left_shift(np.uint64(1), np.minimum(bits_rw, np.uint64(63)))
    return np.where(bits_rw == 64, full, shifted - np.uint64(1)).astype("<u8")


@dataclass(frozen=True)
class Reach:
    """Reachability summary of a pattern: target pairs reached after each step, and the first
    missing pair (smallest query, then smallest key) after the last step."""

    target_pairs: int
    reached: tuple[int, ...]
    witness: tuple[int, int] | None

    @property
    def missing_pairs(self) -> int:
        return self.target_pairs - self.reached[-1]


def _chunks(n: int, size: int = 4096) -> Iterator[tuple[int, int]]:
    for q0 in range(0, n, size):
        yield q0, min(n, q0 + size)


def reach_summary(pattern: Pattern) -> Reach:
    """Count the target pairs reached after each step and find a witness of missing information.

    Memory: two packed n×n bit matrices (2·n²/8 bytes) plus the steps; time: see the module doc.
    """
    n, causal = pattern.n, pattern.causal
    target = n * (n + 1) // 2 if causal else n * n
    reach_nw: np.ndarray | None = None
    reached: list[int] = []
    for mask in pattern.steps:
        reach_nw = advance(reach_nw, mask)
        if causal:
            count = 0
            for q0, q1 in _chunks(n):
                hit_rw = reach_nw[q0:q1] & target_rows(n, causal, q0, q1)
                count += int(np.bitwise_count(hit_rw).sum())
        else:  # every key is a target and the padding bits past n are never set
            count = int(np.bitwise_count(reach_nw).sum(dtype=np.int64))
        reached.append(count)
    assert reach_nw is not None
    witness = None
    if reached[-1] < target:
        for q0, q1 in _chunks(n):
            miss_rw = target_rows(n, causal, q0, q1) & ~reach_nw[q0:q1]
            rows = np.flatnonzero(miss_rw.any(axis=1))
            if rows.size:
                q = q0 + int(rows[0])
                k = int(np.flatnonzero(unpack_rows(miss_rw[rows[:1]], n)[0])[0])
                witness = (q, k)
                break
    return Reach(target, tuple(reached), witness)


def reachability(
    pattern: Pattern, *, max_n: int = 4096, max_bytes: int = _validate.MEMORY_LIMIT_BYTES
) -> list[np.ndarray]:
    """Dense R_s for s = 1..num_steps: ``R[q, k]`` is True iff k's information reached q.

    Meant for pictures and small patterns; refuses n > max_n (the packed engine behind
    :func:`flowgraph.check` has no such limit) and, since it returns num_steps arrays of n² bools,
    more than ``max_bytes`` in all.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    max_n = _validate.positive_int("max_n", max_n)
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    need = pattern.num_steps * pattern.n**2 + reach_bytes(pattern.n)
    _validate.memory(
        f"reachability() of {pattern.num_steps} steps at n={pattern.n}", need, max_bytes
    )
    if pattern.n > max_n:
        raise ValueError(
            f"reachability() builds dense n×n arrays; n={pattern.n} is above max_n={max_n}. "
            "Use flowgraph.check for large patterns or pass a larger max_n"
        )
    out: list[np.ndarray] = []
    reach_nw: np.ndarray | None = None
    for mask in pattern.steps:
        reach_nw = advance(reach_nw, mask)
        out.append(unpack_rows(reach_nw, pattern.n))
    return out
