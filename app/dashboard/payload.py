"""Lighter figures for the browser: what a figure update sends and plotly.js must digest.

A layer or head switch sends four figures; the browser's redraw, not the server, was most of
its time. :func:`lighten` keeps what is drawn and drops what is not: heatmap values go as
float32 (plotly.py then sends them base64-packed, about a quarter of the decimal text; a
screen shows no more than 4 significant digits) and the template keeps only the defaults of
the trace types the figure has (``plotly_white`` carries defaults for every type, ~7 kB a
figure that plotly.js merges on every redraw)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

__all__ = ["lighten"]

_VALUE_ARRAYS = ("z",)  # big numeric arrays by trace (heatmaps); x/y stay exact: they may be labels


def lighten(fig: go.Figure) -> go.Figure:
    """``fig`` (changed in place and returned) with float32 heatmap values and a template
    reduced to its layout and the trace types present."""
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly Figure, got {type(fig).__name__}")
    for trace in fig.data:
        for attr in _VALUE_ARRAYS:
            values = getattr(trace, attr, None) if attr in trace else None
            if values is None:
                continue
            try:
                packed = np.asarray(values, dtype=np.float32)  # None (a gap) becomes NaN
            except (TypeError, ValueError):
                continue  # not numbers: leave as is
            trace[attr] = None  # plotly skips a set to equal values, whatever their dtype
            trace[attr] = packed
    template = fig.layout.template
    if template is not None and template.data is not None:
        types = {trace.type for trace in fig.data}
        kept = {k: v for k, v in template.data.to_plotly_json().items() if k in types}
        fig.layout.template = go.layout.Template(layout=template.layout, data=kept)
    return fig
