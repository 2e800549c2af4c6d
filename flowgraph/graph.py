"""The information-flow graph of a pattern as a networkx DiGraph (for drawing and small-n study;
:func:`flowgraph.check` never walks it)."""

from __future__ import annotations

import networkx as nx
import numpy as np

from flowgraph.pattern import Pattern

__all__ = ["flow_graph"]


def flow_graph(pattern: Pattern) -> nx.DiGraph:
    """Nodes (step, position) for step 0..num_steps; edge (s, k) → (s+1, q) iff steps[s][q, k].

    Each node carries ``layer`` and ``position`` attributes (``networkx.multipartite_layout``
    takes ``subset_key="layer"``).

    Examples
    --------
    >>> import flowgraph as fg
    >>> G = fg.flow_graph(fg.strided(9, stride=3))
    >>> G.number_of_nodes(), G.number_of_edges() == sum(fg.strided(9, stride=3).edges())
    (27, True)
    >>> sorted(G.predecessors((2, 8)))
    [(1, 2), (1, 5), (1, 8)]
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    g = nx.DiGraph(name=pattern.name)
    n = pattern.n
    for s in range(pattern.num_steps + 1):
        g.add_nodes_from(((s, i), {"layer": s, "position": i}) for i in range(n))
    for s, mask in enumerate(pattern.steps):
        q_e = np.repeat(np.arange(n), np.diff(mask.indptr))
        g.add_edges_from(
            ((s, int(k)), (s + 1, int(q)))
            for q, k in zip(q_e.tolist(), mask.indices.tolist(), strict=True)
        )
    return g
