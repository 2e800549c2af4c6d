"""Flow page: a trained model read as a flow network — for a checkpoint and an input, the
attention rollout and the exact attention flow after a chosen layer, a layered graph of the
top-k flows into a chosen token, each input token's share under raw attention, rollout and flow,
and the sparse patterns ranked by the attention mass they keep (``fit_pattern``).

Numbers come from :mod:`models.heads` (``rollout``, ``mixed_attention``, ``attention_flow``,
``fit_pattern``), heatmaps and bars from :mod:`models.heads.flow_plots`. The checkpoint choice,
open-by-path and input rules are the Heads page's (its helpers are reused): checkpoints open only
from the dashboard's roots, inputs are capped in :mod:`app.dashboard.limits`."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update

from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.errors import guard, message
from flowgraph.app.dashboard.figures import NO_RESULT, no_results
from flowgraph.app.dashboard.layout import (
    control,
    graph_section,
    input_kind_control,
    number_box,
    page,
    path_opener,
    radio,
    text_box,
)
from flowgraph.app.dashboard.payload import lighten
from flowgraph.app.dashboard.state import DashboardState, current_state
from flowgraph.app.pages.heads import describe, index_option, input_ids, opened_options
from flowgraph.plot import figure_title

PATH, NAME, ORDER = "/flow", "Flow", 3
EDGE_KINDS = ("flow", "attention")
FIT_MODES = ("merged", "interleave", "heads")
DEFAULTS: dict[str, Any] = {"residual": 0.5, "topk": 5, "budget": 0.1, "mode": "merged"}
EDGES_PER_LAYER = 48  # the strongest edges drawn per layer: more is a grey blur at T = 64
FLOW_SCALE = 2**24  # capacities as integers for scipy's max flow: error ≤ 2⁻²⁵ per edge
WIDTH_LEVELS = 6  # edge widths drawn in this many steps (plotly: one width per trace)
_EDGE, _SOURCE, _TARGET = "#2171b5", "#e66101", "#5e3c99"


# --- pure helpers -----------------------------------------------------------------------------
def check_model(ckpt: Any) -> None:
    """Refuse a checkpoint deeper than the page's cap on exact flow."""
    if ckpt.num_layers > limits.MAX_ATTENTION_FLOW_LAYERS:
        raise ValueError(
            f"checkpoint {ckpt.name} has {ckpt.num_layers} layers; the Flow page computes exact "
            f"flow for at most {limits.MAX_ATTENTION_FLOW_LAYERS} (choose another checkpoint, or "
            "run `flowgraph flow` on it)"
        )


def flow_ids(ckpt: Any, text: object, kind: object) -> np.ndarray:
    """The input's token ids as the Heads page reads them, within the Flow page's caps."""
    check_model(ckpt)
    ids = input_ids(ckpt, text, kind)  # type: ignore[arg-type]
    if ids.size > limits.MAX_ATTENTION_FLOW_TOKENS:
        raise ValueError(
            f"input has {ids.size} tokens; the Flow page computes exact flow for at most "
            f"{limits.MAX_ATTENTION_FLOW_TOKENS} (`flowgraph flow` takes longer inputs)"
        )
    return ids


def layer_option(value: object, num_layers: int) -> int:
    """The layer radio's value: an int in 1..num_layers (layer 0 is the input itself)."""
    layer = index_option("layer", value)
    if not 1 <= layer <= num_layers:
        raise ValueError(f"layer must be in 1..{num_layers}, got layer={layer}")
    return layer


