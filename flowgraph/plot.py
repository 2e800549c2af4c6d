"""Plotly figures of patterns, their information-flow graphs and their checks.

Every ``make_*_figure`` is a pure function of a :class:`~flowgraph.Pattern` (or a
:class:`~flowgraph.Report`) that returns a ``plotly.graph_objects.Figure``: no Dash, no globals,
so a notebook, a test, the docs script and the dashboard call them alike. :func:`write_png`
exports a figure to a PNG file (kaleido + a Chromium/Chrome on the machine).

Pictures number the steps from 1, as the papers do: "step 1" is ``pattern.steps[0]`` and the
flow graph's layer s holds the positions after s steps (layer 0: the input tokens). Heatmaps put
the query on the y axis with query 0 at the top and the key on the x axis, so a cell sits where
``M[q, k]`` sits in the printed matrix. This module imports plotly and is not imported by
``import flowgraph``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import flowgraph
from flowgraph import _validate
from flowgraph.check import Report, check
from flowgraph.pattern import Pattern
from flowgraph.reach import reachability

__all__ = [
    "EDGE_PATTERNS",
    "figure_title",
    "make_block_mask_figure",
    "make_edges_figure",
    "make_flow_figure",
    "make_flow_graph_figure",
    "make_mask_figure",
    "make_reachability_figure",
    "make_reachability_grid",
    "write_png",
]

# Colour-blind safe blue/orange pairs; light grey is "nothing here".
_BLANK = "#f0f0f0"
_ON = "#2166ac"
_PALE = "#c6dbef"
_MISSING = "#e66101"
_LEAK = "#7b3294"
_KEY = "#e66101"
_QUERY = "#2166ac"
_EDGE = "rgba(110, 110, 110, 0.35)"
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross")
_FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 13}

# Cell classes of the reachability heatmaps (the z codes), with their colours.
_REACH_CLASSES = (
    ("not a target (k > q)", _BLANK),
    ("target, not reached yet", _PALE),
    ("reached", _ON),
    ("missing after the last step", _MISSING),
    ("reached although k > q", _LEAK),
)
_NOT_TARGET, _PENDING, _REACHED, _MISSED, _LEAKED = range(len(_REACH_CLASSES))

EDGE_PATTERNS = ("dense", "strided", "fixed", "ltr", "rtl", "star")
"""Constructors :func:`make_edges_figure` knows, each called with its default stride."""


# --- validation ---------------------------------------------------------------------------------
def _check_pattern(pattern: object) -> Pattern:
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    return pattern


def _check_size(pattern: Pattern, max_n: object, what: str) -> None:
    max_n = _validate.positive_int("max_n", max_n)
    if pattern.n > max_n:
        raise ValueError(
            f"{what} draws every position; n={pattern.n} is above max_n={max_n}. "
            "Pass a smaller pattern or a larger max_n"
        )


def _report_for(pattern: Pattern, report: object) -> Report:
    """The given report (checked to describe ``pattern``) or a fresh ``check(pattern)``."""
    if report is None:
        return check(pattern)
    if not isinstance(report, Report):
        raise TypeError(f"report must be a flowgraph.Report or None, got {type(report).__name__}")
    mine = (pattern.n, pattern.causal, pattern.num_steps)
    theirs = (report.n, report.causal, report.num_steps)
    if mine != theirs:
        raise ValueError(
            "report must describe the pattern: expected (n, causal, num_steps)="
            f"{mine}, got report with {theirs}"
        )
    return report


# --- layout helpers -----------------------------------------------------------------------------
def _grid(panels: int, max_cols: int) -> tuple[int, int, list[list[dict | None]]]:
    """Rows, columns and make_subplots specs for ``panels`` panels, ``max_cols`` per row."""
    cols = min(panels, max_cols)
    rows = -(-panels // cols)
    specs: list[list[dict | None]] = [
        [{} if r * cols + c < panels else None for c in range(cols)] for r in range(rows)
    ]
    return rows, cols, specs


def _square_matrix_axes(fig: go.Figure, cells: Sequence[tuple[int, int]], n: int) -> None:
    """Query on y (0 at the top), key on x, square cells, in the panels at (row, col) ``cells``."""
    for row, col in cells:
        x_name = fig.get_subplot(row, col).xaxis.plotly_name  # "xaxis", "xaxis2", ...
        fig.update_xaxes(
            range=[-0.5, n - 0.5],
            constrain="domain",
            title_text="key k",
            showgrid=False,
            row=row,
            col=col,
        )
        fig.update_yaxes(
            range=[n - 0.5, -0.5],  # reversed: row 0 at the top, as the matrix is printed
            scaleanchor=x_name.replace("axis", ""),
            constrain="domain",
            title_text="query q",
            showgrid=False,
            row=row,
            col=col,
        )


def _discrete_coloraxis(colors: Sequence[str], labels: Sequence[str]) -> dict:
    """A coloraxis that paints the integer codes 0..len(colors)−1, labelled on its colour bar."""
    count = len(colors)
    scale = []
    for i, color in enumerate(colors):
        scale += [(i / count, color), ((i + 1) / count, color)]
    return {
        "colorscale": scale,
        "cmin": -0.5,
        "cmax": count - 0.5,
        "colorbar": {
            "tickvals": list(range(count)),
            "ticktext": list(labels),
            "thickness": 14,
            "len": 0.6,
            "outlinewidth": 1,
            "outlinecolor": "#999999",
        },
    }


def figure_title(text: str, *lines: str) -> dict:
    """A layout title pinned to the top of the figure, with smaller subtitle lines under it."""
    return {
        "text": text,
        "subtitle": {"text": "<br>".join(lines), "font": {"size": 12}},
        "yref": "container",
        "y": 1,
        "yanchor": "top",
        "pad": {"t": 14},
    }


def _top_margin(lines: int) -> int:
    """Room for the title, ``lines`` subtitle lines and the subplot titles under them."""
    return 90 + 17 * lines


def _kind(obj: Pattern | Report) -> str:
    return "causal" if obj.causal else "bidirectional"


# --- mask heatmaps ------------------------------------------------------------------------------
def make_mask_figure(pattern: Pattern, step: int | None = None, *, max_n: int = 1024) -> go.Figure:
    """Heatmap of one step's mask, or of every step side by side.

    Parameters
    ----------
    pattern : the Pattern to draw.
    step : index into ``pattern.steps`` (0-based; titled "step step+1"), or None for every step,
        one panel each (at most four per row).
    max_n : refuse patterns with more positions than this (a heatmap has n² cells).

    Returns
    -------
    plotly.graph_objects.Figure
        One ``Heatmap`` per drawn step, ``z[q, k]`` = 1 where query q attends key k, else 0.

    Raises
    ------
    TypeError : ``pattern`` is not a Pattern, or ``step`` is not an int.
    ValueError : ``step`` is out of range, or n > max_n.

    Examples
    --------
    >>> import flowgraph as fg
    >>> fig = make_mask_figure(fg.strided(16, stride=4))
    >>> [trace.z.shape for trace in fig.data], fig.layout.annotations[1].text
    ([(16, 16), (16, 16)], 'step 2 (steps[1]): 40 edges')
    """
    pattern = _check_pattern(pattern)
    _check_size(pattern, max_n, "make_mask_figure")
    p = pattern.num_steps
    if step is None:
        steps = list(range(p))
    else:
        steps = [_validate.int_in_range("step", step, 0, p - 1, f"the pattern has {p} steps")]
    rows, cols, specs = _grid(len(steps), max_cols=4)
    titles = [f"step {s + 1} (steps[{s}]): {pattern.steps[s].nnz:,} edges" for s in steps]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        specs=specs,
        subplot_titles=titles,
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
    )
    for i, s in enumerate(steps):
        mask_qk = pattern.dense(s).astype(np.uint8)
        fig.add_trace(
            go.Heatmap(
                z=mask_qk,
                coloraxis="coloraxis",
                name=f"step {s + 1}",
                hovertemplate="query %{y}, key %{x}: %{z}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    _square_matrix_axes(fig, [(i // cols + 1, i % cols + 1) for i in range(len(steps))], pattern.n)
    fig.update_layout(
        title=figure_title(
            f"{pattern.name}: n={pattern.n}, {_kind(pattern)}",
            "M[q, k] = 1: query q attends key k",
        ),
        coloraxis=_discrete_coloraxis([_BLANK, _ON], ["does not attend", "attends"]),
        width=max(520, 100 + 340 * cols),
        height=_top_margin(1) + 20 + 310 * rows,
        margin={"l": 60, "r": 40, "t": _top_margin(1), "b": 50},
        template="plotly_white",
        font=_FONT,
    )
    return fig


def make_block_mask_figure(pattern: Pattern, cells: int = 256) -> go.Figure:
    """Every step as a block view: at most ``cells`` × ``cells`` blocks of ⌈n/cells⌉ positions,
    coloured by the fraction of the block's (query, key) pairs that attend — the picture of a
    pattern too large to draw entry by entry (a library pattern at n = 1,048,576 is counted
    from its rules, no CSR built).

    Examples
    --------
    >>> import flowgraph as fg
    >>> fig = make_block_mask_figure(fg.strided(4096), cells=64)
    >>> fig.data[0].z.shape, fig.layout.annotations[0].text
    ((64, 64), 'step 1 (steps[0]): 264,160 edges')
    """
    pattern = _check_pattern(pattern)
    cells = _validate.positive_int("cells", cells)
    n, p = pattern.n, pattern.num_steps
    block = -(-n // cells)
    nb = -(-n // block)
    side_b = np.minimum(block, n - np.arange(nb) * block)  # the last block may be short
    area_bb = np.outer(side_b, side_b).astype(np.float64)
    edges = pattern.edges()
    rows, cols, specs = _grid(p, max_cols=4)
    titles = [f"step {s + 1} (steps[{s}]): {edges[s]:,} edges" for s in range(p)]
    fig = make_subplots(
        rows=rows, cols=cols, specs=specs, subplot_titles=titles,
        horizontal_spacing=0.08, vertical_spacing=0.12,
    )  # fmt: skip
    centres = np.arange(nb) * block + (block - 1) / 2  # a cell spans its block on the axes
    for s in range(p):
        frac_bb = pattern.block_counts(s, block) / area_bb
        fig.add_trace(
            go.Heatmap(
                z=frac_bb,
                x=centres,
                y=centres,
                coloraxis="coloraxis",
                name=f"step {s + 1}",
                hovertemplate=(
                    f"block of {block:,} queries around %{{y:.0f}} and keys around %{{x:.0f}}: "
                    "%{z:.3f} of its pairs attend<extra></extra>"
                ),
            ),
            row=s // cols + 1,
            col=s % cols + 1,
        )
    _square_matrix_axes(fig, [(s // cols + 1, s % cols + 1) for s in range(p)], n)
    fig.update_layout(
        title=figure_title(
            f"{pattern.name}: n={n:,}, {_kind(pattern)} — block view",
            f"each cell is a block of {block:,} × {block:,} positions: the fraction of its "
            "pairs that attend (too many entries to draw one by one)",
        ),
        coloraxis={"colorscale": [[0, _BLANK], [1, _ON]], "cmin": 0, "cmax": 1,
                   "colorbar": {"title": {"text": "attends"}}},
        width=max(520, 100 + 340 * cols),
        height=_top_margin(1) + 20 + 310 * rows,
        margin={"l": 60, "r": 40, "t": _top_margin(1), "b": 50},
        template="plotly_white",
        font=_FONT,
    )  # fmt: skip
    return fig


# --- the information-flow graph -----------------------------------------------------------------
def _segments(
    xy_pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Line segments (x0, y0) → (x1, y1) as one x and one y array with NaN gaps between them."""
    xs, ys = [], []
    for x0, y0, x1, y1 in xy_pairs:
        gap = np.full(x0.size, np.nan)
        xs.append(np.column_stack([x0, x1, gap]).ravel())
        ys.append(np.column_stack([y0, y1, gap]).ravel())
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def _labelled_marker(
    x: int, y: int, label: str, position: str, color: str, symbol: str, node_size: int
) -> go.Scatter:
    """One outlined, labelled node marker drawn above the flow graph (a witness key or query)."""
    return go.Scatter(
        x=[x],
        y=[y],
        mode="markers+text",
        name=label,
        text=[label],
        textposition=position,
        cliponaxis=False,
        marker={
            "color": color,
            "size": node_size + 10,
            "symbol": symbol,
            "line": {"color": "black", "width": 1.5},
        },
    )


