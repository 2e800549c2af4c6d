"""``check`` against a brute force: dense boolean matrix products (tests/oracles.py) on random
small patterns, the published patterns' known verdicts, and a sparse-product cross-check at
n = 2048 that shares no code with the bitset engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_check, random_masks, target_mask

import flowgraph as fg


def masks_of(p: fg.Pattern) -> list[np.ndarray]:
    return [p.dense(s) for s in range(p.num_steps)]


def assert_report_matches_brute_force(r: fg.Report, masks: list[np.ndarray], causal: bool) -> None:
    b = brute_check(masks, causal)
    n = masks[0].shape[0]
    assert (r.n, r.causal, r.num_steps) == (n, causal, len(masks))
    assert r.full_information == b.full_information
    assert r.target_pairs == b.target_pairs
    assert r.missing_pairs == b.missing_pairs
    assert r.reached == b.reached
    assert r.witness == b.witness
    if r.witness is not None:
        q, k = r.witness
        assert b.missing[q, k], "the witness must really be missing"
        assert not b.missing[:q].any(), "no smaller query may miss a key"
        assert not b.missing[q, :k].any(), "no smaller key may be missing for the witness query"
    assert r.empty_rows == b.empty_rows
    assert r.causality_violations == b.causality_violations
    assert r.edges == b.edges
    assert r.edges_total == sum(b.edges)
    assert math.isclose(r.edge_ratio, sum(b.edges) / n**1.5, rel_tol=1e-12)
    assert r.in_degree == b.in_degree
    assert r.constant_in_degree == all(lo == hi for lo, hi in b.in_degree)
    assert r.flow is None


# --- properties against the brute force ----------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(random_masks(max_n=64, max_steps=4))
def test_check_matches_brute_force_on_random_masks(drawn):
    masks, causal = drawn
    r = fg.check(fg.from_masks(masks, causal=causal))
    assert_report_matches_brute_force(r, masks, causal)


@settings(max_examples=150, deadline=None)
@given(random_masks(max_n=130, max_steps=3))
def test_check_matches_brute_force_across_word_boundaries(drawn):
    # n above 64 and 128 exercises the packed words' edges (bits past n must never count)
    masks, causal = drawn
    r = fg.check(fg.from_masks(masks, causal=causal))
    assert_report_matches_brute_force(r, masks, causal)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 40),
    stride=st.integers(1, 40),
    summary=st.integers(1, 40),
    causal=st.booleans(),
    kind=st.sampled_from(["strided", "fixed", "ltr", "rtl", "local"]),
)
def test_check_matches_brute_force_on_constructors(n, stride, summary, causal, kind):
    # the constructors' nested rows take the engine's row-reuse shortcuts: check those too
    stride = min(stride, n)
    if kind == "strided":
        p = fg.strided(n, stride=stride, causal=causal)
    elif kind == "fixed":
        p = fg.fixed(n, stride=stride, summary=min(summary, stride), causal=causal)
    elif kind == "local":
        p = fg.local(n, stride, causal=causal)
    else:
        p = getattr(fg, kind)(n, stride=stride)
    assert_report_matches_brute_force(fg.check(p), masks_of(p), p.causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    "n,densities", [(600, (0.6, 0.6, 0.6)), (600, (0.003, 0.6, 0.01)), (520, (0.02, 0.02, 0.02))]
)
def test_check_matches_brute_force_on_long_random_rows(n, densities, causal):
    # rows of several hundred unrelated keys take the engine's general OR (gathered in chunks);
    # after a sparse step every one of those keys contributes bits of its own
    rng = np.random.default_rng(n)
    masks = [rng.random((n, n)) < d for d in densities]
    r = fg.check(fg.from_masks(masks, causal=causal))
    b = brute_check(masks, causal)
    assert (r.reached, r.missing_pairs, r.witness) == (b.reached, b.missing_pairs, b.witness)


@pytest.mark.parametrize("causal", [True, False])
def test_check_without_diagonal_and_with_empty_rows(causal):
    # step 1 drops the diagonal and leaves query 2 empty; step 2 is a shift
    n = 6
    step1 = np.zeros((n, n), dtype=bool)
    step1[1, 0] = step1[3, 1] = step1[4, 0] = step1[5, 4] = True
    step1[0, 0] = True
    step2 = np.eye(n, dtype=bool)
    step2[[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]] = True
    masks = [step1, step2]
    r = fg.check(fg.from_masks(masks, causal=causal))
    assert_report_matches_brute_force(r, masks, causal)
    assert r.empty_rows[0] == (2,)
    assert not r.full_information


def test_reached_is_not_monotone_without_the_diagonal():
    # a shift by one in each step: after two steps only k = q − 2 reaches q
    n = 8
    shift = np.eye(n, k=-1, dtype=bool)
    masks = [np.tril(np.ones((n, n), dtype=bool)), shift, shift]
    r = fg.check(fg.from_masks(masks, causal=True))
    assert_report_matches_brute_force(r, masks, True)
    assert r.reached[0] == r.target_pairs > r.reached[1] > r.reached[2]


# --- the published patterns ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ltr", "rtl"])
@pytest.mark.parametrize("n,stride", [(4, 2), (9, 3), (16, 4), (12, 3), (12, 4), (12, 6), (64, 8)])
def test_ltr_rtl_have_full_information_when_the_stride_divides_n(kind, n, stride):
    p = getattr(fg, kind)(n, stride=stride)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), False)
    assert r.full_information and r.missing_pairs == 0 and r.witness is None


def test_ltr_loses_information_when_the_stride_does_not_divide_n():
    p = fg.ltr(10, stride=4)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), False)
    # keys 8 and 9 sit in the partial last block, which has no summary column (k mod 4 = 3)
    assert not r.full_information
    assert r.witness == (0, 8)


@pytest.mark.parametrize("n,stride", [(10, 4), (10, 3), (17, 4), (50, 7)])
def test_rtl_keeps_full_information_when_the_stride_does_not_divide_n(n, stride):
    # RTL's summary columns are block starts (k mod l = 0), and a partial last block has one
    p = fg.rtl(n, stride=stride)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), False)
    assert r.full_information


@pytest.mark.parametrize("n,stride", [(10, 3), (17, 4), (50, 7), (100, 9)])
def test_ltr_fails_whenever_the_last_block_is_partial(n, stride):
    p = fg.ltr(n, stride=stride)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), False)
    assert not r.full_information
    assert r.witness == (0, n - n % stride)  # query 0 never sees the first key of that block


@pytest.mark.parametrize("n,hub", [(1, 0), (2, 1), (16, 0), (33, 20)])
def test_star_has_full_information_with_linear_edges(n, hub):
    p = fg.star(n, hub=hub)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), False)
    assert r.full_information
    assert r.edges_total <= 2 * 3 * n


@pytest.mark.parametrize("n,stride", [(16, 4), (64, 8), (30, 5)])
def test_openai_fixed_causal_summary_1_lacks_full_information(n, stride):
    p = fg.fixed(n, stride=stride)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), True)
    assert not r.full_information
    assert 0 in r.empty_rows[1]  # query 0 attends nothing at step 2 (k mod l = l−1, k ≤ 0)
    assert r.witness == (0, 0)


@pytest.mark.parametrize("n,stride", [(16, 4), (64, 8), (30, 5), (10, 4)])
def test_openai_strided_causal_has_full_information(n, stride):
    p = fg.strided(n, stride=stride)
    r = fg.check(p)
    assert_report_matches_brute_force(r, masks_of(p), True)
    assert r.full_information
    assert r.causality_violations == 0


def test_dense_single_step_reaches_every_target_pair():
    for causal in (True, False):
        r = fg.check(fg.dense(9, causal=causal))
        assert r.full_information and r.reached == (r.target_pairs,)
        assert r.target_pairs == (45 if causal else 81)
        assert r.constant_in_degree is (not causal)


def test_check_refuses_a_non_pattern():
    with pytest.raises(TypeError, match=r"pattern must be a flowgraph\.Pattern, got ndarray"):
        fg.check(np.eye(3, dtype=bool))


# --- the report ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize(
    "p",
    [fg.fixed(16, stride=4), fg.ltr(10, stride=4), fg.star(8), fg.strided(9, causal=False)],
    ids=lambda p: p.name,
)
def test_to_dict_round_trips_through_json(p, flow):
    r = fg.check(p, flow=flow)
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["witness"] == (list(r.witness) if r.witness else None)
    assert d["full_information"] is r.full_information
    assert (d["flow"] is None) is (not flow)
    assert set(d) == set(r.__dataclass_fields__)


def test_report_is_frozen():
    r = fg.check(fg.dense(3))
    with pytest.raises(AttributeError):
        r.full_information = False  # type: ignore[misc]


def test_summary_names_the_witness():
    r = fg.check(fg.ltr(10, stride=4))
    q, k = r.witness
    text = r.summary()
    assert "NOT full information" in text
    line = next(line for line in text.splitlines() if "witness" in line)
    assert f"key {k}" in line and f"query {q}" in line
    assert f"{r.missing_pairs:,}" in line


def test_summary_without_witness():
    text = fg.check(fg.rtl(16, stride=4)).summary()
    assert "full information" in text and "NOT" not in text and "witness" not in text


def test_summary_mentions_empty_rows_causality_and_flow():
    text = fg.check(fg.fixed(16, stride=4), flow=True).summary()
    assert "empty query rows" in text and "query 0 attends nothing" in text
    assert "causality violations" in text
    assert "flow per query" in text


# --- a larger n against an independent computation -----------------------------------------------
def sparse_reach(p: fg.Pattern) -> list[sp.csr_array]:
    """R_s by scipy sparse int products (R_{s+1} = M_{s+1} · R_s), clipped back to 0/1."""
    reach = None
    out = []
    for m in p.steps:
        mi = sp.csr_array(m, dtype=np.int32)
        reach = mi if reach is None else mi @ reach
        reach = sp.csr_array((reach > 0).astype(np.int32))
        out.append(reach)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda n: fg.strided(n),
        lambda n: fg.strided(n, causal=False),
        lambda n: fg.fixed(n),
        lambda n: fg.fixed(n, summary=3, causal=False),
        lambda n: fg.ltr(n),
        lambda n: fg.rtl(n),
        lambda n: fg.ltr(n, stride=48),  # 48 does not divide 2048: information is lost
        lambda n: fg.stack(fg.fixed(n, stride=32), layers=3, mode="interleave"),
    ],
    ids=["strided", "strided-bi", "fixed", "fixed-bi-c3", "ltr", "rtl", "ltr-48", "fixed-x3"],
)
def test_check_at_n_2048_matches_sparse_products(make):
    n = 2048
    p = make(n)
    r = fg.check(p)
    target = sp.csr_array(target_mask(n, p.causal).astype(np.int32))
    reach = sparse_reach(p)
    reached = tuple(int((ri.multiply(target)).sum()) for ri in reach)
    assert r.reached == reached
    assert r.missing_pairs == r.target_pairs - reached[-1]
    missing = target.toarray().astype(bool) & ~reach[-1].toarray().astype(bool)
    first = np.argwhere(missing)  # row-major: the smallest query, then its smallest key
    assert r.witness == (tuple(int(x) for x in first[0]) if first.size else None)
    assert r.full_information == (first.size == 0)
