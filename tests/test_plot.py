"""flowgraph.plot: the figures carry the pattern's data, not just pixels.

Each figure is checked against an oracle computed here from the pattern's dense masks (boolean
matrix products, networkx descendants), not against numbers typed by hand.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import plotly.graph_objects as go
import pytest

import flowgraph as fg
from flowgraph import plot

HAS_BROWSER = bool(shutil.which("chromium") or shutil.which("google-chrome"))
needs_browser = pytest.mark.skipif(
    not HAS_BROWSER and os.environ.get("CI") != "true",
    reason="no chromium/google-chrome on PATH (with CI=true this test runs and fails instead)",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _causal_with_leak() -> fg.Pattern:
    """A causal pattern with a k > q entry, an empty row and a step without the diagonal."""
    n = 8
    step1 = np.tri(n, dtype=bool)
    step1[2, 5] = True  # a causality violation: query 2 attends the future key 5
    step2 = np.tri(n, k=-1, dtype=bool)  # no diagonal: query 0 attends nothing
    return fg.from_masks([step1, step2], causal=True, name="leaky")


PATTERNS = [
    fg.fixed(16, stride=4),
    fg.strided(12, stride=3, causal=False),
    fg.ltr(10, stride=4),
    fg.rtl(9, stride=3),
    fg.star(7, hub=3),
    fg.stack(fg.strided(9, stride=3), layers=3, mode="interleave"),
    _causal_with_leak(),
]
IDS = [p.name for p in PATTERNS]


def _heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [t for t in fig.data if isinstance(t, go.Heatmap)]


def _brute_reach(pattern: fg.Pattern) -> list[np.ndarray]:
    """R_s by dense boolean products: R_1 = M_0, R_{s+1} = M_s · R_s."""
    out, reach = [], np.eye(pattern.n, dtype=bool)
    for s in range(pattern.num_steps):
        m = pattern.dense(s).astype(np.int64)
        reach = (m @ reach.astype(np.int64)) > 0
        out.append(reach)
    return out


def _segments(trace: go.Scatter) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (x0, y0) → (x1, y1) segments of a lines trace with NaN gaps."""
    x = np.asarray(trace.x, dtype=float).reshape(-1, 3)
    y = np.asarray(trace.y, dtype=float).reshape(-1, 3)
    assert np.isnan(x[:, 2]).all() and np.isnan(y[:, 2]).all()
    return [((int(a), int(b)), (int(c), int(d))) for a, c, _, b, d, _ in np.hstack([x, y])]


# --- import contract ------------------------------------------------------------------------------
def test_import_flowgraph_does_not_import_plotly():
    code = "import sys, flowgraph; assert 'plotly' not in sys.modules, 'plotly imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- mask heatmaps --------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS, ids=IDS)
def test_mask_figure_one_step_z_equals_dense(pattern):
    for s in range(pattern.num_steps):
        fig = plot.make_mask_figure(pattern, step=s)
        (heat,) = _heatmaps(fig)
        z = np.asarray(heat.z)
        assert z.shape == (pattern.n, pattern.n)
        assert set(np.unique(z).tolist()) <= {0, 1}
        np.testing.assert_array_equal(z.astype(bool), pattern.dense(s))
        titles = [a.text for a in fig.layout.annotations]
        assert len(titles) == 1 and titles[0].startswith(f"step {s + 1} (steps[{s}])")


@pytest.mark.parametrize("pattern", PATTERNS, ids=IDS)
def test_mask_figure_all_steps_one_panel_each(pattern):
    fig = plot.make_mask_figure(pattern)
    heats = _heatmaps(fig)
    assert len(heats) == pattern.num_steps
    assert len(fig.layout.annotations) == pattern.num_steps  # one title per panel
    for s, heat in enumerate(heats):
        np.testing.assert_array_equal(np.asarray(heat.z).astype(bool), pattern.dense(s))
        assert f"step {s + 1}" in fig.layout.annotations[s].text