def make_flow_graph_figure(
    pattern: Pattern,
    report: Report | None = None,
    max_n: int = 64,
    *,
    key: int | None = None,
) -> go.Figure:
    """The layered information-flow graph: node (s, i) at x=i, y=s, layer 0 at the bottom.

    An edge (s, k) → (s+1, q) is drawn iff ``pattern.steps[s][q, k]``; a step over compressed
    keys draws its keys as diamonds half-way up, each fed by the tokens of its span and feeding
    the queries that attend it. When ``report`` has a
    witness (q, k), key k (layer 0) and query q (last layer) are marked and the edges that carry
    k's information (those leaving k's descendants) are highlighted: the reader sees them die out
    before reaching q. ``key`` highlights another key's descendants instead.

    Parameters
    ----------
    pattern : the Pattern to draw (a :func:`flowgraph.stack` result works too).
    report : ``check(pattern)``; only its witness is used. None: nothing is marked.
    max_n : refuse larger patterns (the graph has (num_steps+1)·n nodes).
    key : a layer-0 position whose descendants to highlight (default: the witness key).

    Returns
    -------
    plotly.graph_objects.Figure
        Traces: ``edges`` and ``edges carrying key k`` (lines with NaN gaps, one segment per
        edge, so together they hold ``edges_total`` segments, plus one per span token of a
        compressed key), ``positions`` (the nodes), then
        the descendants, the key and the query markers when something is highlighted.

    Raises
    ------
    TypeError : wrong argument types. ValueError : n > max_n, ``key`` out of range, or a report
    for another pattern.

    Examples
    --------
    >>> import flowgraph as fg
    >>> p = fg.fixed(16, stride=4)
    >>> fig = make_flow_graph_figure(p, fg.check(p))
    >>> [trace.name for trace in fig.data][-2:]
    ['key 0', 'query 0 (never reached by key 0)']
    """
    pattern = _check_pattern(pattern)
    _check_size(pattern, max_n, "make_flow_graph_figure")
    n, p = pattern.n, pattern.num_steps
    witness = None if report is None else _report_for(pattern, report).witness
    if key is not None:
        key = _validate.int_in_range("key", key, 0, n - 1, f"a position of the pattern, n={n}")
    elif witness is not None:
        key = witness[1]

    # reached_sn[s, i]: node (s, i) holds key's information (a descendant of (0, key)).
    reached_sn = np.zeros((p + 1, n), dtype=np.bool_)
    if key is not None:
        reached_sn[0, key] = True
    plain, lit = [], []
    key_nodes = []  # (x, y, reached) of the compressed keys, drawn half-way between layers
    for s in range(p):
        spans = pattern.key_spans[s]
        mask = pattern.key_step(s)
        q_e = np.repeat(np.arange(n), np.diff(mask.indptr))
        k_e = mask.indices.astype(np.int64)
        if spans is None:
            hot_e = reached_sn[s, k_e]
            x_key, y_key = k_e.astype(float), np.full(k_e.size, float(s))
        else:  # token → compressed key (its span) → query
            member = spans.membership()
            j_t = np.repeat(np.arange(spans.m), np.diff(member.indptr))
            t_t = member.indices.astype(np.int64)
            x_m = (spans.first_m + spans.last_m) / 2
            hot_t = reached_sn[s, t_t]
            hot_m = np.zeros(spans.m, np.bool_)
            hot_m[j_t[hot_t]] = True
            for chosen, out in ((~hot_t, plain), (hot_t, lit)):
                y0 = np.full(int(chosen.sum()), float(s))
                out.append((t_t[chosen].astype(float), y0, x_m[j_t[chosen]], y0 + 0.5))
            key_nodes.append((x_m, np.full(spans.m, s + 0.5), hot_m))
            hot_e = hot_m[k_e]
            x_key, y_key = x_m[k_e], np.full(k_e.size, s + 0.5)
        reached_sn[s + 1, q_e[hot_e]] = True
        for chosen, out in ((~hot_e, plain), (hot_e, lit)):
            y1 = np.full(int(chosen.sum()), float(s + 1))
            out.append((x_key[chosen], y_key[chosen], q_e[chosen].astype(float), y1))

    fig = go.Figure()
    x, y = _segments(plain)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            line={"color": _EDGE, "width": 0.7},
            name="edges",
            hoverinfo="skip",
        )
    )
    label = "" if key is None else f"edges carrying key {key}"
    x, y = _segments(lit)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=y,
            mode="lines",
            line={"color": _KEY, "width": 1.6},
            name=label or "highlighted",
            hoverinfo="skip",
            showlegend=key is not None,
        )
    )
    node_size = max(4.0, min(10.0, 360 / n))
    layer_s, pos_s = np.divmod(np.arange((p + 1) * n), n)
    fig.add_trace(
        go.Scatter(
            x=pos_s,
            y=layer_s,
            mode="markers",
            name="positions",
            marker={"color": "#8c8c8c", "size": node_size},
            hovertemplate="layer %{y}, position %{x}<extra></extra>",
            showlegend=False,
        )
    )
    if key_nodes:
        x_c = np.concatenate([k[0] for k in key_nodes])
        y_c = np.concatenate([k[1] for k in key_nodes])
        hot_c = np.concatenate([k[2] for k in key_nodes])
        fig.add_trace(
            go.Scatter(
                x=x_c,
                y=y_c,
                mode="markers",
                name="compressed keys (each stands for its span of tokens)",
                marker={
                    "color": np.where(hot_c, _KEY, "#4c78a8").tolist(),
                    "size": node_size + 2,
                    "symbol": "diamond",
                },
                hovertemplate="compressed key at step %{y:.0f}<extra></extra>",
            )
        )
    if key is not None:
        layer_d, pos_d = np.nonzero(reached_sn)
        fig.add_trace(
            go.Scatter(
                x=pos_d,
                y=layer_d,
                mode="markers",
                name=f"holds key {key}'s information",
                marker={"color": _KEY, "size": node_size},
                hovertemplate="layer %{y}, position %{x}<extra></extra>",
            )
        )
        fig.add_trace(
            _labelled_marker(key, 0, f"key {key}", "bottom center", _KEY, "diamond", node_size)
        )
    if witness is not None:
        q = witness[0]
        fig.add_trace(
            _labelled_marker(q, p, f"query {q}", "top center", _QUERY, "square", node_size)
        )
        fig.data[-1].name = f"query {q} (never reached by key {key})"
    lines = []
    if witness is not None:
        lines.append(
            f"witness: the information of key {witness[1]} (orange) never reaches "
            f"query {witness[0]}"
        )
    elif key is not None:
        lines.append(f"orange: where the information of key {key} goes")
    fig.update_layout(
        title=figure_title(
            f"Information-flow graph of {pattern.name} (n={n}, {_kind(pattern)})", *lines
        ),
        xaxis={"title_text": "position", "range": [-1, n], "showgrid": False, "zeroline": False},
        yaxis={
            "tickvals": list(range(p + 1)),
            "ticktext": ["input"] + [f"after step {s}" for s in range(1, p + 1)],
            "range": [-0.45, p + 0.45],
            "showgrid": False,
            "zeroline": False,
        },
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        width=max(640, min(1400, 40 + 16 * n)),
        height=170 + 150 * p,
        margin={"l": 100, "r": 30, "t": _top_margin(len(lines)) - 10, "b": 60},
        template="plotly_white",
        font=_FONT,
    )
    return fig


