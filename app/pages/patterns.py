"""Patterns page: choose a pattern (or upload masks), see its steps, its information-flow graph,
reachability after each step with the witness, the check report, edges against n·√n and the
published patterns compared at one n. Every figure comes from :mod:`flowgraph.plot`, every
number from :func:`flowgraph.check` and :func:`app.demo.comparison_rows`.

The classic patterns (dense … star) take the stride and summary boxes; the library patterns
(:data:`flowgraph.LIBRARY`: sliding_window … nsa) take a parameter box, ``window=64, sinks=4``,
read and checked against the registry, so the page offers what ``flowgraph check`` offers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update

import flowgraph as fg
from flowgraph import plot
from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.errors import guard, message
from flowgraph.app.dashboard.figures import (
    NO_RESULT,
    no_result_figure,
    no_results,
    placeholder_figure,
)
from flowgraph.app.dashboard.layout import (
    control,
    graph_section,
    number_box,
    page,
    radio,
    text_box,
)
from flowgraph.app.dashboard.payload import lighten
from flowgraph.app.dashboard.state import DashboardState

PATH, NAME, ORDER = "/", "Patterns", 0
PATTERNS = ("dense", "local", "strided", "fixed", "ltr", "rtl", "star")  # the stride/summary boxes
LIBRARY_PATTERNS = tuple(name for name in fg.LIBRARY if name not in PATTERNS)  # the params box
NAMES = (*PATTERNS, *LIBRARY_PATTERNS)
LOCKED = {  # patterns defined in one direction only, and that direction
    name: spec.directions[0] for name, spec in fg.LIBRARY.items() if not spec.choice
}
BIDIRECTIONAL_ONLY = tuple(name for name, way in LOCKED.items() if way == "bidirectional")
UPLOAD = "upload"
MODES = ("interleave", "merged", "heads")
IDLE_CANDIDATES = ("n", "stride", "summary", "params", "mode")  # controls some settings ignore
EDGE_NS = (16, 64, 256, 1024, 4096)
DEFAULTS: dict[str, Any] = {"name": "fixed", "n": 64, "summary": 1, "compare_n": 1024}
# NSA's three steps in order have a dense middle step (the selection candidates): its reach is
# checked on bitsets, n² bits and about 2 s at n = 4096.
LIBRARY_MAX_N = {"nsa": limits.MAX_MASKS_CHECK_N}
# Random blocks and dilations fragment the reach sets of later layers: a stack of a library
# pattern is checked for n × layers ≤ this (dilated_window 4096 × 4: about 3 s).
LIBRARY_STACK_ROWS = 4 * limits.MAX_MASKS_CHECK_N
# The random blocks (bigbird, a seeded moba or nsa) are drawn block after block: 65,536 blocks
# take about 2 s.
MAX_RANDOM_BLOCKS = 65536
_PARAM = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*(\[[^\]]*\]|[^,;\s\[\]]+)\s*(?:[,;]|\s|$)")


# --- pure helpers (tested without a browser) ------------------------------------------------
def parse_params(text: object, name: str) -> dict[str, Any]:
    """The parameter box of library pattern ``name`` as a dict: ``name=value`` pairs separated
    by commas, semicolons or spaces; a value is an integer, ``none`` or a bracketed list of
    integers (``lengths=[512, 1024, 256]``). Unknown names, repeats and values of the wrong kind
    are ValueErrors naming the parameter."""
    spec = fg.LIBRARY[name]
    text = limits.check_text("parameters", text)
    values: dict[str, Any] = {}
    pos = 0
    while text[pos:].strip():
        match = _PARAM.match(text, pos)
        if match is None:
            raise ValueError(
                f"parameters: cannot read {text[pos:].strip()!r:.40}; write name=value pairs, "
                f"e.g. {example_params(name) or 'window=64, sinks=4'}"
            )
        key, raw = match.group(1), match.group(2)
        pos = match.end()
        if key not in spec.names:
            have = ", ".join(spec.names) or "none"
            raise ValueError(
                f"parameters: {name} takes no parameter {key!r}; its parameters: {have}"
            )
        if key in values:
            raise ValueError(f"parameters: {key} is given twice")
        values[key] = _param_value(spec.param(key), raw)
    return values


def _param_value(param: Any, raw: str) -> Any:
    """One value of the parameter box, as ``param`` (a library ``Param``) takes it."""
    if raw.lower() == "none":
        if not param.optional:
            raise ValueError(f"parameters: {param.name} needs a value ({param.range_text})")
        return None
    if param.kind == "ints":
        if not raw.startswith("["):
            raise ValueError(f"parameters: {param.name} is a list, e.g. {param.name}=[512, 256]")
        parts = [part.strip() for part in raw[1:-1].split(",")]
        try:
            return [int(part) for part in parts]
        except ValueError:
            raise ValueError(
                f"parameters: {param.name} must be a list of integers, got {raw!r:.60}"
            ) from None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"parameters: {param.name} must be an integer ({param.range_text}), got {raw!r:.40}"
        ) from None


def example_params(name: object) -> str:
    """The parameter box text of ``name``'s defaults at n = 1024 (its placeholder)."""
    if name not in LIBRARY_PATTERNS:
        return ""
    spec = fg.LIBRARY[name]  # type: ignore[index]
    if spec.n_from:
        return "lengths=[512, 256, 256], window=none"
    values = spec.resolve(1024)
    return ", ".join(
        f"{p.name}={'none' if values[p.name] is None else values[p.name]}" for p in spec.params
    )