def kept_layer(value: object, offered: object, count: int) -> Any:
    """What a checkpoint switch writes into the layer radio (values 1..count): ``no_update``
    when the value and every offered choice stay valid (a click made while the answer was on
    its way must hold, as the Heads page's ``kept_choice``), else the value if valid, else the
    last layer."""

    def valid(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= count

    if not isinstance(offered, list) or not all(isinstance(o, dict) for o in offered):
        offered = [{"value": None}]
    if valid(value) and all(valid(o.get("value")) for o in offered):
        return no_update
    return value if valid(value) else count


def layer_options(num_layers: int) -> list[dict[str, Any]]:
    return [{"label": str(layer), "value": layer} for layer in range(1, num_layers + 1)]


def top_sources(flow_k: np.ndarray, topk: int) -> np.ndarray:
    """Indices of the ``topk`` largest positive entries of ``flow_k``, largest first (ties: the
    lower index first); fewer when fewer are positive."""
    order = np.argsort(-flow_k, kind="stable")[:topk]
    return order[flow_k[order] > 0]


def _check_edge_inputs(
    mixed_lqk: np.ndarray, layer: int, target: int, sources: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    cap_lqk = np.asarray(mixed_lqk, dtype=np.float64)
    if cap_lqk.ndim != 3 or cap_lqk.shape[1] != cap_lqk.shape[2] or 0 in cap_lqk.shape:
        raise ValueError(f"mixed_lqk must have shape (L, T, T), got {cap_lqk.shape}")
    if not np.isfinite(cap_lqk).all() or (cap_lqk < 0).any():
        raise ValueError("mixed_lqk must hold finite capacities ≥ 0")
    L, T, _ = cap_lqk.shape
    if not 1 <= layer <= L:
        raise ValueError(f"layer must be in 1..{L}, got layer={layer}")
    if not 0 <= target < T:
        raise ValueError(f"target must be in 0..{T - 1}, got target={target}")
    src = np.asarray(sources, dtype=np.int64).reshape(-1)
    if src.size == 0 or src.min() < 0 or src.max() >= T:
        raise ValueError(f"sources must be 1 or more positions in 0..{T - 1}, got {src.tolist()}")
    return cap_lqk, src


def flow_edges(
    mixed_lqk: np.ndarray, layer: int, target: int, sources: np.ndarray, *, by: str = "flow"
) -> np.ndarray:
    """The edges of the layered attention graph that carry the sources' information to position
    ``target`` after ``layer``, as an (E, 4) float array of (layer l, key k, query q, weight):
    the edge (l−1, k) → (l, q), with capacity Â_l[q, k] (``mixed_lqk[l − 1, q, k]``).

    ``by="flow"``: the edge's flow in one maximum flow from the sources together (a super source
    feeding each) to the target, by scipy's ``maximum_flow`` on capacities scaled to integers
    (×2²⁴, so each edge is within 2⁻²⁵ of its capacity); flow is conserved at every inner node and
    the edges into the target carry the max-flow value. ``by="attention"``: the capacity Â of every
    edge on some positive path from a source to the target."""
    cap_lqk, src = _check_edge_inputs(mixed_lqk, layer, target, sources)
    by = limits.check_choice("edge width", by, EDGE_KINDS)
    T = cap_lqk.shape[1]
    cap = cap_lqk[:layer]  # (layer, T, T): the layers a target at ``layer`` sees
    if by == "attention":
        reach_ln = np.zeros((layer + 1, T), dtype=np.bool_)  # reached from a source
        reach_ln[0, src] = True
        for lay in range(1, layer + 1):
            reach_ln[lay] = (cap[lay - 1][:, reach_ln[lay - 1]] > 0).any(axis=1)
        back_ln = np.zeros((layer + 1, T), dtype=np.bool_)  # reaches the target
        back_ln[layer, target] = True
        for lay in range(layer, 0, -1):
            back_ln[lay - 1] = (cap[lay - 1][back_ln[lay]] > 0).any(axis=0)
        rows = []
        for lay in range(1, layer + 1):
            on_qk = (cap[lay - 1] > 0) & back_ln[lay][:, None] & reach_ln[lay - 1][None, :]
            q_e, k_e = np.nonzero(on_qk)
            rows.append(np.column_stack([np.full(q_e.size, lay), k_e, q_e, cap[lay - 1][q_e, k_e]]))
        return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, 4))

    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import maximum_flow

    # node (l, i) is l·T + i; the super source is the last node
    n_nodes = (layer + 1) * T + 1
    lay_e, q_e, k_e = np.nonzero(cap > 0)
    units = np.rint(cap[lay_e, q_e, k_e] * FLOW_SCALE).astype(np.int64)
    keep = units > 0
    lay_e, q_e, k_e, units = lay_e[keep], q_e[keep], k_e[keep], units[keep]
    tail = lay_e * T + k_e  # (l, k) → (l + 1, q), l counted from 0 here
    head = (lay_e + 1) * T + q_e
    # a source's feed: all its out-edges can carry (a cut, so never the bottleneck)
    feed = np.bincount(tail[lay_e == 0], weights=units[lay_e == 0], minlength=T)[src]
    tail = np.concatenate([tail, np.full(src.size, n_nodes - 1)])
    head = np.concatenate([head, src])
    units = np.concatenate([units, np.maximum(feed, 1).astype(np.int64)])
    graph = coo_matrix((units.astype(np.int32), (tail, head)), shape=(n_nodes, n_nodes)).tocsr()
    # int32 capacities: a node's in-edges sum to FLOW_SCALE (rows of Â sum to 1), a source's
    # feed to at most T·FLOW_SCALE (2³⁰ at the page's cap of 64 tokens)
    sink = layer * T + target
    result = maximum_flow(graph, n_nodes - 1, sink, method="dinic")
    flow = result.flow.tocoo()
    real = (flow.data > 0) & (flow.row < n_nodes - 1)
    t_e, h_e, f_e = flow.row[real], flow.col[real], flow.data[real] / FLOW_SCALE
    if t_e.size == 0:
        return np.zeros((0, 4))
    lay_to = h_e // T
    order = np.lexsort((t_e % T, h_e % T, lay_to))
    return np.column_stack([lay_to, t_e % T, h_e % T, f_e])[order].astype(np.float64)


