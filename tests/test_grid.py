"""flowgraph.grid: YLG's 2-D patterns against the masks YLG's own code builds
(tests/fixtures/upstream/ylg_grid_masks.npz, see SOURCES.md there), and check on them against the
brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from oracles import brute_check

import flowgraph as fg

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "upstream" / "ylg_grid_masks.npz"
GRIDS = [(4, 4), (3, 5), (5, 4), (6, 6), (3, 6), (2, 5)]  # 18 and 10 cells: l ∤ n


@pytest.fixture(scope="module")
def ylg() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        meta = json.loads(str(z["meta"]))
        assert {m["repo"] for m in meta.values()} == {"giannisdaras/ylg"}
        return {k: z[k] for k in z.files if k != "meta"}


def test_grid_order_is_by_anti_diagonal_then_row():
    np.testing.assert_array_equal(fg.grid_order(2, 3), [0, 1, 3, 2, 4, 5])
    for rows, cols in GRIDS:
        order_n = fg.grid_order(rows, cols)
        cells = [(int(x) // cols, int(x) % cols) for x in order_n]
        assert sorted(order_n.tolist()) == list(range(rows * cols))
        assert cells == sorted(cells, key=lambda c: (c[0] + c[1], c[0]))


@pytest.mark.parametrize("rows,cols", GRIDS)
def test_grid_ltr_is_ylgs(ylg, rows, cols):
    p = fg.grid_ltr(rows, cols)
    assert p.name == f"ltr/grid{rows}x{cols}" and p.params["rows"] == rows
    np.testing.assert_array_equal(p.dense(0), ylg[f"ltr1_grid{rows}x{cols}"])
    np.testing.assert_array_equal(p.dense(1), ylg[f"ltr2_grid{rows}x{cols}"])


@pytest.mark.parametrize("rows,cols", GRIDS)
def test_grid_rtl_is_ylgs_but_for_the_partial_blocks_relay(ylg, rows, cols):
    """As in 1-D, YLG's RTL step 2 lacks the relay m = l·⌊n/l⌋ of the partial block when l ∤ n:
    on the grid, the column of cell order[m], except its own diagonal entry."""
    n = rows * cols
    stride = int(np.sqrt(n))
    p, order_n = fg.grid_rtl(rows, cols), fg.grid_order(rows, cols)
    np.testing.assert_array_equal(p.dense(0), ylg[f"rtl1_grid{rows}x{cols}"])
    up = ylg[f"rtl2_grid{rows}x{cols}"]
    m = order_n[stride * (n // stride)] if n % stride else None
    lost = {(x, int(m)) for x in range(n) if x != m} if m is not None else set()
    assert {(int(a), int(b)) for a, b in np.argwhere(p.dense(1) != up)} == lost
    assert not (up & ~p.dense(1)).any()
    assert fg.check(fg.from_masks([p.dense(0), up], causal=False)).full_information == (
        n % stride == 0
    )
    assert fg.check(p).full_information


@pytest.mark.parametrize("h,w", [(8, 8), (8, 12)])
def test_ylg_attention_heads_are_grid_patterns_tiled_over_the_queries(ylg, h, w):
    """ops.get_grid_masks: 8 heads (RTL, RTL, LTR, LTR steps) over the pooled grid's keys; the
    h·w queries take the pooled mask's rows in flat order, query X row X mod (h/2·w/2)."""
    masks_hqk = ylg[f"get_grid_masks_{h}x{w}"]
    rows, cols = h // 2, w // 2
    n = rows * cols
    rtl, ltr = fg.grid_rtl(rows, cols), fg.grid_ltr(rows, cols)
    heads = [rtl.dense(0), rtl.dense(1)] * 2 + [ltr.dense(0), ltr.dense(1)] * 2
    assert masks_hqk.shape == (8, h * w, n)
    for got, want in zip(masks_hqk, heads, strict=True):
        np.testing.assert_array_equal(got, np.tile(want, (4, 1)))


@pytest.mark.parametrize("rows,cols", [(3, 6), (2, 5), (4, 4)])
def test_check_on_a_grid_is_the_1d_report_relabelled(rows, cols):
    n = rows * cols
    for one_d, two_d in (
        (fg.ltr(n), fg.grid_ltr(rows, cols)),
        (fg.rtl(n), fg.grid_rtl(rows, cols)),
    ):
        r1, r2 = fg.check(one_d), fg.check(two_d)
        b = brute_check([two_d.dense(s) for s in range(2)], False)
        assert (r2.full_information, r2.missing_pairs, r2.witness, r2.reached, r2.edges) == (
            b.full_information, b.missing_pairs, b.witness, b.reached, b.edges,
        )  # fmt: skip
        assert (r1.missing_pairs, r1.edges) == (r2.missing_pairs, r2.edges)


def test_grid_of_any_bidirectional_pattern():
    p = fg.strided(12, 3, causal=False)
    g = fg.grid(p, 3, 4)
    order_n = fg.grid_order(3, 4)
    for s in range(2):
        np.testing.assert_array_equal(g.dense(s)[np.ix_(order_n, order_n)], p.dense(s))


def test_grid_refuses_bad_input():
    with pytest.raises(TypeError, match=r"pattern must be a flowgraph.Pattern, got ndarray"):
        fg.grid(np.eye(4, dtype=bool), 2, 2)
    with pytest.raises(ValueError, match=r"n=9 .* grid 2×2 has 4; expected n = rows·cols"):
        fg.grid(fg.ltr(9), 2, 2)
    with pytest.raises(ValueError, match=r"bidirectional patterns only, got the causal 'fixed'"):
        fg.grid(fg.fixed(4, 2), 2, 2)
    with pytest.raises(ValueError, match=r"rows must be ≥ 1, got rows=0"):
        fg.grid_order(0, 3)
    with pytest.raises(TypeError, match=r"cols must be an int"):
        fg.grid_ltr(2, 2.0)
    with pytest.raises(ValueError, match=r"would need about"):
        fg.grid(fg.ltr(16), 4, 4, max_bytes=100)
