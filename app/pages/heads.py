"""Heads page: pick a checkpoint, a layer and a head, type an input — the head's bilinear form
(metric tensor for metric heads), its spectrum and symmetry, the token distances it induces,
its attention on the input; a second checkpoint side by side; the coverage grid of a pattern.
Rotary checkpoints (Llama, Mistral, Qwen2) add an offset Δ (key − query position) for the form,
spectrum and token distances, and a panel of the head's rotation planes; with grouped-query
attention a note names the query heads that share the chosen head's key head.

Numbers come from :mod:`models.heads` (``Checkpoint.qk_form``, ``token_distances``,
``attention``, ``coverage``, ``rotary_planes``, ``kv_group``), figures from :mod:`models.plots`
(the planes' figure, :func:`make_rotary_figure`, here). Checkpoints open only from the
dashboard's roots (:meth:`DashboardState.resolve_checkpoint`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update

from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.errors import guard, message
from flowgraph.app.dashboard.figures import NO_RESULT, no_results, placeholder_figure
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
from flowgraph.app.pages.patterns import PATTERNS, build_pattern

PATH, NAME, ORDER = "/heads", "Heads", 1
PARTS = ("matrix", "symmetric", "antisymmetric")
SPACES = ("model", "head")
INPUT_KINDS = ("text", "ids")
COVERAGE_MODES = ("merged", "interleave", "heads")
DEFAULT_TOKENS = 16  # the example input when none is typed
# A switch redraws the top half (form, spectrum) and the bottom half (token distances,
# attention) from two callbacks, so the top is drawn while the bottom is still on its way.
HALVES = ("form", "tokens")
# the controls both halves read (the tokens half the positions box too)
HEAD_CONTROLS = ("ckpt", "ckpt2", "layer", "head", "space", "parts", "text", "input-kind", "offset")
FIGURES = {"form": ("form", "spectrum"), "tokens": ("distances", "attention")}
PAGE_WIDTH = 1300  # px: a figure wider than this lies partly outside a laptop's page
MAX_PREFETCH_HEADS = 64  # a checkpoint's heads computed ahead of a switch (12×12 BERT: not all)
MAX_OPENED = 32  # checkpoints opened by path kept in the dropdown beside the listing
OFFSET_CONTROL = "offset Δ"  # the offset box's label, named by its error messages
PLANES_SPAN = 64  # the planes' trace tr U(Δ) is drawn for Δ in −64..0 (or to the chosen Δ)
HIDDEN = {"display": "none"}


# --- pure helpers -----------------------------------------------------------------------------
def parse_ids(text: str) -> np.ndarray:
    """Token ids typed as integers separated by spaces or commas."""
    pieces = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    bad = [p for p in pieces if not re.fullmatch(r"[0-9]+", p)]
    if bad:
        raise ValueError(f"token ids must be non-negative integers, got {bad[0]!r}")
    if not pieces:
        raise ValueError("token ids: none given")
    return np.array([int(p) for p in pieces[: limits.MAX_TOKENS_SHOWN + 1]], dtype=np.int64)


def default_ids(ckpt: Any) -> np.ndarray:
    """A reproducible example input: ``DEFAULT_TOKENS`` pseudo-random token ids."""
    size = min(ckpt.n_ctx, DEFAULT_TOKENS)
    return np.random.default_rng(0).integers(0, ckpt.vocab_size, size=size, dtype=np.int64)


def index_option(name: str, value: object) -> int:
    """A layer or head number as its radio sends it: an int ≥ 0 (a float, text or bool is a
    TypeError, never truncated; the range is checked against the checkpoint)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a non-negative integer, got {value!r:.60}")
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {name}={value}")
    return value


def input_ids(ckpt: Any, text: object, kind: str) -> np.ndarray:
    """The ids of the typed input under ``ckpt``'s tokenizer (``kind`` "text") or as typed
    (``kind`` "ids"); the example input when nothing is typed. At most MAX_TOKENS_SHOWN."""
    text = limits.check_text("input", text)
    kind = limits.check_choice("input kind", kind, INPUT_KINDS)
    if not text.strip():
        return default_ids(ckpt)
    ids = parse_ids(text) if kind == "ids" else np.asarray(ckpt.tokenize(text), dtype=np.int64)
    if ids.size == 0:
        raise ValueError(f"input {text[:40]!r} gives no tokens")
    if ids.size > limits.MAX_TOKENS_SHOWN:
        raise ValueError(
            f"input has more than {limits.MAX_TOKENS_SHOWN} tokens; the heatmaps label every "
            "token, so type a shorter input"
        )
    if ids.size > ckpt.n_ctx:
        raise ValueError(f"input has {ids.size} tokens; {ckpt.name} reads at most {ckpt.n_ctx}")
    if ids.max() >= ckpt.vocab_size:  # checked here: the figures label tokens before the model runs
        raise ValueError(
            f"token id {int(ids.max())} is out of range: {ckpt.name} has {ckpt.vocab_size:,} "
            f"tokens (ids 0..{ckpt.vocab_size - 1})"
        )
    return ids


