"""The interval engine (``check(engine="intervals")``) against the bitset engine and a brute
force: random rules, stacks and modes, causal and not, the library patterns at random parameters
and at n = 65,536; rules against their materialised CSR; thread counts, chunking and the
in-place compaction give the same counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_check
from test_check import assert_report_matches_brute_force

import flowgraph as fg
from flowgraph.intervals import interval_reach
from flowgraph.reach import reach_summary
from flowgraph.rule import StepRule


# --- random rules ------------------------------------------------------------------------------
@st.composite
def random_rules(draw, max_n: int = 80, max_steps: int = 3, max_terms: int = 3):
    """A Pattern of random StepRules: per step 1..max_terms progressions with random per-row
    starts, counts and strides (clipped into 0..n−1; terms may overlap: disjoint=False)."""
    n = draw(st.integers(1, max_n))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rules = []
    for _ in range(draw(st.integers(1, max_steps))):
        terms = draw(st.integers(1, max_terms))
        strides = [
            int(draw(st.sampled_from([1, 1, 2, 3, max(1, n // 4) or 1]))) for _ in range(terms)
        ]
        starts, counts = [], []
        for stride in strides:
            start = rng.integers(0, n, size=n)
            room = (n - 1 - start) // stride + 1  # keys that fit from start on
            count = np.minimum(rng.integers(0, max(2, n // 2), size=n), room)
            count[rng.random(n) < 0.1] = 0  # some empty terms
            starts.append(start)
            counts.append(count)
        rules.append(StepRule(n, starts, counts, strides, disjoint=False))
    return fg.Pattern.from_rules("random", n, causal, rules)


def assert_engines_agree(p: fg.Pattern) -> fg.Report:
    a = fg.check(p, engine="intervals")
    b = fg.check(p, engine="bitsets")
    assert a == b
    return a


@settings(max_examples=300, deadline=None)
@given(random_rules())
def test_intervals_equal_bitsets_and_the_brute_force_on_random_rules(p):
    r = assert_engines_agree(p)
    assert_report_matches_brute_force(r, [p.dense(s) for s in range(p.num_steps)], p.causal)


@settings(max_examples=100, deadline=None)
@given(
    random_rules(max_n=60, max_steps=2),
    st.integers(1, 5),
    st.sampled_from(["interleave", "merged", "heads"]),
    st.integers(1, 3),
)
def test_intervals_equal_bitsets_on_stacks_in_every_mode(p, layers, mode, heads):
    s = fg.stack(p, layers, mode, heads if mode == "heads" else None)
    assert s.rules is not None  # a rule pattern's stack keeps rules
    assert_engines_agree(s)


LIBRARY = {
    "dense": lambda n, w, c, causal: fg.dense(n, causal),
    "local": lambda n, w, c, causal: fg.local(n, w, causal),
    "strided": lambda n, w, c, causal: fg.strided(n, w, causal),
    "fixed": lambda n, w, c, causal: fg.fixed(n, w, c, causal),
    "ltr": lambda n, w, c, causal: fg.ltr(n, w),
    "rtl": lambda n, w, c, causal: fg.rtl(n, w),
    "star": lambda n, w, c, causal: fg.star(n, w - 1),
}


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(sorted(LIBRARY)),
    st.integers(1, 3000),
    st.data(),
    st.booleans(),
    st.sampled_from([None, "interleave", "merged", "heads"]),
)
def test_intervals_equal_bitsets_on_library_patterns(name, n, data, causal, mode):
    width = data.draw(st.integers(1, min(n, 80)))  # the stride, window or hub + 1
    c = data.draw(st.integers(1, min(width, 8)))
    p = LIBRARY[name](n, width, c, causal)
    if mode is not None:
        p = fg.stack(p, data.draw(st.integers(1, 3)), mode)
    assert_engines_agree(p)


@pytest.mark.parametrize(
    "make",
    [
        fg.strided,
        fg.fixed,
        fg.ltr,
        fg.rtl,
        lambda n: fg.local(n, 256),
        fg.star,
        lambda n: fg.strided(n, causal=False),
        lambda n: fg.fixed(n, causal=False),
    ],
    ids=["strided", "fixed", "ltr", "rtl", "local", "star", "strided-bi", "fixed-bi"],
)
def test_intervals_equal_bitsets_at_n_65536(make):
    """Every library pattern at its default parameters, at the size the old engine could reach
    (dense is left out: its 2·10⁹ entries never fitted the bitset engine's CSR)."""
    assert_engines_agree(make(65536))


# --- the engine's own guarantees ----------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_and_chunks_give_the_same_counts(threads):
    """Integer counts merged in row order: any chunking gives the same reach summary."""
    for p in (fg.strided(20000, 100), fg.ltr(20001, 97), fg.fixed(20000, 50, 3)):
        want = interval_reach(p.rules, p.causal, threads=1)
        assert interval_reach(p.rules, p.causal, threads=threads) == want


@settings(max_examples=150, deadline=None)
@given(random_rules(max_n=60), st.integers(2, 12))
def test_compacting_a_rows_union_in_place_changes_nothing(p, compact_at):
    """A tiny gather buffer forces the in-place merge that bounds a huge row's memory."""
    want = reach_summary(p)
    assert interval_reach(p.rules, p.causal, compact_at=compact_at) == want


def test_a_dense_step_after_a_fragmented_one_is_compacted():
    """Row q of the dense step gathers every row of the fragmented step: ~n²/8 keys, merged in
    place as they come."""
    n = 600
    q = np.arange(n)
    fragmented = StepRule(n, q % 4, (n - 1 - q % 4) // 4 + 1, 4)  # every 4th key
    p = fg.Pattern.from_rules("frag-dense", n, False, [fragmented, fg.dense(n, False).rules[0]])
    assert interval_reach(p.rules, False, compact_at=64) == reach_summary(p)
    assert fg.check(p).full_information


def test_progress_counts_every_row_of_every_step():
    seen = []
    r = fg.check(fg.strided(5000), progress=seen.append)
    assert sum(seen) == 2 * 5000 and r.full_information


# --- rules ------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(random_rules(max_n=50, max_steps=1), st.booleans())
def test_a_rule_materialises_to_its_definition(p, disjoint_view):
    rule = p.rules[0]
    start_tn, count_tn, stride_t = rule.terms()
    want = np.zeros((p.n, p.n), bool)
    for t in range(rule.num_terms):
        for q in range(p.n):
            for i in range(count_tn[t, q]):
                want[q, start_tn[t, q] + i * stride_t[t]] = True
    assert np.array_equal(rule.to_csr().toarray(), want)
    assert np.array_equal(rule.degrees(), want.sum(axis=1))
    assert rule.causality_violations() == int(np.triu(want, 1).sum())
    b = brute_check([want], p.causal)
    assert p.edges() == b.edges


def test_library_rules_are_disjoint_as_promised():
    """Disjoint rules count by arithmetic; the materialised rows must agree."""
    for p in (fg.ltr(1000, 7), fg.rtl(999, 10), fg.star(50, 3), fg.fixed(1000, 9, 8, False)):
        for rule in p.rules:
            assert rule.disjoint
            assert np.array_equal(rule.degrees(), np.diff(rule.to_csr().indptr))
            assert rule.causality_violations() == int(
                (rule.to_csr().tocoo().col > rule.to_csr().tocoo().row).sum()
            )


def test_rules_refuse_keys_outside_the_pattern():
    with pytest.raises(ValueError, match=r"every key of a rule must lie in 0\.\.9"):
        StepRule(10, np.full(10, 5), np.full(10, 3), 3)  # 5, 8, 11
    with pytest.raises(ValueError, match=r"stride must be ≥ 1"):
        StepRule(10, 0, 1, 0)
    with pytest.raises(TypeError, match=r"start must hold integer arrays, got dtype float64"):
        StepRule(10, np.zeros(10), 1, 1)


# --- a million tokens -------------------------------------------------------------------------
def test_a_million_token_pattern_builds_small_and_checks_without_its_csr():
    """strided(2²⁰) has 1.6·10⁹ entries: the rules are a few MB, check needs no CSR, and the
    counts equal the closed forms."""
    n, l = 2**20, 1024  # noqa: E741
    p = fg.strided(n)
    assert p.params == {"stride": l}
    q = np.arange(n, dtype=np.int64)
    assert p.edges() == (int((np.minimum(q, l) + 1).sum()), int((q // l + 1).sum()))
    with pytest.raises(ValueError, match=r"CSR steps of strided\(n=1048576, stride=1024\) with"):
        p.steps  # noqa: B018
    r = fg.check(fg.ltr(2**18))
    assert r.full_information and r.edges_total == sum(fg.ltr(2**18).edges())
    r = fg.check(fg.ltr(2**18 + 1))  # the stride 512 does not divide n: the last block is lost
    assert r.witness == (0, 2**18) and r.missing_pairs == 2**18


def test_engine_errors_name_the_argument():
    masks = fg.from_masks(np.ones((4, 4), bool), causal=True)
    with pytest.raises(ValueError, match=r"engine='intervals' needs a pattern given by rules"):
        fg.check(masks, engine="intervals")
    with pytest.raises(ValueError, match=r"engine must be one of 'auto', 'intervals', 'bitsets'"):
        fg.check(masks, engine="fast")
    with pytest.raises(TypeError, match=r"progress must be a bool or a callable, got str"):
        fg.check(masks, progress="yes")
    with pytest.raises(ValueError, match=r"check\(pattern\) at n=1048576 would need about"):
        fg.check(fg.strided(2**20), max_bytes=2**20)