# --- reachability -------------------------------------------------------------------------------
def _reach_classes(reach_qk: np.ndarray, target_qk: np.ndarray, last: bool) -> np.ndarray:
    """The cell class (a ``_REACH_CLASSES`` index) of every (q, k) after one step."""
    cls_qk = np.where(target_qk, _PENDING, _NOT_TARGET).astype(np.uint8)
    cls_qk[target_qk & reach_qk] = _REACHED
    cls_qk[~target_qk & reach_qk] = _LEAKED
    if last:
        cls_qk[target_qk & ~reach_qk] = _MISSED
    return cls_qk


def _verdict(report: Report) -> str:
    if report.witness is None:
        return "full information"
    q, k = report.witness
    return f"NOT full information: {report.missing_pairs:,} pairs missing, witness (q={q}, k={k})"


def _reach_figure(patterns: list[Pattern], reports: list[Report], max_n: int) -> go.Figure:
    """Rows of reachability heatmaps, one row per pattern and one panel per step."""
    cols = max(p.num_steps for p in patterns)
    cls_rows = []
    for p in patterns:
        target_qk = np.tri(p.n, dtype=np.bool_) if p.causal else np.ones((p.n, p.n), np.bool_)
        reach = reachability(p, max_n=max_n)
        cls_rows.append(
            [_reach_classes(r_qk, target_qk, s == p.num_steps - 1) for s, r_qk in enumerate(reach)]
        )
    # z holds consecutive codes for the classes that occur, so the colour bar lists only those.
    used = sorted({int(c) for row in cls_rows for cls_qk in row for c in np.unique(cls_qk)})
    code_of = np.zeros(len(_REACH_CLASSES), dtype=np.uint8)
    code_of[used] = np.arange(len(used))
    titles = []
    for p, r in zip(patterns, reports, strict=True):
        titles += [
            f"after step {s + 1}: {r.reached[s]:,} / {r.target_pairs:,} reached"
            for s in range(p.num_steps)
        ]
    fig = make_subplots(
        rows=len(patterns),
        cols=cols,
        specs=[[{} if c < p.num_steps else None for c in range(cols)] for p in patterns],
        subplot_titles=titles,
        horizontal_spacing=0.1,
        vertical_spacing=0.16 if len(patterns) > 1 else 0.1,
    )
    cells = []
    for row, (p, r, cls_row) in enumerate(zip(patterns, reports, cls_rows, strict=True), 1):
        for s, cls_qk in enumerate(cls_row):
            cells.append((row, s + 1))
            fig.add_trace(
                go.Heatmap(
                    z=code_of[cls_qk],
                    coloraxis="coloraxis",
                    name=f"{p.name}: after step {s + 1}",
                    hovertemplate="query %{y}, key %{x}<extra></extra>",
                ),
                row=row,
                col=s + 1,
            )
            if r.witness is not None:
                q, k = r.witness
                fig.add_trace(
                    go.Scatter(
                        x=[k],
                        y=[q],
                        mode="markers",
                        cliponaxis=False,
                        name="witness (q, k): key k never reaches query q",
                        legendgroup="witness",
                        marker={
                            "symbol": "circle-open",
                            "size": 18,
                            "color": "black",
                            "line": {"width": 3},
                        },
                        showlegend=not any(t.legendgroup == "witness" for t in fig.data),
                        hovertemplate="witness: query %{y}, key %{x}<extra></extra>",
                    ),
                    row=row,
                    col=s + 1,
                )
    _square_matrix_axes(fig, cells, patterns[0].n)
    if len(patterns) > 1:
        for row, p in enumerate(patterns, 1):
            fig.update_yaxes(title_text=f"<b>{p.name}</b> ({_kind(p)})<br>query q", row=row, col=1)
    fig.update_layout(
        coloraxis=_discrete_coloraxis(
            [_REACH_CLASSES[c][1] for c in used],
            [_REACH_CLASSES[c][0] for c in used],
        ),
        legend={"orientation": "h", "yanchor": "top", "y": -0.1, "x": 0},
        width=200 + 330 * cols,
        height=150 + 340 * len(patterns),
        margin={"l": 80, "r": 30, "t": 110, "b": 60},
        template="plotly_white",
        font=_FONT,
    )
    return fig