def params_hint(name: object, n: object) -> str:
    """What the parameter box of ``name`` takes at this n: each parameter's range and default
    (the registry's), or why the box is off."""
    if name not in LIBRARY_PATTERNS:
        return "for the library patterns (sliding_window … nsa)"
    spec = fg.LIBRARY[name]  # type: ignore[index]
    try:
        size = limits.int_option("n", n, 2, limits.MAX_CHECK_N)
        resolved: dict[str, Any] | None = None if spec.n_from else spec.resolve(size)
    except (TypeError, ValueError):
        resolved = None
    parts = []
    for p in spec.params:
        if resolved is None or p.kind == "ints":
            span, default = p.range_text, p.default_text
        else:
            low, high = p.bounds(resolved)
            span = f"{low}..{high}"
            default = "none" if resolved[p.name] is None else str(resolved[p.name])
        parts.append(f"{p.name} {span}" + (" (required)" if p.required else f" ({default})"))
    return "; ".join(parts) + (" — n is the sum of the lengths" if spec.n_from else "")


def library_pattern(name: str, n: object, params: object, causal: bool) -> fg.Pattern:
    """Library pattern ``name`` at the n box (the lengths' sum for document) with the parameter
    box's values and the registry's defaults; refused up front where the dashboard would take
    more than a few seconds."""
    spec = fg.LIBRARY[name]
    values = parse_params(params, name)
    if spec.n_from is not None:
        if values.get(spec.n_from) is None:
            raise ValueError(
                f"parameters: {name} needs {spec.n_from}, e.g. {example_params(name)} "
                "(n is their sum; the n box is off)"
            )
        total = sum(values[spec.n_from])
        if total > limits.MAX_CHECK_N:
            raise ValueError(
                f"the lengths sum to n={total:,}; the dashboard checks n ≤ {limits.MAX_CHECK_N:,}"
            )
        size = None
    else:
        size = limits.int_option("n", n, 2, LIBRARY_MAX_N.get(name, limits.MAX_CHECK_N))
    resolved = spec.resolve(size, values)
    block = resolved.get("block", resolved.get("sel_block"))
    random = name == "bigbird" or resolved.get("seed") is not None
    if random and block is not None and math.ceil(resolved["n"] / block) > MAX_RANDOM_BLOCKS:
        raise ValueError(
            f"{name} draws its random blocks one block at a time; the dashboard takes "
            f"n/block ≤ {MAX_RANDOM_BLOCKS:,}, got {resolved['n']:,}/{block} (use a larger block "
            "or `flowgraph check`)"
        )
    return spec.build(size, values, causal if spec.choice else None)


