"""The pages' shared layout pieces: a page, a labelled control and a titled figure section."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from flowgraph.app.dashboard.figures import placeholder_figure

__all__ = [
    "GRAPH_CONFIG",
    "control",
    "graph_section",
    "number_box",
    "page",
    "radio",
    "text_box",
]

# No logo, no mode bar until hovered; the page never typesets (no MathJax is served).
GRAPH_CONFIG = {"displaylogo": False}


def control(label: str, widget: Any, hint: str = "", wide: bool = False) -> html.Div:
    """``widget`` under a bold ``label``, with an optional small ``hint`` below it."""
    children = [html.Label(label, className="fg-label"), widget]
    if hint:
        children.append(html.Small(hint, className="fg-hint"))
    return html.Div(children, className="fg-control fg-control-wide" if wide else "fg-control")


def graph_section(graph_id: str, title: str) -> html.Div:
    """A card with a heading and a ``dcc.Graph`` showing "computing…" until its callback
    answers."""
    return html.Div(
        [
            html.H3(title),
            dcc.Graph(
                id=graph_id,
                figure=placeholder_figure("computing…"),
                config=GRAPH_CONFIG,
                mathjax=False,
            ),
        ],
        className="fg-section",
    )


def page(title: str, children: list[Any]) -> html.Div:
    """A page: its ``title`` as a heading over its ``children``."""
    return html.Div([html.H2(title), *children], className="fg-page")


def number_box(box_id: str, value: int | None = None) -> dcc.Input:
    """A number box (empty when ``value`` is None) that reports on Enter or leaving it, not on
    every keystroke."""
    extra = {} if value is None else {"value": value}
    return dcc.Input(id=box_id, type="number", debounce=True, **extra)


def text_box(box_id: str, max_chars: int, placeholder: str) -> dcc.Input:
    """A text box of at most ``max_chars`` that reports on Enter or leaving it."""
    return dcc.Input(
        id=box_id, type="text", maxLength=max_chars, debounce=True, placeholder=placeholder
    )


def radio(radio_id: str, options: list[Any], value: Any) -> dcc.RadioItems:
    """Radio buttons in one row."""
    return dcc.RadioItems(id=radio_id, options=options, value=value, inline=True)


def path_opener(prefix: str, max_chars: int) -> html.Div:
    """The "open by path" control of a checkpoint page: ``{prefix}-path`` and ``{prefix}-open``."""
    return control(
        "open by path",
        html.Div(
            [
                dcc.Input(
                    id=f"{prefix}-path",
                    type="text",
                    maxLength=max_chars,
                    placeholder="a path under --runs / --checkpoint",
                ),
                html.Button("open", id=f"{prefix}-open", n_clicks=0),
            ]
        ),
        wide=True,
    )


def input_kind_control(prefix: str) -> html.Div:
    """The "input is" radio of a checkpoint page (``{prefix}-input-kind``): text or token ids."""
    return control(
        "input is",
        radio(
            f"{prefix}-input-kind",
            [{"label": "text", "value": "text"}, {"label": "token ids", "value": "ids"}],
            "text",
        ),
    )
