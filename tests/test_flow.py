"""The flow constraint f(q) against networkx maximum flow with node splitting (tests/oracles.py),
its summary in ``check(flow=True)``, and the separation of the star from the published patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from oracles import brute_flow, brute_reach, random_masks, target_mask

import flowgraph as fg
from flowgraph.flow import flow_per_query


def masks_of(p: fg.Pattern) -> list[np.ndarray]:
    return [p.dense(s) for s in range(p.num_steps)]


@settings(max_examples=150, deadline=None)
@given(random_masks(max_n=16, max_steps=3))
def test_flow_matches_networkx_on_random_masks(drawn):
    masks, causal = drawn
    f = flow_per_query(fg.from_masks(masks, causal=causal))
    assert f.tolist() == brute_flow(masks, causal)


@settings(max_examples=60, deadline=None)
@given(random_masks(max_n=24, max_steps=3))
def test_flow_bounds(drawn):
    # 0 < f(q) iff some target key reaches q; f(q) ≤ q's last in-degree and ≤ its target keys
    masks, causal = drawn
    f = flow_per_query(fg.from_masks(masks, causal=causal))
    reach = brute_reach(masks)[-1] & target_mask(len(f), causal)
    for q, fq in enumerate(f.tolist()):
        assert (fq > 0) == bool(reach[q].any())
        assert fq <= min(int(masks[-1][q].sum()), q + 1 if causal else len(f))


@pytest.mark.parametrize(
    "p",
    [
        fg.star(12, hub=5),
        fg.strided(16, stride=4),
        fg.strided(12, stride=3, causal=False),
        fg.fixed(16, stride=4),
        fg.fixed(14, stride=4, summary=2, causal=False),
        fg.ltr(16, stride=4),
        fg.rtl(10, stride=4),
        fg.local(9, 3),
        fg.stack(fg.fixed(12, stride=3), layers=3, mode="interleave"),
    ],
    ids=lambda p: p.name,
)
def test_flow_matches_networkx_on_constructors(p):
    assert flow_per_query(p).tolist() == brute_flow(masks_of(p), p.causal)


@pytest.mark.parametrize("n", [1, 2, 7, 20])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_single_step_gives_every_target_key_its_own_channel(n, causal):
    fl = fg.check(fg.dense(n, causal=causal), flow=True).flow
    assert list(fl.per_query) == [q + 1 if causal else n for q in range(n)]
    assert fl.ratio == 1.0


@pytest.mark.parametrize(
    "p",
    [fg.fixed(16, stride=4), fg.ltr(12, stride=3), fg.star(9, hub=4), fg.strided(11)],
    ids=lambda p: p.name,
)
def test_check_flow_summarises_flow_per_query(p):
    fl = fg.check(p, flow=True).flow
    f = np.array(brute_flow(masks_of(p), p.causal))
    target = p.n * (p.n + 1) // 2 if p.causal else p.n * p.n
    assert list(fl.per_query) == f.tolist()
    assert (fl.min, fl.max, fl.total) == (f.min(), f.max(), f.sum())
    assert fl.median == np.median(f) and math.isclose(fl.mean, f.mean())
    assert math.isclose(fl.ratio, f.sum() / target)


def test_star_spokes_have_flow_two_and_the_hub_flow_n():
    n, hub = 10, 3
    f = flow_per_query(fg.star(n, hub=hub))
    assert f.tolist() == brute_flow(masks_of(fg.star(n, hub=hub)), False)
    assert f[hub] == n
    assert set(np.delete(f, hub).tolist()) == {2}


def test_flow_separates_the_star_from_the_published_patterns():
    # the requirement: at the same n the star is a bottleneck, the others are not
    n = 256
    star = fg.check(fg.star(n), flow=True).flow
    assert star.median == 2
    assert star.mean < 3
    others = {
        "strided": fg.strided(n),
        "strided-bi": fg.strided(n, causal=False),
        "fixed": fg.fixed(n),
        "fixed-bi": fg.fixed(n, causal=False),
        "ltr": fg.ltr(n),
        "rtl": fg.rtl(n),
    }
    for name, p in others.items():
        fl = fg.check(p, flow=True).flow
        assert fl.median >= 4 * star.median, name  # √n/2 = 8 or more, against the star's 2
        assert fl.mean > 2 * star.mean, name


@pytest.mark.parametrize("make", [lambda: fg.strided(600), lambda: fg.ltr(500, 7)])
def test_flow_in_threads_equals_one_thread(make):
    """Each query's max flow is independent: any thread count gives the same integers."""
    from flowgraph.flow import flow_per_query

    p = make()
    assert np.array_equal(flow_per_query(p, threads=2), flow_per_query(p, threads=1))