def make_reachability_figure(
    pattern: Pattern, report: Report | None = None, max_n: int = 1024
) -> go.Figure:
    """One heatmap per step of ``reachability(pattern)``: which keys reached which queries.

    Cell (q, k) of panel s is "reached" when key k's information has reached query q after s
    steps (R_s[q, k]). Cells outside the target set (k > q in a causal pattern) are grey,
    target cells not reached yet are pale, target pairs still missing after the last step have
    their own colour, and the witness (q, k) is circled in every panel.

    Parameters
    ----------
    pattern : the Pattern to draw.
    report : ``check(pattern)`` (computed when None); gives the titles' counts and the witness.
    max_n : refuse larger patterns (each panel is a dense n×n heatmap).

    Returns
    -------
    plotly.graph_objects.Figure
        A row of ``num_steps`` heatmaps whose z codes are the cell classes named on the colour
        bar (``layout.coloraxis.colorbar`` tickvals → ticktext), plus one ``witness`` marker per
        panel when information is missing.

    Raises
    ------
    TypeError : wrong argument types. ValueError : n > max_n, or a report for another pattern.
    """
    pattern = _check_pattern(pattern)
    _check_size(pattern, max_n, "make_reachability_figure")
    report = _report_for(pattern, report)
    fig = _reach_figure([pattern], [report], max_n)
    fig.update_layout(
        title=figure_title(
            f"Reachability of {pattern.name} (n={pattern.n}, {_kind(pattern)})", _verdict(report)
        ),
        margin_t=_top_margin(1),
        height=fig.layout.height + 17,
    )
    return fig


