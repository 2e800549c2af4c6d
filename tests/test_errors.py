"""Bad input fails early with a ValueError or TypeError whose message names the argument and the
value (the issue's "Bad input" section, plus the other arguments' ranges and types)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import flowgraph as fg

EYE2 = np.eye(2, dtype=bool)
EYE3 = np.eye(3, dtype=bool)
P = fg.strided(16, stride=4)
LAYOUT = np.ones((3, 3), dtype=bool)

CASES = [
    # n ≤ 0, and n of the wrong type
    ("dense-n0", lambda: fg.dense(0), ValueError, r"n must be ≥ 1, got n=0"),
    ("local-n-neg", lambda: fg.local(-1, 1), ValueError, r"n must be ≥ 1, got n=-1"),
    ("strided-n0", lambda: fg.strided(0), ValueError, r"n=0"),
    ("fixed-n-neg", lambda: fg.fixed(-4), ValueError, r"n=-4"),
    ("ltr-n0", lambda: fg.ltr(0), ValueError, r"n=0"),
    ("rtl-n0", lambda: fg.rtl(0), ValueError, r"n=0"),
    ("star-n0", lambda: fg.star(0), ValueError, r"n=0"),
    ("pattern-n0", lambda: fg.Pattern("x", 0, True, [EYE2]), ValueError, r"n=0"),
    ("n-float", lambda: fg.strided(16.0), TypeError, r"n must be an int, got 16\.0 \(float\)"),
    ("n-str", lambda: fg.dense("8"), TypeError, r"n must be an int, got '8'"),
    ("n-bool", lambda: fg.dense(True), TypeError, r"n must be an int, got True"),
    ("masks-n0", lambda: fg.from_masks(np.zeros((0, 0), bool), True), ValueError, r"n=0"),
    ("masks-3d-n0", lambda: fg.from_masks(np.zeros((2, 0, 0), bool), True), ValueError, r"n=0"),
    # stride ≤ 0 or > n
    ("strided-stride0", lambda: fg.strided(10, stride=0), ValueError, r"stride=0"),
    ("strided-stride-big", lambda: fg.strided(10, stride=11), ValueError, r"1\.\.10.*stride=11"),
    ("fixed-stride-neg", lambda: fg.fixed(10, stride=-3), ValueError, r"stride=-3"),
    ("ltr-stride-big", lambda: fg.ltr(10, stride=12), ValueError, r"stride=12"),
    ("rtl-stride0", lambda: fg.rtl(10, stride=0), ValueError, r"stride=0"),
    ("stride-float", lambda: fg.strided(10, stride=2.5), TypeError, r"stride.*2\.5"),
    ("stride-str", lambda: fg.fixed(10, stride="3"), TypeError, r"stride.*'3'"),
    ("stride-bool", lambda: fg.ltr(10, stride=True), TypeError, r"stride.*True"),
    # summary outside 1..stride
    ("summary0", lambda: fg.fixed(16, stride=4, summary=0), ValueError, r"1\.\.4.*summary=0"),
    ("summary-big", lambda: fg.fixed(16, stride=4, summary=5), ValueError, r"summary=5"),
    ("summary-default-stride", lambda: fg.fixed(16, summary=5), ValueError, r"stride=4.*summary=5"),
    ("summary-float", lambda: fg.fixed(16, summary=1.0), TypeError, r"summary.*1\.0"),
    # window, hub, block, step out of range or of the wrong type
    ("window0", lambda: fg.local(5, 0), ValueError, r"window=0"),
    ("window-big", lambda: fg.local(5, 6), ValueError, r"1\.\.5.*window=6"),
    ("window-none", lambda: fg.local(5, None), TypeError, r"window.*None"),
    ("hub-big", lambda: fg.star(5, hub=5), ValueError, r"0\.\.4.*hub=5"),
    ("hub-neg", lambda: fg.star(5, hub=-1), ValueError, r"hub=-1"),
    ("hub-float", lambda: fg.star(5, hub=0.0), TypeError, r"hub.*0\.0"),
    ("layout-block0", lambda: fg.from_block_layout(LAYOUT, 0, True), ValueError, r"block=0"),
    ("layout-block-float", lambda: fg.from_block_layout(LAYOUT, 1.5, True), TypeError, r"block"),
    ("block-layout0", lambda: P.block_layout(0), ValueError, r"block=0"),
    ("block-layout-neg", lambda: P.block_layout(-2), ValueError, r"block=-2"),
    ("step-big", lambda: P.dense(2), ValueError, r"0\.\.1.*2 steps.*step=2"),
    ("step-neg", lambda: P.dense(-1), ValueError, r"step=-1"),
    ("step-str", lambda: P.dense("0"), TypeError, r"step.*'0'"),
    # causal and name
    ("causal-str", lambda: fg.dense(3, causal="yes"), TypeError, r"causal.*'yes'"),
    ("causal-int", lambda: fg.strided(9, causal=1), TypeError, r"causal.*1"),
    ("causal-none", lambda: fg.from_masks(EYE2, causal=None), TypeError, r"causal.*None"),
    ("name-empty", lambda: fg.from_masks(EYE2, True, name=""), TypeError, r"name.*''"),
    ("name-int", lambda: fg.Pattern(3, 2, True, [EYE2]), TypeError, r"name.*3"),
    # non-square masks
    (
        "masks-nonsquare",
        lambda: fg.from_masks(np.zeros((2, 3), bool), True),
        ValueError,
        r"masks\[0\] must be square.*\(2, 3\)",
    ),
    (
        "masks-sparse-nonsquare",
        lambda: fg.from_masks(sp.csr_array((2, 3), dtype=bool), True),
        ValueError,
        r"masks\[0\].*\(2, 3\)",
    ),
    (
        "masks-3d-nonsquare",
        lambda: fg.from_masks(np.zeros((2, 3, 4), bool), True),
        ValueError,
        r"masks\[0\].*\(3, 4\)",
    ),
    (
        "masks-list-nonsquare",
        lambda: fg.from_masks([EYE2, np.zeros((2, 3), bool)], True),
        ValueError,
        r"masks\[1\].*\(2, 3\)",
    ),
    ("masks-1d", lambda: fg.from_masks(np.ones(3, bool), True), ValueError, r"masks.*\(3,\)"),
    (
        "masks-4d",
        lambda: fg.from_masks(np.ones((1, 1, 2, 2), bool), True),
        ValueError,
        r"masks.*\(1, 1, 2, 2\)",
    ),
    (
        "steps-nonsquare",
        lambda: fg.Pattern("x", 3, True, [np.zeros((3, 4), bool)]),
        ValueError,
        r"steps\[0\].*\(3, 4\)",
    ),
    # non-boolean masks
    ("masks-float", lambda: fg.from_masks(np.eye(3), True), TypeError, r"masks\[0\].*float64"),
    (
        "masks-int-list",
        lambda: fg.from_masks([[1, 0], [0, 1]], True),
        TypeError,
        r"masks\[0\].*int",
    ),
    (
        "masks-sparse-float",
        lambda: fg.from_masks(sp.csr_array(np.eye(3)), True),
        TypeError,
        r"masks\[0\].*float64",
    ),
    (
        "masks-second-int",
        lambda: fg.from_masks([EYE3, np.eye(3, dtype=np.int8)], True),
        TypeError,
        r"masks\[1\].*int8",
    ),
    (
        "layout-int",
        lambda: fg.from_block_layout(np.ones((2, 2), int), 2, True),
        TypeError,
        r"layout.*int",
    ),
    # masks of different n
    (
        "masks-different-n",
        lambda: fg.from_masks([EYE2, EYE3], True),
        ValueError,
        r"masks\[1\] has n=3 but masks\[0\] has n=2",
    ),
    (
        "masks-different-n-sparse",
        lambda: fg.from_masks([sp.csr_array(EYE3), EYE2], False),
        ValueError,
        r"masks\[1\] has n=2 but masks\[0\] has n=3",
    ),
    (
        "steps-different-n",
        lambda: fg.Pattern("x", 2, True, [EYE2, EYE3]),
        ValueError,
        r"steps\[1\] has n=3 but the pattern has n=2",
    ),
    # other shapes of masks and layouts
    ("masks-empty", lambda: fg.from_masks([], True), ValueError, r"masks.*empty"),
    ("masks-str", lambda: fg.from_masks("mask", True), TypeError, r"masks.*str"),
    ("masks-int", lambda: fg.from_masks(5, True), TypeError, r"masks.*int"),
    ("steps-empty", lambda: fg.Pattern("x", 2, True, []), ValueError, r"steps.*empty"),
    (
        "layout-1d-list",
        lambda: fg.from_block_layout([True, False], 2, True),
        ValueError,
        r"layout.*\(2,\)",
    ),
    (
        "layout-4d",
        lambda: fg.from_block_layout(np.ones((1, 1, 2, 2), bool), 2, True),
        ValueError,
        r"layout.*\(1, 1, 2, 2\)",
    ),
    (
        "layout-nonsquare",
        lambda: fg.from_block_layout(np.ones((2, 3), bool), 2, True),
        ValueError,
        r"layout.*\(2, 3\)",
    ),
    (
        "layout-nb0",
        lambda: fg.from_block_layout(np.ones((1, 0, 0), bool), 2, True),
        ValueError,
        r"nb=0",
    ),
    (
        "layout-n-big",
        lambda: fg.from_block_layout(LAYOUT, 2, True, n=7),
        ValueError,
        r"5\.\.6.*n=7",
    ),
    (
        "layout-n-small",
        lambda: fg.from_block_layout(LAYOUT, 2, True, n=4),
        ValueError,
        r"n=4",
    ),
    # an unknown mode, and the other stack arguments
    (
        "mode-unknown",
        lambda: fg.stack(P, 2, mode="sideways"),
        ValueError,
        r"interleave, merged, heads.*mode='sideways'",
    ),
    ("mode-none", lambda: fg.stack(P, 2, mode=None), ValueError, r"mode=None"),
    ("mode-case", lambda: fg.stack(P, 2, mode="Merged"), ValueError, r"mode='Merged'"),
    (
        "heads-with-merged",
        lambda: fg.stack(P, 2, mode="merged", heads=2),
        ValueError,
        r"heads=2.*mode='merged'",
    ),
    (
        "heads-with-interleave",
        lambda: fg.stack(P, 2, heads=3),
        ValueError,
        r"heads=3.*mode='interleave'",
    ),
    ("heads0", lambda: fg.stack(P, 2, mode="heads", heads=0), ValueError, r"heads=0"),
    ("heads-float", lambda: fg.stack(P, 2, mode="heads", heads=2.0), TypeError, r"heads.*2\.0"),
    ("layers0", lambda: fg.stack(P, 0), ValueError, r"layers=0"),
    ("layers-float", lambda: fg.stack(P, 2.0), TypeError, r"layers.*2\.0"),
    # not a Pattern
    ("check-not-pattern", lambda: fg.check("strided"), TypeError, r"pattern.*str"),
    ("stack-not-pattern", lambda: fg.stack(EYE2, 2), TypeError, r"pattern.*ndarray"),
    ("graph-not-pattern", lambda: fg.flow_graph(None), TypeError, r"pattern.*NoneType"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_with_the_argument_and_value(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "make",
    [
        lambda: fg.strided(10, stride=10),
        lambda: fg.fixed(10, stride=10, summary=10),
        lambda: fg.local(5, 5),
        lambda: fg.star(5, hub=4),
        lambda: fg.ltr(1),
        lambda: fg.rtl(1),
    ],
)
def test_range_edges_are_accepted(make):
    # the inclusive ends of each range are valid: nothing above is clipped, nothing at it refused
    assert isinstance(make(), fg.Pattern)


def test_numpy_integers_are_accepted():
    assert fg.strided(np.int64(16), stride=np.int32(4)) == fg.strided(16, stride=4)
    assert fg.dense(4, causal=np.bool_(False)) == fg.dense(4, causal=False)
