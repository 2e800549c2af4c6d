"""Reachability on interval unions: the engine :func:`flowgraph.check` uses for rule patterns.

The rows of every published pattern are unions of a few arithmetic progressions
(:class:`flowgraph.rule.StepRule`), and so are their reach sets — after a window step they are
unions of intervals, usually one or two. ``R_{s+1}[q]`` is the union of ``R_s[j]`` over the keys
j of the step's row q: gathered, merged (the terms arrive sorted, so a T-way merge suffices;
anything else is sorted) and kept as disjoint intervals. The last step is never stored: only its
coverage of the target keys (0..q when causal, 0..n−1 otherwise) and the first gap are kept.

Cost: Σ_q Σ_{j ∈ row q} |R_s[j]| interval visits per step — about the step's edge count for the
library patterns (n·√n / 2 for causal strided), with no n×n bits. Memory: the stored intervals of
one step (8 bytes each) and one gather buffer per thread. Rows are cut into chunks run in
threads (the kernel releases the GIL); the counts are integers, so any chunking gives the same.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flowgraph import _validate
from flowgraph.reach import Reach
from flowgraph.rule import StepRule

__all__ = ["default_threads", "interval_reach", "interval_reach_bytes"]

_MIN_CHUNK = 2048  # rows per task at least: below this thread hand-off costs more than it saves
_TASKS_PER_THREAD = 16  # enough tasks to balance rows of unequal cost and to move a progress bar


def default_threads() -> int:
    """The cores this process may use (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def interval_reach_bytes(rules: Sequence[StepRule]) -> int:
    """Memory needed before the first step runs: the rules' contiguous term arrays, the first
    step's reach sets (one interval per term and row at most, when a step's terms have stride 1)
    and their row pointers. Later steps are checked as their sizes become known."""
    n = rules[0].n
    _, count_tn, stride_t = rules[0].terms()
    intervals = int(
        sum(int(count_tn[t].sum()) if stride_t[t] > 1 else n for t in range(stride_t.size))
    )
    return max(r.nbytes() for r in rules) + 8 * (n + 1) + 8 * intervals


def _chunks(n: int, threads: int) -> list[tuple[int, int]]:
    size = max(_MIN_CHUNK, -(-n // (threads * _TASKS_PER_THREAD)))
    return [(q0, min(n, q0 + size)) for q0 in range(0, n, size)]


def _run_chunk(
    bounds: tuple[int, int],
    *,
    kernel: Callable[..., tuple],
    args: tuple,
    progress: Callable[[int], None] | None,
) -> tuple:
    out = kernel(bounds[0], bounds[1], *args)
    if progress is not None:
        progress(bounds[1] - bounds[0])
    return out


def interval_reach(
    rules: Sequence[StepRule],
    causal: bool,
    *,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
    compact_at: int | None = None,
) -> Reach:
    """Reach summary of the steps ``rules`` (see the module docstring); equal to
    :func:`flowgraph.reach.reach_summary` on the materialised pattern.

    ``progress`` is called with the number of rows finished, step after step (num_steps · n in
    all). ``compact_at`` (tests) is the gather-buffer length past which a row's union is merged
    in place; by default max(2²², n + 2). Raises ValueError, naming the memory, when a step's
    reach sets would not fit.
    """
    from flowgraph._interval_kernels import advance_rows  # numba: imported on first use

    n = rules[0].n
    threads = default_threads() if threads is None else _validate.positive_int("threads", threads)
    target = n * (n + 1) // 2 if causal else n * n
    # past this many gathered keys a row is merged in place: at most n/2 + 1 intervals remain
    limit = max(1 << 22, n + 2) if compact_at is None else compact_at
    prev_ptr = np.zeros(1, np.int64)
    prev_keys = np.zeros(0, np.int64)
    reached: list[int] = []
    witness: tuple[int, int] | None = None
    chunks = _chunks(n, threads)
    pool = ThreadPoolExecutor(threads) if threads > 1 and len(chunks) > 1 else None
    try:
        for s, rule in enumerate(rules):
            start_tn, count_tn, stride_t = rule.terms()
            last = s == len(rules) - 1

            args = (
                n, causal, start_tn, count_tn, stride_t, s == 0, prev_ptr, prev_keys, not last,
                limit,
            )  # fmt: skip
            run = functools.partial(_run_chunk, kernel=advance_rows, args=args, progress=progress)
            results = list(pool.map(run, chunks)) if pool is not None else [run(c) for c in chunks]
            reached.append(int(sum(int(r[0]) for r in results)))
            if last:
                for r in results:
                    if r[1] >= 0:
                        witness = (int(r[1]), int(r[2]))
                        break
                break
            total = sum(int(r[4].size) for r in results)
            _validate.memory(
                f"check(pattern) at n={n}: the reach sets after step {s + 1} ({total:,} intervals)",
                8 * (total + n + 1) + 8 * (prev_keys.size + n + 1),
                max_bytes,
            )
            ptr = np.zeros(n + 1, np.int64)
            keys = np.empty(total, np.int64)
            used = 0
            for (q0, q1), r in zip(chunks, results, strict=True):
                ptr[q0 + 1 : q1 + 1] = used + r[3][1:]
                keys[used : used + r[4].size] = r[4]
                used += r[4].size
            del results
            prev_ptr, prev_keys = ptr, keys
    finally:
        if pool is not None:
            pool.shutdown()
    return Reach(target, tuple(reached), witness)