def make_reachability_grid(patterns: Sequence[Pattern], max_n: int = 1024) -> go.Figure:
    """Reachability after each step for several patterns of one n, one row per pattern.

    The side-by-side form of :func:`make_reachability_figure` (same colours and witness marker),
    for comparing, say, a causal pattern that loses information with one that keeps all of it.

    Parameters
    ----------
    patterns : one or more Patterns with the same n.
    max_n : refuse larger patterns.

    Returns
    -------
    plotly.graph_objects.Figure
        len(patterns) rows of heatmaps, one per step of each pattern.

    Raises
    ------
    TypeError : an element is not a Pattern. ValueError : no pattern, different n, n > max_n.
    """
    if not isinstance(patterns, Sequence) or len(patterns) == 0:
        raise ValueError(f"patterns must be a non-empty sequence of Patterns, got {patterns!r}")
    patterns = [_check_pattern(p) for p in patterns]
    sizes = sorted({p.n for p in patterns})
    if len(sizes) != 1:
        raise ValueError(f"patterns must share n so their cells line up, got n values {sizes}")
    for p in patterns:
        _check_size(p, max_n, "make_reachability_grid")
    reports = [check(p) for p in patterns]
    fig = _reach_figure(patterns, reports, max_n)
    verdicts = [f"{p.name}: {_verdict(r)}" for p, r in zip(patterns, reports, strict=True)]
    fig.update_layout(
        title=figure_title(f"Which keys reach which queries (n={sizes[0]})", *verdicts),
        margin_t=_top_margin(len(verdicts)),
        height=fig.layout.height + 17 * len(verdicts),
    )
    return fig


