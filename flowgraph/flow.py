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

Cost: one max flow (Dinic, scipy) per query over a graph of (2·num_steps + 1)·n nodes and
edges_total + (num_steps + 1)·n edges: fine up to n of a few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

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


def _capacity_graph(pattern: Pattern) -> tuple[sp.csr_array, int]:
    """Node-split layered graph with unit capacities; returns (graph, index of layer-0 'in' 0).

    Node ids: 0 is the super source; for s < p, token (s, i) is split into in = 1 + 2sn + i and
    out = in + n joined by a capacity-1 edge (it outputs at most one unit); (p, i) = 1 + 2pn + i.
    """
    n, p = pattern.n, pattern.num_steps
    size = 1 + (2 * p + 1) * n
    ids = np.arange(n, dtype=np.int64)
    rows = [np.zeros(n, np.int64)]
    cols = [1 + ids]  # source → in(0, k)
    for s, mask in enumerate(pattern.steps):
        rows.append(1 + 2 * s * n + ids)
        cols.append(1 + (2 * s + 1) * n + ids)  # in(s, i) → out(s, i)
        q_e = np.repeat(ids, np.diff(mask.indptr))
        rows.append(1 + (2 * s + 1) * n + mask.indices.astype(np.int64))  # out(s, k)
        cols.append(1 + 2 * (s + 1) * n + q_e)  # → in(s+1, q) or the last layer's (p, q)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sp.csr_array((np.ones(r.size, np.int32), (r, c)), shape=(size, size))
    graph.sum_duplicates()
    graph.data[:] = 1
    return graph, 1


def flow_per_query(pattern: Pattern) -> np.ndarray:
    """f(q) for every query q (int array of length n)."""
    n, p = pattern.n, pattern.num_steps
    graph, first_in = _capacity_graph(pattern)
    source_edges = slice(graph.indptr[0], graph.indptr[1])  # row 0: source → in(0, k), k sorted
    out = np.zeros(n, dtype=np.int64)
    for q in range(n):
        g = graph
        if pattern.causal and q < n - 1:
            g = graph.copy()
            g.data[source_edges.start + q + 1 : source_edges.stop] = 0  # only keys k ≤ q
        out[q] = maximum_flow(g, 0, first_in + 2 * p * n + q, method="dinic").flow_value
    return out


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
