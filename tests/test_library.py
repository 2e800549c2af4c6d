"""The pattern library (flowgraph/library.py) against brute-force masks written from each
constructor's formula (numpy broadcasting over every (q, k), sharing no code with the library),
its check reports against tests/oracles.py, its argument errors, the registry LIBRARY against the
constructors, and construction + check at n = 1,048,576."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_check
from test_check import assert_report_matches_brute_force

import flowgraph as fg
from flowgraph import library

NS = (1, 2, 5, 16, 37, 64)  # 37: no block, stride or window below divides it


def _qk(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[:, None], np.arange(n)[None, :]


# --- brute-force masks, written from the docstrings' formulas -----------------------------------
def brute_window(n: int, window: int, causal: bool) -> np.ndarray:
    q, k = _qk(n)
    return ((q - k >= 0) & (q - k < window)) if causal else (np.abs(q - k) < window)


def brute_dilated(n: int, window: int, dilation: int, causal: bool) -> np.ndarray:
    q, k = _qk(n)
    gap = q - k
    on = (gap % dilation == 0) & (np.abs(gap) // dilation < window)
    return on & (gap >= 0) if causal else on


def brute_sinks(n: int, window: int, sinks: int) -> np.ndarray:
    q, k = _qk(n)
    return (k <= q) & ((k < sinks) | (q - k < window))


def brute_longformer(n: int, window: int, globals_: list[int], causal: bool) -> np.ndarray:
    q, k = _qk(n)
    g = np.zeros(n, dtype=bool)
    g[list(globals_)] = True
    on = g[q] | g[k] | (np.abs(q - k) < window)
    return on & (k <= q) if causal else on


def brute_bigbird(
    n: int, block: int, window_blocks: int, global_blocks: int, random_blocks: int, seed: int,
    causal: bool,
) -> np.ndarray:  # fmt: skip
    nb = math.ceil(n / block)
    half = (window_blocks - 1) // 2
    globals_ = set(range(math.ceil(global_blocks / 2))) | set(range(nb - global_blocks // 2, nb))
    rng = np.random.default_rng(seed)
    chosen: dict[int, set[int]] = {}
    for i in range(nb):
        if i in globals_:
            continue
        cands = [
            j for j in range(nb)
            if j not in globals_ and abs(j - i) > half and (not causal or j < i)
        ]  # fmt: skip
        take = min(random_blocks, len(cands))
        if take:
            chosen[i] = {cands[x] for x in rng.choice(len(cands), size=take, replace=False)}
    m = np.zeros((n, n), dtype=bool)
    for q in range(n):
        for k in range(n):
            qb, kb = q // block, k // block
            m[q, k] = (
                qb in globals_ or kb in globals_ or abs(qb - kb) <= half
                or kb in chosen.get(qb, set())
            ) and (not causal or k <= q)  # fmt: skip
    return m


def brute_document(lengths: list[int], causal: bool, window: int | None) -> np.ndarray:
    n = sum(lengths)
    doc = np.repeat(np.arange(len(lengths)), lengths)
    q, k = _qk(n)
    on = doc[q] == doc[k]
    if causal:
        on &= k <= q
    if window is not None:
        on &= (q - k < window) if causal else (np.abs(q - k) < window)
    return on


def brute_prefix(n: int, prefix: int) -> np.ndarray:
    q, k = _qk(n)
    return (k <= q) | (k < prefix)


def brute_block_causal(n: int, block: int) -> np.ndarray:
    q, k = _qk(n)
    return k // block <= q // block


def brute_routed(n: int, block: int, top_k: int, seed: int | None) -> np.ndarray:
    """MoBA (and NSA's selection): own block up to q, plus top_k − 1 earlier blocks drawn per
    query block; seed None: every earlier block."""
    q, k = _qk(n)
    if seed is None:
        return k <= q
    nb = math.ceil(n / block)
    rng = np.random.default_rng(seed)
    chosen = np.zeros((nb, nb), dtype=bool)
    for i in range(1, nb):
        take = min(top_k - 1, i)
        if take:
            chosen[i, rng.choice(i, size=take, replace=False)] = True
    qb, kb = q // block, k // block
    return ((qb == kb) & (k <= q)) | chosen[qb, kb]


def brute_nsa_keys(n: int, l: int, d: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: E741
    """The compression branch: (n, m) key mask and (m, n) membership of each key's span."""
    m = (n - 1) // d + 1
    j = np.arange(m)
    keys_nm = j[None, :] * d + l - 1 <= np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    member_mn = (j[:, None] * d <= t) & (t <= np.minimum(j[:, None] * d + l - 1, n - 1))
    return keys_nm, member_mn


# --- dense masks against the brute force ---------------------------------------------------------
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_is_local_and_the_formula(n, causal):
    for window in sorted({1, min(2, n), min(3, n), max(1, n // 3), n}):
        p = fg.sliding_window(n, window, causal=causal)
        assert np.array_equal(p.dense(), brute_window(n, window, causal))
        assert p == fg.local(n, window, causal=causal)  # the same convention, entry for entry
        assert p.name == "sliding_window" and p.causal == causal


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 48), w=st.floats(0, 1), dil=st.floats(0, 1), causal=st.booleans())
def test_dilated_window_matches_the_formula(n, w, dil, causal):
    window, dilation = max(1, math.ceil(w * n)), max(1, math.ceil(dil * n))
    p = fg.dilated_window(n, window, dilation, causal=causal)
    assert np.array_equal(p.dense(), brute_dilated(n, window, dilation, causal))
    if dilation == 1:
        assert p == fg.sliding_window(n, window, causal=causal)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 48), w=st.floats(0, 1), s=st.floats(0, 1))