# --- edges and flow -----------------------------------------------------------------------------
def make_edges_figure(ns: Sequence[int], names: Sequence[str] = EDGE_PATTERNS) -> go.Figure:
    """Total edges against n (log-log) for named constructors, beside the n·√n line.

    Each name in ``EDGE_PATTERNS`` is built as ``flowgraph.<name>(n)`` (default stride ⌊√n⌋,
    causal where the constructor has a flag) and its ``sum(pattern.edges())`` plotted.

    Parameters
    ----------
    ns : the sequence lengths, positive ints.
    names : which constructors to draw (a subset of ``EDGE_PATTERNS``).

    Returns
    -------
    plotly.graph_objects.Figure
        One line per name (y = total edges at each n) and a dashed ``n·√n`` line.

    Raises
    ------
    TypeError : an n is not an int. ValueError : empty ``ns`` or ``names``, or an unknown name.
    """
    if isinstance(ns, (str, bytes)) or not isinstance(ns, Sequence) or len(ns) == 0:
        raise ValueError(f"ns must be a non-empty sequence of positive ints, got ns={ns!r}")
    ns = [_validate.positive_int(f"ns[{i}]", n) for i, n in enumerate(ns)]
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"names must be a non-empty sequence of names, got names={names!r}")
    for name in names:
        if name not in EDGE_PATTERNS:
            raise ValueError(f"names holds {name!r}; expected names from {EDGE_PATTERNS}")
    fig = go.Figure()
    for i, name in enumerate(names):
        built = [getattr(flowgraph, name)(n) for n in ns]
        kind = _kind(built[0])
        fig.add_trace(
            go.Scatter(
                x=ns,
                y=[sum(p.edges()) for p in built],
                mode="lines+markers",
                name=f"{name} ({kind})",
                marker={"symbol": _SYMBOLS[i % len(_SYMBOLS)], "size": 9},
                # LTR and RTL have equal edge counts: a dotted line lets both show
                line={"dash": "dot" if name == "rtl" else "solid"},
                hovertemplate=f"{name}<br>n=%{{x}}<br>edges=%{{y:,}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=ns,
            y=[n * math.sqrt(n) for n in ns],
            mode="lines",
            name="n·√n",
            line={"color": "black", "dash": "dash", "width": 2},
        )
    )
    fig.update_layout(
        title_text="Edges of each pattern (all steps) against n, beside n·√n",
        xaxis={"type": "log", "title_text": "n (positions)"},
        yaxis={"type": "log", "title_text": "edges (query–key pairs, summed over steps)"},
        width=760,
        height=520,
        template="plotly_white",
        font=_FONT,
    )
    return fig


