"""Plotly figures of what attention heads learned (the pictures of the metric-attention seed).

Every ``make_*_figure`` is a pure function of arrays or a :class:`~models.heads.QKForm` that
returns a ``plotly.graph_objects.Figure`` (no Dash, no globals), so the CLI, the dashboard, the
docs script and a notebook call them alike:

- :func:`make_form_figure`: a head's bilinear form U (and its symmetric / antisymmetric parts) as
  heatmaps on one colour scale centred at 0;
- :func:`make_spectrum_figure`: eigenvalues of the symmetric part and singular values of U;
- :func:`make_token_distance_figure`: signed squared token distances with token labels; negative
  ones (an indefinite S) in their own colour and marked;
- :func:`make_attention_figure`: one head's attention with the tokens on both axes;
- :func:`make_coverage_figure`: the coverage grid, layers × heads;
- :func:`side_by_side` / :func:`combine_figures`: any of these for two checkpoints (or more
  figures) in one figure, each keeping its own colour scale.

Matrices follow :mod:`flowgraph.plot`: the query (row) on the y axis with row 0 at the top, the
key (column) on the x axis. Token axes are numeric with the tokens as tick labels, so a repeated
token keeps its own row. Export a PNG with :func:`flowgraph.plot.write_png`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from flowgraph.models.heads.metrics import QKForm
from flowgraph.plot import figure_title

__all__ = [
    "FORM_PARTS",
    "combine_figures",
    "make_attention_figure",
    "make_coverage_figure",
    "make_form_figure",
    "make_spectrum_figure",
    "make_token_distance_figure",
    "side_by_side",
    "token_label",
]

FORM_PARTS = ("matrix", "symmetric", "antisymmetric")
_FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 13}
_DIVERGING = "RdBu_r"  # red positive, blue negative, white 0
_POSITIVE = "#2166ac"
_NEGATIVE = "#e66101"
_SEQUENTIAL = "Blues"
_MAX_TICK_LABELS = 64  # above this, every token label would overlap its neighbours


# --- validation ---------------------------------------------------------------------------------
def _matrix(name: str, value: object, *, square: bool = True) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape or (square and arr.shape[0] != arr.shape[1]):
        want = "square 2-D (T, T)" if square else "2-D"
        raise ValueError(f"{name} must be a non-empty {want} array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def token_label(token: object) -> str:
    """``token`` as a plotly label that shows it verbatim. Plotly reads tags (``<b>``, ``<s>``,
    ``<br>``, …), entities (``&lt;``) and newlines in any text, so RoBERTa's ``<s>``/``</s>``
    would vanish as strike-through tags: ``&``, ``<``, ``>`` are escaped, control characters
    spelled out (``\\n``), and a token of spaces shown as ``␣``."""
    text = html.escape(str(token), quote=False)
    text = "".join(
        ch.encode("unicode_escape").decode("ascii") if ord(ch) < 32 or ord(ch) == 127 else ch
        for ch in text
    )
    return text.replace(" ", "␣") if text and not text.strip() else text


def _tokens(tokens: Sequence[str] | None, size: int) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(size)]
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"tokens must be a sequence of str, got {type(tokens).__name__}")
    if len(tokens) != size:
        raise ValueError(f"tokens must have one label per row ({size}), got {len(tokens)}")
    return [token_label(t) for t in tokens]


def _layout(fig: go.Figure, title: dict, width: int, height: int, top: int = 110) -> None:
    fig.update_layout(
        title=title,
        width=width,
        height=height,
        margin={"l": 70, "r": 40, "t": top, "b": 60},
        template="plotly_white",
        font=_FONT,
    )


def _token_axes(fig: go.Figure, labels: list[str]) -> None:
    """Query on y (row 0 at the top), key on x, square cells, tokens as tick labels."""
    T = len(labels)
    every = max(1, -(-T // _MAX_TICK_LABELS))
    ticks = {
        "tickmode": "array",
        "tickvals": list(range(0, T, every)),
        "ticktext": labels[::every],
        "showgrid": False,
    }
    fig.update_xaxes(range=[-0.5, T - 0.5], constrain="domain", tickangle=-60, **ticks)
    fig.update_yaxes(range=[T - 0.5, -0.5], scaleanchor="x", constrain="domain", **ticks)


# The hover of a token × token heatmap: each side's position and token, so a repeated token
# (the sort task's "0 1 0") is told apart by its position. The positions come from customdata:
# plotly writes %{x} and %{y} as the axes' tick text, the tokens, so "query %{y} <token>" read
# "query 0 0" in the browser.
_PAIR_HOVER = (
    "{q}: position %{{customdata[2]}}, token “%{{customdata[0]}}”<br>"
    "{k}: position %{{customdata[3]}}, token “%{{customdata[1]}}”"
)


def _pair_text(labels: list[str]) -> np.ndarray:
    """customdata (T, T, 4): the query's and the key's token and position, for the hover."""
    t = np.array(labels, dtype=object)
    pos = np.arange(len(labels), dtype=object)
    parts = (t[:, None], t[None, :], pos[:, None], pos[None, :])
    return np.stack(np.broadcast_arrays(*parts), axis=-1)


# --- forms --------------------------------------------------------------------------------------
def form_symbol(form: QKForm) -> str:
    """The form's name in the docs' algebra: M for a head-space metric, U in model space."""
    return "M" if form.space == "head" else "U"


FORM_PERCENTILE = 99.5  # the colour range of a form: a few outliers must not wash it out


def make_form_figure(
    form: QKForm,
    *,
    parts: str | Sequence[str] = FORM_PARTS,
    title: str | None = None,
    percentile: float | None = FORM_PERCENTILE,
) -> go.Figure:
    """Heatmaps of a head's bilinear form U and/or its symmetric and antisymmetric parts.

    ``parts``: one of ``"matrix"``, ``"symmetric"``, ``"antisymmetric"`` or a sequence of them
    (default all three, side by side). The panels share one colour scale, symmetric about 0
    (white) and spanning ± the ``percentile`` of |U| (99.5 by default; None: max|U|) — trained
    BERT-family forms have a few entries far above the rest that would turn a ±max scale nearly
    white. Cells beyond it saturate; the colour bar says so, and hover gives the true value. The
    antisymmetric part's size reads against U's. Cell
    (i, j) is U[i, j]: row i is the query side's coordinate, column j the key side's, and the
    raw score is x_a U x_bᵀ (times ``form.scale`` before the softmax).

    Raises TypeError for a ``form`` that is not a QKForm, ValueError for an unknown part.
    """
    if not isinstance(form, QKForm):
        raise TypeError(f"form must be a QKForm (models.heads.qk_form), got {type(form).__name__}")
    chosen = [parts] if isinstance(parts, str) else list(parts)
    if not chosen or any(p not in FORM_PARTS for p in chosen):
        raise ValueError(f"parts must be among {', '.join(FORM_PARTS)}, got parts={parts!r}")
    u = form_symbol(form)
    names = {
        "matrix": u,
        "symmetric": f"sym = ({u} + {u}ᵀ)/2",
        "antisymmetric": f"antisym = ({u} − {u}ᵀ)/2",
    }
    n = form.matrix.shape[0]
    dim = "k (head space)" if form.space == "head" else "c (model space)"
    fig = make_subplots(
        rows=1, cols=len(chosen), subplot_titles=[names[p] for p in chosen], horizontal_spacing=0.08
    )
    for i, part in enumerate(chosen):
        fig.add_trace(
            go.Heatmap(
                z=getattr(form, part),
                coloraxis="coloraxis",
                name=names[part],
                hovertemplate="row %{y}, column %{x}: %{z:.4g}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        x_name = fig.get_subplot(1, i + 1).xaxis.plotly_name
        fig.update_xaxes(
            range=[-0.5, n - 0.5], constrain="domain", title_text="key side", row=1, col=i + 1
        )
        fig.update_yaxes(
            range=[n - 0.5, -0.5],
            scaleanchor=x_name.replace("axis", ""),
            constrain="domain",
            title_text="query side" if i == 0 else None,
            row=1,
            col=i + 1,
        )
    abs_u = np.abs(form.matrix)
    span = float(abs_u.max())
    if percentile is not None:
        if isinstance(percentile, bool) or not 0 < float(percentile) <= 100:
            raise ValueError(f"percentile must be in (0, 100] or None, got {percentile!r}")
        span = float(np.percentile(abs_u, percentile)) or span  # mostly zeros: use the max
    span = span or 1.0  # an all-zero form: any symmetric span
    beyond = int((abs_u > span).sum())
    label = "value"
    if beyond:
        label = f"value<br>±{span:.3g} = p{percentile:g} of |{u}|<br>{beyond} cells beyond"
    fig.update_layout(
        coloraxis={
            "colorscale": _DIVERGING,
            "cmin": -span,
            "cmax": span,
            "cmid": 0.0,
            "colorbar": {"title": {"text": label}, "thickness": 14, "len": 0.8},
        }
    )
    what = "metric M" if form.space == "head" else "bilinear form U"
    _layout(
        fig,
        figure_title(
            title or f"{what}, {n}×{n} ({dim})",
            f"symmetry ‖sym‖/‖{u}‖ = {form.symmetry:.3f}; scores = {form.scale:.4g} · "
            + ("p_a M p_bᵀ (p = P·x)" if form.space == "head" else "x_a U x_bᵀ"),
        ),
        width=max(460, 90 + 380 * len(chosen)),
        height=500,
    )
    return fig


def make_spectrum_figure(form: QKForm, *, title: str | None = None) -> go.Figure:
    """Two panels: the eigenvalues of the symmetric part (descending, negative ones in their own
    colour: directions the head scores negatively) and the singular values of U."""
    if not isinstance(form, QKForm):
        raise TypeError(f"form must be a QKForm (models.heads.qk_form), got {type(form).__name__}")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            "eigenvalues of the symmetric part",
            f"singular values of {form_symbol(form)}",
        ],
        horizontal_spacing=0.12,
    )
    lam = form.eigenvalues
    idx = np.arange(1, lam.size + 1)
    fig.add_trace(
        go.Bar(
            x=idx,
            y=lam,
            marker_color=np.where(lam < 0, _NEGATIVE, _POSITIVE).tolist(),
            name="eigenvalue",
            hovertemplate="λ%{x} = %{y:.4g}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    sv = form.singular_values
    fig.add_trace(
        go.Scatter(
            x=np.arange(1, sv.size + 1),
            y=sv,
            mode="lines+markers",
            marker={"color": _POSITIVE, "size": 5},
            name="singular value",
            hovertemplate="σ%{x} = %{y:.4g}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="index (descending)")
    fig.update_yaxes(zeroline=True, zerolinecolor="#777777")
    positive, negative = int((lam > 0).sum()), int((lam < 0).sum())
    _layout(
        fig,
        figure_title(
            title or f"spectra of the {form.matrix.shape[0]}×{form.matrix.shape[0]} form",
            f"{positive} positive, {negative} negative eigenvalues; "
            f"‖{form_symbol(form)}‖_F = {float(np.sqrt((sv**2).sum())):.4g}",
        ),
        width=900,
        height=420,
    )
    return fig


# --- token pictures -----------------------------------------------------------------------------
def make_token_distance_figure(
    d2_tt: np.ndarray, tokens: Sequence[str] | None = None, *, title: str | None = None
) -> go.Figure:
    """Heatmap of signed squared token distances d²(a, b) with the tokens on both axes.

    Positive values shade from white to blue; negative values (S indefinite: the pair is "closer
    than identical") shade from white to orange and every negative cell carries a marker, so a
    tiny negative value is not mistaken for a small positive one.
    """
    d2 = _matrix("d2_tt", d2_tt)
    labels = _tokens(tokens, d2.shape[0])
    top, low = float(max(d2.max(), 0.0)), float(min(d2.min(), 0.0))
    span = max(top, -low) or 1.0
    # one scale: orange below 0, white at 0, blue above; cmin/cmax keep 0 at the white stop
    fig = go.Figure(
        go.Heatmap(
            z=d2,
            customdata=_pair_text(labels),
            zmin=-span if low < 0 else 0.0,
            zmax=span,
            colorscale=[[0.0, _NEGATIVE], [0.5, "#ffffff"], [1.0, _POSITIVE]]
            if low < 0
            else [[0.0, "#ffffff"], [1.0, _POSITIVE]],
            colorbar={"title": {"text": "d²"}, "thickness": 14, "len": 0.8},
            name="d²",
            hovertemplate=_PAIR_HOVER.format(q="row", k="column") + "<br>d² = %{z:.4g}"
            "<extra></extra>",
        )
    )
    neg_q, neg_k = np.nonzero(d2 < 0)
    if neg_q.size:
        fig.add_trace(
            go.Scatter(
                x=neg_k,
                y=neg_q,
                mode="markers",
                marker={"symbol": "x-thin", "size": 6, "line": {"width": 1, "color": "#5a2d00"}},
                name="d² < 0",
                hoverinfo="skip",
                showlegend=True,
            )
        )
    _token_axes(fig, labels)
    pairs = neg_q.size // 2
    _layout(
        fig,
        figure_title(
            title or "squared distances the head's symmetric form induces between tokens",
            "d²(a, b) = (e_a − e_b) S (e_a − e_b)ᵀ"
            + (f"; {pairs} pair(s) negative (S indefinite)" if pairs else ""),
        ),
        width=640,
        height=640,
    )
    fig.update_layout(legend={"orientation": "h", "y": -0.18})
    return fig


def make_attention_figure(
    attn_tt: np.ndarray, tokens: Sequence[str] | None = None, *, title: str | None = None
) -> go.Figure:
    """Heatmap of one head's attention A[q, k] (rows: queries, columns: keys) with the tokens
    on both axes; the scale runs 0..1 so two heads compare by eye."""
    attn = _matrix("attn_tt", attn_tt)
    if (attn < 0).any():
        raise ValueError(f"attn_tt must be ≥ 0 (softmax weights), got min {attn.min():.3g}")
    labels = _tokens(tokens, attn.shape[0])
    fig = go.Figure(
        go.Heatmap(
            z=attn,
            customdata=_pair_text(labels),
            zmin=0.0,
            zmax=1.0,
            colorscale=_SEQUENTIAL,
            colorbar={"title": {"text": "weight"}, "thickness": 14, "len": 0.8},
            name="attention",
            # positions and tokens both named: "query 0 0 → key 0 0" told neither apart
            hovertemplate=_PAIR_HOVER.format(q="query", k="key") + "<br>weight %{z:.3f}"
            "<extra></extra>",
        )
    )
    _token_axes(fig, labels)
    fig.update_xaxes(title_text="key")
    fig.update_yaxes(title_text="query")
    _layout(
        fig,
        figure_title(title or "attention", "row q: query q's weights over the keys"),
        width=640,
        height=640,
    )
    return fig


def make_coverage_figure(
    coverage_lh: np.ndarray, *, pattern: str = "pattern", title: str | None = None
) -> go.Figure:
    """The coverage grid: layers (rows, layer 0 at the top) × heads (columns), each cell the
    fraction of the head's attention mass inside ``pattern``'s mask, 0..1, printed in the cell."""
    cov = _matrix("coverage_lh", coverage_lh, square=False)
    if cov.min() < 0 or cov.max() > 1:
        raise ValueError(f"coverage_lh must lie in [0, 1], got [{cov.min():.3g}, {cov.max():.3g}]")
    L, H = cov.shape
    fig = go.Figure(
        go.Heatmap(
            z=cov,
            x=list(range(H)),
            y=list(range(L)),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            text=np.vectorize(lambda v: f"{v:.2f}")(cov),
            texttemplate="%{text}" if L * H <= 400 else None,
            colorbar={"title": {"text": "kept"}, "thickness": 14, "len": 0.8},
            name="coverage",
            hovertemplate="layer %{y}, head %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="head", dtick=1, showgrid=False)
    fig.update_yaxes(title_text="layer", dtick=1, autorange="reversed", showgrid=False)
    _layout(
        fig,
        figure_title(
            title or f"attention mass inside {pattern}",
            f"mean over heads {cov.mean():.3f}; lowest {cov.min():.3f} "
            f"(layer {np.unravel_index(cov.argmin(), cov.shape)[0]}, "
            f"head {np.unravel_index(cov.argmin(), cov.shape)[1]})",
        ),
        width=max(420, 160 + 48 * H),
        height=max(300, 170 + 40 * L),
    )
    return fig


# --- several figures in one ---------------------------------------------------------------------
_AXIS_KEY = re.compile(r"^([xy])axis(\d*)$")
_COLORAXIS_KEY = re.compile(r"^coloraxis(\d*)$")


def _axis_id(letter: str, number: str | int) -> str:
    return f"{letter}{'' if number in ('', 1, '1') else number}"


def _remap_ref(ref: object, mapping: dict[str, str]) -> object:
    """'x2' → mapping['x2']; 'x2 domain' → mapping['x2'] + ' domain'; 'paper'/None unchanged."""
    if not isinstance(ref, str):
        return ref
    head, _, tail = ref.partition(" ")
    if head in mapping:
        return mapping[head] + (f" {tail}" if tail else "")
    return ref


def _place(value: float, start: float, size: float) -> float:
    return start + size * value


def combine_figures(
    figures: Sequence[go.Figure],
    *,
    cols: int = 2,
    titles: Sequence[str] | None = None,
    gap: float = 0.06,
) -> go.Figure:
    """Lay ``figures`` out on a grid (``cols`` per row) in one figure; each keeps its panels, axes,
    colour scales and panel titles, scaled into its cell. ``titles`` (default: each figure's own
    title) are written above the cells. Works for figures of cartesian traces (heatmaps,
    scatters, bars), which is every figure of this module and of :mod:`flowgraph.plot`.

    Raises TypeError for a non-Figure, ValueError for no figures, a bad ``cols`` or a title count
    that does not match, or a figure with non-cartesian traces.
    """
    figs = list(figures)
    if not figs:
        raise ValueError("figures must hold at least one plotly Figure, got none")
    for i, f in enumerate(figs):
        if not isinstance(f, go.Figure):
            raise TypeError(f"figures[{i}] must be a plotly Figure, got {type(f).__name__}")
        for trace in f.data:
            if "xaxis" not in trace:
                raise ValueError(
                    f"figures[{i}] holds a {trace.type} trace; only cartesian traces combine"
                )
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be an int ≥ 1, got cols={cols!r}")
    if titles is not None and len(titles) != len(figs):
        raise ValueError(f"titles must have one entry per figure ({len(figs)}), got {len(titles)}")
    cols = min(cols, len(figs))
    rows = -(-len(figs) // cols)
    cell_w, cell_h = (1 - gap * (cols - 1)) / cols, (1 - gap * (rows - 1)) / rows
    heights = [f.layout.height or 500 for f in figs]
    out = go.Figure()
    annotations: list = []
    counters = {"x": 0, "y": 0, "coloraxis": 0}
    for i, fig in enumerate(figs):
        r, c = divmod(i, cols)
        x0 = c * (cell_w + gap)
        y0 = 1 - (r + 1) * cell_h - r * gap  # row 0 at the top
        plot_h = cell_h * 0.86  # the top of the cell holds its title
        cell = {"x": (x0, cell_w), "y": (y0, plot_h)}
        used = {_AXIS_KEY.match(k).groups() for k in fig.layout if _AXIS_KEY.match(k)}  # type: ignore[union-attr]
        used = {(letter, number) for letter, number in used if fig.layout[f"{letter}axis{number}"]}
        for trace in fig.data:
            used.add(("x", (trace.xaxis or "x")[1:]))
            used.add(("y", (trace.yaxis or "y")[1:]))
        mapping: dict[str, str] = {}
        for letter, number in sorted(used):
            counters[letter] += 1
            mapping[_axis_id(letter, number)] = _axis_id(letter, counters[letter])
        for letter, number in sorted(used):
            new = mapping[_axis_id(letter, number)]
            out.layout[f"{letter}axis{new[1:]}"] = fig.layout[f"{letter}axis{number}"]
            axis = out.layout[f"{letter}axis{new[1:]}"]
            lo, hi = axis.domain or (0.0, 1.0)
            start, size = cell[letter]
            # clamped: float rounding can put an edge cell at -4e-17, which plotly rejects
            domain = [min(1.0, max(0.0, _place(v, start, size))) for v in (lo, hi)]
            updates: dict = {"domain": domain}
            for ref in ("anchor", "scaleanchor", "matches", "overlaying"):
                if axis[ref] is not None:
                    updates[ref] = _remap_ref(axis[ref], mapping)
            if axis.anchor is None:
                updates["anchor"] = mapping.get(_axis_id("y" if letter == "x" else "x", number))
            axis.update(updates)
        color_map: dict[str, str] = {}
        for key in sorted(k for k in fig.layout if _COLORAXIS_KEY.match(k)):
            if fig.layout[key].to_plotly_json() == {}:
                continue
            counters["coloraxis"] += 1
            n = counters["coloraxis"]
            color_map[key] = f"coloraxis{'' if n == 1 else n}"
            out.layout[color_map[key]] = fig.layout[key]
            _place_colorbar(out.layout[color_map[key]].colorbar, cell)
        for trace in fig.data:
            copy = type(trace)(trace)
            copy.update(xaxis=mapping[trace.xaxis or "x"], yaxis=mapping[trace.yaxis or "y"])
            if "coloraxis" in copy and copy.coloraxis is not None:
                copy.coloraxis = color_map.get(copy.coloraxis, copy.coloraxis)
            elif "colorbar" in copy:
                _place_colorbar(copy.colorbar, cell)
            out.add_trace(copy)
        for note in fig.layout.annotations:
            copy = go.layout.Annotation(note)
            for letter in ("x", "y"):
                ref = copy[f"{letter}ref"] or "paper"
                if ref == "paper":
                    start, size = cell[letter]
                    value = copy[letter] if copy[letter] is not None else 0.5
                    copy[letter] = _place(value, start, size)
                else:
                    copy[f"{letter}ref"] = _remap_ref(ref, mapping)
            annotations.append(copy)
        for shape in fig.layout.shapes:
            copy = go.layout.Shape(shape)
            for letter in ("x", "y"):
                copy[f"{letter}ref"] = _remap_ref(copy[f"{letter}ref"] or letter, mapping)
            out.add_shape(copy)
        own = fig.layout.title
        text = titles[i] if titles is not None else (own.text or "")
        sub = "" if titles is not None else (own.subtitle.text or "")
        label = f"<b>{text}</b>" + (f"<br><span style='font-size:11px'>{sub}</span>" if sub else "")
        annotations.append(
            go.layout.Annotation(
                text=label,
                xref="paper",
                yref="paper",
                x=x0 + cell_w / 2,
                y=y0 + cell_h,
                xanchor="center",
                yanchor="top",
                showarrow=False,
                font={"size": 13},
            )
        )
    width = max(
        sum(f.layout.width or 700 for f in figs[r * cols : (r + 1) * cols]) for r in range(rows)
    )
    out.update_layout(
        annotations=annotations,
        width=int(width * (1 + gap * (cols - 1))),
        height=int(sum(max(heights[r * cols : (r + 1) * cols]) for r in range(rows)) * 1.05),
        margin={"l": 70, "r": 60, "t": 40, "b": 60},
        template="plotly_white",
        font=_FONT,
        legend={"orientation": "h", "y": -0.05},
    )
    return out


def _place_colorbar(bar, cell: dict) -> None:
    """Scale a colour bar's paper position (plotly's defaults: x 1.02, y 0.5, len 1) into a cell."""
    (x0, w), (y0, h) = cell["x"], cell["y"]
    bar.x = _place(1.02 if bar.x is None else bar.x, x0, w)
    bar.y = _place(0.5 if bar.y is None else bar.y, y0, h)
    bar.len = (1.0 if bar.len is None else bar.len) * h
    if bar.lenmode == "pixels":
        bar.lenmode = "fraction"


def side_by_side(
    left: go.Figure, right: go.Figure, *, titles: tuple[str, str] | None = None
) -> go.Figure:
    """Two figures next to each other in one, e.g. a metric model's form beside a dot-product
    model's (``titles``: e.g. the checkpoint names; default: the figures' own titles). Each
    side keeps its own colour scale: forms of two models need not share a range."""
    return combine_figures([left, right], cols=2, titles=titles, gap=0.1)
