"""Plotly figures of rollout and attention flow (pure functions of arrays, no Dash):

- :func:`make_layers_figure`: an (L+1, T, T) array (rollout, flow) as a heatmap per layer with a
  slider over the layers; rows are positions, columns the input tokens;
- :func:`make_sources_figure`: for one position at one layer, each input token's share under raw
  attention (head mean), rollout and flow side by side — where they disagree is what flow shows.

Axes follow :mod:`models.plots`: the position (row) on y with row 0 at the top, the input token
(column) on x, tokens as tick labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from flowgraph.models.plots import _layout, _pair_text, _token_axes, _tokens
from flowgraph.plot import figure_title

__all__ = ["make_layers_figure", "make_sources_figure"]


def _layers_array(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[0] < 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (L+1, T, T) with L, T ≥ 1, got {arr.shape}")
    return arr.astype(np.float64, copy=False)


def make_layers_figure(
    values_lqk: np.ndarray,
    tokens: Sequence[str] | None = None,
    *,
    what: str = "flow",
    title: str | None = None,
) -> go.Figure:
    """Heatmaps of ``values_lqk[l]`` for layers l = 1..L (a slider picks the layer; the last is
    shown first); a layer that was not computed (all NaN) is left out. Scale 0..1."""
    values = _layers_array("values_lqk", values_lqk)
    L, T = values.shape[0] - 1, values.shape[1]
    labels = _tokens(tokens, T)
    shown = [layer for layer in range(1, L + 1) if np.isfinite(values[layer]).all()]
    if not shown:
        raise ValueError("values_lqk has no layer ≥ 1 without NaN: nothing to draw")
    fig = go.Figure()
    custom = _pair_text(labels)
    for layer in shown:
        fig.add_trace(
            go.Heatmap(
                z=values[layer],
                customdata=custom,
                zmin=0.0,
                zmax=1.0,
                colorscale="Blues",
                colorbar={"title": {"text": what}, "thickness": 14, "len": 0.8},
                name=f"layer {layer}",
                visible=layer == shown[-1],
                # positions from customdata: %{x}/%{y} would print the axes' token tick labels
                hovertemplate=f"layer {layer}: position %{{customdata[2]}} %{{customdata[0]}} ← "
                f"token %{{customdata[3]}} %{{customdata[1]}}: %{{z:.3f}}<extra></extra>",
            )
        )
    steps = [
        {
            "label": str(layer),
            "method": "update",
            "args": [{"visible": [other == layer for other in shown]}],
        }
        for layer in shown
    ]
    fig.update_layout(
        sliders=[
            {
                "active": len(shown) - 1,
                "currentvalue": {"prefix": "layer "},
                "pad": {"t": 70},
                "steps": steps,
            }
        ]
    )
    _token_axes(fig, labels)
    fig.update_xaxes(title_text="input token")
    fig.update_yaxes(title_text="position")
    _layout(
        fig,
        figure_title(
            title or what, "row q: how much of each input token reaches q after the layer"
        ),
        width=660,
        height=720,
    )
    return fig


def make_sources_figure(
    attention_qk: np.ndarray,
    rollout_qk: np.ndarray,
    flow_qk: np.ndarray,
    position: int,
    tokens: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> go.Figure:
    """Bars over the input tokens for row ``position`` of three (T, T) arrays: the layer's raw
    attention (head mean), rollout and flow. Flow is divided by its row sum so the three compare
    as shares (its max-flow values are in the hover)."""
    rows = {}
    for name, arr in (
        ("attention_qk", attention_qk),
        ("rollout_qk", rollout_qk),
        ("flow_qk", flow_qk),
    ):
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1] or not np.isfinite(a).all():
            raise ValueError(f"{name} must be a finite (T, T) array, got shape {a.shape}")
        rows[name] = a
    T = rows["attention_qk"].shape[0]
    if any(a.shape != (T, T) for a in rows.values()):
        raise ValueError("attention_qk, rollout_qk and flow_qk must have one shape")
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise TypeError(f"position must be an int, got {position!r}")
    if not 0 <= position < T:
        raise ValueError(f"position={position} is out of range: the sequence has {T} tokens")
    labels = _tokens(tokens, T)
    flow_k = rows["flow_qk"][position]
    share_k = flow_k / flow_k.sum() if flow_k.sum() > 0 else flow_k
    fig = go.Figure()
    x = list(range(T))
    for name, y, colour, extra in (
        ("raw attention", rows["attention_qk"][position], "#bdbdbd", None),
        ("rollout", rows["rollout_qk"][position], "#6baed6", None),
        ("flow (share)", share_k, "#08519c", flow_k),
    ):
        fig.add_trace(
            go.Bar(
                x=x,
                y=y,
                name=name,
                marker_color=colour,
                customdata=np.array(
                    labels if extra is None else list(zip(labels, extra, strict=True)), dtype=object
                ),
                hovertemplate=(
                    f"{name}: token %{{x}} %{{customdata}}: %{{y:.3f}}<extra></extra>"
                    if extra is None
                    else f"{name}: token %{{x}} %{{customdata[0]}}: %{{y:.3f}} "
                    "(max flow %{customdata[1]:.3f})<extra></extra>"
                ),
            )
        )
    every = max(1, -(-T // 64))
    fig.update_xaxes(
        tickmode="array",
        tickvals=x[::every],
        ticktext=labels[::every],
        tickangle=-60,
        title_text="input token",
    )
    fig.update_yaxes(title_text="share", rangemode="tozero")
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": 1.02, "x": 0})
    _layout(
        fig,
        figure_title(
            title or f"where position {position} ({labels[position]}) gets its information",
            "raw attention sees one layer; rollout and flow follow every layer and the residual",
        ),
        width=900,
        height=480,
    )
    return fig