def make_flow_figure(reports: Report | Sequence[Report]) -> go.Figure:
    """f(q) for every query from ``report.flow``: how many independent channels feed each query.

    Several reports of one n draw one line each, which shows a bottleneck (the star's f(q) ≤ 2
    for every spoke) beside patterns whose flow grows like √n.

    Parameters
    ----------
    reports : a Report or a sequence of them, each from ``check(pattern, flow=True)``.

    Returns
    -------
    plotly.graph_objects.Figure
        One line per report, y = ``report.flow.per_query``.

    Raises
    ------
    TypeError : not a Report. ValueError : no report, or one without flow.
    """
    if isinstance(reports, Report):
        reports = [reports]
    if not isinstance(reports, Sequence) or len(reports) == 0:
        raise ValueError(f"reports must be a Report or a non-empty sequence, got {reports!r}")
    fig = go.Figure()
    for i, report in enumerate(reports):
        if not isinstance(report, Report):
            raise TypeError(f"reports[{i}] must be a flowgraph.Report, got {type(report).__name__}")
        if report.flow is None:
            raise ValueError(
                f"reports[{i}] ({report.name}) has flow=None; expected a report from "
                "check(pattern, flow=True)"
            )
        f = report.flow
        fig.add_trace(
            go.Scatter(
                x=np.arange(report.n),
                y=np.asarray(f.per_query),
                mode="lines+markers",
                name=f"{report.name} ({_kind(report)}): min {f.min}, mean {f.mean:.1f}",
                marker={"size": 5},
                line={"shape": "hv"},
                hovertemplate="query %{x}: f = %{y}<extra></extra>",
            )
        )
    fig.update_layout(
        title_text="Flow per query: keys that reach q along token-disjoint paths",
        xaxis={"title_text": "query q"},
        yaxis={"title_text": "f(q)", "rangemode": "tozero"},
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        width=820,
        height=460,
        template="plotly_white",
        font=_FONT,
    )
    return fig