def test_sinks_window_matches_the_formula(n, w, s):
    window, sinks = max(1, math.ceil(w * n)), math.floor(s * n)
    p = fg.sinks_window(n, window, sinks=sinks)
    assert p.causal and np.array_equal(p.dense(), brute_sinks(n, window, sinks))


def test_sinks_window_zero_sinks_is_the_window():
    assert fg.sinks_window(20, 4, sinks=0) == fg.sliding_window(20, 4)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 48), w=st.floats(0, 1), causal=st.booleans(), data=st.data())
def test_longformer_matches_the_formula(n, w, causal, data):
    window = max(1, math.ceil(w * n))
    if data.draw(st.booleans(), label="count"):
        g = data.draw(st.integers(0, n), label="g")
        globals_, arg = list(range(g)), g
    else:  # scattered positions, so that runs of globals meet the window on both sides
        globals_ = data.draw(st.lists(st.integers(0, n - 1), unique=True), label="positions")
        arg = globals_
    p = fg.longformer(n, window, arg, causal=causal)
    assert np.array_equal(p.dense(), brute_longformer(n, window, globals_, causal))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 48),
    block=st.integers(1, 9),
    data=st.data(),
    seed=st.integers(0, 2**32),
    causal=st.booleans(),
)
def test_bigbird_matches_the_formula_and_its_documented_draw(n, block, data, seed, causal):
    block = min(block, n)
    nb = math.ceil(n / block)
    window_blocks = 2 * data.draw(st.integers(0, nb - 1), label="half") + 1
    global_blocks = data.draw(st.integers(0, nb), label="global")
    random_blocks = data.draw(st.integers(0, nb), label="random")
    args = (n, block, window_blocks, global_blocks, random_blocks, seed, causal)
    p = fg.bigbird(*args[:-1], causal=causal)
    assert np.array_equal(p.dense(), brute_bigbird(*args))


def test_bigbird_defaults_are_hf_bigbird_itc_and_reproducible():
    n, block = 37 * 8, 8  # 37 blocks, the last one full; and a short last block below
    for size in (n, n - 3):
        p = fg.bigbird(size, block=block, seed=7)
        assert np.array_equal(p.dense(), brute_bigbird(size, block, 3, 2, 3, 7, False))
        assert p == fg.bigbird(size, block=block, seed=7)
        assert p != fg.bigbird(size, block=block, seed=8)
    # a middle query block: 3 window + 2 global + 3 random key blocks
    assert fg.bigbird(n, block=block).block_layout(block)[0, 18].sum() == 8