def build_pattern(
    name: str,
    n: object,
    stride: object,
    summary: object,
    causal: bool,
    uploaded: fg.Pattern | None = None,
    params: object = None,
) -> fg.Pattern:
    """The pattern the controls describe. ``stride`` is the window of ``local`` and the hub of
    ``star``; empty means the constructor's default (⌊√n⌋, hub 0). A library pattern takes
    ``params``, the parameter box (see :func:`parse_params`), instead of stride and summary."""
    if name in LIBRARY_PATTERNS:
        return library_pattern(name, n, params, causal)
    if name == UPLOAD:
        if uploaded is None:
            raise ValueError("pattern 'upload' needs an .npz of masks: drop one on the upload box")
        if uploaded.n > limits.MAX_MASKS_CHECK_N:
            raise ValueError(
                f"the uploaded masks have n={uploaded.n}; the dashboard checks masks of n ≤ "
                f"{limits.MAX_MASKS_CHECK_N} (use `flowgraph check --masks` for more)"
            )
        return uploaded
    if name not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(NAMES)} or upload, got {name!r}")
    n = limits.int_option("n", n, 2, limits.MAX_CHECK_N)
    default_stride = max(1, int(n**0.5))
    if name == "star":
        return fg.star(n, hub=limits.int_option("hub (stride box)", stride, 0, n - 1, default=0))
    l = limits.int_option("stride", stride, 1, n, default=default_stride)  # noqa: E741
    if name in ("ltr", "rtl"):
        return getattr(fg, name)(n, stride=l)
    if name == "dense":
        return fg.dense(n, causal=causal)
    if name == "local":
        return fg.local(n, l, causal=causal)
    if name == "strided":
        return fg.strided(n, stride=l, causal=causal)
    c = limits.int_option("summary", summary, 1, l, default=1)
    pattern = fg.fixed(n, stride=l, summary=c, causal=causal)
    if pattern.rules is None and n > limits.MAX_MASKS_CHECK_N:  # a wide summary: built as CSR
        raise ValueError(
            f"fixed with summary={c} > 8 is built entry by entry; the dashboard checks it for "
            f"n ≤ {limits.MAX_MASKS_CHECK_N}, got n={n} (use `flowgraph check` for more)"
        )
    return pattern


def idle_controls(name: object, layers: object) -> set[str]:
    """The controls that change nothing for pattern ``name`` and this ``layers`` box (the page
    disables them): n, stride, summary and parameters of uploaded masks, the stride and summary
    of a library pattern (it takes the parameter box) and its n when the parameters give it
    (document), the parameters of the classic patterns, the stride of dense, the summary of all
    but fixed, the mode while layers is empty."""
    idle = set()
    if name == UPLOAD:
        idle |= {"n", "stride", "summary", "params"}
    elif name in LIBRARY_PATTERNS:
        idle |= {"stride", "summary"}
        if fg.LIBRARY[name].n_from:  # type: ignore[index]
            idle.add("n")
    else:
        idle.add("params")
    if name == "dense":
        idle.add("stride")
    if name != "fixed":
        idle.add("summary")
    if layers is None or layers == "":
        idle.add("mode")
    return idle


def direction_for(name: object, direction: object, before: object) -> tuple[Any, ...]:
    """What a pattern change does to the direction radio: (value, options, the direction to
    restore later, a note). A pattern defined in one direction (ltr, rtl, star, prefix_lm and
    block_causal bidirectional; sinks_window, moba and nsa causal) locks the radio to it and
    keeps the direction it replaced; the next pattern with both directions gets that one back,
    so fixed → ltr → fixed is causal again (it stayed bidirectional, silently turning fixed's
    verdict into full information). Both changes are said in a note under the radio. The
    value goes out only when it must: ``direction`` was read when the request left, and
    writing it back undid a direction clicked while the answer was on its way."""
    locked = LOCKED.get(name) if isinstance(name, str) else None
    options = [
        {"label": "causal", "value": "causal", "disabled": locked == "bidirectional"},
        {"label": "bidirectional", "value": "bidirectional", "disabled": locked == "causal"},
    ]
    if locked is not None:
        if before in ("causal", "bidirectional"):  # ltr → rtl: keep what ltr replaced
            kept = before
        else:
            kept = direction if direction in ("causal", "bidirectional") else "causal"
        note = f"{name} is {locked} only: direction set to {locked}"
        if kept == locked:
            note = f"{name} is {locked} only"
        return locked, options, kept, note
    if before in ("causal", "bidirectional"):
        note = None if before == "bidirectional" else f"direction back to {before} for {name}"
        return before, options, None, note
    value = no_update if direction in ("causal", "bidirectional") else "causal"
    return value, options, None, None