def test_mask_figure_wraps_many_steps_and_puts_query_zero_on_top():
    pattern = fg.stack(fg.fixed(8, stride=2), layers=6, mode="interleave")
    fig = plot.make_mask_figure(pattern)
    assert len(_heatmaps(fig)) == 6
    for heat in _heatmaps(fig):
        yaxis = fig.layout["yaxis" + heat.yaxis[1:]]
        low, high = yaxis.range
        assert low > high  # reversed: query 0 at the top
        assert yaxis.title.text == "query q"
        assert fig.layout["xaxis" + heat.xaxis[1:]].title.text == "key k"
    colorbar = fig.layout.coloraxis.colorbar
    assert dict(zip(colorbar.ticktext, colorbar.tickvals, strict=True)) == {
        "does not attend": 0,
        "attends": 1,
    }


def test_mask_figure_bad_input():
    p = fg.strided(16, stride=4)
    with pytest.raises(ValueError, match=r"step must be in 0\.\.1.*step=2"):
        plot.make_mask_figure(p, step=2)
    with pytest.raises(TypeError, match="step must be an int"):
        plot.make_mask_figure(p, step="1")
    with pytest.raises(TypeError, match=r"pattern must be a flowgraph\.Pattern"):
        plot.make_mask_figure(p.dense(0))
    with pytest.raises(ValueError, match="n=16 is above max_n=8"):
        plot.make_mask_figure(p, max_n=8)


# --- flow graph -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS, ids=IDS)
def test_flow_graph_figure_draws_exactly_the_flow_graph(pattern):
    report = fg.check(pattern)
    fig = plot.make_flow_graph_figure(pattern, report)
    lines = [t for t in fig.data if t.mode == "lines"]
    segments = [seg for t in lines for seg in _segments(t)]
    assert len(segments) == report.edges_total
    # node (s, i) sits at x=i, y=s; the oracle is the networkx graph of the core
    drawn = {((y0, x0), (y1, x1)) for (x0, y0), (x1, y1) in segments}
    assert drawn == set(fg.flow_graph(pattern).edges())
    nodes = next(t for t in fig.data if t.name == "positions")
    assert len(nodes.x) == (pattern.num_steps + 1) * pattern.n
    assert fig.layout.yaxis.tickvals == tuple(range(pattern.num_steps + 1))


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if not fg.check(p).full_information])
def test_flow_graph_figure_marks_witness_and_highlights_descendants(pattern):
    report = fg.check(pattern)
    q, k = report.witness
    p = pattern.num_steps
    fig = plot.make_flow_graph_figure(pattern, report)
    key = next(t for t in fig.data if t.name == f"key {k}")
    query = next(t for t in fig.data if t.name.startswith(f"query {q} "))
    assert (tuple(key.x), tuple(key.y)) == ((k,), (0,))
    assert (tuple(query.x), tuple(query.y)) == ((q,), (p,))
    assert key.marker.color != query.marker.color
    graph = fg.flow_graph(pattern)
    descendants = nx.descendants(graph, (0, k)) | {(0, k)}
    assert (p, q) not in descendants
    lit = next(t for t in fig.data if t.name == f"edges carrying key {k}")
    drawn = {((y0, x0), (y1, x1)) for (x0, y0), (x1, y1) in _segments(lit)}
    assert drawn == {(a, b) for a, b in graph.edges() if a in descendants}
    holders = next(t for t in fig.data if t.name == f"holds key {k}'s information")
    assert set(zip(holders.y.tolist(), holders.x.tolist(), strict=True)) == descendants


def test_flow_graph_figure_without_report_highlights_nothing_unless_asked():
    pattern = fg.ltr(16, stride=4)
    fig = plot.make_flow_graph_figure(pattern)
    assert all(t.mode == "markers" or t.mode == "lines" for t in fig.data)
    assert len(fig.data) == 3 and len(fig.data[1].x) == 0  # no highlighted edge
    fig = plot.make_flow_graph_figure(pattern, key=5)
    holders = next(t for t in fig.data if t.name == "holds key 5's information")
    # LTR has full information: key 5 reaches every position of the last layer
    last = {int(x) for x, y in zip(holders.x, holders.y, strict=True) if y == 2}
    assert last == set(range(pattern.n))


