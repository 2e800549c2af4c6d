"""``check``: everything a pattern designer wants to know before training with a pattern.

Full information (Daras et al.): for every (q, k) in the target set — k ≤ q when causal, every
pair otherwise — a path k → a₁ → … → q exists that uses the steps in order, one hop per step
(step s carries a → b when ``steps[s][b, a]``). Only attention edges count: there is no implicit
residual edge, so a step that leaves out the diagonal can forget a token's own information.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from flowgraph import _validate
from flowgraph.flow import Flow, flow_summary
from flowgraph.pattern import Pattern
from flowgraph.reach import Reach, reach_bytes, reach_summary

__all__ = ["ENGINES", "Report", "check"]

ENGINES = ("auto", "intervals", "bitsets")
PROGRESS_DELAY_S = 2.0  # a progress bar appears only for checks that take longer than this


@dataclass(frozen=True)
class Report:
    """The result of :func:`check`. ``to_dict()`` gives plain JSON types.

    Fields
    ------
    name, n, causal, num_steps : the checked pattern.
    full_information : every target pair (q, k) is reached after the last step.
    target_pairs, missing_pairs : size of the target set, and how many of it are not reached.
    witness : one missing (query, key) — the smallest query, then its smallest key — or None.
    reached : target pairs reached after each step (cumulative paths of length 1, 2, ...).
    empty_rows : per step, the queries with no key at all (a softmax over nothing).
    causality_violations : entries that read a token after their query, over all steps of a
        causal pattern (0 otherwise): k > q, or a compressed key whose span ends after q.
    causality_witness : the first of them as (query, key, future token), or None; the token is
        the key itself unless the key is compressed.
    full_information_without_leaks, missing_pairs_without_leaks : for a causal pattern with
        violations, the verdict with the violating entries removed (a leak can be what makes a
        pattern "full"); None when there is nothing to remove.
    edges, edges_total : entries per step and their sum.
    edge_ratio : edges_total / (n·√n), the scale of the Child et al. / Daras et al. bound.
    in_degree : per step, (min, max) keys per query.
    constant_in_degree : every step gives every query the same number of keys.
    flow : the flow constraint (``check(flow=True)`` only), see :class:`flowgraph.flow.Flow`.
    """

    name: str
    n: int
    causal: bool
    num_steps: int
    full_information: bool
    target_pairs: int
    missing_pairs: int
    witness: tuple[int, int] | None
    reached: tuple[int, ...]
    empty_rows: tuple[tuple[int, ...], ...]
    causality_violations: int
    edges: tuple[int, ...]
    edges_total: int
    edge_ratio: float
    in_degree: tuple[tuple[int, int], ...]
    constant_in_degree: bool
    flow: Flow | None = None
    causality_witness: tuple[int, int, int] | None = None
    full_information_without_leaks: bool | None = None
    missing_pairs_without_leaks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, ints, floats and bools: ``json.dumps(report.to_dict())`` works."""
        out = asdict(self)
        out["witness"] = list(self.witness) if self.witness is not None else None
        out["reached"] = list(self.reached)
        out["empty_rows"] = [list(rows) for rows in self.empty_rows]
        out["edges"] = list(self.edges)
        out["in_degree"] = [list(pair) for pair in self.in_degree]
        if self.causality_witness is not None:
            out["causality_witness"] = list(self.causality_witness)
        if out["flow"] is not None:
            out["flow"]["per_query"] = list(self.flow.per_query)
        return out

    def summary(self) -> str:
        """A few human lines; the witness is named when information is missing."""
        verdict = "full information" if self.full_information else "NOT full information"
        kind = "causal" if self.causal else "bidirectional"
        lines = [
            f"{self.name}: n={self.n}, {kind}, {self.num_steps} step(s) — {verdict}",
        ]
        if self.witness is not None:
            q, k = self.witness
            lines.append(
                f"  missing pairs: {self.missing_pairs:,} of {self.target_pairs:,}; "
                f"witness: key {k} never reaches query {q}"
            )
        lines.append(
            f"  edges: {' + '.join(f'{e:,}' for e in self.edges)} = {self.edges_total:,} "
            f"({self.edge_ratio:.2f} × n·√n)"
        )
        degree = ", ".join(f"{lo}..{hi}" for lo, hi in self.in_degree)
        const = "constant" if self.constant_in_degree else "not constant"
        lines.append(f"  in-degree per step: {degree} ({const})")
        empties = [len(rows) for rows in self.empty_rows]
        if any(empties):
            first = next(rows for rows in self.empty_rows if rows)
            lines.append(
                f"  empty query rows per step: {empties} (e.g. query {first[0]} attends nothing)"
            )
        if self.causal:
            line = f"  causality violations (k > q): {self.causality_violations:,}"
            if self.causality_witness is not None:
                q, k, t = self.causality_witness
                held = "" if k == t else f", whose span holds token {t}"
                line += f" — e.g. query {q} attends key {k}{held}"
            lines.append(line)
        if self.full_information_without_leaks is not None:
            if self.full_information_without_leaks:
                lines.append("  without the violating entries: still full information")
            else:
                lines.append(
                    "  without the violating entries: NOT full information "
                    f"({self.missing_pairs_without_leaks:,} pairs missing)"
                    + (
                        " — the full information comes only through the leak"
                        if self.full_information
                        else ""
                    )
                )
        if self.flow is not None:
            f = self.flow
            lines.append(
                f"  flow per query: min {f.min}, mean {f.mean:.2f}, max {f.max}; "
                f"total {f.total:,} ({f.ratio:.3f} of the target pairs)"
            )
        return "\n".join(lines)


