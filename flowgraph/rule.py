"""A step given by a rule: each query's keys are a union of a few arithmetic progressions.

Every published pattern has rows of this shape (a window is a progression of stride 1, strided
columns one of stride l, summary columns c of stride l, a hub a progression of one key), so a
:class:`StepRule` describes a step in O(n·T) numbers where its CSR holds all n·√n entries. The
interval engine of :func:`flowgraph.check` reads rules directly; ``to_csr`` materialises the step
in bounded row chunks for everything else.

Row q of a rule with terms t = 0..T−1 holds the keys

    start_tn[t, q] + i · stride_t[t]   for 0 ≤ i < count_tn[t, q].

``disjoint`` promises that no key appears in two terms of a row (the constructors' rules are
built so); counts then come from arithmetic. A union of rules is not disjoint: its rows are
merged as intervals to be counted (compiled, no CSR).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["StepRule"]

_ROWS_PER_CHUNK_ENTRIES = 1 << 24  # entries materialised at once by to_csr / the union counts


def _as_terms(values: np.ndarray | Sequence[np.ndarray], n: int, name: str) -> np.ndarray:
    """(T, n) int64, broadcast views kept as such (a term shared by every row costs nothing)."""
    arrays = [np.asarray(v) for v in (values if isinstance(values, Sequence) else [values])]
    if not arrays:
        raise ValueError(f"{name} must hold at least one term")
    out = []
    for a in arrays:
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{name} must hold integer arrays, got dtype {a.dtype}")
        a = np.broadcast_to(a.astype(np.int64, copy=False), (n,))
        out.append(a)
    if all(a.strides == (0,) for a in out):
        return np.broadcast_to(np.stack([a[:1] for a in out]), (len(out), n))
    return np.stack(out)


class StepRule:
    """One step as a union of per-row arithmetic progressions (see the module docstring)."""

    __slots__ = ("_count_tn", "_degrees", "_disjoint", "_keys", "_n", "_start_tn", "_stride_t")

    def __init__(
        self,
        n: int,
        start: np.ndarray | Sequence[np.ndarray],
        count: np.ndarray | Sequence[np.ndarray],
        stride: int | Sequence[int],
        *,
        disjoint: bool = True,
        keys: int | None = None,
    ) -> None:
        keys = n if keys is None else int(keys)  # fewer keys than queries: compressed keys
        start_tn = _as_terms(start, n, "start")
        count_tn = np.maximum(_as_terms(count, n, "count"), 0)
        stride_t = np.atleast_1d(np.asarray(stride, dtype=np.int64))
        num_terms = start_tn.shape[0]
        if count_tn.shape[0] != num_terms or stride_t.shape != (num_terms,):
            raise ValueError(
                f"start, count and stride must have one entry per term, got "
                f"{start_tn.shape[0]}, {count_tn.shape[0]} and {stride_t.size}"
            )
        if np.any(stride_t < 1):
            raise ValueError(f"stride must be ≥ 1 in every term, got {stride_t.tolist()}")
        used_tn = count_tn > 0
        last_tn = start_tn + (count_tn - 1) * stride_t[:, None]
        if np.any(used_tn & ((start_tn < 0) | (last_tn >= keys))):
            raise ValueError(f"every key of a rule must lie in 0..{keys - 1}")
        self._n = n
        self._keys = keys
        self._start_tn = start_tn
        self._count_tn = count_tn
        self._stride_t = stride_t
        self._disjoint = bool(disjoint)
        self._degrees: np.ndarray | None = None
        for arr in (start_tn, count_tn, stride_t):
            if arr.flags.writeable:
                arr.flags.writeable = False

    # --- fields -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self._n

    @property
    def keys(self) -> int:
        """Number of keys (n unless the keys are compressed)."""
        return self._keys

    @property
    def num_terms(self) -> int:
        return int(self._stride_t.size)

    @property
    def disjoint(self) -> bool:
        return self._disjoint

    def terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contiguous (T, n) start and count and (T,) stride arrays, as the kernels read them."""
        return (
            np.ascontiguousarray(self._start_tn),
            np.ascontiguousarray(self._count_tn),
            self._stride_t,
        )

    def nbytes(self) -> int:
        """Memory the kernels need for this rule's contiguous term arrays."""
        return 2 * 8 * self.num_terms * self._n

    @staticmethod
    def union(rules: Sequence[StepRule]) -> StepRule:
        """The step whose rows are the unions of the rules' rows (not disjoint in general)."""
        n, keys = rules[0].n, rules[0].keys
        if len(rules) == 1:
            return rules[0]
        if any(r.keys != keys for r in rules):
            raise ValueError("a union of rules needs every rule to have the same keys")
        starts = [r._start_tn[t] for r in rules for t in range(r.num_terms)]
        counts = [r._count_tn[t] for r in rules for t in range(r.num_terms)]
        strides = [int(s) for r in rules for s in r._stride_t]
        return StepRule(n, starts, counts, strides, disjoint=False, keys=keys)

    # --- counts -------------------------------------------------------------------------------
    def degrees(self) -> np.ndarray:
        """Keys per query, (n,) int64."""
        if self._degrees is None:
            if self._disjoint:
                deg = self._count_tn.sum(axis=0, dtype=np.int64)
            else:
                deg = self._union_counts()[0]
            deg.flags.writeable = False
            self._degrees = deg
        return self._degrees

    def nnz(self) -> int:
        return int(self.degrees().sum())

    def entries_bound(self) -> int:
        """An upper bound of nnz in O(T·n), exact when the rule is disjoint."""
        if self._disjoint:
            return self.nnz()
        return int(self._count_tn.sum(dtype=np.int64))

    def causality_violations(self) -> int:
        """Entries with key > query."""
        if not self._disjoint:
            return int(self._union_counts()[1])
        return self.violations_above(np.arange(self._n, dtype=np.int64))[0]

    def _allowed_counts(self, limit_n: np.ndarray) -> list[np.ndarray]:
        """Per term, how many of its keys are ≤ limit_n[q] (keys start + i·stride ≤ limit for
        i ≤ (limit − start) // stride)."""
        out = []
        for t in range(self.num_terms):
            start, count = self._start_tn[t], self._count_tn[t]
            upto = np.where(start <= limit_n, (limit_n - start) // self._stride_t[t] + 1, 0)
            out.append(np.minimum(count, upto))
        return out

    def violations_above(self, limit_n: np.ndarray) -> tuple[int, tuple[int, int] | None]:
        """Entries whose key is above ``limit_n[q]`` (for a causal square step limit = q), and
        the first one (smallest query, then smallest key) or None. Counts repeated keys of a
        union once per term."""
        total, witness = 0, None
        allowed = self._allowed_counts(limit_n)
        for t in range(self.num_terms):
            over_n = self._count_tn[t] - allowed[t]
            total += int(over_n.sum())
            rows = np.flatnonzero(over_n > 0)
            if rows.size:
                q = int(rows[0])
                key = int(self._start_tn[t, q] + allowed[t][q] * self._stride_t[t])
                if witness is None or (q, key) < witness:
                    witness = (q, key)
        return total, witness

    def clipped(self, limit_n: np.ndarray) -> StepRule:
        """The rule without the keys above ``limit_n[q]`` in row q (the step without its leaks)."""
        return StepRule(
            self._n, list(self._start_tn), self._allowed_counts(limit_n), list(self._stride_t),
            disjoint=self._disjoint, keys=self._keys,
        )  # fmt: skip

    def _union_counts(self) -> tuple[np.ndarray, int]:
        from flowgraph._interval_kernels import union_degrees  # numba: imported on first use

        deg, violations = union_degrees(*self.terms(), self._n)
        return deg, int(violations)

    # --- materialising ------------------------------------------------------------------------
    def _row_chunks(self) -> Iterator[tuple[int, int]]:
        deg_n = self._count_tn.sum(axis=0, dtype=np.int64)  # an upper bound when not disjoint
        bounds = np.cumsum(deg_n)
        q0 = 0
        while q0 < self._n:
            base = bounds[q0 - 1] if q0 else 0
            q1 = int(np.searchsorted(bounds, base + _ROWS_PER_CHUNK_ENTRIES, side="right"))
            q1 = min(self._n, max(q1, q0 + 1))
            yield q0, q1
            q0 = q1

    def _chunk_csr(self, q0: int, q1: int) -> sp.csr_array:
        rows, cols = [], []
        for t in range(self.num_terms):
            count_r = self._count_tn[t, q0:q1]
            total = int(count_r.sum())
            if total == 0:
                continue
            ptr = np.zeros(q1 - q0 + 1, dtype=np.int64)
            np.cumsum(count_r, out=ptr[1:])
            row_e = np.repeat(np.arange(q1 - q0, dtype=np.int64), count_r)
            offset_e = np.arange(total, dtype=np.int64) - ptr[row_e]
            rows.append(row_e)
            cols.append(self._start_tn[t, q0:q1][row_e] + self._stride_t[t] * offset_e)
        if not rows:
            return sp.csr_array((q1 - q0, self._keys), dtype=np.bool_)
        row_e, col_e = np.concatenate(rows), np.concatenate(cols)
        data = np.ones(row_e.size, dtype=np.bool_)
        chunk = sp.csr_array((data, (row_e, col_e)), shape=(q1 - q0, self._keys))
        chunk.sum_duplicates()  # also sorts the indices
        return chunk

    def _csr_chunks(self) -> Iterator[tuple[int, sp.csr_array]]:
        for q0, q1 in self._row_chunks():
            yield q0, self._chunk_csr(q0, q1)

    def to_csr(self) -> sp.csr_array:
        """The step as a canonical bool CSR (sorted, int32 indices), built in row chunks."""
        indptr = np.zeros(self._n + 1, dtype=np.int64)
        pieces = []
        for q0, chunk in self._csr_chunks():
            indptr[q0 + 1 : q0 + 1 + chunk.shape[0]] = np.diff(chunk.indptr)
            pieces.append(chunk.indices.astype(np.int32))
        np.cumsum(indptr, out=indptr)
        indices = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        data = np.ones(indices.size, dtype=np.bool_)
        return sp.csr_array((data, indices, indptr), shape=(self._n, self._keys))