def test_flow_graph_figure_refuses_large_n_and_bad_input():
    with pytest.raises(ValueError, match=r"n=65 is above max_n=64"):
        plot.make_flow_graph_figure(fg.strided(65))
    plot.make_flow_graph_figure(fg.strided(65), max_n=65)  # the limit is the caller's
    p = fg.strided(16, stride=4)
    with pytest.raises(ValueError, match=r"key must be in 0\.\.15"):
        plot.make_flow_graph_figure(p, key=16)
    with pytest.raises(ValueError, match="report must describe the pattern"):
        plot.make_flow_graph_figure(p, fg.check(fg.strided(9, stride=3)))
    with pytest.raises(TypeError, match=r"report must be a flowgraph\.Report"):
        plot.make_flow_graph_figure(p, {"witness": (0, 0)})


# --- reachability ---------------------------------------------------------------------------------
def _classes(fig: go.Figure) -> dict[str, int]:
    bar = fig.layout.coloraxis.colorbar
    return dict(zip(bar.ticktext, bar.tickvals, strict=True))


@pytest.mark.parametrize("pattern", PATTERNS, ids=IDS)
def test_reachability_figure_cells_match_brute_force(pattern):
    report = fg.check(pattern)
    fig = plot.make_reachability_figure(pattern)  # computes the same report itself
    heats = _heatmaps(fig)
    assert len(heats) == pattern.num_steps
    code = _classes(fig)
    n = pattern.n
    target = np.tri(n, dtype=bool) if pattern.causal else np.ones((n, n), dtype=bool)
    for s, (heat, reach) in enumerate(zip(heats, _brute_reach(pattern), strict=True)):
        z = np.asarray(heat.z)
        last = s == pattern.num_steps - 1
        reached = np.isin(z, [code.get("reached", -1), code.get("reached although k > q", -1)])
        np.testing.assert_array_equal(reached, reach)
        outside = np.isin(
            z, [code.get("not a target (k > q)", -1), code.get("reached although k > q", -1)]
        )
        np.testing.assert_array_equal(outside, ~target)
        missing = z == code.get("missing after the last step", -1)
        np.testing.assert_array_equal(missing, (target & ~reach) if last else False)
        assert int((reached & target).sum()) == report.reached[s]
        title = fig.layout.annotations[s].text
        assert f"after step {s + 1}: {report.reached[s]:,} / {report.target_pairs:,}" in title
    assert int(missing.sum()) == report.missing_pairs
    assert set(code) == {
        name for name, c in code.items() if any((np.asarray(h.z) == c).any() for h in heats)
    }  # the colour bar names only the classes that occur


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if not fg.check(p).full_information])
def test_reachability_figure_marks_the_witness(pattern):
    report = fg.check(pattern)
    q, k = report.witness
    fig = plot.make_reachability_figure(pattern, report)
    marks = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(marks) == pattern.num_steps  # one marker per panel
    for mark, heat in zip(marks, _heatmaps(fig), strict=True):
        assert (tuple(mark.x), tuple(mark.y)) == ((k,), (q,))
        assert (mark.xaxis, mark.yaxis) == (heat.xaxis, heat.yaxis)
    z = np.asarray(_heatmaps(fig)[-1].z)
    assert z[q, k] == _classes(fig)["missing after the last step"]
    assert f"witness (q={q}, k={k})" in fig.layout.title.subtitle.text


def test_reachability_figure_full_information_has_no_marker_or_missing_class():
    fig = plot.make_reachability_figure(fg.ltr(16, stride=4))
    assert not [t for t in fig.data if isinstance(t, go.Scatter)]
    assert "missing after the last step" not in _classes(fig)
    assert "full information" in fig.layout.title.subtitle.text


def test_reachability_grid_rows_and_errors():
    patterns = [fg.fixed(16, stride=4), fg.ltr(16, stride=4), fg.stack(fg.ltr(16), 3)]
    fig = plot.make_reachability_grid(patterns)
    assert len(_heatmaps(fig)) == 2 + 2 + 3
    owners = [p.name for p in patterns for _ in range(p.num_steps)]
    for owner, heat in zip(owners, _heatmaps(fig), strict=True):
        assert heat.name.startswith(f"{owner}: ")
    with pytest.raises(ValueError, match=r"patterns must share n.*\[9, 16\]"):
        plot.make_reachability_grid([fg.ltr(16), fg.ltr(9)])
    with pytest.raises(ValueError, match="non-empty sequence"):
        plot.make_reachability_grid([])
    with pytest.raises(ValueError, match="n=2000 is above max_n=1024"):
        plot.make_reachability_figure(fg.strided(2000))