# --- static export ------------------------------------------------------------------------------
_RENDERER_ERRORS = {"ChromeNotFoundError", "BrowserFailedError", "BrowserDepsError"}
_RENDERER_MESSAGES = ("requires Google Chrome", "requires the Kaleido package")


def _renderer_missing(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says kaleido or a browser is missing."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in _RENDERER_ERRORS:
            return True
        if isinstance(seen, RuntimeError) and any(m in str(seen) for m in _RENDERER_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_png(
    fig: go.Figure,
    path: str | os.PathLike[str],
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> Path:
    """Write ``fig`` as a PNG (kaleido + Chromium), atomically: readers never see half a file.

    Parameters
    ----------
    fig : the figure.
    path : the file to write; must end in ``.png``. Its folder must exist.
    width, height : size in layout pixels (default: the figure's own, else plotly's 700×500).
    scale : pixel density; the file is (width·scale) × (height·scale) pixels.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError : ``fig`` is not a Figure. ValueError : a bad path or size.
    RuntimeError : kaleido or a Chromium/Chrome is missing (the message says how to get them).
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got path={str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path's folder must exist, got path={str(path)!r}")
    for name, value in (("width", width), ("height", height)):
        if value is not None:
            _validate.positive_int(name, value)
    bad_type = isinstance(scale, bool) or not isinstance(scale, (int, float))
    if bad_type or not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a number > 0 and finite, got scale={scale!r}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        try:
            fig.write_image(tmp, format="png", width=width, height=height, scale=scale)
        except Exception as exc:
            if _renderer_missing(exc):
                raise RuntimeError(
                    "static PNG export needs kaleido and a Chromium/Chrome on the machine: "
                    "pip install 'kaleido>=1' (or flowgraph[images]) and install chromium "
                    "(apt-get install chromium) or run plotly_get_chrome. "
                    f"Cause: {' '.join(str(exc).split())}"
                ) from exc
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