def strongest(edges_e4: np.ndarray, per_layer: int = EDGES_PER_LAYER) -> np.ndarray:
    """The ``per_layer`` heaviest edges of each layer of ``flow_edges``' result."""
    kept = []
    for lay in np.unique(edges_e4[:, 0]):
        rows = edges_e4[edges_e4[:, 0] == lay]
        kept.append(rows[np.argsort(-rows[:, 3], kind="stable")[:per_layer]])
    return np.concatenate(kept) if kept else edges_e4[:0]


def make_flow_paths_figure(
    edges_e4: np.ndarray,
    sources: np.ndarray,
    source_flow: np.ndarray,
    target: int,
    layer: int,
    tokens: list[str],
    *,
    by: str = "flow",
    total_edges: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """The layered graph positions × layers 0..``layer`` (input at the bottom) with the edges of
    ``edges_e4`` ((layer, key, query, weight) rows, as :func:`flow_edges` gives them): width ∝
    weight, in WIDTH_LEVELS steps; the sources sized by their exact flow ``source_flow`` into
    ``target`` and labelled with their token, the target marked at the top."""
    from flowgraph.models.plots import token_label

    edges = np.asarray(edges_e4, dtype=np.float64).reshape(-1, 4)
    T = len(tokens)
    if not 0 <= target < T or layer < 1:
        raise ValueError(f"expected 0 ≤ target < {T} and layer ≥ 1, got {target}, {layer}")
    src = np.asarray(sources, dtype=np.int64).reshape(-1)
    values = np.asarray(source_flow, dtype=np.float64).reshape(-1)
    if src.shape != values.shape:
        raise ValueError(f"sources and source_flow must match, got {src.size} and {values.size}")
    labels = [token_label(t) for t in tokens]
    fig = go.Figure()
    top = edges[:, 3].max() if edges.size else 0.0
    for level in range(1, WIDTH_LEVELS + 1):
        if top <= 0:
            break
        step = np.ceil(edges[:, 3] / top * WIDTH_LEVELS).clip(1, WIDTH_LEVELS)
        chosen = edges[step == level]
        if not chosen.size:
            continue
        gap = np.full(len(chosen), np.nan)
        fig.add_trace(
            go.Scatter(
                x=np.column_stack([chosen[:, 1], chosen[:, 2], gap]).ravel(),
                y=np.column_stack([chosen[:, 0] - 1, chosen[:, 0], gap]).ravel(),
                mode="lines",
                line={"color": _EDGE, "width": 0.6 + 1.4 * (level - 1)},
                opacity=0.35 + 0.1 * level,
                name=f"{by} ≤ {top * level / WIDTH_LEVELS:.3g}",
                hoverinfo="skip",
            )
        )
    layer_n, pos_n = np.divmod(np.arange((layer + 1) * T), T)
    fig.add_trace(
        go.Scatter(
            x=pos_n,
            y=layer_n,
            mode="markers",
            name="positions",
            marker={"color": "#bdbdbd", "size": max(4.0, min(9.0, 320 / T))},
            customdata=[labels[i] for i in pos_n],
            hovertemplate="layer %{y}, position %{x} %{customdata}<extra></extra>",
            showlegend=False,
        )
    )
    share = values / values.max() if values.size and values.max() > 0 else values
    fig.add_trace(
        go.Scatter(
            x=src,
            y=np.zeros(src.size),
            mode="markers+text",
            name=f"top {src.size} sources (size ∝ flow)",
            text=[labels[i] for i in src],
            textposition="bottom center",
            cliponaxis=False,
            customdata=np.column_stack([[labels[i] for i in src], values]).astype(object),
            marker={
                "color": _SOURCE,
                "size": 8 + 14 * share,
                "line": {"color": "black", "width": 1},
            },
            hovertemplate="source %{x} %{customdata[0]}: flow %{customdata[1]:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[target],
            y=[layer],
            mode="markers+text",
            name=f"target {target}",
            text=[labels[target]],
            textposition="top center",
            cliponaxis=False,
            marker={"color": _TARGET, "size": 16, "symbol": "square"},
            hovertemplate=f"target: layer {layer}, position {target}<extra></extra>",
        )
    )
    drawn = len(edges)
    what = (
        "edge width ∝ its flow in one maximum flow from these sources together"
        if by == "flow"
        else "edge width ∝ its attention Â (edges on a path from a source to the target)"
    )
    shown = (
        f"the strongest {EDGES_PER_LAYER} edges a layer: {drawn} of {total_edges}"
        if total_edges is not None and total_edges > drawn
        else f"{drawn} edges"
    )
    fig.update_layout(
        title=figure_title(
            title or f"top flows into position {target} ({labels[target]}) after layer {layer}",
            f"{what}; {shown}",
        ),
        xaxis={"title_text": "position", "range": [-1, T], "showgrid": False, "zeroline": False},
        yaxis={
            "tickvals": list(range(layer + 1)),
            "ticktext": ["input"] + [f"layer {lay}" for lay in range(1, layer + 1)],
            "range": [-0.6, layer + 0.5],
            "showgrid": False,
            "zeroline": False,
        },
        legend={"x": 1.02, "y": 1, "yanchor": "top"},
        width=max(760, min(1300, 260 + 18 * T)),
        height=220 + max(80, 110 - 3 * layer) * layer,  # 12 layers: 1,180 px
        margin={"l": 80, "r": 30, "t": 110, "b": 60},
        template="plotly_white",
    )
    return fig


def single_layer(values_lqk: np.ndarray, layer: int) -> np.ndarray:
    """``values_lqk`` with every layer ≥ 1 but ``layer`` NaN: ``make_layers_figure`` then draws
    that layer alone (the page's layer control replaces the figure's slider)."""
    out = np.full_like(values_lqk, np.nan)
    out[0], out[layer] = values_lqk[0], values_lqk[layer]
    return out


def fit_rows(report: Any) -> list[dict[str, str]]:
    """The ranked rows of a ``FitReport`` as the page's table shows them."""
    return [
        {
            "rank": str(rank),
            "pattern": f.label,
            "kept": f"{f.kept:.3f}",
            "min head": f"{float(f.kept_lh.min()):.3f}",
            "density": f"{f.density:.3f}",
            "full information": "yes" if f.full_information else "no",
            "budget": "within" if f.within_budget else "over",
        }
        for rank, f in enumerate(report.fits, 1)
    ]


# --- cached computations ----------------------------------------------------------------------
def _settings(state: DashboardState, path: object, text: object, kind: object) -> tuple:
    real = str(state.resolve_checkpoint(path))
    ckpt = state.checkpoint(real)
    return real, ckpt, flow_ids(ckpt, text, kind)


def flow_arrays(
    state: DashboardState, path: object, text: object, kind: object, residual: object
) -> dict[str, Any]:
    """Rollout, exact flow (every layer), the mixed attention Â and the head-mean attention of
    the input (cached by checkpoint, ids and residual)."""
    from flowgraph.models.heads import attention_flow, mixed_attention, rollout

    residual = limits.float_option("residual", residual, 0.0, 1.0, default=DEFAULTS["residual"])
    real, ckpt, ids = _settings(state, path, text, kind)

    def compute() -> dict[str, Any]:
        return {
            "rollout": rollout(ckpt, ids, residual=residual),
            "flow": attention_flow(ckpt, ids, residual=residual),
            "mixed": mixed_attention(ckpt, ids, residual=residual),
            "attention": ckpt.attention(ids).mean(axis=1),
        }

    arrays = state.cached(("flow-arrays", real, ids.tobytes(), residual), compute)
    labels = [ckpt.tokens[i] for i in ids]
    return {**arrays, "ckpt": ckpt, "ids": ids, "labels": labels, "real": real, "r": residual}


def map_figures(
    state: DashboardState, path: object, text: object, kind: object, residual: object, layer: object
) -> tuple[go.Figure, go.Figure]:
    """The rollout and flow heatmaps after ``layer`` (cached)."""
    from flowgraph.models.heads.flow_plots import make_layers_figure

    a = flow_arrays(state, path, text, kind, residual)
    layer = layer_option(layer, a["ckpt"].num_layers)
    where = f"{a['ckpt'].name}, residual {a['r']:g}, layer {layer}"

    def build() -> tuple[go.Figure, go.Figure]:
        figs = []
        for what, title in (("rollout", "rollout"), ("flow", "attention flow")):
            fig = make_layers_figure(
                single_layer(a[what], layer), a["labels"], what=what, title=f"{where}: {title}"
            )
            fig.layout.sliders = None  # one layer: the page's radio picks it
            fig.update_layout(width=620, height=640)  # two side by side on a laptop's page
            figs.append(lighten(fig))
        return figs[0], figs[1]

    return state.cached(("flow-maps", a["real"], a["ids"].tobytes(), a["r"], layer), build)


def graph_figures(
    state: DashboardState,
    path: object,
    text: object,
    kind: object,
    residual: object,
    layer: object,
    token: object,
    topk: object,
    by: object,
) -> tuple[go.Figure, go.Figure]:
    """The flow graph of the top-k flows into ``token`` after ``layer`` and that token's sources
    (raw attention, rollout, flow) as bars (cached)."""
    from flowgraph.models.heads.flow_plots import make_sources_figure

    by = limits.check_choice("edge width", by, EDGE_KINDS)
    a = flow_arrays(state, path, text, kind, residual)
    layer = layer_option(layer, a["ckpt"].num_layers)
    T = int(a["ids"].size)
    target = limits.int_option("token", token, 0, T - 1, default=T - 1)
    k = limits.int_option(
        "top-k", topk, 1, min(T, limits.MAX_FLOW_SOURCES), default=min(T, DEFAULTS["topk"])
    )
    key = ("flow-graph", a["real"], a["ids"].tobytes(), a["r"], layer, target, k, by)

    def build() -> tuple[go.Figure, go.Figure]:
        flow_k = a["flow"][layer, target]
        sources = top_sources(flow_k, k)
        name = f"{a['ckpt'].name}, residual {a['r']:g}"
        if sources.size:
            edges = flow_edges(a["mixed"], layer, target, sources, by=by)
        else:
            edges = np.zeros((0, 4))
        graph = make_flow_paths_figure(
            strongest(edges),
            sources,
            flow_k[sources],
            target,
            layer,
            a["labels"],
            by=by,
            total_edges=len(edges),
            title=f"{name}: top {k} flows into position {target} after layer {layer}",
        )
        bars = make_sources_figure(
            a["attention"][layer - 1],
            a["rollout"][layer],
            a["flow"][layer],
            target,
            a["labels"],
            title=f"{name}: sources of position {target} after layer {layer}",
        )
        return lighten(graph), lighten(bars)

    return state.cached(key, build)


def fit_text(ckpt: Any, text: object, kind: object) -> str:
    """The text ``fit_pattern`` reads: the typed text, or — for token ids and the example
    input — the tokens joined by spaces when that text tokenizes back to the same ids."""
    ids = flow_ids(ckpt, text, kind)
    if kind == "text" and isinstance(text, str) and text.strip():
        return text
    joined = " ".join(ckpt.tokens[i] for i in ids)
    if not np.array_equal(np.asarray(ckpt.tokenize(joined)), ids):
        raise ValueError(
            f"the pattern fit reads text: these token ids do not come back from {ckpt.name}'s "
            "tokenizer as one text, so type the input as text"
        )
    return joined


def fit_report(
    state: DashboardState, path: object, text: object, kind: object, budget: object, mode: object
) -> Any:
    """``fit_pattern`` of the checkpoint on the input (cached)."""
    from flowgraph.models.heads import fit_pattern

    budget = limits.float_option(
        "budget", budget, 0.0, 1.0, default=DEFAULTS["budget"], low_open=True
    )
    mode = limits.check_choice("fit mode", mode, FIT_MODES)
    real, ckpt, ids = _settings(state, path, text, kind)
    if ids.size < 2:
        raise ValueError("the pattern fit needs an input of at least 2 tokens")
    words = fit_text(ckpt, text, kind)
    return state.cached(
        ("flow-fit", real, words, budget, mode),
        lambda: fit_pattern(ckpt, [words], budget=budget, mode=mode),
    )


def fit_table(report: Any) -> html.Div:
    rows = fit_rows(report)
    best = report.best
    summary = (
        f"best within budget {report.budget:g}: {best.label} keeps {best.kept:.3f} of the "
        f"attention at density {best.density:.3f}"
        if best is not None
        else f"no pattern is within budget {report.budget:g}"
    )
    head = html.Thead(html.Tr([html.Th(h) for h in rows[0]]))
    body = html.Tbody([html.Tr([html.Td(v) for v in row.values()]) for row in rows])
    return html.Div(
        [
            html.P(summary, className="fg-verdict"),
            html.Table([head, body], className="fg-table fg-compare"),
        ]
    )


def warm(state: DashboardState) -> None:
    """Compute the first checkpoint's default view (last layer, example input)."""
    options = state.checkpoint_options()
    if not options:
        return
    path = options[0]["value"]
    try:
        layers = state.checkpoint(path).num_layers
        map_figures(state, path, "", "text", None, layers)
        graph_figures(state, path, "", "text", None, layers, None, None, "flow")
        fit_report(state, path, "", "text", None, DEFAULTS["mode"])
    except (ValueError, TypeError, OSError):
        return  # shown in the page when the user arrives


# --- layout -----------------------------------------------------------------------------------
def layout(**_query: str) -> html.Div:
    state = current_state()
    options = state.checkpoint_options()
    first = options[0]["value"] if options else None
    layers: list[dict[str, Any]] = []
    info: Any = "no checkpoint under the roots (--runs / --checkpoint)"
    if first is not None:
        try:
            ckpt = state.checkpoint(first)
            layers, info = layer_options(ckpt.num_layers), describe(ckpt)
        except (ValueError, TypeError, OSError) as exc:
            info = message(str(exc))
    return page(
        "Flow",
        [
            html.Div(
                [
                    control(
                        "checkpoint",
                        dcc.Dropdown(id="flow-ckpt", options=options, value=first, clearable=False),
                        wide=True,
                    ),
                    path_opener("flow", limits.MAX_PATH_CHARS),
                    control(
                        "input",
                        text_box("flow-text", limits.MAX_TEXT_CHARS, "empty: an example input"),
                        f"≤ {limits.MAX_ATTENTION_FLOW_TOKENS} tokens, "
                        f"≤ {limits.MAX_ATTENTION_FLOW_LAYERS} layers",
                        wide=True,
                    ),
                    input_kind_control("flow"),
                    control(
                        "residual",
                        number_box("flow-residual", DEFAULTS["residual"]),
                        "Â = r·I + (1 − r)·A, 0..1",
                    ),
                ],
                className="fg-controls",
            ),
            html.Div(id="flow-path-message", className="fg-messages"),
            html.P(info, id="flow-info"),
            html.Div(
                [
                    control(
                        "layer",
                        radio("flow-layer", layers, layers[-1]["value"] if layers else None),
                    )
                ],
                className="fg-controls",
            ),
            html.Div(id="flow-message", className="fg-messages"),
            html.Div(
                [
                    graph_section("flow-rollout", "Attention rollout"),
                    graph_section("flow-flow", "Attention flow (exact max flow)"),
                ],
                className="fg-side",
            ),
            html.Div(
                [
                    control(
                        "token", number_box("flow-token"), "the target position; empty: the last"
                    ),
                    control(
                        "top-k",
                        number_box("flow-topk", DEFAULTS["topk"]),
                        f"sources drawn, ≤ {limits.MAX_FLOW_SOURCES}",
                    ),
                    control("edge width", radio("flow-edges", list(EDGE_KINDS), "flow")),
                ],
                className="fg-controls",
            ),
            html.Div(id="flow-graph-message", className="fg-messages"),
            graph_section("flow-graph", "Top flows into the token"),
            graph_section("flow-sources", "Where the token gets its information"),
            html.Div(
                [
                    control(
                        "budget",
                        number_box("flow-budget", DEFAULTS["budget"]),
                        "the largest edge density, in (0, 1]",
                    ),
                    control(
                        "fit mode",
                        dcc.Dropdown(
                            id="flow-mode",
                            options=list(FIT_MODES),
                            value=DEFAULTS["mode"],
                            clearable=False,
                        ),
                    ),
                ],
                className="fg-controls",
            ),
            html.Div(id="flow-fit-message", className="fg-messages"),
            html.Div(
                [
                    html.H3("Sparse patterns that keep this model's attention"),
                    html.Div(id="flow-fit"),
                ],
                className="fg-section",
            ),
        ],
    )


# --- callbacks --------------------------------------------------------------------------------
def register_callbacks(app: Dash, state: DashboardState) -> None:
    @app.callback(
        Output("flow-ckpt", "options"),
        Output("flow-ckpt", "value"),
        Output("flow-path-message", "children"),
        Input("flow-open", "n_clicks"),
        State("flow-path", "value"),
        State("flow-ckpt", "options"),
        prevent_initial_call=True,
    )
    @guard(outputs=3, message_at=2)
    def open_path(_clicks: object, text: object, options: object) -> tuple[Any, ...]:
        real = state.resolve_checkpoint(text)
        ckpt = state.checkpoint(str(real))
        options = opened_options(state, options, str(real), f"{ckpt.name} ({text})")
        return options, str(real), message(f"opened {describe(ckpt)}", "note")

    @app.callback(
        Output("flow-layer", "options"),
        Output("flow-layer", "value"),
        Output("flow-info", "children"),
        Input("flow-ckpt", "value"),
        State("flow-layer", "value"),
        State("flow-layer", "options"),
        prevent_initial_call=True,  # the layout holds the first checkpoint's layers
    )
    @guard(outputs=3, message_at=2)
    def choose_checkpoint(path: object, layer: object, offered: object) -> tuple[Any, ...]:
        if not path:
            return [], None, "no checkpoint under the roots"
        ckpt = state.checkpoint(path)
        info = describe(ckpt)
        try:
            check_model(ckpt)
        except ValueError as exc:
            info = message(str(exc))
        count = ckpt.num_layers
        return layer_options(count), kept_layer(layer, offered, count), info

    inputs = [Input(f"flow-{name}", "value") for name in ("ckpt", "text", "input-kind", "residual")]

    @app.callback(
        Output("flow-message", "children"),
        Output("flow-rollout", "figure"),
        Output("flow-flow", "figure"),
        *inputs,
        Input("flow-layer", "value"),
    )
    @guard(outputs=3, message_at=0, failed=no_results(1, 2))
    def update_maps(path: object, text: object, kind: object, residual: object, layer: object):
        if not path or layer is None:
            return (no_update,) * 3
        return (None, *map_figures(state, path, text, kind, residual, layer))

    @app.callback(
        Output("flow-graph-message", "children"),
        Output("flow-graph", "figure"),
        Output("flow-sources", "figure"),
        *inputs,
        Input("flow-layer", "value"),
        Input("flow-token", "value"),
        Input("flow-topk", "value"),
        Input("flow-edges", "value"),
    )
    @guard(outputs=3, message_at=0, failed=no_results(1, 2))
    def update_graph(
        path: object,
        text: object,
        kind: object,
        residual: object,
        layer: object,
        token: object,
        topk: object,
        by: object,
    ) -> tuple[Any, ...]:
        if not path or layer is None:
            return (no_update,) * 3
        return (None, *graph_figures(state, path, text, kind, residual, layer, token, topk, by))

    @app.callback(
        Output("flow-fit-message", "children"),
        Output("flow-fit", "children"),
        Input("flow-ckpt", "value"),
        Input("flow-text", "value"),
        Input("flow-input-kind", "value"),
        Input("flow-budget", "value"),
        Input("flow-mode", "value"),
    )
    @guard(outputs=2, message_at=0, failed=lambda: {1: html.P(NO_RESULT)})
    def update_fit(
        path: object, text: object, kind: object, budget: object, mode: object
    ) -> tuple[Any, ...]:
        if not path:
            return no_update, no_update
        return None, fit_table(fit_report(state, path, text, kind, budget, mode))