def stack_pattern(pattern: fg.Pattern, layers: object, mode: object) -> fg.Pattern:
    """``pattern`` laid over ``layers`` layers in ``mode`` (unchanged when layers is empty)."""
    if layers is None or layers == "":
        return pattern
    layers = limits.int_option("layers", layers, 1, limits.MAX_LAYERS)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if pattern.name in LIBRARY_PATTERNS and pattern.n * layers > LIBRARY_STACK_ROWS:
        raise ValueError(
            f"layers={layers} of {pattern.name} at n={pattern.n:,} is {pattern.n * layers:,} rows "
            f"whose reach sets its random blocks, dilations or globals fragment; the dashboard "
            f"stacks library patterns for n × layers ≤ {LIBRARY_STACK_ROWS:,} "
            "(`flowgraph check` takes any)"
        )
    if mode != "interleave" and pattern.n > limits.MAX_UNION_CHECK_N:
        raise ValueError(
            f"mode {mode!r} joins steps whose reach sets are ~√n intervals a row; the dashboard "
            f"checks it for n ≤ {limits.MAX_UNION_CHECK_N:,}, got n={pattern.n:,} "
            "(interleave has no such limit; `flowgraph check` takes any n)"
        )
    if pattern.n * layers > limits.MAX_CHECK_ROWS:
        raise ValueError(
            f"layers={layers} at n={pattern.n:,} is {pattern.n * layers:,} rows to check; the "
            f"dashboard checks n × layers ≤ {limits.MAX_CHECK_ROWS:,} (use `flowgraph check`)"
        )
    return fg.stack(pattern, layers, str(mode))


def upload_label(filename: object) -> str:
    """A safe pattern name from an uploaded file's name: only its stem, only [A-Za-z0-9_.-]."""
    stem = Path(str(filename or "upload")).name.rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "upload"


def decode_upload(contents: object) -> bytes:
    """The bytes of a ``dcc.Upload`` data URL, size-checked as an .npz."""
    base64_chars = (limits.MAX_UPLOAD_BYTES * 4) // 3 + 200  # the data URL of the cap
    contents = limits.check_text("upload", contents, limit=base64_chars)
    _, sep, payload = contents.partition(",")
    if not sep:
        raise ValueError("upload: expected a data URL from the upload box")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("upload: the file is not valid base64 data") from None
    limits.check_npz_bytes("upload", data)
    return data


def masks_from_npz(data: bytes, causal: bool, name: str) -> fg.Pattern:
    """A Pattern from .npz bytes, read by :func:`app.cli.load_masks` from a private temporary
    file (the user's file name is never used as a path)."""
    from flowgraph.app.cli import UsageError, load_masks

    with tempfile.TemporaryDirectory(prefix="flowgraph-upload-") as tmp:
        path = Path(tmp) / f"{name}.npz"
        path.write_bytes(data)
        try:
            return load_masks(path, causal)
        except UsageError as exc:
            raise ValueError(str(exc).replace(str(path), f"{name}.npz")) from None


def report_rows(report: fg.Report, flow_note: str) -> list[tuple[str, str]]:
    """The check report as (item, value) rows for the page's table."""
    r = report
    rows = [("full information", "yes" if r.full_information else "NO")]
    if r.witness is not None:
        q, k = r.witness
        rows.append(("witness", f"key {k} never reaches query {q}"))
    rows += [
        ("missing pairs", f"{r.missing_pairs:,} of {r.target_pairs:,} target pairs"),
        (
            "reached after each step",
            ", ".join(f"{x:,}" for x in r.reached),
        ),
        ("empty query rows per step", ", ".join(str(len(e)) for e in r.empty_rows)),
        ("causality violations (k > q)", f"{r.causality_violations:,}" if r.causal else "—"),
        (
            "edges",
            f"{' + '.join(f'{e:,}' for e in r.edges)} = {r.edges_total:,}"
            f" = {r.edge_ratio:.2f} × n·√n",
        ),
        (
            "in-degree per step (min..max)",
            ", ".join(f"{lo}..{hi}" for lo, hi in r.in_degree)
            + (" (constant)" if r.constant_in_degree else " (not constant)"),
        ),
    ]
    if r.flow is not None:
        f = r.flow
        rows.append(
            (
                "flow per query",
                f"min {f.min}, mean {f.mean:.2f}, max {f.max}; {f.ratio:.3f} of the targets",
            )
        )
    else:
        rows.append(("flow per query", flow_note))
    return rows


def _table(rows: list[tuple[str, str]], table_id: str) -> html.Table:
    return html.Table(
        [html.Tbody([html.Tr([html.Th(k), html.Td(v, className="fg-value")]) for k, v in rows])],
        id=table_id,
        className="fg-table",
    )


def compare_table(rows: list[dict[str, object]]) -> html.Table:
    """The rows of :func:`app.demo.comparison_rows` as an HTML table."""
    head = html.Thead(html.Tr([html.Th(h) for h in rows[0]]))
    body = html.Tbody([html.Tr([html.Td(str(v)) for v in row.values()]) for row in rows])
    return html.Table([head, body], className="fg-table fg-compare")


