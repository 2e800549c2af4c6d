"""Brute-force references for the graph core, written from the issue's definitions and sharing no
code with :mod:`flowgraph`: dense numpy boolean matrix products for reachability, networkx max flow
with node splitting for the flow constraint. They are slow on purpose (small n only).

Also the random small patterns the property tests draw (a hypothesis strategy).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from hypothesis import strategies as st

__all__ = [
    "BruteCheck",
    "brute_check",
    "brute_flow",
    "brute_reach",
    "random_masks",
    "target_mask",
]


def target_mask(n: int, causal: bool) -> np.ndarray:
    """(n, n) bool: the pairs (q, k) that must be reached — k ≤ q when causal, all otherwise."""
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    return (k <= q) if causal else np.ones((n, n), dtype=bool)


def brute_reach(masks: list[np.ndarray]) -> list[np.ndarray]:
    """R_s for s = 1..p by repeated boolean matrix products: R_1 = M_1, R_{s+1} = M_{s+1} · R_s.

    R_s[q, k]: a path k → a₁ → … → q exists using steps 1..s in order (step s carries a → b when
    M_s[b, a]). The products count paths in float64 (exact up to 2⁵³, far above n) and are
    compared with 0, so nothing saturates.
    """
    out: list[np.ndarray] = []
    reach = np.eye(masks[0].shape[0])
    for m in masks:
        reach = (m.astype(np.float64) @ reach > 0).astype(np.float64)
        out.append(reach.astype(bool))
    return out


@dataclass(frozen=True)
class BruteCheck:
    full_information: bool
    target_pairs: int
    missing_pairs: int
    witness: tuple[int, int] | None
    reached: tuple[int, ...]
    empty_rows: tuple[tuple[int, ...], ...]
    causality_violations: int
    edges: tuple[int, ...]
    in_degree: tuple[tuple[int, int], ...]
    missing: np.ndarray  # (n, n) bool: target pairs not reached after the last step


def brute_check(masks: list[np.ndarray], causal: bool) -> BruteCheck:
    """Every field of :class:`flowgraph.Report` that has a definition, by plain loops."""
    n = masks[0].shape[0]
    target = target_mask(n, causal)
    reach = brute_reach(masks)
    missing = target & ~reach[-1]
    witness = None
    for q in range(n):  # the smallest query, then its smallest key
        ks = np.flatnonzero(missing[q])
        if ks.size:
            witness = (q, int(ks[0]))
            break
    violations = sum(int(np.triu(m, k=1).sum()) for m in masks) if causal else 0  # k > q
    degrees = [m.sum(axis=1).tolist() for m in masks]
    return BruteCheck(
        full_information=not missing.any(),
        target_pairs=int(target.sum()),
        missing_pairs=int(missing.sum()),
        witness=witness,
        reached=tuple(int((r & target).sum()) for r in reach),
        empty_rows=tuple(tuple(q for q in range(n) if d[q] == 0) for d in degrees),
        causality_violations=violations,
        edges=tuple(int(m.sum()) for m in masks),
        in_degree=tuple((min(d), max(d)) for d in degrees),
        missing=missing,
    )


def brute_flow(masks: list[np.ndarray], causal: bool) -> list[int]:
    """f(q) for every query: networkx max flow from q's target keys to (p, q), every token node
    (s, i) with s < p split into in → out with capacity 1 (it outputs at most one unit of flow).

    Edges without a capacity are unbounded in networkx, so only the node splits limit the flow.
    """
    n, p = masks[0].shape[0], len(masks)
    base = nx.DiGraph()
    for s in range(p):
        for i in range(n):
            base.add_edge(("in", s, i), ("out", s, i), capacity=1)
    for s, m in enumerate(masks):
        for q in range(n):
            for k in range(n):
                if m[q, k]:
                    head = ("in", s + 1, q) if s + 1 < p else ("last", q)
                    base.add_edge(("out", s, k), head)
    target = target_mask(n, causal)
    flows = []
    for q in range(n):
        g = base.copy()
        g.add_node(("last", q))
        for k in range(n):
            if target[q, k]:  # (q, q) always is, so the source exists
                g.add_edge("source", ("in", 0, k))
        flows.append(int(nx.maximum_flow_value(g, "source", ("last", q))))
    return flows


# --- random small patterns -----------------------------------------------------------------------
DENSITIES = (0.0, 0.03, 0.1, 0.25, 0.5, 0.9, 1.0)


@st.composite
def random_masks(
    draw: st.DrawFn, max_n: int = 64, max_steps: int = 4
) -> tuple[list[np.ndarray], bool]:
    """(masks, causal): 1..max_steps random (n, n) bool masks, n ≤ max_n, each at its own density.

    Per step the diagonal is forced on, forced off or left random, and some rows may be emptied, so
    masks without a diagonal and with empty rows come up often. Causal draws are usually cut to
    k ≤ q but sometimes keep entries above the diagonal (causality violations).
    """
    n = draw(st.integers(1, max_n))
    steps = draw(st.integers(1, max_steps))
    causal = draw(st.booleans())
    keep_upper = draw(st.booleans()) if causal else True
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = []
    for _ in range(steps):
        density = draw(st.sampled_from(DENSITIES))
        m = rng.random((n, n)) < density
        diagonal = draw(st.sampled_from(("on", "off", "random")))
        if diagonal != "random":
            np.fill_diagonal(m, diagonal == "on")
        if draw(st.booleans()):
            m[rng.random(n) < 0.2] = False  # empty some query rows
        if not keep_upper and draw(st.integers(0, 4)) > 0:
            m = np.tril(m)
        masks.append(m)
    return masks, causal
