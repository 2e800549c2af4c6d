"""The flow constraint of the information-flow graph.

Full information only asks that *a* path exists from every key to every query; a star pattern
has one, through a single hub token. The talk's fix is to "allow each token to output flow max 1,
and calculate the total output flow". Precisely, for each query q of the last layer:

    f(q) = the maximum flow from q's target keys (layer 0) to the node (num_steps, q) in the
           information-flow graph, where every token node (s, i) with s < num_steps — the keys
           included — outputs at most one unit of flow.

By Menger's theorem f(q) is the largest number of keys whose information can reach q along
paths that share no token: how many independent channels feed q. It is bounded by q's in-degree
at the last step, so a star gives f(q) ≤ 2 for every spoke while strided, fixed and LTR/RTL give
about √n. The report keeps f for every query and its min, median, mean, max, the total Σ f(q) and
``ratio`` = total / target pairs (1.0 for dense single-step attention).

Cost: one max flow (Dinic, scipy) per query, on the subgraph of that query's ancestors only
(for strided about 2q edges rather than 2n√n), run in threads: about a second at n = 2048 on two
cores; practical up to n ≈ 16,384.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

from flowgraph.intervals import default_threads
from flowgraph.pattern import Pattern

__all__ = ["Flow", "flow_per_query", "flow_summary"]


@dataclass(frozen=True)
class Flow:
    """Per-query flow values f(q) and their summary (see the module docstring)."""

    per_query: tuple[int, ...]
    min: int
    median: float
    mean: float
    max: int
    total: int
    ratio: float


def _ancestors(pattern: Pattern, q: int) -> list[np.ndarray]:
    """Sorted positions of each layer s = 0..p whose node (s, i) has a path to (p, q)."""
    layers = [np.array([q], dtype=np.int64)]
    for mask in reversed(pattern.steps):
        below = mask[layers[0]]  # the rows of the layer above, as a CSR slice
        layers.insert(0, np.unique(below.indices).astype(np.int64))
    if pattern.causal:
        layers[0] = layers[0][layers[0] <= q]  # sources: q's target keys only
    return layers


def _query_flow(pattern: Pattern, q: int) -> int:
    """f(q): max flow on q's ancestor subgraph, with every token below the last layer split into
    in → out joined by a capacity-1 edge (a token outputs at most one unit of flow)."""
    layers = _ancestors(pattern, q)
    if layers[0].size == 0:
        return 0
    p = pattern.num_steps
    sizes = [a.size for a in layers[:p]]
    first = np.concatenate([[0], np.cumsum(sizes)]) * 2 + 1  # in(s, ·) ids start at first[s]
    sink = int(first[p])
    rows, cols = [np.zeros(sizes[0], np.int64)], [first[0] + np.arange(sizes[0])]
    for s in range(p):
        local = np.arange(sizes[s])
        rows.append(first[s] + local)
        cols.append(first[s] + sizes[s] + local)  # in(s, i) → out(s, i)
        sub = pattern.steps[s][layers[s + 1]]  # rows: layer s+1's ancestors; keys: layer s's
        keys = np.searchsorted(layers[s], sub.indices)
        ok = keys < sizes[s]  # only where the key survived (sources are restricted when causal)
        ok[ok] &= layers[s][keys[ok]] == sub.indices[ok]
        dest = np.repeat(np.arange(layers[s + 1].size), np.diff(sub.indptr))
        rows.append((first[s] + sizes[s] + keys)[ok])
        cols.append((sink if s == p - 1 else first[s + 1]) + dest[ok] * (s < p - 1))
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sp.csr_array((np.ones(r.size, np.int32), (r, c)), shape=(sink + 1, sink + 1))
    return int(maximum_flow(graph, 0, sink, method="dinic").flow_value)


def flow_per_query(pattern: Pattern, threads: int | None = None) -> np.ndarray:
    """f(q) for every query q (int array of length n). The max flows run in ``threads`` threads
    (default: the cores this process may use; scipy's max flow releases the GIL), each query's
    value independent of the others, so any thread count gives the same array."""
    threads = default_threads() if threads is None else threads
    _ = pattern.steps  # a rule pattern builds its CSR steps once, before the threads start
    if threads <= 1 or pattern.n < 256:
        return np.array([_query_flow(pattern, q) for q in range(pattern.n)], dtype=np.int64)
    with ThreadPoolExecutor(threads) as pool:
        values = pool.map(lambda q: _query_flow(pattern, q), range(pattern.n), chunksize=64)
        return np.fromiter(values, dtype=np.int64, count=pattern.n)


def flow_summary(pattern: Pattern) -> Flow:
    """The :class:`Flow` of a pattern: f(q) for every query and its summary."""
    f = flow_per_query(pattern)
    n = pattern.n
    target = n * (n + 1) // 2 if pattern.causal else n * n
    return Flow(
        per_query=tuple(int(x) for x in f),
        min=int(f.min()),
        median=float(np.median(f)),
        mean=float(f.mean()),
        max=int(f.max()),
        total=int(f.sum()),
        ratio=float(f.sum() / target),
    )