def edges_figure(state: DashboardState, pattern: fg.Pattern, report: fg.Report) -> go.Figure:
    """:func:`flowgraph.plot.make_edges_figure` (cached) with this pattern's total marked."""
    base = state.cached(("edges-figure", EDGE_NS), lambda: plot.make_edges_figure(EDGE_NS))
    fig = go.Figure(base)
    fig.add_trace(
        go.Scatter(
            x=[pattern.n],
            y=[report.edges_total],
            mode="markers",
            name=f"this pattern: {pattern.name}",
            marker={"symbol": "star", "size": 18, "color": "#e66101", "line": {"width": 1}},
        )
    )
    return lighten(fig)


class Settings(NamedTuple):
    """The Patterns controls, as :func:`analyse` reads them (``causal`` resolved)."""

    name: str
    n: object
    stride: object
    summary: object
    causal: bool
    layers: object
    mode: object
    flow: bool
    params: object
    upload: dict[str, Any] | None


def analyse(
    state: DashboardState,
    name: str,
    n: object,
    stride: object,
    summary: object,
    direction: str,
    layers: object,
    mode: object,
    flow: bool,
    upload: dict[str, Any] | None,
    params: object = None,
) -> dict[str, Any]:
    """Everything the page shows for one setting of the controls (cached by the settings).
    ``params`` is the parameter box of the library patterns (ignored by the others)."""
    _check_settings(name, n, stride, summary, direction, layers, mode, upload)
    limits.check_scalar("parameters", params)
    causal = direction != "bidirectional"
    if name in LOCKED:
        causal = LOCKED[name] == "causal"
    n = None if name == UPLOAD else n  # an upload's n is its masks', not the box's
    if name in LIBRARY_PATTERNS:
        stride = summary = None  # boxes the library patterns ignore: not part of the cache key
        if fg.LIBRARY[name].n_from:
            n = None
    else:
        params = None
    settings = Settings(name, n, stride, summary, causal, layers, mode, bool(flow), params, upload)
    sha = (upload or {}).get("sha") if name == UPLOAD else None
    return state.cached(("patterns", *settings[:-1], sha), lambda: _analyse(state, settings))


def _check_settings(
    name: object,
    n: object,
    stride: object,
    summary: object,
    direction: object,
    layers: object,
    mode: object,
    upload: object,
) -> None:
    """Refuse what no control sends before it becomes part of a cache key: a list for n was
    an "unhashable type: 'list'" message that named no control."""
    limits.check_choice("pattern", name, (*NAMES, UPLOAD))
    for label, value in (("n", n), ("stride", stride), ("summary", summary), ("layers", layers)):
        limits.check_scalar(label, value)
    limits.check_scalar("mode", mode)
    limits.check_choice("direction", direction, ("causal", "bidirectional"))
    _check_upload_key(upload)


def _check_upload_key(upload: object) -> None:
    """The upload box's key is None or ``{"sha": str, "name": str}`` (receive_upload sets it)."""
    if upload is None:
        return
    ok = (
        isinstance(upload, dict)
        and isinstance(upload.get("sha"), str)
        and isinstance(upload.get("name", ""), (str, type(None)))
    )
    if not ok:
        raise TypeError(
            f"the upload key must be {{'sha': str, 'name': str}} as the upload box sets it, "
            f"got {upload!r:.60}"
        )


def _uploaded(state: DashboardState, upload: dict[str, Any] | None, causal: bool) -> fg.Pattern:
    if not upload or "sha" not in upload:
        raise ValueError("pattern 'upload' needs an .npz of masks: drop one on the upload box")

    def expired() -> bytes:
        raise ValueError("the uploaded file is no longer in the server's cache; upload it again")

    data = state.uploads.get(upload["sha"], expired)
    label = upload_label(upload.get("name"))
    return masks_from_npz(data, causal, label)