def space_options(attention_kind: str | None) -> list[dict[str, Any]]:
    """The space radio's options: "head" (the metric M) only for metric heads, greyed out
    otherwise — dot-product and quadratic heads have their form in model space alone."""
    return [
        {"label": "model", "value": "model"},
        {"label": "head", "value": "head", "disabled": attention_kind != "metric"},
    ]


def offset_option(ckpt: Any, value: object) -> int:
    """The offset box's value as Δ = key position − query position for ``ckpt``: an integer
    in −(n_ctx − 1)..n_ctx − 1 for a rotary checkpoint (0 when empty); a checkpoint without
    rotary embeddings has one form for every offset and accepts 0 only (its box is hidden)."""
    span = max(ckpt.n_ctx - 1, 0)
    offset = limits.int_option(OFFSET_CONTROL, value, -span, span, default=0)
    if ckpt.rotary is None and offset != 0:
        raise ValueError(
            f"{OFFSET_CONTROL} = {offset}, but {ckpt.name} ({ckpt.kind}) has no rotary position "
            "embedding: its form is the same at every offset; use 0 (leave the box empty)"
        )
    return offset


def offset_control_state(ckpt: Any | None) -> tuple[dict[str, str], bool]:
    """The offset control's style and ``disabled`` flag: shown and enabled for a rotary
    checkpoint, hidden and disabled for any other (or none)."""
    if ckpt is None or ckpt.rotary is None:
        return HIDDEN, True
    return {}, False


def _span(heads: Sequence[int]) -> str:
    return f"{heads[0]}–{heads[-1]}" if len(heads) > 2 else ", ".join(map(str, heads))


def group_note(ckpt: Any, head: object) -> str | None:
    """With grouped-query attention, which query heads share a key head — all groups, then the
    chosen ``head``'s (None without GQA, or when ``head`` is not a valid choice yet)."""
    if ckpt.num_kv_heads == ckpt.num_heads:
        return None
    size = ckpt.num_heads // ckpt.num_kv_heads
    groups = "; ".join(
        f"heads {_span(range(j * size, (j + 1) * size))} share key head {j}"
        for j in range(ckpt.num_kv_heads)
    )
    note = (
        f"grouped-query attention: {ckpt.num_heads} query heads read {ckpt.num_kv_heads} key "
        f"heads — {groups}"
    )
    if isinstance(head, int) and not isinstance(head, bool) and 0 <= head < ckpt.num_heads:
        others = [h for h in ckpt.kv_group(head) if h != head]
        note += (
            f". Head {head} reads key head {ckpt.kv_head(head)} with heads "
            f"{', '.join(map(str, others))}: their forms share W_k"
        )
    return note