# --- edges and flow -------------------------------------------------------------------------------
def test_edges_figure_y_is_the_edge_count_of_each_constructor():
    ns = [4, 9, 16, 50, 100]
    fig = plot.make_edges_figure(ns)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    by_name = {t.name.split(" ")[0]: t for t in fig.data}
    assert set(by_name) == set(plot.EDGE_PATTERNS) | {"n·√n"}
    for name in plot.EDGE_PATTERNS:
        trace = by_name[name]
        assert list(trace.x) == ns
        assert list(trace.y) == [sum(getattr(fg, name)(n).edges()) for n in ns]
    bound = by_name["n·√n"]
    assert bound.line.dash == "dash"
    np.testing.assert_allclose(bound.y, [n * math.sqrt(n) for n in ns])


def test_edges_figure_bad_input():
    with pytest.raises(ValueError, match="names holds 'local'"):
        plot.make_edges_figure([16], names=("strided", "local"))
    with pytest.raises(ValueError, match="ns must be a non-empty sequence"):
        plot.make_edges_figure([])
    with pytest.raises(ValueError, match=r"ns\[1\] must be ≥ 1, got ns\[1\]=0"):
        plot.make_edges_figure([16, 0])
    with pytest.raises(TypeError, match=r"ns\[1\] must be an int, got 2\.5"):
        plot.make_edges_figure([16, 2.5])


def test_flow_figure_plots_f_per_query():
    reports = [fg.check(fg.star(16), flow=True), fg.check(fg.ltr(16, stride=4), flow=True)]
    fig = plot.make_flow_figure(reports)
    assert len(fig.data) == 2
    for trace, report in zip(fig.data, reports, strict=True):
        assert list(trace.x) == list(range(16))
        assert list(trace.y) == list(report.flow.per_query)
        assert trace.name.startswith(report.name)
    assert len(plot.make_flow_figure(reports[0]).data) == 1
    with pytest.raises(ValueError, match=r"flow=None.*check\(pattern, flow=True\)"):
        plot.make_flow_figure(fg.check(fg.star(16)))
    with pytest.raises(TypeError, match=r"reports\[0\] must be a flowgraph.Report"):
        plot.make_flow_figure([None])


# --- static export --------------------------------------------------------------------------------
def test_write_png_bad_path(tmp_path):
    fig = plot.make_mask_figure(fg.strided(9, stride=3), step=0)
    with pytest.raises(ValueError, match=r"path must end in \.png"):
        plot.write_png(fig, tmp_path / "mask.svg")
    with pytest.raises(ValueError, match="folder must exist"):
        plot.write_png(fig, tmp_path / "nope" / "mask.png")
    with pytest.raises(ValueError, match="scale must be a number > 0"):
        plot.write_png(fig, tmp_path / "mask.png", scale=0)
    with pytest.raises(TypeError, match="fig must be a plotly"):
        plot.write_png({"data": []}, tmp_path / "mask.png")
    assert list(tmp_path.iterdir()) == []


def test_write_png_without_a_browser_says_what_is_missing(tmp_path, monkeypatch):
    """No browser found: a clear RuntimeError, and no file (or temp file) left behind."""
    try:
        from choreographer.browsers import chromium
    except ImportError:  # no kaleido at all: write_png must say so just the same
        pass
    else:
        monkeypatch.setattr(chromium.Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    fig = plot.make_mask_figure(fg.strided(9, stride=3), step=0)
    with pytest.raises(RuntimeError, match="static PNG export needs kaleido and a Chromium"):
        plot.write_png(fig, tmp_path / "mask.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.browser
@needs_browser
def test_write_png_writes_a_png(tmp_path):
    fig = plot.make_reachability_figure(fg.fixed(16, stride=4))
    out = plot.write_png(fig, tmp_path / "reach.png", width=500, height=300, scale=2)
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 600)  # IHDR: layout pixels × scale
    assert [p.name for p in tmp_path.iterdir()] == ["reach.png"]  # the temp file is gone
    plot.write_png(plot.make_mask_figure(fg.star(8)), out)  # replaces an existing file
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.read_bytes() != data
