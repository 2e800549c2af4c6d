"""Embeddings page: a checkpoint's token (or position) embeddings, or saved word2vec vectors —
the nearest neighbours of a query token by cosine similarity, the cosine-distance heatmap of
chosen tokens and a 2-D PCA map."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.embeddings import (
    MAX_PCA_VECTORS,
    cosine_distances,
    parse_tokens,
    pca_2d,
    table_from_checkpoint,
)
from flowgraph.app.dashboard.errors import guard
from flowgraph.app.dashboard.figures import (
    make_distance_heatmap_figure,
    make_neighbours_figure,
    make_pca_figure,
    no_results,
)
from flowgraph.app.dashboard.layout import control, graph_section, number_box, page, text_box
from flowgraph.app.dashboard.payload import lighten
from flowgraph.app.dashboard.state import DashboardState, current_state

PATH, NAME, ORDER = "/embeddings", "Embeddings", 2
MAX_K = 100


def source_options(state: DashboardState) -> list[dict[str, str]]:
    """Dropdown options: each checkpoint's token and position embeddings, each saved vectors
    folder. Values are ``KIND:path`` with KIND in tok, pos, w2v."""
    options = []
    for label, path in state.list_checkpoints():
        options.append({"label": f"{label} · token embeddings", "value": f"tok:{path}"})
        options.append({"label": f"{label} · position embeddings", "value": f"pos:{path}"})
    for label, path in state.list_vectors():
        options.append({"label": f"{label} · word2vec vectors", "value": f"w2v:{path}"})
    return options


def load_table(state: DashboardState, source: object) -> Any:
    """The WordVectors a dropdown value names (paths checked against the roots; cached)."""
    source = limits.check_text("source", source, limits.MAX_PATH_CHARS + 8)
    kind, sep, path = source.partition(":")
    if not sep or kind not in ("tok", "pos", "w2v"):
        raise ValueError(f"source must be tok:PATH, pos:PATH or w2v:PATH, got {source!r}")
    if kind == "w2v":
        return state.word_vectors(path)
    real = state.resolve_checkpoint(path)
    return state.cached(
        ("table", kind, str(real)), lambda: table_from_checkpoint(state.checkpoint(path), kind)
    )


def explore(
    state: DashboardState, source: object, query: object, k: object, tokens: object
) -> dict[str, Any]:
    """The page's figures for one setting of its controls."""
    if not source:
        raise ValueError("choose an embedding table (no checkpoints or vectors under the roots?)")
    wv = load_table(state, source)
    k = limits.int_option("k", k, 1, MAX_K, default=10)
    query = limits.check_text("query token", query, 200).strip()
    if not query:
        query = wv.words[0]
    neighbours = wv.most_similar(query, k=k)
    chosen = parse_tokens(limits.check_text("tokens", tokens), limits.MAX_TOKENS_SHOWN)
    if not chosen:
        chosen = [query] + [w for w, _ in neighbours[: min(9, len(neighbours))]]
    for word in chosen:
        if word not in wv:
            raise ValueError(f"tokens: {word!r} is not in this table ({len(wv.words):,} entries)")
    dist_tt = cosine_distances(wv.vectors[[wv.index[w] for w in chosen]])

    def pca() -> Any:
        shown = min(len(wv.words), MAX_PCA_VECTORS)
        xy_v2, explained = pca_2d(wv.vectors[:shown])
        return wv.words[:shown], xy_v2, explained

    words, xy_v2, explained = state.cached(("pca", str(source)), pca)
    return {
        "info": f"{len(wv.words):,} vectors of dimension {wv.vectors.shape[1]}",
        "neighbours": lighten(
            make_neighbours_figure(query, [w for w, _ in neighbours], [s for _, s in neighbours])
        ),
        "distances": lighten(make_distance_heatmap_figure(chosen, dist_tt)),
        "pca": lighten(make_pca_figure(words, xy_v2, explained, highlight=chosen)),
    }


def warm(state: DashboardState) -> None:
    """Compute the default view (the first table's neighbours, heatmap and map)."""
    options = source_options(state)
    if options:
        try:
            explore(state, options[0]["value"], "", 10, "")
        except (ValueError, TypeError, KeyError, OSError):
            return  # shown in the page when the user arrives


def layout(**_query: str) -> html.Div:
    state = current_state()
    options = source_options(state)
    return page(
        "Embeddings",
        [
            html.Div(
                [
                    control(
                        "table",
                        dcc.Dropdown(
                            id="embeddings-source",
                            options=options,
                            value=options[0]["value"] if options else None,
                            clearable=False,
                        ),
                        wide=True,
                    ),
                    control(
                        "query token",
                        text_box("embeddings-query", 200, "empty: the first token"),
                    ),
                    control(
                        "neighbours k",
                        number_box("embeddings-k", 10),
                    ),
                    control(
                        "tokens for the heatmap",
                        text_box(
                            "embeddings-tokens",
                            limits.MAX_TEXT_CHARS,
                            "space-separated; empty: the query and neighbours",
                        ),
                        wide=True,
                    ),
                ],
                className="fg-controls",
            ),
            html.Div(id="embeddings-message", className="fg-messages"),
            html.P(id="embeddings-info"),
            html.Div(
                [
                    html.Div(graph_section("embeddings-neighbours", "Nearest neighbours")),
                    html.Div(graph_section("embeddings-distances", "Cosine distances")),
                ],
                className="fg-side",
            ),
            graph_section("embeddings-pca", "2-D PCA map"),
        ],
    )


def register_callbacks(app: Dash, state: DashboardState) -> None:
    @app.callback(
        Output("embeddings-message", "children"),
        Output("embeddings-info", "children"),
        Output("embeddings-neighbours", "figure"),
        Output("embeddings-distances", "figure"),
        Output("embeddings-pca", "figure"),
        Input("embeddings-source", "value"),
        Input("embeddings-query", "value"),
        Input("embeddings-k", "value"),
        Input("embeddings-tokens", "value"),
    )
    @guard(outputs=5, message_at=0, failed=no_results(2, 3))  # the PCA map needs no query
    def update(source: object, query: object, k: object, tokens: object) -> tuple[Any, ...]:
        out = explore(state, source, query, k, tokens)
        return None, out["info"], out["neighbours"], out["distances"], out["pca"]