@pytest.mark.parametrize("lengths", [[1], [5], [3, 1, 4, 1, 5], [16, 16], [2] * 9, [7, 30]])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 3])
def test_document_matches_the_formula(lengths, causal, window):
    if window is not None and window > sum(lengths):
        return
    p = fg.document(lengths, causal=causal, window=window)
    assert p.n == sum(lengths) and p.causal == causal
    assert np.array_equal(p.dense(), brute_document(lengths, causal, window))


def test_document_accepts_a_numpy_array_and_one_document_is_dense():
    assert fg.document(np.array([4, 4])) == fg.document([4, 4])
    assert fg.document([9]) == fg.dense(9)
    assert fg.document([9], causal=False) == fg.dense(9, causal=False)


@pytest.mark.parametrize("n", NS)
def test_prefix_lm_and_block_causal_match_the_formula(n):
    for prefix in sorted({0, 1, n // 2, n}):
        p = fg.prefix_lm(n, prefix)
        assert not p.causal and np.array_equal(p.dense(), brute_prefix(n, prefix))
    for block in sorted({1, min(2, n), min(3, n), max(1, n // 3), n}):
        p = fg.block_causal(n, block)
        assert not p.causal and np.array_equal(p.dense(), brute_block_causal(n, block))
    assert np.array_equal(fg.prefix_lm(n, 0).dense(), fg.dense(n).dense())
    assert np.array_equal(fg.block_causal(n, 1).dense(), fg.dense(n).dense())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 64),
    block=st.integers(1, 10),
    k=st.floats(0, 1),
    seed=st.none() | st.integers(0, 2**32),
)
def test_moba_matches_the_formula_and_its_documented_draw(n, block, k, seed):
    block = min(block, n)
    nb = math.ceil(n / block)
    top_k = max(1, math.ceil(k * nb))
    p = fg.moba(n, block, top_k, seed=seed)
    assert p.causal and np.array_equal(p.dense(), brute_routed(n, block, top_k, seed))


def test_moba_candidate_set_is_dense_causal_and_a_draw_keeps_top_k_blocks():
    assert np.array_equal(fg.moba(50, 8, 3).dense(), fg.dense(50).dense())
    layout = fg.moba(64, block=8, top_k=3, seed=1).block_layout(8)[0]
    assert layout.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]  # own + min(2, i) earlier
    assert np.array_equal(np.diag(layout), np.ones(8, bool)) and not np.triu(layout, 1).any()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 64),
    data=st.data(),
    seed=st.none() | st.integers(0, 2**32),
)
def test_nsa_branches_match_the_formulas(n, data, seed):
    l = data.draw(st.integers(1, n), label="cmp_block")  # noqa: E741
    d = data.draw(st.integers(1, l), label="cmp_stride")
    sel_block = data.draw(st.integers(1, n), label="sel_block")
    nb = math.ceil(n / sel_block)
    sel_blocks = data.draw(st.integers(1, nb), label="sel_blocks")
    window = data.draw(st.integers(1, n), label="window")
    p = fg.nsa(n, l, d, sel_block, sel_blocks, window, seed=seed)
    keys_nm, member_mn = brute_nsa_keys(n, l, d)
    assert p.compressed and p.causal and p.num_keys(0) == keys_nm.shape[1]
    assert np.array_equal(p.key_step(0).toarray(), keys_nm)
    assert p.key_spans[0] == fg.KeySpans.blocks(n, size=l, stride=d)
    flow = (keys_nm.astype(int) @ member_mn.astype(int)) > 0
    assert np.array_equal(p.dense(0), flow)
    assert np.array_equal(p.dense(1), brute_routed(n, sel_block, sel_blocks, seed))
    assert np.array_equal(p.dense(2), brute_window(n, window, True))
    assert p.edges()[0] == keys_nm.sum()  # a compressed key counts once


