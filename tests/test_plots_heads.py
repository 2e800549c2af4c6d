"""models.plots: the head figures carry the metrics' data (checked against models.heads.metrics
computed here), and combine_figures keeps every trace on its own axes inside its cell."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import plotly.graph_objects as go
import pytest

from flowgraph.models import plots
from flowgraph.models.heads.metrics import qk_form, token_distances
from flowgraph.models.heads.weights import HeadWeights
from flowgraph.plot import write_png

HAS_BROWSER = bool(shutil.which("chromium") or shutil.which("google-chrome"))
needs_browser = pytest.mark.skipif(
    not HAS_BROWSER and os.environ.get("CI") != "true",
    reason="no chromium/google-chrome on PATH (with CI=true this test runs and fails instead)",
)
TOKENS = ["the", "cat", "sat", "the", "mat"]  # a repeated token keeps its own row


def quadratic_form(seed: int = 0, c: int = 6):
    u = np.random.default_rng(seed).normal(size=(1, c, c))
    return qk_form(HeadWeights("quadratic", c**-0.5, u_hcc=u), 0)


def causal_uniform(T: int) -> np.ndarray:
    a = np.tril(np.ones((T, T)))
    return a / a.sum(1, keepdims=True)


# --- single figures -------------------------------------------------------------------------------
def test_form_figure_shows_the_parts_on_one_symmetric_scale() -> None:
    form = quadratic_form()
    fig = plots.make_form_figure(form)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    for trace, part in zip(fig.data, plots.FORM_PARTS, strict=True):
        np.testing.assert_array_equal(trace.z, getattr(form, part))
        assert trace.coloraxis == "coloraxis"
    span = np.percentile(np.abs(form.matrix), plots.FORM_PERCENTILE)
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-span, span, 0.0)
    whole = plots.make_form_figure(form, percentile=None).layout.coloraxis
    assert whole.cmax == np.abs(form.matrix).max()
    assert fig.layout.yaxis.range == (5.5, -0.5)  # row 0 at the top
    assert f"{form.symmetry:.3f}" in fig.layout.title.subtitle.text
    one = plots.make_form_figure(form, parts="antisymmetric", title="mine")
    assert len(one.data) == 1 and one.layout.title.text == "mine"
    np.testing.assert_array_equal(one.data[0].z, form.antisymmetric)


def test_form_figure_range_resists_outliers_and_says_so() -> None:
    u = np.random.default_rng(3).normal(size=(1, 40, 40))
    u[0, 0, 0] = 500.0  # one outlier, as trained BERT-family forms have
    form = qk_form(HeadWeights("quadratic", 1.0, u_hcc=u), 0)
    axis = plots.make_form_figure(form).layout.coloraxis
    assert axis.cmax < 10  # the bulk keeps its colours
    assert "p99.5" in axis.colorbar.title.text and "cells beyond" in axis.colorbar.title.text
    with pytest.raises(ValueError, match="percentile must be in"):
        plots.make_form_figure(form, percentile=0)


def test_form_figure_of_a_zero_form_still_has_a_scale() -> None:
    form = qk_form(HeadWeights("quadratic", 1.0, u_hcc=np.zeros((1, 3, 3))), 0)
    axis = plots.make_form_figure(form).layout.coloraxis
    assert axis.cmin < 0 < axis.cmax


def test_spectrum_figure() -> None:
    form = quadratic_form(1)
    fig = plots.make_spectrum_figure(form)
    bars, line = fig.data
    np.testing.assert_array_equal(bars.y, form.eigenvalues)
    colors = np.array(bars.marker.color)
    assert (colors[form.eigenvalues < 0] == "#e66101").all()
    assert (colors[form.eigenvalues > 0] == "#2166ac").all()
    np.testing.assert_array_equal(line.y, form.singular_values)
    negative = int((form.eigenvalues < 0).sum())
    assert f"{negative} negative eigenvalues" in fig.layout.title.subtitle.text


def test_token_distance_figure_marks_negative_distances() -> None:
    rng = np.random.default_rng(2)
    s = np.diag([1.0, -2.0, 0.5, 0.0])
    e = rng.normal(size=(5, 4))
    e[3] = e[0]  # "the" twice: distance 0
    d2 = token_distances(s, e)
    assert (d2 < 0).any() and (d2 > 0).any()
    fig = plots.make_token_distance_figure(d2, TOKENS)
    heat, marks = fig.data
    np.testing.assert_array_equal(heat.z, d2)
    assert heat.zmin == -heat.zmax and heat.zmax == np.abs(d2).max()
    assert heat.colorscale[1] == (0.5, "#ffffff")  # white sits at 0
    neg_q, neg_k = np.nonzero(d2 < 0)
    assert sorted(zip(marks.y, marks.x, strict=True)) == sorted(zip(neg_q, neg_k, strict=True))
    assert list(fig.layout.xaxis.ticktext) == TOKENS and list(fig.layout.yaxis.ticktext) == TOKENS
    assert list(fig.layout.xaxis.tickvals) == list(range(5))
    assert tuple(heat.customdata[1, 2]) == ("cat", "sat", 1, 2)
    assert f"{len(neg_q) // 2} pair(s) negative" in fig.layout.title.subtitle.text


def test_token_distance_figure_without_negatives() -> None:
    d2 = token_distances(np.eye(3), np.random.default_rng(3).normal(size=(4, 3)))
    fig = plots.make_token_distance_figure(d2)
    assert len(fig.data) == 1 and fig.data[0].zmin == 0.0
    assert list(fig.layout.xaxis.ticktext) == ["0", "1", "2", "3"]


def test_attention_figure_has_tokens_on_both_axes() -> None:
    attn = causal_uniform(5)
    fig = plots.make_attention_figure(attn, TOKENS)
    (heat,) = fig.data
    np.testing.assert_array_equal(heat.z, attn)
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert list(fig.layout.xaxis.ticktext) == TOKENS and list(fig.layout.yaxis.ticktext) == TOKENS
    assert fig.layout.yaxis.range == (4.5, -0.5) and fig.layout.yaxis.title.text == "query"


# RoBERTa's <s> </s> <pad>, a <b> that plotly would read as bold, an entity, and a character
# vocabulary's newline, tab and space: plotly parses tags, entities and newlines in text
MARKUP_TOKENS = ["<s>", "</s>", "<pad>", "<b>", "&lt;", "\n", "\t", " ", "a<br>b"]
SHOWN = ["&lt;s&gt;", "&lt;/s&gt;", "&lt;pad&gt;", "&lt;b&gt;", "&amp;lt;", "\\n", "\\t", "␣"]
SHOWN += ["a&lt;br&gt;b"]


@pytest.mark.parametrize("make", ["attention", "distances"])
def test_token_labels_show_every_token_verbatim(make) -> None:
    """Token labels are escaped for plotly's text markup: otherwise RoBERTa's ``<s>``/``</s>``
    vanish (plotly reads them as strike-through tags) and a newline token breaks its label."""
    T = len(MARKUP_TOKENS)
    if make == "attention":
        fig = plots.make_attention_figure(causal_uniform(T), MARKUP_TOKENS)
    else:
        fig = plots.make_token_distance_figure(np.zeros((T, T)), MARKUP_TOKENS)
    assert list(fig.layout.xaxis.ticktext) == SHOWN == list(fig.layout.yaxis.ticktext)
    assert tuple(fig.data[0].customdata[0, 1]) == (SHOWN[0], SHOWN[1], 0, 1)  # the hover too


def _hover(trace: go.Heatmap, q: int, k: int) -> str:
    """The hover plotly shows over cell (q, k): the trace's template with that cell's values
    (plotly's number formats dropped). %{x} and %{y} are left as they are: plotly writes them
    as the tick text (the tokens), so a template that uses them for positions fails here."""
    text = re.sub(r"%\{z(:[^}]*)?\}", f"{trace.z[q][k]:.3f}", trace.hovertemplate)
    for i, value in enumerate(trace.customdata[q][k]):
        text = text.replace(f"%{{customdata[{i}]}}", str(value))
    return text.replace("<extra></extra>", "")


@pytest.mark.parametrize("make", ["attention", "distances"])
def test_the_hover_names_each_sides_position_and_token(make) -> None:
    """The hover over every cell reads back as (query position, token, key position, token):
    it was "query 0 0 → key 0 0", and a repeated token ("the" at 0 and 3) told apart from the
    other only by a bare number that could be a position or a token."""
    T = len(TOKENS)
    if make == "attention":
        fig, sides = plots.make_attention_figure(causal_uniform(T), TOKENS), ("query", "key")
    else:
        fig, sides = plots.make_token_distance_figure(np.zeros((T, T)), TOKENS), ("row", "column")
    side = r"{}: position (\d+), token “([^”]*)”"
    pattern = re.compile(side.format(sides[0]) + "<br>" + side.format(sides[1]) + "<br>")
    for q in range(T):
        for k in range(T):
            found = pattern.match(_hover(fig.data[0], q, k))
            assert found, _hover(fig.data[0], q, k)
            assert found.groups() == (str(q), TOKENS[q], str(k), TOKENS[k])


def test_long_sequences_thin_the_tick_labels() -> None:
    T = 200
    fig = plots.make_attention_figure(causal_uniform(T), [f"t{i}" for i in range(T)])
    vals = list(fig.layout.xaxis.tickvals)
    assert len(vals) <= 64 and vals[:2] == [0, 4]
    assert list(fig.layout.xaxis.ticktext) == [f"t{i}" for i in vals]


def test_coverage_figure() -> None:
    cov = np.array([[1.0, 0.25, 0.5], [0.75, 0.125, 1.0]])
    fig = plots.make_coverage_figure(cov, pattern="strided (merged)")
    (heat,) = fig.data
    np.testing.assert_array_equal(heat.z, cov)
    assert heat.text[0][1] == "0.25" and (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert fig.layout.yaxis.autorange == "reversed"
    assert "strided (merged)" in fig.layout.title.text
    assert "lowest 0.125 (layer 1, head 1)" in fig.layout.title.subtitle.text


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: plots.make_form_figure(np.eye(2)), TypeError, "form must be a QKForm"),
        (lambda: plots.make_spectrum_figure("U"), TypeError, "form must be a QKForm"),
        (
            lambda: plots.make_form_figure(quadratic_form(), parts="sym"),
            ValueError,
            "parts must be among matrix, symmetric, antisymmetric",
        ),
        (lambda: plots.make_form_figure(quadratic_form(), parts=[]), ValueError, "parts must"),
        (
            lambda: plots.make_token_distance_figure(np.zeros((3, 3)), ["a", "b"]),
            ValueError,
            "one label per row \\(3\\), got 2",
        ),
        (
            lambda: plots.make_token_distance_figure(np.zeros((3, 3)), "abc"),
            TypeError,
            "tokens must be a sequence of str",
        ),
        (
            lambda: plots.make_token_distance_figure(np.zeros((3, 2))),
            ValueError,
            "d2_tt must be a non-empty square",
        ),
        (
            lambda: plots.make_attention_figure(np.full((2, 2), np.nan)),
            ValueError,
            "attn_tt holds NaN",
        ),
        (lambda: plots.make_attention_figure(-np.eye(2)), ValueError, "attn_tt must be ≥ 0"),
        (
            lambda: plots.make_coverage_figure(np.array([[1.5]])),
            ValueError,
            "coverage_lh must lie in \\[0, 1\\]",
        ),
        (lambda: plots.make_coverage_figure(np.ones(3)), ValueError, "coverage_lh must be"),
    ],
)
def test_figures_reject_bad_input(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


# --- combining ------------------------------------------------------------------------------------
def _domains(fig: go.Figure, trace) -> tuple[tuple[float, float], tuple[float, float]]:
    x_key = "xaxis" + trace.xaxis[1:]
    y_key = "yaxis" + trace.yaxis[1:]
    return tuple(fig.layout[x_key].domain), tuple(fig.layout[y_key].domain)


def test_side_by_side_puts_each_figure_in_its_half() -> None:
    metric = qk_form(
        HeadWeights(
            "metric",
            0.5,
            p_hck=np.random.default_rng(4).normal(size=(1, 6, 2)),
            m_hkk=np.diag([1.0, -1.0])[None],
        ),
        0,
    )
    left = plots.make_form_figure(metric)
    right = plots.make_form_figure(quadratic_form(5))
    fig = plots.side_by_side(left, right, titles=("metric model", "dot model"))
    assert len(fig.data) == 6
    for i, trace in enumerate(fig.data):
        (x0, x1), (y0, y1) = _domains(fig, trace)
        if i < 3:
            assert 0 <= x0 < x1 <= 0.5
            assert trace.coloraxis == "coloraxis"
        else:
            assert 0.5 <= x0 < x1 <= 1
            assert trace.coloraxis == "coloraxis2"
        assert 0 <= y0 < y1 <= 1
    np.testing.assert_array_equal(fig.data[0].z, metric.matrix)
    np.testing.assert_array_equal(fig.data[3].z, quadratic_form(5).matrix)
    # each side keeps its own symmetric scale
    p = plots.FORM_PERCENTILE
    assert fig.layout.coloraxis.cmax == np.percentile(np.abs(metric.matrix), p)
    assert fig.layout.coloraxis2.cmax == np.percentile(np.abs(quadratic_form(5).matrix), p)
    assert fig.layout.coloraxis.colorbar.x < 0.5 < fig.layout.coloraxis2.colorbar.x
    texts = [a.text for a in fig.layout.annotations]
    assert "<b>metric model</b>" in texts and "<b>dot model</b>" in texts
    # the panel titles of both figures survive, and square cells still anchor to their own x
    assert texts.count("U") == 2
    axes = {k: v for k, v in fig.layout.to_plotly_json().items() if k.startswith("yaxis")}
    assert all(ax["scaleanchor"] == "x" + key[5:] for key, ax in axes.items())


def test_combine_figures_grid_keeps_every_trace() -> None:
    form = quadratic_form(6)
    d2 = token_distances(np.diag([1.0, -1.0]), np.random.default_rng(6).normal(size=(5, 2)))
    figs = [
        plots.make_form_figure(form),
        plots.make_spectrum_figure(form),
        plots.make_token_distance_figure(d2, TOKENS),
        plots.make_attention_figure(causal_uniform(5), TOKENS),
        plots.make_coverage_figure(np.full((2, 3), 0.5)),
    ]
    fig = plots.combine_figures(figs, cols=2)
    assert len(fig.data) == sum(len(f.data) for f in figs)
    cells = []
    for trace in fig.data:
        (x0, x1), (y0, y1) = _domains(fig, trace)
        cells.append((x0 >= 0.5, y0))
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    # figures 0, 2, 4 on the left, 1, 3 on the right, rows going down
    assert fig.data[0].xaxis == "x" and _domains(fig, fig.data[0])[0][1] <= 0.5
    coverage_trace = fig.data[-1]
    (cx0, _), (_, cy1) = _domains(fig, coverage_trace)
    assert cx0 < 0.5 and cy1 <= 1 / 3
    heat_bars = [t for t in fig.data if t.type == "heatmap" and t.coloraxis is None]
    assert all(t.colorbar.len < 1 for t in heat_bars)  # trace colour bars scaled into the cells
    with pytest.raises(ValueError, match="at least one"):
        plots.combine_figures([])
    with pytest.raises(TypeError, match=r"figures\[1\] must be a plotly Figure"):
        plots.combine_figures([figs[0], {"data": []}])
    with pytest.raises(ValueError, match="cols must be an int ≥ 1"):
        plots.combine_figures(figs, cols=0)
    with pytest.raises(ValueError, match="titles must have one entry per figure"):
        plots.combine_figures(figs, titles=["a"])
    with pytest.raises(ValueError, match="pie trace; only cartesian"):
        plots.combine_figures([go.Figure(go.Pie(values=[1, 2]))])


@pytest.mark.parametrize("gap", [0.06, 0.08, 0.1, 1 / 8])
@pytest.mark.parametrize("cols", [1, 2, 3])
def test_combined_axis_domains_stay_inside_the_page(cols: int, gap: float) -> None:
    """Rounding must not push an edge cell's domain below 0 or above 1 (plotly rejects it:
    cols=1, gap=0.08 once gave -4e-17)."""
    form = quadratic_form(4)
    figs = [plots.make_form_figure(form), plots.make_spectrum_figure(form)] * 2
    fig = plots.combine_figures(figs, cols=cols, gap=gap)
    for trace in fig.data:
        (x0, x1), (y0, y1) = _domains(fig, trace)
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


@pytest.mark.browser
@needs_browser
def test_combined_figure_exports_to_png(tmp_path) -> None:
    form = quadratic_form(7)
    fig = plots.side_by_side(plots.make_form_figure(form), plots.make_spectrum_figure(form))
    out = write_png(fig, tmp_path / "heads.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("space", "symbol"), [("head", "M"), ("model", "U")])
def test_a_form_is_named_as_in_the_docs_algebra(space, symbol) -> None:
    """A metric head's head-space form is its metric M, not "U" (a newcomer saw "U")."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1, 3, 3))
    weights = HeadWeights("metric", 3**-0.5, p_hck=rng.normal(size=(1, 6, 3)), m_hkk=a + a.mT)
    form = qk_form(weights, 0, space)
    fig = plots.make_form_figure(form)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == [
        symbol,
        f"sym = ({symbol} + {symbol}ᵀ)/2",
        f"antisym = ({symbol} − {symbol}ᵀ)/2",
    ]
    assert f"‖sym‖/‖{symbol}‖" in fig.layout.title.subtitle.text
    spectrum = plots.make_spectrum_figure(form)
    assert f"singular values of {symbol}" in [a.text for a in spectrum.layout.annotations]
    assert f"‖{symbol}‖_F" in spectrum.layout.title.subtitle.text
