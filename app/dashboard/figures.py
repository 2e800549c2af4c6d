"""Figures the dashboard needs beyond :mod:`flowgraph.plot` and :mod:`models.plots`: pure
functions of arrays returning ``plotly.graph_objects.Figure`` (no Dash), so tests and notebooks
call them directly — a placeholder that says why a figure is not drawn, and the Embeddings page's
neighbour bars, distance heatmap and 2-D PCA map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from flowgraph.models.plots import (
    token_label,  # words as plotly shows them verbatim (<s>, \n, spaces)
)

__all__ = [
    "make_distance_heatmap_figure",
    "make_neighbours_figure",
    "make_pca_figure",
    "placeholder_figure",
]

_FONT = {"family": "DejaVu Sans, Arial, sans-serif", "size": 13}


def placeholder_figure(text: str, height: int = 220) -> go.Figure:
    """An empty figure that shows ``text`` (why nothing is drawn) in its middle."""
    fig = go.Figure()
    fig.add_annotation(
        text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14}
    )
    fig.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=height,
        template="plotly_white",
        font=_FONT,
        meta={"placeholder": text},
    )
    return fig


def make_neighbours_figure(query: str, words: Sequence[str], scores: Sequence[float]) -> go.Figure:
    """Horizontal bars: the nearest neighbours of ``query`` and their cosine similarities,
    the nearest at the top."""
    if len(words) != len(scores):
        raise ValueError(
            f"words and scores must have one entry each, got {len(words)} and {len(scores)}"
        )
    fig = go.Figure(
        go.Bar(
            x=list(scores),
            y=[token_label(w) for w in words],
            orientation="h",
            marker={"color": "#2166ac"},
            hovertemplate="%{y}: cosine %{x:.3f}<extra></extra>",
            name="cosine similarity",
        )
    )
    fig.update_layout(
        title_text=f"Nearest neighbours of {token_label(repr(query))} (cosine similarity)",
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"title_text": "cosine similarity", "range": [min(0.0, *scores, 0.0) - 0.05, 1.05]},
        height=max(260, 80 + 26 * len(words)),
        template="plotly_white",
        font=_FONT,
        margin={"l": 120},
    )
    return fig


def make_distance_heatmap_figure(
    labels: Sequence[str], dist_tt: np.ndarray, *, metric: str = "cosine distance"
) -> go.Figure:
    """Heatmap of pairwise distances between the chosen tokens, labels on both axes."""
    dist_tt = np.asarray(dist_tt, dtype=np.float64)
    t = len(labels)
    if dist_tt.shape != (t, t):
        raise ValueError(f"dist_tt must be ({t}, {t}) for {t} labels, got {dist_tt.shape}")
    axis_labels = [token_label(w) for w in labels]
    if len(set(axis_labels)) < t:  # a category axis merges equal labels: number the repeats
        axis_labels = [f"{w} #{i}" for i, w in enumerate(axis_labels)]
    fig = go.Figure(
        go.Heatmap(
            z=dist_tt,
            x=axis_labels,
            y=axis_labels,
            colorscale="Viridis",
            colorbar={"title": {"text": metric}},
            hovertemplate="%{y} ↔ %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title_text=f"{metric} between the chosen tokens",
        yaxis={"autorange": "reversed", "type": "category"},
        xaxis={"type": "category"},
        width=max(520, 160 + 28 * t),
        height=max(380, 140 + 28 * t),
        template="plotly_white",
        font=_FONT,
    )
    return fig


def make_pca_figure(
    words: Sequence[str],
    xy_v2: np.ndarray,
    explained: Sequence[float],
    *,
    highlight: Sequence[str] = (),
) -> go.Figure:
    """Scatter of the 2-D PCA map, one point per word; ``highlight`` words are labelled and
    drawn on top."""
    xy_v2 = np.asarray(xy_v2, dtype=np.float64)
    if xy_v2.shape != (len(words), 2):
        raise ValueError(f"xy_v2 must be ({len(words)}, 2), got {xy_v2.shape}")
    chosen = set(highlight)
    show_text = len(words) <= 60
    fig = go.Figure(
        go.Scattergl(
            x=xy_v2[:, 0],
            y=xy_v2[:, 1],
            mode="markers+text" if show_text else "markers",
            text=[token_label(w) if w not in chosen else "" for w in words],  # chosen: on top
            customdata=[token_label(w) for w in words],
            textposition="top center",
            marker={"size": 7, "color": "#8c8c8c"},
            name="vectors",
            hovertemplate="%{customdata}<extra></extra>",
        )
    )
    idx = [i for i, w in enumerate(words) if w in chosen]
    if idx:
        fig.add_trace(
            go.Scatter(
                x=xy_v2[idx, 0],
                y=xy_v2[idx, 1],
                mode="markers+text",
                text=[token_label(words[i]) for i in idx],
                textposition="top center",
                marker={"size": 12, "color": "#e66101", "line": {"color": "black", "width": 1}},
                name="chosen tokens",
            )
        )
    e1, e2 = [*list(explained), 0.0, 0.0][:2]
    fig.update_layout(
        title_text=f"2-D PCA map of {len(words):,} vectors",
        xaxis={"title_text": f"PC 1 ({100 * e1:.1f}% of the variance)"},
        yaxis={"title_text": f"PC 2 ({100 * e2:.1f}% of the variance)"},
        height=520,
        template="plotly_white",
        font=_FONT,
    )
    return fig


NO_RESULT = "no result: correct the input above"


def no_result_figure() -> go.Figure:
    """What a figure shows while the controls are invalid (instead of the previous result)."""
    return placeholder_figure(NO_RESULT, height=160)


def no_results(*indices: int) -> Callable[[], dict[int, Any]]:
    """A ``guard(failed=...)`` that empties the figures at ``indices``."""
    return lambda: {i: no_result_figure() for i in indices}