# --- check against the brute force ---------------------------------------------------------------
def _cases() -> list[tuple[str, fg.Pattern]]:
    out = []
    for n in (13, 32):
        out += [
            ("sliding_window", fg.sliding_window(n, 4)),
            ("sliding_window bidirectional", fg.sliding_window(n, 4, causal=False)),
            ("dilated_window", fg.dilated_window(n, 3, 3)),
            ("dilated_window bidirectional", fg.dilated_window(n, 3, 2, causal=False)),
            ("sinks_window", fg.sinks_window(n, 3, sinks=2)),
            ("longformer", fg.longformer(n, 3, 2)),
            ("longformer causal", fg.longformer(n, 3, [0, 5, 6], causal=True)),
            ("bigbird", fg.bigbird(n, 4, random_blocks=1)),
            ("bigbird causal", fg.bigbird(n, 3, global_blocks=1, causal=True, seed=3)),
            ("document", fg.document([5, n - 5])),
            ("document window", fg.document([3, n - 3], causal=False, window=2)),
            ("prefix_lm", fg.prefix_lm(n, 5)),
            ("block_causal", fg.block_causal(n, 5)),
            ("moba", fg.moba(n, 4, 2)),
            ("moba seeded", fg.moba(n, 4, 2, seed=5)),
        ]
    return out


@pytest.mark.parametrize(("label", "p"), _cases(), ids=[c[0] for c in _cases()])
def test_check_matches_the_brute_force(label, p):
    masks = [p.dense(s) for s in range(p.num_steps)]
    assert_report_matches_brute_force(fg.check(p), masks, p.causal)
    stacked = fg.stack(p, layers=3)  # reach across layers of the same pattern
    assert_report_matches_brute_force(fg.check(stacked), masks * 3, p.causal)


def _assert_reach_matches(r: fg.Report, flow_masks: list[np.ndarray], causal: bool) -> None:
    b = brute_check(flow_masks, causal)
    assert (r.full_information, r.missing_pairs, r.witness, r.reached, r.empty_rows) == (
        b.full_information, b.missing_pairs, b.witness, b.reached, b.empty_rows,
    )  # fmt: skip
    assert r.causality_violations == b.causality_violations == 0


@pytest.mark.parametrize("n", [1, 30, 64, 100])
@pytest.mark.parametrize("seed", [None, 2])
def test_nsa_check_in_order_and_as_one_layer_matches_the_brute_force(n, seed):
    p = fg.nsa(n, cmp_block=min(8, n), cmp_stride=min(4, n), sel_block=min(16, n),
               sel_blocks=1 if n < 32 else 2, window=min(6, n), seed=seed)  # fmt: skip
    flows = [p.dense(s) for s in range(3)]
    r = fg.check(p)
    _assert_reach_matches(r, flows, True)
    assert r == fg.check(p, engine="intervals")
    assert r.edges == tuple(int(p.key_step(s).sum()) for s in range(3))
    layer = fg.stack(p, layers=1, mode="heads")  # NSA sums its branches inside one layer
    union = flows[0] | flows[1] | flows[2]
    _assert_reach_matches(fg.check(layer), [union], True)
    _assert_reach_matches(fg.check(fg.stack(p, layers=2, mode="heads")), [union] * 2, True)


def test_documented_check_verdicts():
    """What the docstrings say fg.check reports for prefix_lm and block_causal."""
    n, prefix, block = 20, 6, 8
    r = fg.check(fg.prefix_lm(n, prefix))
    missing = sum(max(0, n - 1 - max(q, prefix - 1)) for q in range(n))
    assert (r.witness, r.missing_pairs, r.causal) == ((0, prefix), missing, False)
    assert fg.check(fg.prefix_lm(n, n)).full_information
    r = fg.check(fg.block_causal(n, block))
    assert r.witness == (0, block) and r.missing_pairs == int((~brute_block_causal(n, block)).sum())
    assert fg.check(fg.block_causal(n, n)).full_information
    # the window reaches back window − 1 positions a layer: sinks make one layer reach key 0
    assert fg.check(fg.sinks_window(n, 4, sinks=1)).witness == (5, 1)
    assert fg.check(fg.moba(n, 4, 2)).full_information  # the candidate set is dense causal


# --- n = 1,048,576 -------------------------------------------------------------------------------
MILLION = 2**20


def test_a_million_tokens_sliding_window():
    n, w = MILLION, 4096
    p = fg.sliding_window(n, w)
    r = fg.check(p)
    edges = w * (w + 1) // 2 + (n - w) * w
    assert r.edges == (edges,) and r.in_degree == ((1, w),)
    assert r.target_pairs == n * (n + 1) // 2
    assert r.missing_pairs == r.target_pairs - edges and r.witness == (w, 0)
    assert r.causality_violations == 0