def _analyse(state: DashboardState, settings: Settings) -> dict[str, Any]:
    name, n, stride, summary, causal, layers, mode, flow, params, upload = settings
    uploaded = _uploaded(state, upload, causal) if name == UPLOAD else None
    built = build_pattern(name, n, stride, summary, causal, uploaded, params)
    pattern = stack_pattern(built, layers, mode)
    want_flow = bool(flow) and pattern.n <= limits.MAX_FLOW_N and not pattern.compressed
    report = fg.check(pattern, flow=want_flow)
    if not flow:
        flow_note = f"not computed (tick 'flow'; n ≤ {limits.MAX_FLOW_N})"
    elif pattern.compressed:
        flow_note = "not defined: a step attends compressed keys (the flow counts token nodes)"
    elif not want_flow:
        flow_note = f"not computed: n={pattern.n} is above {limits.MAX_FLOW_N}"
    else:
        flow_note = ""
    n_ = pattern.n
    if n_ <= limits.MAX_HEATMAP_N:
        masks = lighten(plot.make_mask_figure(pattern))
        reach = lighten(plot.make_reachability_figure(pattern, report))
    else:  # too many entries for a browser: the masks as blocks, the reach as the report's counts
        masks = lighten(plot.make_block_mask_figure(pattern, limits.MAX_BLOCK_CELLS))
        reach = placeholder_figure(
            f"n={n_:,}: the reach of every pair is drawn for n ≤ {limits.MAX_HEATMAP_N}; "
            "the report counts them all, the masks are drawn as blocks"
        )
    if n_ <= limits.MAX_FLOW_GRAPH_N:
        graph = lighten(plot.make_flow_graph_figure(pattern, report))
    else:
        graph = placeholder_figure(
            f"n={n_}: the flow graph is drawn for n ≤ {limits.MAX_FLOW_GRAPH_N}"
        )
    flow_fig = (
        lighten(plot.make_flow_figure(report))
        if report.flow is not None
        else placeholder_figure(flow_note, height=160)
    )
    return {
        "pattern": pattern,
        "report": report,
        "rows": report_rows(report, flow_note),
        "masks": masks,
        "graph": graph,
        "reach": reach,
        "flow": flow_fig,
        "edges": edges_figure(state, pattern, report),
    }


def warm(state: DashboardState) -> None:
    """Compute what the page shows on arrival (its default controls) into the caches."""
    from flowgraph.app.demo import comparison_rows

    analyse(
        state,
        DEFAULTS["name"],
        DEFAULTS["n"],
        None,
        DEFAULTS["summary"],
        "causal",
        None,
        "interleave",
        False,
        None,
    )
    n = DEFAULTS["compare_n"]
    state.cached(("compare", n), lambda: comparison_rows(n))


# --- layout -----------------------------------------------------------------------------------
def layout(**_query: str) -> html.Div:
    options = [{"label": p, "value": p} for p in PATTERNS]
    options += [{"label": f"{p} — {fg.LIBRARY[p].summary}", "value": p} for p in LIBRARY_PATTERNS]
    options.append({"label": "upload .npz of masks", "value": UPLOAD})
    return page(
        "Patterns",
        [
            html.Div(
                [
                    control(
                        "pattern",
                        dcc.Dropdown(
                            id="patterns-name",
                            options=options,
                            value=DEFAULTS["name"],
                            clearable=False,
                        ),
                    ),
                    control(
                        "n",
                        number_box("patterns-n", DEFAULTS["n"]),
                        f"2..{limits.MAX_CHECK_N}",
                    ),
                    control(
                        "stride",
                        number_box("patterns-stride"),
                        "empty: ⌊√n⌋; the window of local, the hub of star",
                    ),
                    control(
                        "summary",
                        number_box("patterns-summary", DEFAULTS["summary"]),
                        "columns c of fixed",
                    ),
                    control(
                        "parameters",
                        html.Div(
                            [
                                text_box(
                                    "patterns-params", limits.MAX_TEXT_CHARS, "window=64, sinks=4"
                                ),
                                html.Small(
                                    params_hint(DEFAULTS["name"], DEFAULTS["n"]),
                                    id="patterns-params-hint",
                                    className="fg-hint",
                                ),
                            ]
                        ),
                    ),
                    control(
                        "direction",
                        html.Div(
                            [
                                radio("patterns-direction", ["causal", "bidirectional"], "causal"),
                                html.Small(id="patterns-direction-note", className="fg-hint"),
                            ]
                        ),
                    ),
                    control(
                        "layers",
                        number_box("patterns-layers"),
                        "empty: the pattern's own steps",
                    ),
                    control(
                        "mode",
                        dcc.Dropdown(
                            id="patterns-mode",
                            options=list(MODES),
                            value="interleave",
                            clearable=False,
                        ),
                    ),
                    control(
                        "flow",
                        dcc.Checklist(id="patterns-flow", options=["flow"], value=[]),
                        f"max-flow per query, n ≤ {limits.MAX_FLOW_N}",
                    ),
                    control(
                        "masks (.npz)",
                        html.Div(  # assets/upload.js reads the cap here to refuse aloud
                            dcc.Upload(
                                id="patterns-upload",
                                children=html.Div("drop or click: .npz of masks"),
                                accept=".npz",
                                max_size=limits.MAX_UPLOAD_BYTES,
                                multiple=False,
                                className="fg-upload",
                            ),
                            **{
                                "data-max-bytes": str(limits.MAX_UPLOAD_BYTES),
                                "data-status-id": "patterns-upload-status",
                            },
                        ),
                        f"≤ {limits.MAX_UPLOAD_BYTES // 2**20} MB; array 'masks' (steps, n, n)",
                    ),
                ],
                className="fg-controls",
            ),
            dcc.Store(id="patterns-upload-key"),
            dcc.Store(id="patterns-direction-before"),  # the direction a locked pattern replaced
            html.Div(id="patterns-upload-status", className="fg-messages"),
            html.Div(id="patterns-message", className="fg-messages"),
            html.Div(
                [
                    html.H3(id="patterns-verdict"),
                    html.Div(id="patterns-report"),
                    html.Pre(id="patterns-summary-text", className="fg-pre"),
                ],
                className="fg-section",
            ),
            graph_section("patterns-masks", "Step masks"),
            graph_section("patterns-reach", "Reachability after each step"),
            graph_section("patterns-flow-graph", "Information-flow graph"),
            graph_section("patterns-flow-plot", "Flow per query"),
            graph_section("patterns-edges", "Edges against n"),
            html.Div(
                [
                    html.H3("The published patterns at one n"),
                    control(
                        "n",
                        number_box("patterns-compare-n", DEFAULTS["compare_n"]),
                    ),
                    html.Div(id="patterns-compare-message", className="fg-messages"),
                    html.Div(id="patterns-compare"),
                ],
                className="fg-section",
            ),
        ],
    )


