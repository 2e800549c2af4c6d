"""The information-flow graph of a pattern as a networkx DiGraph (for drawing and small-n study;
:func:`flowgraph.check` never walks it)."""

from __future__ import annotations

import networkx as nx
import numpy as np

from flowgraph import _validate
from flowgraph.pattern import Pattern

__all__ = ["flow_graph"]

# networkx's dict-of-dicts, measured with tracemalloc on strided(1024): about 350 bytes an edge
# (both adjacency dicts and the edge's attribute dict) and 300 a node with its attributes.
_EDGE_BYTES, _NODE_BYTES = 350, 300


def flow_graph(pattern: Pattern, *, max_bytes: int = _validate.MEMORY_LIMIT_BYTES) -> nx.DiGraph:
    """Nodes (step, position) for step 0..num_steps; edge (s, k) → (s+1, q) iff steps[s][q, k].

    Each node carries ``layer`` and ``position`` attributes (``networkx.multipartite_layout``
    takes ``subset_key="layer"``). A graph needing more than ``max_bytes`` (about 350 bytes an
    edge) is refused with a ValueError before it is built.

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
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    n = pattern.n
    edges, nodes = sum(pattern.edges()), (pattern.num_steps + 1) * n
    _validate.memory(
        f"flow_graph() with {edges:,} edges and {nodes:,} nodes",
        edges * _EDGE_BYTES + nodes * _NODE_BYTES,
        max_bytes,
    )
    g = nx.DiGraph(name=pattern.name)
    for s in range(pattern.num_steps + 1):
        g.add_nodes_from(((s, i), {"layer": s, "position": i}) for i in range(n))
    for s, mask in enumerate(pattern.steps):
        q_e = np.repeat(np.arange(n), np.diff(mask.indptr))
        g.add_edges_from(
            ((s, int(k)), (s + 1, int(q)))
            for q, k in zip(q_e.tolist(), mask.indices.tolist(), strict=True)
        )
    return g