def test_a_million_tokens_block_causal():
    n, block = MILLION, 4096
    p = fg.block_causal(n, block)
    r = fg.check(p)
    nb = n // block
    edges = block * block * nb * (nb + 1) // 2
    assert r.edges == (edges,) and r.target_pairs == n * n
    assert r.missing_pairs == n * n - edges and r.witness == (0, block)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: fg.dilated_window(n, 64, 8),
        lambda n: fg.sinks_window(n, 4096, sinks=4),
        lambda n: fg.longformer(n, 257, 1),
        lambda n: fg.bigbird(n, 64),
        lambda n: fg.document([n // 4] * 4),
        lambda n: fg.prefix_lm(n, 1024),
        lambda n: fg.moba(n, 4096, 3, seed=0),
    ],
    ids=["dilated_window", "sinks_window", "longformer", "bigbird", "document", "prefix_lm",
         "moba"],
)  # fmt: skip
def test_a_million_tokens_every_one_step_pattern_is_checked_from_its_rules(make):
    p = make(MILLION)
    assert p.rules is not None
    r = fg.check(p)
    assert r.n == MILLION and r.edges == p.edges() and r.causality_violations == 0


def test_a_million_tokens_nsa_as_one_layer():
    p = fg.nsa(MILLION, seed=0)
    r = fg.check(fg.stack(p, layers=1, mode="heads"))
    assert r.n == MILLION and r.causality_violations == 0
    # the compressed keys cover every token up to the last ended span, the window the rest
    assert r.full_information
    # without the compression branch one drawn selection and the window leave gaps
    rest = fg.Pattern.from_rules("selection+window", MILLION, True, list(p.rules[1:]))
    assert not fg.check(fg.stack(rest, layers=1, mode="heads")).full_information


# --- errors name the argument ---------------------------------------------------------------------
BAD = [
    (fg.sliding_window, (8, 0), ValueError, r"window must be in 1\.\.8 .*got window=0"),
    (fg.sliding_window, (8, 9), ValueError, "window=9"),
    (fg.sliding_window, (0, 1), ValueError, "n must be ≥ 1, got n=0"),
    (fg.sliding_window, (8, 2.0), TypeError, "window must be an int"),
    (fg.sliding_window, (8, 2, "yes"), TypeError, "causal must be True or False"),
    (fg.dilated_window, (8, 2, 0), ValueError, "dilation must be in 1..8"),
    (fg.sinks_window, (8, 2, 9), ValueError, r"sinks must be in 0\.\.8 .*got sinks=9"),
    (fg.sinks_window, (8, 2, -1), ValueError, "sinks=-1"),
    (fg.longformer, (8, 2, 9), ValueError, "global_tokens must be in 0..8"),
    (fg.longformer, (8, 2, [1, 8]), ValueError, r"global_tokens\[1\]=8 must be a position"),
    (fg.longformer, (8, 2, [3, 3]), ValueError, "global_tokens holds position 3 twice"),
    (fg.longformer, (8, 2, "ab"), TypeError, "global_tokens must be an int"),
    (fg.longformer, (8, 2, [0.5]), TypeError, "global_tokens must hold integer"),
    (fg.bigbird, (8, 0), ValueError, "block must be in 1..8"),
    (fg.bigbird, (64, 8, 2), ValueError, "window_blocks must be odd"),
    (fg.bigbird, (64, 8, 17), ValueError, r"window_blocks must be in 1\.\.15"),
    (fg.bigbird, (64, 8, 3, 9), ValueError, r"global_blocks must be in 0\.\.8 \(n=64 holds 8"),
    (fg.bigbird, (64, 8, 3, 2, 9), ValueError, "random_blocks must be in 0..8"),
    (fg.bigbird, (64, 8, 3, 2, 3, None), TypeError, "seed must be an int"),
    (fg.bigbird, (64, 8, 3, 2, 3, -1), ValueError, "seed must be in 0"),
    (fg.bigbird, (40, 64), ValueError, "block must be in 1..40"),
    (fg.document, ([],), ValueError, "lengths must hold at least one"),
    (fg.document, ([3, 0, 2],), ValueError, r"lengths\[1\] must be ≥ 1 .*got lengths\[1\]=0"),
    (fg.document, ("abc",), TypeError, "lengths must be a sequence"),
    (fg.document, ([2.5],), TypeError, "lengths must hold integers"),
    (fg.document, ([2**31],), ValueError, "lengths sum to n=2147483648, above 2\\*\\*31"),
    (fg.document, ([4, 4], True, 9), ValueError, "window must be in 1..8"),
    (fg.prefix_lm, (8, 9), ValueError, r"prefix must be in 0\.\.8 .*got prefix=9"),
    (fg.block_causal, (8, 9), ValueError, "block must be in 1..8"),
    (fg.moba, (64, 8, 0), ValueError, r"top_k must be in 1\.\.8 \(the own block"),
    (fg.moba, (64, 8, 9), ValueError, "top_k=9"),
    (fg.moba, (64, 8, 2, True), TypeError, "seed must be an int or None"),
    (fg.nsa, (64, 65), ValueError, "cmp_block must be in 1..64"),
    (fg.nsa, (64, 8, 9), ValueError, r"cmp_stride must be in 1\.\.8 \(1 ≤ cmp_stride ≤ cmp_block"),
    (fg.nsa, (64, 8, 4, 0), ValueError, "sel_block must be in 1..64"),
    (fg.nsa, (64, 8, 4, 16, 5), ValueError, r"sel_blocks must be in 1\.\.4 \(n=64 holds 4"),
    (fg.nsa, (64, 8, 4, 16, 2, 65), ValueError, "window must be in 1..64"),
    (fg.nsa, (256, 32, 16, 64, 4), ValueError, "window must be in 1..256"),  # default 512
]


