"""Compressed keys: a key that stands for a span of tokens (NSA's compression branch, pooled
memories, Compressive Transformers, downsampled keys).

A compressed step has m keys for n queries; :class:`KeySpans` says which tokens key j
summarises, ``first_m[j] ≤ t ≤ last_m[j]``. Information flows from every token of a key's span
into whoever attends the key, so for reachability the step is its *flow view*: the square n×n
step in which query q reads token t iff q attends a key whose span holds t. Attending a key whose
span holds a token after the query is a causality violation (the future token is the witness).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.rule import StepRule

__all__ = ["KeySpans"]


class KeySpans:
    """The token span of each of m compressed keys over n tokens: key j is tokens
    ``first_m[j]..last_m[j]`` (inclusive). Build with :meth:`blocks` or :meth:`from_array`.

    Examples
    --------
    >>> from flowgraph.keys import KeySpans
    >>> s = KeySpans.blocks(10, size=4)           # keys [0, 3], [4, 7], [8, 9]
    >>> s.m, s.spans().tolist()
    (3, [[0, 3], [4, 7], [8, 9]])
    >>> KeySpans.blocks(10, size=4, stride=2).overlapping   # NSA-style: l = 4, d = 2
    True
    """

    __slots__ = ("_first_m", "_last_m", "_n", "_params")

    def __init__(
        self, n: int, first_m: np.ndarray, last_m: np.ndarray, params: dict[str, Any]
    ) -> None:
        self._n = n
        self._first_m = np.ascontiguousarray(first_m, dtype=np.int64)
        self._last_m = np.ascontiguousarray(last_m, dtype=np.int64)
        for arr in (self._first_m, self._last_m):
            arr.flags.writeable = False
        self._params = params

    @classmethod
    def blocks(cls, n: int, size: int, stride: int | None = None, m: int | None = None) -> KeySpans:
        """Key j summarises tokens ``j·stride .. j·stride + size − 1`` (cut to n − 1).

        ``stride`` defaults to ``size`` (keys tile the tokens); ``stride < size`` overlaps them
        (NSA: size l = 32, stride d = 16). ``m`` defaults to every key whose span starts before n.
        """
        n = _validate.positions("n", n)
        size = _validate.int_in_range("key_span", size, 1, n, f"a span of 1..n tokens, n={n}")
        stride = (
            size
            if stride is None
            else _validate.int_in_range("key_stride", stride, 1, n, f"1 ≤ stride ≤ n, n={n}")
        )
        most = (n - 1) // stride + 1
        m = most if m is None else _validate.int_in_range(
            "kv_len", m, 1, most,
            f"key j of span {size} and stride {stride} starts at token j·{stride}, which must "
            f"be < n={n}",
        )  # fmt: skip
        first_m = np.arange(m, dtype=np.int64) * stride
        last_m = np.minimum(first_m + size - 1, n - 1)
        return cls(n, first_m, last_m, {"size": size, "stride": stride})

    @classmethod
    def from_array(cls, spans: Any, n: int, *, overlapping: bool = False) -> KeySpans:
        """Spans from an (m, 2) integer array of inclusive ``[first, last]`` token positions.

        Spans must lie in 0..n−1 with first ≤ last; spans that share a token are refused unless
        ``overlapping=True`` says they are meant to.
        """
        n = _validate.positions("n", n)
        arr = np.asarray(spans)
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
            raise ValueError(f"key_span must be an (m, 2) array of [first, last], got {arr.shape}")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"key_span must hold integers, got dtype {arr.dtype}")
        first_m, last_m = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        bad = np.flatnonzero((first_m < 0) | (last_m >= n) | (first_m > last_m))
        if bad.size:
            j = int(bad[0])
            raise ValueError(
                f"key_span[{j}] = [{first_m[j]}, {last_m[j]}] must satisfy "
                f"0 ≤ first ≤ last ≤ n−1 = {n - 1}"
            )
        overlapping = _validate.flag("overlapping", overlapping)
        if not overlapping:
            order = np.argsort(first_m, kind="stable")
            clash = np.flatnonzero(first_m[order][1:] <= last_m[order][:-1])
            if clash.size:
                a, b = int(order[clash[0]]), int(order[clash[0] + 1])
                raise ValueError(
                    f"key_span[{a}] = [{first_m[a]}, {last_m[a]}] and key_span[{b}] = "
                    f"[{first_m[b]}, {last_m[b]}] share tokens; pass overlapping=True if keys "
                    "are meant to overlap"
                )
        return cls(n, first_m, last_m, {"spans": "explicit"})

    # --- fields -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of tokens."""
        return self._n

    @property
    def m(self) -> int:
        """Number of keys."""
        return int(self._first_m.size)

    @property
    def first_m(self) -> np.ndarray:
        return self._first_m

    @property
    def last_m(self) -> np.ndarray:
        return self._last_m

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def spans(self) -> np.ndarray:
        """(m, 2) int64 ``[first, last]`` per key."""
        return np.stack([self._first_m, self._last_m], axis=1)

    @property
    def overlapping(self) -> bool:
        """Some token belongs to two keys."""
        order = np.argsort(self._first_m, kind="stable")
        return bool(np.any(self._first_m[order][1:] <= self._last_m[order][:-1]))

    @property
    def chained(self) -> bool:
        """Spans move forward and each key's span meets or overlaps the next one's, so a run of
        consecutive keys a..b covers exactly the tokens first[a]..last[b]."""
        f, lst = self._first_m, self._last_m
        return bool(
            np.all(np.diff(f) >= 0) and np.all(np.diff(lst) >= 0) and np.all(f[1:] <= lst[:-1] + 1)
        )

    # --- derived steps ------------------------------------------------------------------------
    def membership(self) -> sp.csr_array:
        """(m, n) bool CSR: row j holds the tokens of key j."""
        size_m = self._last_m - self._first_m + 1
        indptr = np.zeros(self.m + 1, dtype=np.int64)
        np.cumsum(size_m, out=indptr[1:])
        row_e = np.repeat(np.arange(self.m), size_m)
        tokens_e = self._first_m[row_e] + np.arange(indptr[-1]) - indptr[row_e]
        data = np.ones(tokens_e.size, dtype=np.bool_)
        return sp.csr_array((data, tokens_e.astype(np.int32), indptr), shape=(self.m, self._n))

    def flow_rule(self, rule: StepRule) -> StepRule | None:
        """The flow view of a key rule as a square token rule, or None when the spans are not
        :attr:`chained` or a term steps over keys (then the flow view is built as a CSR)."""
        start_tn, count_tn, stride_t = rule.terms()
        if not self.chained or np.any(stride_t != 1):
            return None
        used_tn = count_tn > 0
        first_tn = np.where(used_tn, self._first_m[np.where(used_tn, start_tn, 0)], 0)
        end_tn = np.where(used_tn, start_tn + count_tn - 1, 0)
        last_tn = np.where(used_tn, self._last_m[end_tn], -1)
        # runs of keys far apart can still share tokens when spans overlap: then not disjoint
        return StepRule(
            rule.n, list(first_tn), list(last_tn - first_tn + 1), [1] * rule.num_terms,
            disjoint=rule.disjoint and not self.overlapping,
        )  # fmt: skip

    def flow_csr(self, keys_nm: sp.csr_array) -> sp.csr_array:
        """The flow view of an (n, m) key mask: query q reads token t iff it attends a key whose
        span holds t."""
        out = (keys_nm.astype(np.int32) @ self.membership().astype(np.int32)) > 0
        return sp.csr_array(out, dtype=np.bool_)

    def future_token(self, query: int, key: int) -> int:
        """The first token after ``query`` in key ``key``'s span (a causality witness)."""
        return max(int(self._first_m[key]), query + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self._n, "spans": self.spans().tolist()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeySpans):
            return NotImplemented
        return (
            self._n == other._n
            and np.array_equal(self._first_m, other._first_m)
            and np.array_equal(self._last_m, other._last_m)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KeySpans(n={self._n}, m={self.m}, {self._params})"