# --- callbacks --------------------------------------------------------------------------------
def _failed_top() -> dict[int, Any]:
    """What update shows when the controls are invalid: no verdict, report or masks of the
    previous settings beside the message about the new ones."""
    return {1: NO_RESULT, 2: "fg-verdict fg-bad", 3: None, 4: None, 5: no_result_figure()}


def register_callbacks(app: Dash, state: DashboardState) -> None:
    @app.callback(
        Output("patterns-direction", "value"),
        Output("patterns-direction", "options"),
        Output("patterns-direction-before", "data"),
        Output("patterns-direction-note", "children"),
        Input("patterns-name", "value"),
        State("patterns-direction", "value"),
        State("patterns-direction-before", "data"),
        prevent_initial_call=True,  # the default pattern (fixed) has both directions
    )
    def bidirectional_only(
        name: str, direction: object, before: object
    ) -> tuple[Any, list[dict[str, Any]], Any, Any]:
        return direction_for(name, direction, before)

    @app.callback(
        *(Output(f"patterns-{c}", "disabled") for c in IDLE_CANDIDATES),
        Input("patterns-name", "value"),
        Input("patterns-layers", "value"),
    )
    def disable_idle(name: str, layers: object) -> tuple[bool, ...]:
        idle = idle_controls(name, layers)
        return tuple(c in idle for c in IDLE_CANDIDATES)

    @app.callback(
        Output("patterns-upload-key", "data"),
        Output("patterns-name", "value"),
        Output("patterns-upload-status", "children"),
        Input("patterns-upload", "contents"),
        State("patterns-upload", "filename"),
        prevent_initial_call=True,
    )
    @guard(outputs=3, message_at=2)
    def receive_upload(contents: str | None, filename: str | None) -> tuple[Any, ...]:
        data = decode_upload(contents)
        sha = hashlib.sha256(data).hexdigest()
        state.uploads.get(sha, lambda: data)
        label = upload_label(filename)
        return {"sha": sha, "name": label}, UPLOAD, message(f"loaded {label}.npz", "note")

    inputs = [  # in analyse's order, with the flow box and the upload's key last
        Input(f"patterns-{name}", "value")
        for name in ("name", "n", "stride", "summary", "direction", "layers", "mode", "flow")
    ] + [Input("patterns-upload-key", "data")]

    def result(controls: tuple[Any, ...]) -> dict[str, Any]:
        *settings, flow, upload = controls
        ticked = limits.check_flags("flow", flow, ("flow",))
        return analyse(state, *settings, "flow" in ticked, upload)

    # The library patterns' parameter box joins two callbacks of their own (below) that write
    # the same outputs: these answer for the classic patterns and uploads, those for the
    # library, and each leaves the other's patterns alone.
    library_inputs = [
        Input(f"patterns-{name}", "value")
        for name in ("name", "n", "direction", "layers", "mode", "flow", "params")
    ]

    def library_result(controls: tuple[Any, ...]) -> dict[str, Any]:
        name, n, direction, layers, mode, flow, params = controls
        ticked = limits.check_flags("flow", flow, ("flow",))
        return analyse(
            state, name, n, None, None, direction, layers, mode, "flow" in ticked, None, params
        )

    top = [
        ("patterns-message", "children"),
        ("patterns-verdict", "children"),
        ("patterns-verdict", "className"),
        ("patterns-report", "children"),
        ("patterns-summary-text", "children"),
        ("patterns-masks", "figure"),
    ]
    below = [
        ("patterns-reach", "figure"),
        ("patterns-flow-graph", "figure"),
        ("patterns-flow-plot", "figure"),
        ("patterns-edges", "figure"),
    ]

    def shown_top(out: dict[str, Any]) -> tuple[Any, ...]:
        report: fg.Report = out["report"]
        verdict = "full information" if report.full_information else "NOT full information"
        pattern: fg.Pattern = out["pattern"]
        kind = "causal" if pattern.causal else "bidirectional"
        return (
            None,
            f"{pattern.name} (n={pattern.n}, {kind}, {pattern.num_steps} steps): {verdict}",
            "fg-verdict fg-ok" if report.full_information else "fg-verdict fg-bad",
            _table(out["rows"], "patterns-report-table"),
            report.summary(),
            out["masks"],
        )

    def shown_below(out: dict[str, Any]) -> tuple[Any, ...]:
        return out["reach"], out["graph"], out["flow"], out["edges"]

    # Two callbacks over one cached analysis: the report and the step masks at the top of the
    # page are drawn while the figures below them are still on their way.
    @app.callback(*(Output(i, p) for i, p in top), *inputs)
    @guard(outputs=6, message_at=0, failed=_failed_top)
    def update(*controls: Any) -> tuple[Any, ...]:
        if controls[0] in LIBRARY_PATTERNS:
            return (no_update,) * 6
        return shown_top(result(controls))

    @app.callback(*(Output(i, p) for i, p in below), *inputs)
    # the same analysis fails the same way in update's message
    @guard(outputs=4, message_at=None, failed=no_results(0, 1, 2, 3))
    def update_below(*controls: Any) -> tuple[Any, ...]:
        if controls[0] in LIBRARY_PATTERNS:
            return (no_update,) * 4
        return shown_below(result(controls))

    @app.callback(
        *(Output(i, p, allow_duplicate=True) for i, p in top),
        *library_inputs,
        prevent_initial_call=True,  # the page opens on a classic pattern
    )
    @guard(outputs=6, message_at=0, failed=_failed_top)
    def update_library(*controls: Any) -> tuple[Any, ...]:
        if controls[0] not in LIBRARY_PATTERNS:
            return (no_update,) * 6
        return shown_top(library_result(controls))

    @app.callback(
        *(Output(i, p, allow_duplicate=True) for i, p in below),
        *library_inputs,
        prevent_initial_call=True,
    )
    @guard(outputs=4, message_at=None, failed=no_results(0, 1, 2, 3))
    def update_library_below(*controls: Any) -> tuple[Any, ...]:
        if controls[0] not in LIBRARY_PATTERNS:
            return (no_update,) * 4
        return shown_below(library_result(controls))

    @app.callback(
        Output("patterns-params-hint", "children"),
        Output("patterns-params", "placeholder"),
        Input("patterns-name", "value"),
        Input("patterns-n", "value"),
    )
    def describe_params(name: object, n: object) -> tuple[str, str]:
        return params_hint(name, n), example_params(name) or "window=64, sinks=4"

    @app.callback(
        Output("patterns-compare-message", "children"),
        Output("patterns-compare", "children"),
        Input("patterns-compare-n", "value"),
    )
    @guard(outputs=2, message_at=0)
    def compare(n: object) -> tuple[Any, ...]:
        from flowgraph.app.demo import comparison_rows

        n = limits.int_option("comparison n", n, 2, limits.MAX_COMPARE_N)
        rows = state.cached(("compare", n), lambda: comparison_rows(n))
        return None, compare_table(rows)
