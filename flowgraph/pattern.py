"""The :class:`Pattern` data object: a named sequence of boolean attention masks (steps).

Mask convention everywhere: ``steps[s][q, k]`` is True iff query ``q`` attends key ``k`` at step
``s``; positions are 0-based and a causal pattern keeps ``k ≤ q``. Steps are stored as sorted
``scipy.sparse.csr_array`` of bool whose buffers are read-only, so a Pattern never changes after it
is built. A pattern given by a rule (every library constructor) keeps its steps as
:class:`flowgraph.rule.StepRule` and builds each CSR only when it is first asked for: that is what
lets :func:`flowgraph.check` run at a million tokens, where the CSR would hold 10⁹ entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.keys import KeySpans
from flowgraph.rule import StepRule

__all__ = ["DENSE_LIMIT_BYTES", "STEP_BYTES_PER_ENTRY", "Pattern"]

DENSE_LIMIT_BYTES = 256 * 2**20  # refuse a dense n×n copy above this unless asked for
# Peak bytes per entry while a rule's CSR is built in row chunks and kept (int32 index, bool
# data, and the chunk temporaries amortised), measured with tracemalloc: 5–7.
STEP_BYTES_PER_ENTRY = 8


_fmt_bytes = _validate.fmt_bytes


def as_step(mask: Any, n: int | None, argname: str) -> sp.csr_array:
    """Turn a dense bool array or scipy sparse matrix into a canonical read-only bool CSR step.

    ``n`` is the size every step must have (None: take it from the first mask).
    """
    if sp.issparse(mask):
        if mask.dtype != np.bool_:
            raise TypeError(f"{argname} must be boolean, got a sparse matrix of dtype {mask.dtype}")
        shape = mask.shape
        csr = sp.csr_array(mask, dtype=np.bool_, copy=True)
    else:
        arr = np.asarray(mask)
        if arr.dtype != np.bool_:
            raise TypeError(
                f"{argname} must be a boolean array, got dtype {arr.dtype}; "
                "convert with mask.astype(bool) if 0/1 values are meant"
            )
        shape = arr.shape
        if arr.ndim != 2:
            raise ValueError(f"{argname} must be 2-D (n, n), got shape {shape}")
        csr = sp.csr_array(arr)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{argname} must be square (n, n), got shape {tuple(shape)}")
    if n is not None and shape[0] != n:
        raise ValueError(f"{argname} has n={shape[0]} but the pattern has n={n}; all steps share n")
    if shape[0] == 0:
        raise ValueError(f"{argname} must have n ≥ 1, got shape {tuple(shape)}")
    csr.eliminate_zeros()
    csr.sum_duplicates()
    csr.sort_indices()
    return freeze(csr)


def as_key_step(mask: Any, n: int, m: int, argname: str) -> sp.csr_array:
    """An (n, m) bool mask of a compressed step (n queries, m keys) as a canonical CSR."""
    if sp.issparse(mask):
        if mask.dtype != np.bool_:
            raise TypeError(f"{argname} must be boolean, got a sparse matrix of dtype {mask.dtype}")
        csr = sp.csr_array(mask, dtype=np.bool_, copy=True)
    else:
        arr = np.asarray(mask)
        if arr.dtype != np.bool_:
            raise TypeError(f"{argname} must be a boolean array, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{argname} must be 2-D (n, m), got shape {arr.shape}")
        csr = sp.csr_array(arr)
    if csr.shape != (n, m):
        raise ValueError(
            f"{argname} must have shape (n, m) = ({n}, {m}): n queries and the m keys of its "
            f"key_spans, got {tuple(csr.shape)}"
        )
    csr.eliminate_zeros()
    csr.sum_duplicates()
    csr.sort_indices()
    return freeze(csr)


def _spans_list(key_spans: Any, num_steps: int, n: int) -> tuple[KeySpans | None, ...]:
    if key_spans is None:
        return (None,) * num_steps
    if isinstance(key_spans, KeySpans) or not isinstance(key_spans, Sequence):
        raise TypeError("key_spans must be a sequence with one KeySpans or None per step")
    if len(key_spans) != num_steps:
        raise ValueError(
            f"key_spans must have one entry per step ({num_steps}), got {len(key_spans)}"
        )
    for i, spans in enumerate(key_spans):
        if spans is not None and not isinstance(spans, KeySpans):
            raise TypeError(
                f"key_spans[{i}] must be a KeySpans or None, got {type(spans).__name__}"
            )
        if spans is not None and spans.n != n:
            raise ValueError(f"key_spans[{i}] covers n={spans.n} tokens but the pattern has n={n}")
    return tuple(key_spans)


def freeze(csr: sp.csr_array) -> sp.csr_array:
    """Make the buffers of a canonical bool CSR read-only (and its indices compact int32)."""
    if csr.nnz < 2**31 - 1 and csr.indices.dtype != np.int32:
        csr = sp.csr_array(
            (csr.data, csr.indices.astype(np.int32), csr.indptr.astype(np.int64)),
            shape=csr.shape,
        )
    for buf in (csr.data, csr.indices, csr.indptr):
        buf.flags.writeable = False
    return csr


def _int_array(values: Any, field: str) -> np.ndarray:
    """A 1-D int64 array from JSON numbers; 0.5 or True is refused, never truncated."""
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{field} must be a list of integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


class Pattern:
    """An immutable sparse attention pattern: ``num_steps`` boolean n×n masks applied in order.

    Build one with a constructor (:func:`flowgraph.strided`, :func:`flowgraph.fixed`, ...,
    :func:`flowgraph.from_masks`) rather than directly. Two patterns compare equal when they have
    the same ``n``, ``causal`` flag and steps; the name and params are labels only.

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.strided(16, stride=4)
    >>> p
    Pattern('strided', n=16, causal=True, steps=2, edges=(70, 40), params={'stride': 4})
    >>> p.dense(1)[8].nonzero()[0].tolist()   # query 8 attends keys ≡ 8 (mod 4) at or before it
    [0, 4, 8]
    """

    __slots__ = (
        "_causal", "_key_rules", "_key_steps", "_max_bytes", "_n", "_name", "_params", "_rules",
        "_spans", "_steps", "_what",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        n: int,
        causal: bool,
        steps: Sequence[Any],
        params: Mapping[str, Any] | None = None,
        *,
        key_spans: Sequence[KeySpans | None] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        n = _validate.positive_int("n", n)
        if isinstance(steps, (str, bytes)) or not isinstance(steps, (Sequence, np.ndarray)):
            raise TypeError(f"steps must be a sequence of masks, got {type(steps).__name__}")
        if len(steps) == 0:
            raise ValueError("steps must hold at least one mask, got an empty sequence")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping or None, got {type(params).__name__}")
        self._name = name
        self._n = n
        self._causal = _validate.flag("causal", causal)
        self._spans = _spans_list(key_spans, len(steps), n)
        self._key_steps: list[sp.csr_array | None] = [
            None if spans is None else as_key_step(m, n, spans.m, f"steps[{i}]")
            for i, (m, spans) in enumerate(zip(steps, self._spans, strict=True))
        ]
        self._steps: list[sp.csr_array | None] = [
            as_step(m, n, f"steps[{i}]") if spans is None else None
            for i, (m, spans) in enumerate(zip(steps, self._spans, strict=True))
        ]
        self._params = dict(params or {})
        self._rules: tuple[StepRule, ...] | None = None
        self._key_rules: tuple[StepRule, ...] | None = None
        self._max_bytes = _validate.MEMORY_LIMIT_BYTES
        self._what = name

    @classmethod
    def from_rules(
        cls,
        name: str,
        n: int,
        causal: bool,
        rules: Sequence[StepRule],
        params: Mapping[str, Any] | None = None,
        *,
        max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
        what: str | None = None,
        key_spans: Sequence[KeySpans | None] | None = None,
    ) -> Pattern:
        """A pattern whose steps are :class:`flowgraph.rule.StepRule` s; each step's CSR is built
        on first use, refused (ValueError) when it would need more than ``max_bytes``. ``what``
        names the pattern in that message (default: ``name``).

        ``key_spans`` (one :class:`flowgraph.keys.KeySpans` or None per step) makes a step
        compressed: its rule's keys are the m keys of the spans (``StepRule(..., keys=m)``)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        n = _validate.positive_int("n", n)
        if not rules or not all(isinstance(r, StepRule) and r.n == n for r in rules):
            raise TypeError(f"rules must be a non-empty sequence of StepRule with n={n}")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping or None, got {type(params).__name__}")
        spans_s = _spans_list(key_spans, len(rules), n)
        for i, (rule, spans) in enumerate(zip(rules, spans_s, strict=True)):
            keys = n if spans is None else spans.m
            if rule.keys != keys:
                raise ValueError(f"rules[{i}] has {rule.keys} keys, its step has {keys}")
        self = cls.__new__(cls)
        self._name = name
        self._n = n
        self._causal = _validate.flag("causal", causal)
        self._params = dict(params or {})
        self._spans = spans_s
        self._key_rules = tuple(rules)
        self._max_bytes = _validate.byte_limit("max_bytes", max_bytes)
        self._what = what or name
        views: dict[tuple[int, int], StepRule | None] = {}  # layers of a stack share their rules
        flow = []
        for r, s in zip(rules, spans_s, strict=True):
            if s is None:
                flow.append(r)
                continue
            if (id(r), id(s)) not in views:
                views[id(r), id(s)] = s.flow_rule(r)
            flow.append(views[id(r), id(s)])
        self._steps = [None] * len(flow)
        self._key_steps = [None] * len(flow)
        if all(r is not None for r in flow):
            self._rules = tuple(flow)  # type: ignore[arg-type]
            return self
        # spans that are not chained: the flow view of a compressed step is a CSR product
        self._rules = None
        self._check_fit(f"the steps of {self._what}", rules)
        for i, (rule, spans) in enumerate(zip(rules, spans_s, strict=True)):
            if spans is None:
                self._steps[i] = freeze(rule.to_csr())
            else:
                self._key_steps[i] = freeze(rule.to_csr())
        return self

    # --- fields -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def n(self) -> int:
        return self._n

    @property
    def causal(self) -> bool:
        return self._causal

    @property
    def params(self) -> dict[str, Any]:
        """The constructor's parameters (a copy: changing it changes nothing)."""
        return dict(self._params)

    @property
    def steps(self) -> tuple[sp.csr_array, ...]:
        """Every step as a read-only bool CSR (a rule pattern builds them here, once)."""
        if self._rules is not None and any(m is None for m in self._steps):
            self._check_steps_fit(range(self.num_steps))
        return tuple(self._step(i) for i in range(self.num_steps))

    @property
    def max_bytes(self) -> int:
        """The memory its CSR steps may take when they are built (the constructor's max_bytes)."""
        return self._max_bytes

    @property
    def rules(self) -> tuple[StepRule, ...] | None:
        """The steps as rules (library constructors), or None for a pattern given by masks."""
        return self._rules

    @property
    def num_steps(self) -> int:
        return len(self._steps)

    # --- compressed keys ------------------------------------------------------------------------
    @property
    def key_spans(self) -> tuple[KeySpans | None, ...]:
        """Per step, the token spans of its compressed keys, or None for a step over the tokens."""
        return self._spans

    @property
    def compressed(self) -> bool:
        """Some step attends compressed keys."""
        return any(s is not None for s in self._spans)

    @property
    def key_rules(self) -> tuple[StepRule, ...] | None:
        """Each step's rule over the keys it attends (its compressed keys, or the tokens), or
        None for a pattern given by masks. :attr:`rules` are the flow views."""
        return self._key_rules if self._key_rules is not None else self._rules

    def num_keys(self, step: int) -> int:
        """The keys step ``step`` attends: m for a compressed step, else n."""
        spans = self._spans[self._step_index(step)]
        return self._n if spans is None else spans.m

    def key_step(self, step: int) -> sp.csr_array:
        """Step ``step`` as an (n, num_keys) bool CSR over the keys it attends (the same as
        ``steps[step]`` unless its keys are compressed)."""
        step = self._step_index(step)
        if self._spans[step] is None:
            return self._step(step)
        if self._key_steps[step] is None:
            assert self._key_rules is not None
            self._check_fit(f"the key mask of step {step} of {self._what}", [self._key_rules[step]])
            self._key_steps[step] = freeze(self._key_rules[step].to_csr())
        return self._key_steps[step]  # type: ignore[return-value]

    def leaks(self, step: int) -> tuple[int, tuple[int, int, int] | None]:
        """Entries of step ``step`` that read a token after their query, and the first one as
        (query, key, future token) — the token is the key itself unless keys are compressed."""
        step = self._step_index(step)
        spans = self._spans[step]
        rules = self.key_rules
        q_n = np.arange(self._n, dtype=np.int64)
        if rules is not None and (spans is None or spans.chained):
            if spans is None and not rules[step].disjoint:
                count = rules[step].causality_violations()
                _, first = rules[step].violations_above(q_n)
            else:
                count, first = rules[step].violations_above(self._allowed_keys(step))
            if first is None:
                return count, None
            token = first[1] if spans is None else spans.future_token(*first)
            return count, (first[0], first[1], token)
        m = self.key_step(step)
        rows_e = np.repeat(q_n, np.diff(m.indptr))
        last_e = m.indices if spans is None else spans.last_m[m.indices]
        bad = np.flatnonzero(last_e > rows_e)
        if not bad.size:
            return 0, None
        q, key = int(rows_e[bad[0]]), int(m.indices[bad[0]])
        token = key if spans is None else spans.future_token(q, key)
        return int(bad.size), (q, key, token)

    def _allowed_keys(self, step: int) -> np.ndarray:
        """Per query, the last key it may attend without reading the future (chained spans)."""
        q_n = np.arange(self._n, dtype=np.int64)
        spans = self._spans[step]
        if spans is None:
            return q_n
        return np.searchsorted(spans.last_m, q_n, side="right") - 1

    def without_leaks(self) -> Pattern:
        """The pattern with every entry that reads a token after its query removed (a causal
        pattern's steps as they would be with its leaks fixed)."""
        name = f"{self._name}/without leaks"
        rules = self.key_rules
        if rules is not None and all(s is None or s.chained for s in self._spans):
            clipped = [r.clipped(self._allowed_keys(i)) for i, r in enumerate(rules)]
            return Pattern.from_rules(
                name, self._n, self._causal, clipped, self._params,
                max_bytes=self._max_bytes, what=f"{self._what} without leaks",
                key_spans=self._spans,
            )  # fmt: skip
        steps = []
        q_n = np.arange(self._n, dtype=np.int64)
        for i, spans in enumerate(self._spans):
            m = self.key_step(i)
            rows_e = np.repeat(q_n, np.diff(m.indptr))
            last_e = m.indices if spans is None else spans.last_m[m.indices]
            keep = last_e <= rows_e
            steps.append(
                sp.csr_array(
                    (np.ones(int(keep.sum()), np.bool_), (rows_e[keep], m.indices[keep])),
                    shape=m.shape,
                )
            )
        return Pattern(name, self._n, self._causal, steps, self._params, key_spans=self._spans)

    def _check_fit(self, what: str, rules: Sequence[StepRule]) -> None:
        distinct = {id(r): r for r in rules}
        entries = sum(r.entries_bound() for r in distinct.values())
        exact = all(r.disjoint for r in distinct.values())
        _validate.memory(
            f"{what} with {'' if exact else 'up to '}{entries:,} entries",
            entries * STEP_BYTES_PER_ENTRY,
            self._max_bytes,
            fix="check it with flowgraph.check, which reads its rules and needs no CSR",
        )

    def _check_steps_fit(self, which: Sequence[int] | range) -> None:
        assert self._rules is not None
        todo = [i for i in which if self._steps[i] is None]
        # one CSR per distinct rule object: a stack's layers share theirs
        self._check_fit(f"the CSR steps of {self._what}", [self._rules[i] for i in todo])

    def _step(self, i: int) -> sp.csr_array:
        step = self._steps[i]
        if step is None and self._rules is None:  # a compressed step given by its key mask
            spans = self._spans[i]
            assert spans is not None
            step = freeze(spans.flow_csr(self.key_step(i)))
            self._steps[i] = step
            return step
        if step is None:
            assert self._rules is not None
            self._check_steps_fit([i])
            rule = self._rules[i]
            for j, other in enumerate(self._rules):  # layers sharing a rule share its CSR
                if other is rule and self._steps[j] is not None:
                    step = self._steps[j]
                    break
            else:
                step = freeze(rule.to_csr())
            self._steps[i] = step
        return step

    # --- inspection ---------------------------------------------------------------------------
    def edges(self) -> tuple[int, ...]:
        """Number of (query, key) entries in each step (keys as attended: compressed keys count
        once each, not per token of their span)."""
        rules = self.key_rules
        if rules is not None:
            return tuple(r.nnz() for r in rules)
        return tuple(int(self.key_step(i).nnz) for i in range(self.num_steps))

    def degrees(self, step: int) -> np.ndarray:
        """(n,) int64: the keys each query attends at step ``step``."""
        step = self._step_index(step)
        rules = self.key_rules
        if rules is not None:
            return rules[step].degrees()
        return np.diff(self.key_step(step).indptr).astype(np.int64)

    def dense(self, step: int = 0, *, max_bytes: int = DENSE_LIMIT_BYTES) -> np.ndarray:
        """Step ``step`` as a dense (n, n) bool array; refuses above ``max_bytes`` of memory."""
        step = self._step_index(step)
        max_bytes = _validate.byte_limit("max_bytes", max_bytes)
        need = self._n * self._n
        if need > max_bytes:
            raise MemoryError(
                f"dense(step={step}) would need {_fmt_bytes(need)} for n={self._n}, above the "
                f"limit max_bytes={_fmt_bytes(max_bytes)}; use .steps[{step}] (sparse) or pass a "
                "larger max_bytes"
            )
        return self._step(step).toarray()

    def merged(self) -> Pattern:
        """One step: the union of all steps (the 'merged head' view of the pattern)."""
        if self._rules is not None:
            return Pattern.from_rules(
                f"{self._name}/merged",
                self._n,
                self._causal,
                [StepRule.union(self._rules)],
                {**self._params, "merged_from": self._name},
                max_bytes=self._max_bytes,
                what=f"{self._what}/merged",
            )
        union = self._step(0)
        for s in self.steps[1:]:
            union = union + s  # bool + bool is logical or
        return Pattern(
            f"{self._name}/merged",
            self._n,
            self._causal,
            [union],
            {**self._params, "merged_from": self._name},
        )

    def block_counts(self, step: int, block: int) -> np.ndarray:
        """(nb, nb) int64 with nb = ⌈n/block⌉: the entries of step ``step`` in each block of
        block × block positions. A rule is counted without its CSR (so this works at
        n = 1,048,576); a step given by masks from its CSR."""
        step = self._step_index(step)
        block = _validate.positive_int("block", block)
        nb = -(-self._n // block)
        _validate.memory(
            f"block_counts(block={block}) at n={self._n}", 8 * nb * nb, self._max_bytes
        )
        rule = self._rules[step] if self._rules is not None else None
        if rule is not None:
            from flowgraph import _interval_kernels  # numba: imported on first use

            if rule.disjoint:
                return _interval_kernels.rule_block_counts(*rule.terms(), self._n, block)
            return _interval_kernels.union_block_counts(*rule.terms(), self._n, block)
        m = self._step(step)
        rows = np.repeat(np.arange(self._n) // block, np.diff(m.indptr))
        out = np.zeros((nb, nb), dtype=np.int64)
        np.add.at(out, (rows, m.indices // block), 1)
        return out

    def block_layout(self, block: int) -> np.ndarray:
        """(num_steps, nb, nb) bool with nb = ⌈n/block⌉: a block is on when any entry in it is."""
        block = _validate.positive_int("block", block)
        nb = -(-self._n // block)
        layout = np.zeros((self.num_steps, nb, nb), dtype=np.bool_)
        for s, m in enumerate(self.steps):
            rows = np.repeat(np.arange(self._n) // block, np.diff(m.indptr))
            layout[s, rows, m.indices // block] = True
        return layout

    def to_mask_mod(self, step: int = 0) -> Any:
        """Step ``step`` as a FlexAttention mask_mod (index arithmetic from its rule), see
        :func:`flowgraph.flex.to_mask_mod`."""
        from flowgraph.flex import to_mask_mod

        return to_mask_mod(self, step)

    def to_block_mask(self, step: int = 0, *, block: int | tuple[int, int] = 128) -> Any:
        """Step ``step`` as a FlexAttention BlockMask (full, partial and empty blocks), see
        :func:`flowgraph.flex.to_block_mask`."""
        from flowgraph.flex import to_block_mask

        return to_block_mask(self, step, block=block)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (name, n, causal, params, each step as CSR ``indptr``/``indices``);
        :meth:`from_dict` rebuilds an equal Pattern. Used to save custom patterns with a model."""
        out = {
            "name": self._name,
            "n": self._n,
            "causal": self._causal,
            "params": dict(self._params),
            "steps": [
                {"indptr": m.indptr.tolist(), "indices": m.indices.tolist()}
                for m in (self.key_step(i) for i in range(self.num_steps))
            ],
        }
        if self.compressed:
            out["key_spans"] = [None if s is None else s.spans().tolist() for s in self._spans]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pattern:
        """The inverse of :meth:`to_dict`; malformed data raises a ValueError naming the field."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"data must be a mapping from Pattern.to_dict, got {type(data).__name__}"
            )
        missing = [k for k in ("name", "n", "causal", "steps") if k not in data]
        if missing:
            raise ValueError(f"pattern data lacks {missing}; expected Pattern.to_dict() output")
        n = _validate.positive_int("n", data["n"])
        raw_steps = data["steps"]
        if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, (str, bytes)):
            raise TypeError(
                f"pattern data steps must be a list of CSR steps, got {type(raw_steps).__name__}"
            )
        raw_spans = data.get("key_spans")
        if raw_spans is None:
            spans_s: list[KeySpans | None] = [None] * len(raw_steps)
        elif not isinstance(raw_spans, Sequence) or len(raw_spans) != len(raw_steps):
            raise ValueError("pattern data key_spans must hold one entry per step")
        else:
            spans_s = [
                None if s is None else KeySpans.from_array(s, n, overlapping=True)
                for s in raw_spans
            ]
        steps = []
        for i, step in enumerate(raw_steps):
            keys = n if spans_s[i] is None else spans_s[i].m  # type: ignore[union-attr]
            try:
                indptr = _int_array(step["indptr"], "indptr")
                indices = _int_array(step["indices"], "indices")
                if indptr.shape != (n + 1,) or indptr[0] != 0 or indptr[-1] != indices.size:
                    raise ValueError(f"indptr must have n+1={n + 1} entries from 0 to nnz")
                if np.any(np.diff(indptr) < 0):
                    raise ValueError("indptr must be non-decreasing")
                if indices.size and (indices.min() < 0 or indices.max() >= keys):
                    raise ValueError(f"indices must lie in 0..{keys - 1}")
                csr = sp.csr_array(
                    (np.ones(indices.size, np.bool_), indices, indptr), shape=(n, keys)
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"pattern data steps[{i}] is not a CSR step: {exc}") from exc
            steps.append(csr)
        return cls(
            data["name"], n, data["causal"], steps, data.get("params"),
            key_spans=spans_s if raw_spans is not None else None,
        )  # fmt: skip

    def _step_index(self, step: object) -> int:
        return _validate.int_in_range(
            "step", step, 0, self.num_steps - 1, f"the pattern has {self.num_steps} steps"
        )

    # --- dunder -------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pattern):
            return NotImplemented
        if (self._n, self._causal, self.num_steps) != (other._n, other._causal, other.num_steps):
            return False
        if self._spans != other._spans:
            return False
        return all(
            np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            for a, b in ((self.key_step(i), other.key_step(i)) for i in range(self.num_steps))
        )

    __hash__ = None  # type: ignore[assignment]  # equality is by content, and content is large

    def __repr__(self) -> str:
        return (
            f"Pattern({self._name!r}, n={self._n}, causal={self._causal}, "
            f"steps={self.num_steps}, edges={self.edges()}, params={self._params})"
        )