def make_rotary_figure(
    planes: Any, *, offset: int = 0, span: int = PLANES_SPAN, title: str | None = None
) -> go.Figure:
    """Two panels of one head's rotation planes (:class:`models.heads.RotaryPlanes`): the scale
    ρ_i of each plane against its wavelength 2π/θ_i (log axis; the hover adds θ_i, the rotation
    α_i and the residual ‖A_i‖), and the trace tr U(Δ) = Σ_i 2ρ_i cos(Δθ_i − α_i) + tr G_pass
    for Δ from −``span`` (or ``offset`` if further) to 0, the chosen ``offset`` marked. A pure
    function of ``planes``, as :mod:`models.plots`' figures are."""
    from plotly.subplots import make_subplots

    from flowgraph.plot import figure_title

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["scale ρ per rotation plane", "tr U(Δ): score against itself Δ away"],
        horizontal_spacing=0.12,
    )
    plane_p = np.arange(planes.theta_p.size)
    custom_p4 = np.stack([plane_p, planes.theta_p, planes.rotation_p, planes.residual_p], axis=-1)
    fig.add_trace(
        go.Scatter(
            x=planes.wavelength_p,
            y=planes.scale_p,
            mode="lines+markers",
            marker={"color": "#2166ac", "size": 6},
            customdata=custom_p4,
            name="scale ρ",
            hovertemplate=(
                "plane %{customdata[0]}: θ = %{customdata[1]:.4g} rad/token, wavelength "
                "%{x:.4g} tokens<br>ρ = %{y:.4g}, α = %{customdata[2]:.3f}, "
                "‖A‖ = %{customdata[3]:.4g}<extra></extra>"
            ),
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    low = -max(span, abs(offset))
    high = max(0, offset)
    delta = np.arange(low, high + 1)
    trace = np.array([planes.trace(int(d)) for d in delta])
    fig.add_trace(
        go.Scatter(
            x=delta,
            y=trace,
            mode="lines",
            line={"color": "#2166ac"},
            name="tr U(Δ)",
            hovertemplate="Δ = %{x}: tr U = %{y:.4g}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Scatter(
            x=[offset],
            y=[planes.trace(offset)],
            mode="markers",
            marker={"color": "#e66101", "size": 10},
            name="chosen offset",
            hovertemplate="chosen Δ = %{x}: tr U = %{y:.4g}<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="wavelength 2π/θ (tokens)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="offset Δ = key − query position", row=1, col=2)
    fig.update_yaxes(zeroline=True, zerolinecolor="#777777")
    top = int(np.argmax(planes.scale_p))
    fig.update_layout(
        title=figure_title(
            title or f"{planes.theta_p.size} rotation planes",
            f"strongest: plane {top}, wavelength {planes.wavelength_p[top]:.4g} tokens, "
            f"ρ = {planes.scale_p[top]:.4g}; pass-through trace {planes.passthrough_trace:.4g}",
        ),
        width=900,
        height=420,
        margin={"l": 70, "r": 40, "t": 110, "b": 60},
        template="plotly_white",
        font={"family": "DejaVu Sans, Arial, sans-serif", "size": 13},
    )
    return fig


# A switch of checkpoint answers with the new layer and head choices. It writes a radio's value
# only when it must: the value it read (State) left with the request, and a click made while the
# answer was on its way — right after "open by path", whose answer switches the checkpoint and
# so sends this one — was overwritten by that stale value when the answer landed. (The browser
# test lost such a click about 1 run in 10 on a busy machine, every time with the answer slowed.)
def kept_choice(value: object, offered: object, count: int) -> Any:
    """The value ``choose_checkpoint`` writes into a layer or head radio that held ``value``
    among the options ``offered`` when the switch was sent, for a checkpoint with ``count``
    layers or heads: ``no_update`` when every offered choice is still valid (the radio keeps
    what it holds when the answer lands, a click made meanwhile included); otherwise ``value``
    if it is still valid, else 0 (a click on a choice the new checkpoint lacks must not stay)."""

    def valid(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count

    if not isinstance(offered, list) or not all(isinstance(o, dict) for o in offered):
        offered = [{"value": None}]  # unknown options: write the value
    if valid(value) and all(valid(o.get("value")) for o in offered):
        return no_update
    return value if valid(value) else 0


def kept_space(space: object, attention_kind: str) -> Any:
    """The value ``choose_checkpoint`` writes into the space radio: "model" for a checkpoint
    without metric heads (its "head" choice is greyed out), else ``no_update`` while the value
    is one of the two (both are valid for a metric checkpoint, a click made meanwhile too)."""
    if attention_kind != "metric":
        return "model"
    return no_update if space in ("model", "head") else "model"


def describe(ckpt: Any) -> str:
    direction = "causal" if ckpt.causal else "bidirectional"
    extra = ""
    if ckpt.num_kv_heads != ckpt.num_heads:
        extra += f", {ckpt.num_kv_heads} key heads (grouped-query)"
    if ckpt.rotary is not None:
        extra += f", rotary ({ckpt.rotary.rope_type}, {ckpt.rotary.num_planes} planes)"
    return (
        f"{ckpt.name}: {ckpt.kind}, {ckpt.attention_kind} attention, {ckpt.num_layers} layers × "
        f"{ckpt.num_heads} heads (head dim {ckpt.head_dim}, model dim {ckpt.d_model}), "
        f"n_ctx {ckpt.n_ctx}, {ckpt.vocab_size:,} tokens, {direction}{extra}"
    )


def head_figures(
    state: DashboardState,
    path: str,
    layer: int,
    head: int,
    space: str,
    parts: list[str],
    text: object,
    kind: str,
    positions: bool,
    halves: tuple[str, ...] = HALVES,
    *,
    offset: object = 0,
) -> dict[str, Any]:
    """One checkpoint's figures for one head (cached by every input): of ``halves``, "form"
    gives the form and spectrum figures and the symmetry, "tokens" the token distances and
    attention figures. The input is read (and checked) by the "tokens" half only: the form
    depends on the weights alone, and a typo in the input blanked it. ``offset``: the offset
    box's value (:func:`offset_option`), Δ of a rotary checkpoint's form and distances."""
    from flowgraph.models import plots

    if not set(halves) <= set(HALVES):
        raise ValueError(f"halves must be among {', '.join(HALVES)}, got {halves!r}")
    space = limits.check_choice("space", space, SPACES)  # part of a cache key: checked first

    real = str(state.resolve_checkpoint(path))
    ckpt = state.checkpoint(real)
    if not 0 <= layer < ckpt.num_layers:
        raise ValueError(f"layer {layer} is out of range: {ckpt.name} has {ckpt.num_layers}")
    if not 0 <= head < ckpt.num_heads:
        raise ValueError(f"head {head} is out of range: {ckpt.name} has {ckpt.num_heads}")
    if space == "head" and ckpt.attention_kind != "metric":
        raise ValueError(
            f"{ckpt.name} has {ckpt.attention_kind} heads: the head-space form exists for "
            "metric heads only; choose model space"
        )
    offset = offset_option(ckpt, offset)
    name = f"{ckpt.name} L{layer} H{head}" + (f" Δ={offset}" if ckpt.rotary else "")

    def form_figures() -> tuple[Any, go.Figure, go.Figure]:
        form = ckpt.qk_form(layer, head, space, offset=offset)
        return (
            form,
            lighten(plots.make_form_figure(form, parts=parts, title=f"{name}: form")),
            lighten(plots.make_spectrum_figure(form, title=f"{name}: spectra")),
        )

    out: dict[str, Any] = {"ckpt": ckpt}
    if "form" in halves:
        form, out["form"], out["spectrum"] = state.cached(
            ("form", real, layer, head, space, tuple(parts), offset), form_figures
        )
        out["symmetry"] = form.symmetry
        out["symbol"] = plots.form_symbol(form)  # M in head space, U in model space

    def token_figures() -> tuple[go.Figure, go.Figure]:
        d2_tt = ckpt.token_distances(layer, head, ids, positions=positions, offset=offset)
        attn_tt = ckpt.attention(ids)[layer, head]
        return (
            lighten(
                plots.make_token_distance_figure(d2_tt, labels, title=f"{name}: token distances")
            ),
            lighten(plots.make_attention_figure(attn_tt, labels, title=f"{name}: attention")),
        )

    if "tokens" in halves:
        ids = out["ids"] = input_ids(ckpt, text, kind)
        labels = [ckpt.tokens[i] for i in ids]
        out["distances"], out["attention"] = state.cached(
            ("tokens", real, layer, head, ids.tobytes(), positions, offset), token_figures
        )
    return out


def pair(left: go.Figure, right: go.Figure, titles: tuple[str, str] | None = None) -> go.Figure:
    """Two checkpoints' figures in one that fits the page: side by side (narrowed to the page
    by the browser when wider than :data:`PAGE_WIDTH`), or one below the other when narrowing
    would leave panels too small to read (the three-panel form)."""
    from flowgraph.models import plots

    # gap 1/8: binary-exact cell bounds (combine_figures' 1 - 2·cell - gap must not come out
    # as -4e-17, which plotly refuses as an axis domain); room for the left colour bar
    widths = [f.layout.width or 700 for f in (left, right)]
    if sum(widths) * 1.125 <= PAGE_WIDTH:
        return plots.combine_figures([left, right], cols=2, titles=titles, gap=0.125)
    if sum(widths) * 1.125 <= 2.1 * PAGE_WIDTH:  # too wide: the browser narrows it to the page
        fig = plots.combine_figures([left, right], cols=2, titles=titles, gap=0.125)
        return fig.update_layout(width=None, autosize=True)
    if max(widths) <= PAGE_WIDTH:
        return plots.combine_figures([left, right], cols=1, titles=titles, gap=0.125)
    fig = plots.side_by_side(left, right, titles=titles)
    return fig.update_layout(width=None, autosize=True)  # the browser fits it to the page


def prefetch_heads(
    state: DashboardState,
    path: str,
    space: str,
    parts: list[str],
    text: object,
    kind: str,
    positions: bool,
    *,
    offset: int = 0,
) -> None:
    """Queue every head of the checkpoint (same settings) on the state's background thread,
    layer by layer, at most MAX_PREFETCH_HEADS: a later layer or head switch is a cache hit."""
    ckpt = state.checkpoint(path)
    settings = (space, tuple(parts), str(text or ""), kind, positions, offset)
    heads = [(layer, head) for layer in range(ckpt.num_layers) for head in range(ckpt.num_heads)]
    for layer, head in heads[:MAX_PREFETCH_HEADS]:
        state.prefetch.submit(
            ("heads", path, layer, head, settings),
            lambda layer=layer, head=head: head_figures(
                state, path, layer, head, space, list(parts), text, kind, positions, offset=offset
            ),
        )


def rotary_figure(
    state: DashboardState, path: str, layer: int, head: int, offset: object
) -> go.Figure | None:
    """The rotation-planes figure (:func:`make_rotary_figure`) of one head of a rotary
    checkpoint, the offset box's Δ marked (cached); None for a checkpoint without rotary
    embeddings."""
    real = str(state.resolve_checkpoint(path))
    ckpt = state.checkpoint(real)
    if ckpt.rotary is None:
        return None
    if not 0 <= layer < ckpt.num_layers:
        raise ValueError(f"layer {layer} is out of range: {ckpt.name} has {ckpt.num_layers}")
    delta = offset_option(ckpt, offset)

    def build() -> go.Figure:
        planes = ckpt.rotary_planes(layer, head)
        title = f"{ckpt.name} L{layer} H{head}: rotation planes ({ckpt.rotary.rope_type} rope)"
        return lighten(make_rotary_figure(planes, offset=delta, title=title))

    return state.cached(("rotary", real, layer, head, delta), build)


def coverage_figure(
    state: DashboardState, path: str, text: object, kind: str, pattern_name: str, mode: str
) -> go.Figure:
    """The coverage grid of ``pattern_name`` (built at the input's length) on one checkpoint."""
    from flowgraph.models import plots

    if mode not in COVERAGE_MODES:
        raise ValueError(f"mode must be one of {', '.join(COVERAGE_MODES)}, got {mode!r}")
    limits.check_choice("coverage pattern", pattern_name, PATTERNS)  # part of a cache key
    real = str(state.resolve_checkpoint(path))
    ckpt = state.checkpoint(real)
    ids = input_ids(ckpt, text, kind)
    n = int(ids.size)
    if n < 2:
        raise ValueError("the coverage grid needs an input of at least 2 tokens")

    def build() -> go.Figure:
        pattern = build_pattern(pattern_name, n, None, 1, ckpt.causal)
        cov_lh = ckpt.coverage(ids, pattern, mode)
        label = f"{pattern.name} (n={n}, {mode})"
        return lighten(
            plots.make_coverage_figure(cov_lh, pattern=label, title=f"{ckpt.name}: {label}")
        )

    return state.cached(("coverage", real, ids.tobytes(), pattern_name, mode), build)


def warm(state: DashboardState) -> None:
    """Compute the first checkpoint's default view (layer 0, head 0, example input)."""
    options = state.checkpoint_options()
    if not options:
        return
    path = options[0]["value"]
    try:
        head_figures(state, path, 0, 0, "model", list(PARTS), "", "text", False)
        coverage_figure(state, path, "", "text", "fixed", "merged")
        prefetch_heads(state, path, "model", list(PARTS), "", "text", False)
    except (ValueError, TypeError, OSError):
        return  # shown in the page when the user arrives


def opened_options(
    state: DashboardState, options: object, real: str, label: str
) -> list[dict[str, str]]:
    """The checkpoint dropdowns' options once ``real`` is opened by path: the listing under the
    roots, then up to MAX_OPENED checkpoints opened by path before — kept from the page's
    ``options`` only while well-formed and inside the roots (the page sends them back; a
    forged request's junk was echoed, or failed as "string indices must be integers") — then
    ``real`` under ``label`` unless it is among them."""
    out = state.checkpoint_options()
    known = {o["value"] for o in out}
    earlier = [
        o
        for o in (options if isinstance(options, list) else [])
        if isinstance(o, dict)
        and isinstance(o.get("label"), str)
        and isinstance(o.get("value"), str)
        and o["value"] not in known
    ]
    for option in earlier[-MAX_OPENED:]:  # the most recent ones
        try:
            inside = str(state.resolve_checkpoint(option["value"])) == option["value"]
        except ValueError:
            inside = False
        if inside and option["value"] not in known:
            out.append(
                {"label": option["label"][: limits.MAX_PATH_CHARS], "value": option["value"]}
            )
            known.add(option["value"])
    if real not in known:
        out.append({"label": label, "value": real})
    return out


# --- layout -----------------------------------------------------------------------------------
def _choices(state: DashboardState, path: object) -> tuple[list[dict[str, Any]], ...]:
    """Layer and head radio options of a checkpoint."""
    ckpt = state.checkpoint(path)
    layers = [{"label": str(i), "value": i} for i in range(ckpt.num_layers)]
    return layers, [{"label": str(i), "value": i} for i in range(ckpt.num_heads)]


def layout(**_query: str) -> html.Div:
    state = current_state()
    options = state.checkpoint_options()
    first = options[0]["value"] if options else None
    # the first checkpoint's layers and heads are in the layout (no round trip before the
    # figures); a checkpoint that fails to load says why where its description would be
    layers: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []
    info: Any = "no checkpoint under the roots (--runs / --checkpoint)"
    spaces = space_options(None)
    ckpt = None
    if first is not None:
        try:
            layers, heads = _choices(state, first)
            ckpt = state.checkpoint(first)
            info = describe(ckpt)
            spaces = space_options(ckpt.attention_kind)
        except (ValueError, TypeError, OSError) as exc:
            info = message(str(exc))
            ckpt = None
    start = 0 if layers else None
    offset_style, offset_disabled = offset_control_state(ckpt)
    offset_box = number_box("heads-offset", 0)
    offset_box.disabled = offset_disabled
    offset = control(
        OFFSET_CONTROL,
        offset_box,
        "key − query position (rotary models; ≤ 0: keys a causal query sees)",
    )
    offset.id, offset.style = "heads-offset-control", offset_style
    return page(
        "Heads",
        [
            html.Div(
                [
                    control(
                        "checkpoint",
                        dcc.Dropdown(
                            id="heads-ckpt", options=options, value=first, clearable=False
                        ),
                        wide=True,
                    ),
                    path_opener("heads", limits.MAX_PATH_CHARS),
                    control(
                        "compare with",
                        dcc.Dropdown(
                            id="heads-ckpt2",
                            options=options,
                            value=None,
                            placeholder="(none)",
                        ),
                        wide=True,
                    ),
                    control(
                        "layer",
                        radio("heads-layer", layers, start),
                    ),
                    control(
                        "head",
                        radio("heads-head", heads, start),
                    ),
                    control(
                        "space",
                        radio("heads-space", spaces, "model"),
                        "head: the metric M (metric heads)",
                    ),
                    offset,
                    control(
                        "form panels",
                        dcc.Checklist(
                            id="heads-parts", options=list(PARTS), value=list(PARTS), inline=True
                        ),
                    ),
                ],
                className="fg-controls",
            ),
            html.Div(
                [
                    control(
                        "input",
                        text_box("heads-text", limits.MAX_TEXT_CHARS, "empty: an example input"),
                        f"≤ {limits.MAX_TOKENS_SHOWN} tokens",
                        wide=True,
                    ),
                    input_kind_control("heads"),
                    control(
                        "distances",
                        dcc.Checklist(
                            id="heads-positions",
                            options=[{"label": "add position embeddings", "value": "pos"}],
                            value=[],
                        ),
                    ),
                    *(
                        control(label, dcc.Dropdown(id=i, options=o, value=v, clearable=False))
                        for label, i, o, v in (
                            ("coverage pattern", "heads-pattern", list(PATTERNS), "fixed"),
                            ("coverage mode", "heads-mode", list(COVERAGE_MODES), "merged"),
                        )
                    ),
                ],
                className="fg-controls",
            ),
            html.Div(id="heads-path-message", className="fg-messages"),
            html.Div(id="heads-message", className="fg-messages"),
            html.P(info, id="heads-info"),
            html.P(group_note(ckpt, 0) if ckpt else None, id="heads-groups"),
            html.P(id="heads-symmetry", className="fg-verdict"),
            graph_section("heads-form", "Bilinear form"),
            graph_section("heads-spectrum", "Spectrum"),
            html.Div(
                graph_section("heads-rotary", "Rotation planes: which frequencies the head uses"),
                id="heads-rotary-section",
                style=offset_style,
            ),
            graph_section("heads-distances", "Induced token distances"),
            graph_section("heads-attention", "Attention on the input"),
            html.Div(id="heads-coverage-message", className="fg-messages"),
            graph_section("heads-coverage", "Coverage: attention mass inside a pattern"),
        ],
    )


# --- callbacks --------------------------------------------------------------------------------
def register_callbacks(app: Dash, state: DashboardState) -> None:
    @app.callback(
        Output("heads-ckpt", "options"),
        Output("heads-ckpt", "value"),
        Output("heads-ckpt2", "options"),
        Output("heads-path-message", "children"),
        Input("heads-open", "n_clicks"),
        State("heads-path", "value"),
        State("heads-ckpt", "options"),
        prevent_initial_call=True,
    )
    @guard(outputs=4, message_at=3)
    def open_path(_clicks: int, text: object, options: object) -> tuple[Any, ...]:
        real = state.resolve_checkpoint(text)
        ckpt = state.checkpoint(str(real))
        options = opened_options(state, options, str(real), f"{ckpt.name} ({text})")
        return options, str(real), options, message(f"opened {describe(ckpt)}", "note")

    @app.callback(
        Output("heads-layer", "options"),
        Output("heads-layer", "value"),
        Output("heads-head", "options"),
        Output("heads-head", "value"),
        Output("heads-info", "children"),
        Output("heads-space", "value"),
        Output("heads-space", "options"),
        Input("heads-ckpt", "value"),
        State("heads-layer", "value"),
        State("heads-layer", "options"),
        State("heads-head", "value"),
        State("heads-head", "options"),
        State("heads-space", "value"),
        prevent_initial_call=True,  # the layout holds the first checkpoint's choices
    )
    @guard(outputs=7, message_at=4)
    def choose_checkpoint(
        path: object, layer: Any, layer_options: Any, head: Any, head_options: Any, space: Any
    ) -> tuple[Any, ...]:
        # the values go out only where they must (kept_choice): the figures still wait for
        # this answer, since the radios' values are among its outputs
        if not path:
            return [], None, [], None, "no checkpoint under the roots", no_update, no_update
        ckpt = state.checkpoint(path)
        layers, heads = _choices(state, path)
        return (
            layers,
            kept_choice(layer, layer_options, ckpt.num_layers),
            heads,
            kept_choice(head, head_options, ckpt.num_heads),
            describe(ckpt),
            kept_space(space, ckpt.attention_kind),
            space_options(ckpt.attention_kind),
        )

    @app.callback(
        Output("heads-offset-control", "style"),
        Output("heads-offset", "disabled"),
        Output("heads-offset", "value"),
        Output("heads-rotary-section", "style"),
        Input("heads-ckpt", "value"),
        State("heads-offset", "value"),
        prevent_initial_call=True,  # the layout holds the first checkpoint's
    )
    @guard(outputs=4, message_at=None)
    def choose_offset(path: object, offset: object) -> tuple[Any, ...]:
        # a checkpoint without rotary embeddings accepts Δ = 0 only: its box is hidden and
        # reset, so a Δ typed for a rotary model does not follow it there
        ckpt = state.checkpoint(path) if path else None
        style, disabled = offset_control_state(ckpt)
        reset = 0 if disabled and offset not in (0, None) else no_update
        return style, disabled, reset, style

    @app.callback(
        Output("heads-rotary", "figure"),
        Output("heads-groups", "children"),
        Input("heads-ckpt", "value"),
        Input("heads-layer", "value"),
        Input("heads-head", "value"),
        Input("heads-offset", "value"),
    )
    # a bad offset is said in update's message (head_figures checks it the same way)
    @guard(outputs=2, message_at=None, failed=no_results(0))
    def update_rotary(path: object, layer: object, head: object, offset: object) -> tuple[Any, ...]:
        if not path or layer is None or head is None:
            return no_update, no_update
        note = group_note(state.checkpoint(path), head)
        layer, head = index_option("layer", layer), index_option("head", head)
        fig = rotary_figure(state, str(path), layer, head, offset)
        return fig if fig is not None else placeholder_figure("no rotary position embedding"), note

    head_inputs = [Input(f"heads-{name}", "value") for name in HEAD_CONTROLS]

    def figures(half: str, controls: tuple[Any, ...]) -> tuple[list[Any], str | None, Any]:
        """The half's figures for the controls (beside the second checkpoint's, if any), the
        symmetry line (form half) and a note when the second checkpoint fails."""

        path, path2, layer, head, space, parts, text, kind, offset, positions = controls
        ticked = limits.check_flags("form panels", parts, PARTS)
        parts = [p for p in PARTS if p in ticked] or ["matrix"]
        shifted = "pos" in limits.check_flags("distances", positions, ("pos",))
        layer, head = index_option("layer", layer), index_option("head", head)
        args = (layer, head, space, parts, text, kind, shifted)
        left = head_figures(state, str(path), *args, halves=(half,), offset=offset)
        delta = offset_option(left["ckpt"], offset)
        if half == "tokens":  # the half that knows every setting queues the other heads
            prefetch_heads(state, str(path), *args[2:], offset=delta)
        names = FIGURES[half]
        figs = [left[n] for n in names]
        symmetry = (
            f"symmetry ‖sym‖/‖{left['symbol']}‖ = {left['symmetry']:.3f} ({left['ckpt'].name})"
            if half == "form"
            else None
        )
        note = None
        if path2:
            try:
                right = head_figures(state, str(path2), *args, halves=(half,), offset=offset)
                if half == "tokens":
                    prefetch_heads(state, str(path2), *args[2:], offset=delta)
            except (ValueError, TypeError, KeyError) as exc:
                note = message(f"compare: {exc.args[0] if exc.args else exc}", "note")
            else:
                titles = (left["ckpt"].name, right["ckpt"].name)
                pairs = zip(figs, [right[n] for n in names], strict=True)
                settings = (*args[:3], tuple(parts), *args[4:], delta)
                key = ("side", half, str(path), str(path2), *settings)
                figs = state.cached(
                    key,
                    lambda: [lighten(pair(a, b, titles)) for a, b in pairs],
                )
                if symmetry is not None:
                    symmetry += f"; {right['symmetry']:.3f} ({right['ckpt'].name})"
        return figs, symmetry, note

    @app.callback(
        Output("heads-message", "children"),
        Output("heads-symmetry", "children"),
        Output("heads-form", "figure"),
        Output("heads-spectrum", "figure"),
        *head_inputs,  # not the positions box: the form does not depend on it
    )
    @guard(outputs=4, message_at=0, failed=lambda: {1: NO_RESULT, **no_results(2, 3)()})
    def update(*controls: Any) -> tuple[Any, ...]:
        path, _, layer, head = controls[:4]
        if not path or layer is None or head is None:
            return (no_update,) * 4
        figs, symmetry, note = figures("form", (*controls, None))
        return ([input_message(controls[0], controls[6], controls[7]), note], symmetry, *figs)

    def input_message(path: object, text: object, kind: object) -> Any:
        """update_tokens's failure on a bad input, said here (it has no message of its own);
        the form and spectrum above it stay, as they do not read the input."""
        try:
            input_ids(state.checkpoint(str(path)), text, kind)
        except (ValueError, TypeError) as exc:
            return message(
                f"{exc.args[0] if exc.args else exc} (the token distances and attention "
                "need a valid input)"
            )
        return None

    @app.callback(
        Output("heads-distances", "figure"),
        Output("heads-attention", "figure"),
        *head_inputs,
        Input("heads-positions", "value"),
    )
    # the same inputs fail the same way in update's message
    @guard(outputs=2, message_at=None, failed=no_results(0, 1))
    def update_tokens(*controls: Any) -> tuple[Any, ...]:
        path, _, layer, head = controls[:4]
        if not path or layer is None or head is None:
            return (no_update,) * 2
        figs, _, _ = figures("tokens", controls)
        return tuple(figs)

    @app.callback(
        Output("heads-coverage-message", "children"),
        Output("heads-coverage", "figure"),
        Input("heads-ckpt", "value"),
        Input("heads-ckpt2", "value"),
        Input("heads-text", "value"),
        Input("heads-input-kind", "value"),
        Input("heads-pattern", "value"),
        Input("heads-mode", "value"),
    )
    @guard(outputs=2, message_at=0, failed=no_results(1))
    def coverage(
        path: object, path2: object, text: object, kind: str, pattern: str, mode: str
    ) -> tuple[Any, ...]:

        if not path:
            return no_update, no_update
        fig = coverage_figure(state, str(path), text, kind, pattern, mode)
        if path2:
            right = coverage_figure(state, str(path2), text, kind, pattern, mode)
            key = ("side-coverage", str(path), str(path2), text, kind, pattern, mode)
            titles = (state.checkpoint(str(path)).name, state.checkpoint(str(path2)).name)
            fig = state.cached(key, lambda: lighten(pair(fig, right, titles)))
        return None, fig