@pytest.mark.parametrize(("make", "args", "exc", "match"), BAD)
def test_bad_arguments_are_refused_with_a_message_naming_them(make, args, exc, match):
    with pytest.raises(exc, match=match):
        make(*args)


def test_rules_too_large_are_refused_before_anything_is_built():
    # four runs of global tokens: the window and two pieces of each run outside it
    with pytest.raises(ValueError, match=r"its rules \(9 terms × n\) would need"):
        fg.longformer(4096, 3, [0, 100, 200, 300], max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes"):
        fg.sliding_window(MILLION, 8, max_bytes=2**20)


# --- the registry ---------------------------------------------------------------------------------
CONSTRUCTORS = [name for name in library.__all__ if name[0].islower()]
CLASSIC = ("dense", "local", "strided", "fixed", "fixed_heads", "ltr", "rtl", "star")


def test_the_registry_names_every_constructor():
    assert set(CONSTRUCTORS) | set(CLASSIC) <= set(fg.LIBRARY)
    for name, spec in fg.LIBRARY.items():
        assert spec.name == name
        assert spec.constructor is getattr(fg, name)
        assert spec.directions in (("causal", "bidirectional"), ("bidirectional", "causal"),
                                   ("causal",), ("bidirectional",))  # fmt: skip


def _values(spec: library.Spec, n: int) -> dict:
    """Values for the required parameters: two documents, or the lowest value."""
    if spec.n_from:
        return {"lengths": [max(1, n // 3), n - max(1, n // 3)] if n > 1 else [1]}
    return {p.name: p.bounds({"n": n})[0] for p in spec.params if p.required}


def _construct(spec: library.Spec, kwargs: dict) -> fg.Pattern:
    """The constructor called directly (no registry check in between)."""
    kwargs = dict(kwargs)
    n = kwargs.pop("n")
    if spec.n_from:
        return spec.constructor(kwargs.pop(spec.n_from), **kwargs)
    return spec.constructor(n, **kwargs)


@pytest.mark.parametrize("name", list(fg.LIBRARY))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 37, 64, 200])
def test_every_registry_default_builds_and_lies_in_its_range(name, n):
    spec = fg.LIBRARY[name]
    values = _values(spec, n)
    resolved = spec.resolve(None if spec.n_from else n, values)
    for p in spec.params:
        if p.kind == "ints" or (p.optional and resolved[p.name] is None):
            continue
        low, high = p.bounds(resolved)
        assert low <= resolved[p.name] <= high, (p.name, resolved)
    for direction in spec.directions:
        pattern = spec.build(None if spec.n_from else n, values, direction == "causal")
        assert pattern.name == name and pattern.n == n
        assert pattern.causal == (direction == "causal")
    default = spec.build(None if spec.n_from else n, values)
    assert default.causal == (spec.directions[0] == "causal")


@pytest.mark.parametrize("name", list(fg.LIBRARY))
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_registry_ranges_are_the_constructors_ranges(name, n):
    """The registry's low and high are accepted, one beyond each refused by the constructor
    with a message naming the parameter: the CLI and the dashboard offer what works."""
    spec = fg.LIBRARY[name]
    base = _values(spec, n)
    size = None if spec.n_from else n
    for p in spec.params:
        if p.kind == "ints":
            continue
        resolved = spec.resolve(size, base)
        low, high = p.bounds(resolved)
        for value in (low, high):
            if p.name == "window_blocks" and value % 2 == 0:
                continue
            spec.build(size, {**base, p.name: value})
        for value in (low - 1, high + 1):
            with pytest.raises(ValueError, match=p.name):
                spec.build(size, {**base, p.name: value})
            with pytest.raises(ValueError, match=p.name):
                _construct(spec, {**resolved, p.name: value})


def test_registry_errors_name_the_parameter_or_the_direction():
    with pytest.raises(ValueError, match="sinks_window takes no parameter 'stride'"):
        fg.LIBRARY["sinks_window"].build(64, {"stride": 4})
    with pytest.raises(ValueError, match=r"local needs window \(keys a side"):
        fg.LIBRARY["local"].build(64)
    with pytest.raises(ValueError, match="document needs lengths"):
        fg.LIBRARY["document"].build(None)
    with pytest.raises(ValueError, match="n=10 but the lengths of document sum to 9"):
        fg.LIBRARY["document"].build(10, {"lengths": [4, 5]})
    with pytest.raises(ValueError, match="ltr is bidirectional by definition"):
        fg.LIBRARY["ltr"].build(64, causal=True)
    with pytest.raises(ValueError, match="moba is causal by definition"):
        fg.LIBRARY["moba"].build(64, causal=False)
    assert fg.LIBRARY["document"].build(9, {"lengths": [4, 5]}) == fg.document([4, 5])


def test_registry_defaults_follow_n_and_the_constructor_otherwise():
    spec = fg.LIBRARY["bigbird"]
    assert spec.resolve(4096) == {
        "n": 4096, "block": 64, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3,
        "seed": 0,
    }  # fmt: skip
    assert spec.resolve(3)["global_blocks"] == 2 and spec.resolve(1)["global_blocks"] == 1
    nsa = fg.LIBRARY["nsa"].resolve(2**16)
    assert {k: v for k, v in nsa.items() if k != "n"} == {
        "cmp_block": 32, "cmp_stride": 16, "sel_block": 64, "sel_blocks": 16, "window": 512,
        "seed": None,
    }  # fmt: skip
    assert fg.LIBRARY["nsa"].build(2**12) == fg.nsa(2**12)
    assert fg.LIBRARY["strided"].build(50) == fg.strided(50)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 80), data=st.data(), seed=st.integers(0, 2**32))
def test_one_nsa_layer_sees_every_earlier_token_with_a_wide_enough_window(n, data, seed):
    """docs/patterns.md: window ≥ max(cmp_stride, cmp_block − 1) suffices, whatever the draw."""
    l = data.draw(st.integers(1, n), label="cmp_block")  # noqa: E741
    d = data.draw(st.integers(1, l), label="cmp_stride")
    window = max(d, l - 1, 1)
    if window > n:
        return
    sel_block = data.draw(st.integers(1, n), label="sel_block")
    p = fg.nsa(n, l, d, sel_block, 1, window, seed=seed)  # the selection: the own block only
    union = p.dense(0) | p.dense(1) | p.dense(2)
    assert np.array_equal(union, np.tril(np.ones((n, n), bool)))
    assert fg.check(fg.stack(p, layers=1, mode="heads")).full_information