def check(
    pattern: Pattern,
    flow: bool = False,
    *,
    engine: str = "auto",
    progress: bool | Callable[[int], None] = False,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Report:
    """Check a pattern (or a stack of layers): full information, edges, degrees, causality, flow.

    Parameters
    ----------
    pattern : the Pattern to check; a :func:`flowgraph.stack` result is a Pattern too.
    flow : also compute the flow constraint (one max-flow per query: slower, see the docs).
    engine : ``"intervals"`` reads the pattern's rules (library constructors, their stacks):
        reach sets as interval unions, no n×n memory, n = 1,048,576 in seconds;
        ``"bitsets"`` builds the CSR steps and packed n×n reach bits (any pattern, 2·n²/8 bytes);
        ``"auto"`` (default) takes intervals when the pattern's rules are disjoint (every library
        constructor and its interleaved stacks), and for unions of steps (merged/heads stacks)
        bitsets while they fit in ``max_bytes``. Both engines give equal reports.
    progress : True shows a tqdm bar on stderr when the check takes more than two seconds; a
        callable is called with the number of rows done, step after step (n · num_steps in all).
    max_bytes : refuse up front (ValueError, with the memory needed) a check that needs more.

    Returns
    -------
    Report

    Raises
    ------
    TypeError : ``pattern`` is not a Pattern, or ``flow`` not a bool.
    ValueError : an unknown engine, intervals asked of a pattern without rules, or the check
        would need more than ``max_bytes`` of memory.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fg.check(fg.ltr(16, stride=4)).full_information
    True
    >>> r = fg.check(fg.ltr(10, stride=4))   # the stride does not divide n
    >>> r.full_information, r.witness
    (False, (0, 8))
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    flow = _validate.flag("flow", flow)
    if flow and pattern.compressed:
        raise ValueError(
            f"flow=True is not defined for {pattern.name!r}: it attends compressed keys, and the "
            "flow constraint counts token nodes only; check it with flow=False"
        )
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    rules = pattern.rules
    if engine == "intervals" and rules is None:
        raise ValueError(
            f"engine='intervals' needs a pattern given by rules (the library constructors); "
            f"{pattern.name!r} was given by masks: use engine='bitsets' or 'auto'"
        )
    # A union of steps (merged/heads stacks) has rows like strided's window ∪ its columns, whose
    # reach sets are ~√n intervals each: there the bitsets are faster while they fit in memory.
    use_intervals = rules is not None and (
        engine == "intervals"
        or (
            engine == "auto"
            and (
                all(r.disjoint for r in rules)
                or reach_bytes(pattern.n) + _csr_bytes(rules) > max_bytes
                or _csr_bytes(rules) > pattern.max_bytes
            )
        )
    )
    if not isinstance(progress, bool) and not callable(progress):
        raise TypeError(f"progress must be a bool or a callable, got {type(progress).__name__}")
    n = pattern.n
    reach = _reach(pattern, use_intervals, progress, max_bytes)
    degrees = [pattern.degrees(s) for s in range(pattern.num_steps)]
    violations, leak = 0, None
    if pattern.causal:
        for s in range(pattern.num_steps):
            count, first = pattern.leaks(s)
            violations += count
            leak = leak or first
    fixed_reach = None
    if violations:  # is the pattern full only through its leaks?
        fixed = pattern.without_leaks()
        fixed_reach = _reach(fixed, use_intervals and fixed.rules is not None, False, max_bytes)
    edges = tuple(int(d.sum()) for d in degrees)
    in_degree = tuple((int(d.min()), int(d.max())) for d in degrees)
    return Report(
        name=pattern.name,
        n=n,
        causal=pattern.causal,
        num_steps=pattern.num_steps,
        full_information=reach.missing_pairs == 0,
        target_pairs=reach.target_pairs,
        missing_pairs=reach.missing_pairs,
        witness=reach.witness,
        reached=reach.reached,
        empty_rows=tuple(tuple(np.flatnonzero(d == 0).tolist()) for d in degrees),
        causality_violations=violations,
        edges=edges,
        edges_total=sum(edges),
        edge_ratio=sum(edges) / (n * math.sqrt(n)),
        in_degree=in_degree,
        constant_in_degree=all(lo == hi for lo, hi in in_degree),
        flow=flow_summary(pattern) if flow else None,
        causality_witness=leak,
        full_information_without_leaks=None
        if fixed_reach is None
        else fixed_reach.missing_pairs == 0,
        missing_pairs_without_leaks=None if fixed_reach is None else fixed_reach.missing_pairs,
    )


def _csr_bytes(rules: tuple) -> int:
    """What the bitsets engine's CSR steps would take (one per distinct rule, an upper bound)."""
    from flowgraph.pattern import STEP_BYTES_PER_ENTRY

    distinct = {id(r): r for r in rules}
    return STEP_BYTES_PER_ENTRY * sum(r.entries_bound() for r in distinct.values())


def _reach(
    pattern: Pattern,
    use_intervals: bool,
    progress: bool | Callable[[int], None],
    max_bytes: int,
) -> Reach:
    n = pattern.n
    if use_intervals:
        from flowgraph.intervals import interval_reach, interval_reach_bytes

        rules = pattern.rules
        assert rules is not None
        _validate.memory(f"check(pattern) at n={n}", interval_reach_bytes(rules), max_bytes)
        return _with_progress(
            progress,
            n * pattern.num_steps,
            lambda tick: interval_reach(rules, pattern.causal, max_bytes=max_bytes, progress=tick),
        )
    _validate.memory(f"check(pattern) at n={n}", reach_bytes(n), max_bytes)
    return _with_progress(progress, 0, lambda tick: reach_summary(pattern))


def _with_progress(
    progress: bool | Callable[[int], None],
    total: int,
    run: Callable[[Callable[[int], None] | None], Reach],
) -> Reach:
    """Run ``run(tick)`` with the progress reporting asked for (a bar only past two seconds)."""
    if callable(progress):
        return run(progress)
    if not progress or total == 0:
        return run(None)
    from tqdm import tqdm  # imported only when a bar is asked for

    with tqdm(
        total=total, unit="row", unit_scale=True, delay=PROGRESS_DELAY_S, desc="check"
    ) as bar:
        return run(bar.update)
