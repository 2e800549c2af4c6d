"""Constructors and the Pattern object.

Each constructor is compared with its definition from the issue written as a plain double loop
over (q, k) — the formula, literally — for many n and strides, plus a few small cases drawn as
pictures ('1' = query row attends key column).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp

import flowgraph as fg


def grid(*rows: str) -> np.ndarray:
    """A bool mask from a picture: one string per query row, '1' where it attends the key."""
    return np.array([[ch == "1" for ch in row] for row in rows], dtype=bool)


def masks_of(p: fg.Pattern) -> list[np.ndarray]:
    return [p.dense(s) for s in range(p.num_steps)]


def by_loop(n: int, *rules) -> list[np.ndarray]:
    """One (n, n) mask per rule(q, k) -> bool, filled by a double loop."""
    out = []
    for rule in rules:
        m = np.zeros((n, n), dtype=bool)
        for q in range(n):
            for k in range(n):
                m[q, k] = rule(q, k)
        out.append(m)
    return out


# --- the definitions of the issue, literally -----------------------------------------------------
def def_dense(n, causal):
    return by_loop(n, lambda q, k: k <= q if causal else True)


def def_local(n, window, causal):
    if causal:
        return by_loop(n, lambda q, k: q - window < k <= q)
    return by_loop(n, lambda q, k: abs(q - k) < window)


def def_strided(n, l, causal):  # noqa: E741
    if causal:
        return by_loop(
            n,
            lambda q, k: max(0, q - l) <= k <= q,
            lambda q, k: (q - k) % l == 0 and k <= q,
        )
    return by_loop(n, lambda q, k: abs(q - k) <= l, lambda q, k: (q - k) % l == 0)


def def_fixed(n, l, c, causal):  # noqa: E741
    return by_loop(
        n,
        lambda q, k: k // l == q // l and (k <= q or not causal),
        lambda q, k: k % l >= l - c and (k <= q or not causal),
    )


def def_ltr(n, l):  # noqa: E741
    return by_loop(n, lambda q, k: q - (q % l) <= k <= q, lambda q, k: k == q or k % l == l - 1)


def def_rtl(n, l):  # noqa: E741
    return by_loop(
        n, lambda q, k: q <= k < min(n, (q // l + 1) * l), lambda q, k: k == q or k % l == 0
    )


def def_star(n, hub):
    rule = lambda q, k: q == hub or k == hub or k == q  # noqa: E731
    return by_loop(n, rule, rule)


def def_block(layout_snn, block, n, causal):
    return [
        by_loop(
            n,
            lambda q, k, lay=lay: (
                bool(lay[q // block, k // block])
                and (not causal or q // block != k // block or k <= q)
            ),
        )[0]
        for lay in layout_snn
    ]


def n_stride_cases(ns=(1, 2, 3, 5, 7, 8, 10, 16, 17, 24)):
    """(n, stride) pairs: stride 1, 2, 3, 4, ⌊√n⌋, n−1 and n — dividing n or not."""
    cases = []
    for n in ns:
        for l in sorted({1, 2, 3, 4, math.isqrt(n), n - 1, n}):  # noqa: E741
            if 1 <= l <= n:
                cases.append((n, l))
    return cases


def assert_masks(p: fg.Pattern, expected: list[np.ndarray]) -> None:
    got = masks_of(p)
    assert len(got) == len(expected)
    for s, (g, e) in enumerate(zip(got, expected, strict=True)):
        diff = np.argwhere(g != e)
        assert diff.size == 0, f"step {s}: first differing (q, k) = {diff[0].tolist()}"


# --- every constructor against its definition ----------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_dense_definition(n, causal):
    p = fg.dense(n, causal=causal)
    assert (p.name, p.n, p.causal, p.num_steps) == ("dense", n, causal, 1)
    assert_masks(p, def_dense(n, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,window", [(1, 1), (5, 1), (5, 2), (9, 4), (9, 9), (16, 3)])
def test_local_definition(n, window, causal):
    p = fg.local(n, window, causal=causal)
    assert p.params == {"window": window}
    assert_masks(p, def_local(n, window, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,stride", n_stride_cases())
def test_strided_definition(n, stride, causal):
    p = fg.strided(n, stride=stride, causal=causal)
    assert (p.name, p.n, p.causal, p.params) == ("strided", n, causal, {"stride": stride})
    assert_masks(p, def_strided(n, stride, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,stride", n_stride_cases())
def test_fixed_definition(n, stride, causal):
    for summary in sorted({1, 2, stride}):
        if summary > stride:
            continue
        p = fg.fixed(n, stride=stride, summary=summary, causal=causal)
        assert p.params == {"stride": stride, "summary": summary}
        assert p.causal is causal
        assert_masks(p, def_fixed(n, stride, summary, causal))


@pytest.mark.parametrize("n,stride", n_stride_cases())
def test_ltr_definition(n, stride):
    p = fg.ltr(n, stride=stride)
    assert (p.name, p.causal, p.params) == ("ltr", False, {"stride": stride})
    assert_masks(p, def_ltr(n, stride))


@pytest.mark.parametrize("n,stride", n_stride_cases())
def test_rtl_definition(n, stride):
    p = fg.rtl(n, stride=stride)
    assert (p.name, p.causal, p.params) == ("rtl", False, {"stride": stride})
    assert_masks(p, def_rtl(n, stride))


@pytest.mark.parametrize("n,hub", [(1, 0), (2, 1), (5, 0), (5, 2), (5, 4), (12, 7)])
def test_star_definition(n, hub):
    p = fg.star(n, hub=hub)
    assert (p.name, p.causal, p.num_steps, p.params) == ("star", False, 2, {"hub": hub})
    assert_masks(p, def_star(n, hub))


def test_star_default_hub_is_zero():
    assert fg.star(7) == fg.star(7, hub=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 9, 15, 16, 17, 63, 64, 65, 99, 100, 101, 1000])
def test_default_stride_is_floor_sqrt_n(n):
    floor_sqrt = max(l for l in range(1, n + 1) if l * l <= n)  # noqa: E741
    for make in (fg.strided, fg.fixed, fg.ltr, fg.rtl):
        p = make(n)
        assert p.params["stride"] == floor_sqrt
        assert p == make(n, stride=floor_sqrt)


# --- small cases as pictures ---------------------------------------------------------------------
def test_strided_small_causal():
    p = fg.strided(5, stride=2)
    step1 = grid("10000", "11000", "11100", "01110", "00111")
    step2 = grid("10000", "01000", "10100", "01010", "10101")
    assert_masks(p, [step1, step2])


def test_strided_small_bidirectional():
    p = fg.strided(5, stride=2, causal=False)
    step1 = grid("11100", "11110", "11111", "01111", "00111")
    step2 = grid("10101", "01010", "10101", "01010", "10101")
    assert_masks(p, [step1, step2])


def test_fixed_small_causal_summary_1():
    p = fg.fixed(6, stride=3)
    step1 = grid("100000", "110000", "111000", "000100", "000110", "000111")
    step2 = grid("000000", "000000", "001000", "001000", "001000", "001001")
    assert_masks(p, [step1, step2])


def test_fixed_small_bidirectional_summary_2():
    p = fg.fixed(6, stride=3, summary=2, causal=False)
    step1 = grid("111000", "111000", "111000", "000111", "000111", "000111")
    step2 = grid(*["011011"] * 6)
    assert_masks(p, [step1, step2])


def test_fixed_small_causal_summary_2_partial_block():
    p = fg.fixed(5, stride=3, summary=2)
    step1 = grid("10000", "11000", "11100", "00010", "00011")
    step2 = grid("00000", "01000", "01100", "01100", "01101")
    assert_masks(p, [step1, step2])


def test_ltr_small():
    p = fg.ltr(6, stride=3)
    step1 = grid("100000", "110000", "111000", "000100", "000110", "000111")
    step2 = grid("101001", "011001", "001001", "001101", "001011", "001001")
    assert_masks(p, [step1, step2])


def test_rtl_small_partial_block():
    p = fg.rtl(5, stride=3)
    step1 = grid("11100", "01100", "00100", "00011", "00001")
    step2 = grid("10010", "11010", "10110", "10010", "10011")
    assert_masks(p, [step1, step2])


def test_star_small():
    p = fg.star(4, hub=1)
    mask = grid("1100", "1111", "0110", "0101")
    assert_masks(p, [mask, mask])


def test_local_small():
    assert_masks(fg.local(4, 2), [grid("1000", "1100", "0110", "0011")])
    assert_masks(fg.local(4, 2, causal=False), [grid("1100", "1110", "0111", "0011")])


# --- from_masks ----------------------------------------------------------------------------------
def _random_steps(n: int, steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((steps, n, n)) < 0.3


@pytest.mark.parametrize("causal", [True, False])
def test_from_masks_dense_2d(causal):
    m = _random_steps(7, 1)[0]
    p = fg.from_masks(m, causal=causal)
    assert (p.name, p.n, p.causal, p.num_steps, p.params) == ("custom", 7, causal, 1, {})
    assert_masks(p, [m])


@pytest.mark.parametrize(
    "to_sparse", [sp.csr_array, sp.coo_array, sp.csc_matrix, sp.lil_array, sp.dok_array]
)
def test_from_masks_sparse(to_sparse):
    m = _random_steps(9, 1, seed=1)[0]
    p = fg.from_masks(to_sparse(m), causal=False, name="mine")
    assert p.name == "mine"
    assert_masks(p, [m])
    assert p == fg.from_masks(m, causal=False)


def test_from_masks_3d_array():
    m = _random_steps(6, 3, seed=2)
    p = fg.from_masks(m, causal=True)
    assert p.num_steps == 3
    assert_masks(p, list(m))


def test_from_masks_list_of_mixed_masks():
    m = _random_steps(6, 3, seed=3)
    p = fg.from_masks([m[0], sp.csr_array(m[1]), m[2].tolist()], causal=False)
    assert_masks(p, list(m))


def test_from_masks_nested_list_is_one_mask():
    p = fg.from_masks([[True, False], [True, True]], causal=True)
    assert_masks(p, [grid("10", "11")])


def test_from_masks_drops_stored_false_and_sums_duplicates():
    # stored explicit False entries are not edges; duplicate entries count once
    coo = sp.coo_array(
        (np.array([True, False, True, True]), (np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]))),
        shape=(3, 3),
    )
    p = fg.from_masks(coo, causal=True)
    assert_masks(p, [grid("100", "000", "010")])
    assert p.edges() == (2,)


def test_from_masks_copies_its_input():
    m = _random_steps(5, 1, seed=4)[0]
    csr = sp.csr_array(m)
    p, q = fg.from_masks(m, causal=False), fg.from_masks(csr, causal=False)
    m[:] = ~m
    csr.data[:] = False
    assert_masks(p, [~m])
    assert_masks(q, [~m])


# --- from_block_layout ---------------------------------------------------------------------------
def test_from_block_layout_small_causal():
    # block (0, 2) lies above the diagonal: kept as given; the diagonal blocks are cut to k ≤ q
    layout = grid("101", "110", "011")
    p = fg.from_block_layout(layout, block=2, causal=True)
    expected = grid(
        "100011",
        "110011",
        "111000",
        "111100",
        "001110",
        "001111",
    )
    assert (p.name, p.n, p.params) == ("block", 6, {"block": 2, "causal_diagonal": True})
    assert_masks(p, [expected])
    assert fg.check(p).causality_violations == 4  # the whole above-diagonal block


def test_from_block_layout_small_bidirectional_partial_last_block():
    layout = grid("11", "01")
    p = fg.from_block_layout(layout, block=3, causal=False, n=4, name="mine")
    expected = grid("1111", "1111", "1111", "0001")
    assert (p.name, p.n) == ("mine", 4)
    assert_masks(p, [expected])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block,nb,cut", [(1, 5, 0), (2, 4, 0), (3, 3, 1), (4, 3, 3), (5, 2, 2)])
def test_from_block_layout_definition(block, nb, cut, causal):
    layout = np.random.default_rng(block * 10 + nb).random((3, nb, nb)) < 0.5
    n = nb * block - cut
    p = fg.from_block_layout(layout, block=block, causal=causal, n=n if cut else None, mode="steps")
    assert (p.n, p.num_steps, p.causal) == (n, 3, causal)
    assert_masks(p, def_block(layout, block, n, causal))


def test_from_block_layout_round_trips_block_layout():
    layout = np.random.default_rng(5).random((2, 4, 4)) < 0.5
    p = fg.from_block_layout(layout, block=3, causal=False, mode="steps")
    np.testing.assert_array_equal(p.block_layout(3), layout)


def test_from_block_layout_needs_a_mode_for_several_slices():
    layout = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match=r"2 slices.*mode='heads'.*mode='steps'"):
        fg.from_block_layout(layout, block=2, causal=True)
    with pytest.raises(ValueError, match=r"mode must be 'heads', 'steps' or None, got mode='x'"):
        fg.from_block_layout(layout, block=2, causal=True, mode="x")
    # one slice, 2-D or 3-D, needs no mode and means the same
    assert fg.from_block_layout(layout[:1], 2, True) == fg.from_block_layout(layout[0], 2, True)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block,nb,cut", [(1, 5, 0), (2, 4, 1), (3, 3, 2)])
def test_from_block_layout_heads_is_one_step_the_union(block, nb, cut, causal):
    layout_hqk = np.random.default_rng(block + nb).random((4, nb, nb)) < 0.3
    n = nb * block - cut
    p = fg.from_block_layout(layout_hqk, block, causal, n=n, mode="heads")
    assert (p.num_steps, p.params["heads"], p.params["mode"]) == (1, 4, "heads")
    union = np.logical_or.reduce(def_block(layout_hqk, block, n, causal))
    assert_masks(p, [union])
    # the steps mode keeps the heads apart, and a heads stack of it joins them again
    steps = fg.from_block_layout(layout_hqk, block, causal, n=n, mode="steps")
    assert fg.stack(steps, layers=2, mode="heads") == fg.stack(p, layers=2)
    assert_masks(steps, def_block(layout_hqk, block, n, causal))


def test_from_block_layout_causal_diagonal():
    layout = grid("10", "11")
    whole = fg.from_block_layout(layout, 2, causal=True, causal_diagonal=False)
    assert_masks(whole, [grid("1100", "1100", "1111", "1111")])
    assert fg.check(whole).causality_violations == 2  # the upper halves of the diagonal blocks
    assert fg.from_block_layout(layout, 2, True, causal_diagonal=True) == fg.from_block_layout(
        layout, 2, True
    )
    assert fg.from_block_layout(layout, 2, False) == fg.from_block_layout(
        layout, 2, False, causal_diagonal=False
    )
    with pytest.raises(ValueError, match=r"causal_diagonal=True .* needs causal=True"):
        fg.from_block_layout(layout, 2, causal=False, causal_diagonal=True)
    with pytest.raises(TypeError, match=r"causal_diagonal must be True or False"):
        fg.from_block_layout(layout, 2, True, causal_diagonal=1)


# --- Pattern behaviour ---------------------------------------------------------------------------
def test_steps_are_read_only_csr_of_bool():
    p = fg.strided(16, stride=4)
    assert isinstance(p.steps, tuple)
    for m in p.steps:
        assert isinstance(m, sp.csr_array)
        assert m.dtype == np.bool_ and m.shape == (16, 16)
        for buf in (m.data, m.indices, m.indptr):
            with pytest.raises(ValueError, match="read-only"):
                buf[0] = buf[0]
    assert p.num_steps == len(p.steps) == 2


def test_fields_cannot_be_reassigned():
    p = fg.fixed(16, stride=4)
    for field, value in [("n", 3), ("causal", False), ("name", "x"), ("steps", ()), ("params", {})]:
        with pytest.raises(AttributeError):
            setattr(p, field, value)


def test_params_returns_a_copy():
    p = fg.fixed(16, stride=4, summary=2)
    params = p.params
    params["stride"] = 99
    params["extra"] = True
    assert p.params == {"stride": 4, "summary": 2}


def test_equality_is_by_content():
    p = fg.strided(16, stride=4)
    assert p == fg.strided(16, stride=4)
    assert p == fg.from_masks(masks_of(p), causal=True, name="another name")
    assert p != fg.strided(16, stride=4, causal=False)
    assert p != fg.strided(16, stride=2)
    assert p != fg.strided(17, stride=4)
    assert p != p.merged()
    assert fg.from_masks(masks_of(p), causal=False) != p  # same steps, other causal flag
    assert p.__eq__("strided") is NotImplemented
    assert p != "strided"


def test_pattern_is_unhashable():
    with pytest.raises(TypeError):
        hash(fg.dense(3))


def test_repr_shows_name_shape_edges_and_params():
    p = fg.fixed(10, stride=3, summary=2, causal=False)
    edges = tuple(int(m.sum()) for m in masks_of(p))
    assert p.edges() == edges
    text = repr(p)
    for part in ("'fixed'", "n=10", "causal=False", "steps=2", f"edges={edges}", "'summary': 2"):
        assert part in text


def test_dense_returns_a_fresh_array():
    p = fg.dense(4)
    d = p.dense(0)
    d[:] = False
    assert p.dense(0).sum() == 10


def test_dense_refuses_above_max_bytes_and_names_the_memory():
    p = fg.strided(100, stride=10)
    assert p.dense(1, max_bytes=100 * 100).shape == (100, 100)  # exactly at the limit: fine
    with pytest.raises(MemoryError, match=r"would need 9\.8 KiB for n=100.*max_bytes=9\.8 KiB"):
        p.dense(1, max_bytes=100 * 100 - 1)


def test_dense_default_limit_refuses_a_huge_pattern():
    p = fg.strided(20000)  # 400 MB as a dense bool array
    with pytest.raises(MemoryError, match=r"381\.5 MiB"):
        p.dense(0)


@pytest.mark.parametrize(
    "p",
    [
        fg.strided(12, stride=3),
        fg.fixed(10, stride=4, summary=2, causal=False),
        fg.ltr(9, stride=3),
        fg.star(6, hub=2),
        fg.from_masks(_random_steps(8, 4, seed=6), causal=True),
    ],
    ids=lambda p: p.name,
)
def test_merged_is_the_union_of_the_steps(p):
    merged = p.merged()
    union = np.logical_or.reduce(masks_of(p))
    assert (merged.num_steps, merged.n, merged.causal) == (1, p.n, p.causal)
    assert_masks(merged, [union])
    assert merged.merged() == merged
    assert merged.params["merged_from"] == p.name


def brute_block_layout(p: fg.Pattern, block: int) -> np.ndarray:
    nb = -(-p.n // block)
    out = np.zeros((p.num_steps, nb, nb), dtype=bool)
    for s, m in enumerate(masks_of(p)):
        for i in range(nb):
            for j in range(nb):
                out[s, i, j] = m[i * block : (i + 1) * block, j * block : (j + 1) * block].any()
    return out


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 7, 10, 11])
@pytest.mark.parametrize(
    "p",
    [fg.strided(10, stride=3), fg.fixed(10, stride=4), fg.rtl(10, stride=3), fg.local(10, 2)],
    ids=lambda p: p.name,
)
def test_block_layout_matches_brute_force(p, block):
    np.testing.assert_array_equal(p.block_layout(block), brute_block_layout(p, block))


@pytest.mark.parametrize(
    "pattern",
    [
        fg.strided(20, stride=4),
        fg.fixed(17, stride=5, summary=2, causal=False),
        fg.ltr(10, stride=4),
        fg.star(9, hub=4),
        fg.stack(fg.fixed(16, stride=4), layers=3, mode="heads", heads=1),
        fg.from_masks(np.zeros((2, 6, 6), dtype=bool), causal=True, name="empty"),
    ],
)
def test_to_dict_round_trips_through_json(pattern):
    data = json.loads(json.dumps(pattern.to_dict()))
    again = fg.Pattern.from_dict(data)
    assert again == pattern
    assert (again.name, again.params) == (pattern.name, pattern.params)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"steps": None}, TypeError, "not iterable|NoneType"),
        ({"n": 0}, ValueError, "n must be ≥ 1"),
        ({"steps": [{"indptr": [0, 1], "indices": [0]}]}, ValueError, r"steps\[0\].*n\+1=5"),
        ({"steps": [{"indptr": [0, 1, 1, 1, 1], "indices": [7]}]}, ValueError, "0..3"),
        ({"steps": [{"indices": []}]}, ValueError, r"steps\[0\] is not a CSR step"),
    ],
)
def test_from_dict_names_what_is_malformed(change, error, message):
    data = {**fg.dense(4).to_dict(), **change}
    with pytest.raises(error, match=message):
        fg.Pattern.from_dict(data)


def test_from_dict_needs_the_fields():
    with pytest.raises(ValueError, match=r"lacks \['steps'\]"):
        fg.Pattern.from_dict({"name": "x", "n": 3, "causal": True})
    with pytest.raises(TypeError, match="mapping"):
        fg.Pattern.from_dict([1, 2])
