"""``flow_graph`` against its definition, and reachability read off the graph with networkx
(ancestors) against ``reachability`` and ``check``."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from oracles import random_masks, target_mask

import flowgraph as fg


def masks_of(p: fg.Pattern) -> list[np.ndarray]:
    return [p.dense(s) for s in range(p.num_steps)]


def assert_graph_matches_definition(g: nx.DiGraph, masks: list[np.ndarray]) -> None:
    n, p = masks[0].shape[0], len(masks)
    assert set(g.nodes) == {(s, i) for s in range(p + 1) for i in range(n)}
    for (s, i), attrs in g.nodes(data=True):
        assert attrs == {"layer": s, "position": i}
    expected = {
        ((s, k), (s + 1, q))
        for s, m in enumerate(masks)
        for q in range(n)
        for k in range(n)
        if m[q, k]
    }
    assert set(g.edges) == expected
    assert g.number_of_edges() == len(expected)


def reach_by_ancestors(g: nx.DiGraph, n: int, s: int) -> np.ndarray:
    """R_s[q, k]: key node (0, k) is an ancestor of (s, q)."""
    r = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for layer, k in nx.ancestors(g, (s, q)):
            if layer == 0:
                r[q, k] = True
    return r


@settings(max_examples=60, deadline=None)
@given(random_masks(max_n=14, max_steps=3))
def test_flow_graph_and_reachability_on_random_masks(drawn):
    masks, causal = drawn
    p = fg.from_masks(masks, causal=causal)
    g = fg.flow_graph(p)
    assert_graph_matches_definition(g, masks)
    n = p.n
    dense_reach = fg.reachability(p)
    assert len(dense_reach) == p.num_steps
    target = target_mask(n, causal)
    reached = []
    for s in range(1, p.num_steps + 1):
        r = reach_by_ancestors(g, n, s)
        np.testing.assert_array_equal(dense_reach[s - 1], r, err_msg=f"after step {s}")
        reached.append(int((r & target).sum()))
    report = fg.check(p)
    assert report.reached == tuple(reached)
    missing = np.argwhere(target & ~reach_by_ancestors(g, n, p.num_steps))
    assert report.witness == (tuple(missing[0].tolist()) if missing.size else None)
    assert report.full_information == (missing.size == 0)


@pytest.mark.parametrize(
    "p",
    [
        fg.strided(9, stride=3),
        fg.strided(10, stride=4, causal=False),
        fg.fixed(12, stride=4),
        fg.ltr(10, stride=4),
        fg.rtl(10, stride=4),
        fg.star(8, hub=3),
        fg.stack(fg.fixed(8, stride=2), layers=3, mode="interleave"),
    ],
    ids=lambda p: p.name,
)
def test_flow_graph_of_constructors(p):
    g = fg.flow_graph(p)
    masks = masks_of(p)
    assert_graph_matches_definition(g, masks)
    assert g.graph["name"] == p.name
    assert g.number_of_edges() == sum(p.edges())
    last = reach_by_ancestors(g, p.n, p.num_steps)
    np.testing.assert_array_equal(fg.reachability(p)[-1], last)
    assert fg.check(p).full_information == bool(np.all(last[target_mask(p.n, p.causal)]))


def test_flow_graph_is_layered_for_multipartite_layout():
    g = fg.flow_graph(fg.ltr(6, stride=3))
    pos = nx.multipartite_layout(g, subset_key="layer")
    assert len(pos) == g.number_of_nodes()
    assert all(u[0] + 1 == v[0] for u, v in g.edges)  # every edge goes one layer up


def test_reachability_refuses_large_n():
    p = fg.strided(100, stride=10)
    assert len(fg.reachability(p, max_n=100)) == 2
    with pytest.raises(ValueError, match=r"n=100 is above max_n=99"):
        fg.reachability(p, max_n=99)


def test_flow_graph_refuses_a_non_pattern():
    with pytest.raises(TypeError, match=r"pattern must be a flowgraph\.Pattern, got list"):
        fg.flow_graph([[True]])
