"""The Flow page: its pure helpers against oracles (networkx max flow beside the page's edge
flows, ``models.heads`` for every number it shows), its caps and bad input as messages through
the app's callbacks, and the page itself in Debian's Chromium (layer, token, budget and edge
controls redraw the figures; no console errors, nothing leaves localhost)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
from browser import (
    CHROMIUM_ARGS,
    STEP_TIMEOUT_MS,
    OfflineGuard,
    figure_signature,
    require_browser,
    serve_dashboard,
    shared_tiny_runs,
    timed_change,
    wait_for_figure_change,
)
from dash import no_update

from flowgraph.app.dashboard import create_app, limits
from flowgraph.app.dashboard.state import DashboardState
from flowgraph.app.pages import flow as page
from flowgraph.models.heads import attention_flow, fit_pattern, mixed_attention, rollout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mixed(L: int, T: int, seed: int, causal: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((L, 2, T, T)) ** 3
    if causal:
        a = np.tril(a)
    return mixed_attention(a / a.sum(-1, keepdims=True), residual=0.5)


def _graph(mixed_lqk: np.ndarray, layer: int) -> nx.DiGraph:
    g = nx.DiGraph()
    for lay in range(1, layer + 1):
        for q, k in zip(*np.nonzero(mixed_lqk[lay - 1]), strict=True):
            g.add_edge((lay - 1, int(k)), (lay, int(q)), capacity=float(mixed_lqk[lay - 1, q, k]))
    return g


def mixed_attention_input(mixed_lqk: np.ndarray) -> np.ndarray:
    """An (L, 1, T, T) attention whose mixed attention at residual 0 is ``mixed_lqk``."""
    return mixed_lqk[:, None]


# --- pure helpers -----------------------------------------------------------------------------
@pytest.mark.parametrize(("causal", "seed"), [(True, 0), (False, 1), (True, 2)])
def test_edge_flows_are_a_max_flow_from_the_sources(causal, seed):
    L, T, layer = 3, 7, 3
    mixed = _mixed(L, T, seed, causal)
    exact = attention_flow(mixed_attention_input(mixed), residual=0.0)
    g = _graph(mixed, layer)
    for target, sources in ((6, [0]), (6, [2, 5]), (3, [0, 1, 3]), (4, [4])):
        edges = page.flow_edges(mixed, layer, target, np.array(sources))
        assert (edges[:, 3] > 0).all()
        # each edge within its capacity, flow conserved at every inner node
        cap = mixed[edges[:, 0].astype(int) - 1, edges[:, 2].astype(int), edges[:, 1].astype(int)]
        assert (edges[:, 3] <= cap + 1e-7).all()
        net: dict[tuple[int, int], float] = {}
        for lay, k, q, f in edges:
            net[(int(lay) - 1, int(k))] = net.get((int(lay) - 1, int(k)), 0.0) - f
            net[(int(lay), int(q))] = net.get((int(lay), int(q)), 0.0) + f
        inner = {n: v for n, v in net.items() if n[0] not in (0, layer)}
        assert max(map(abs, inner.values()), default=0.0) < 1e-9
        assert all(n[1] == target for n in net if n[0] == layer)
        assert all(n[1] in sources for n in net if n[0] == 0)
        # its value is the max flow networkx finds with a super source (1e-6: integer scaling)
        h = g.copy()
        for s in sources:
            h.add_edge("S", (0, s))  # no capacity: unbounded
        value = net.get((layer, target), 0.0)
        assert value == pytest.approx(nx.maximum_flow_value(h, "S", (layer, target)), abs=1e-6)
        if len(sources) == 1:  # one source: the page's exact flow
            assert value == pytest.approx(exact[layer, target, sources[0]], abs=1e-6)


def test_attention_edges_are_the_edges_on_a_source_to_target_path():
    mixed = _mixed(3, 6, 3, causal=True)
    g = _graph(mixed, 2)
    sources, target = [1, 2], 4
    edges = page.flow_edges(mixed, 2, target, np.array(sources), by="attention")
    got = {(int(lay), int(k), int(q)) for lay, k, q, _ in edges}
    want = {
        (lay, k, q)
        for (l0, k), (lay, q) in g.edges
        if any(nx.has_path(g, (0, s), (l0, k)) for s in sources)
        and nx.has_path(g, (lay, q), (2, target))
    }
    assert got == want and want
    for lay, k, q, w in edges:
        assert w == mixed[int(lay) - 1, int(q), int(k)]


def test_edge_inputs_are_checked():
    mixed = _mixed(2, 4, 0, causal=True)
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.2, got layer=3"):
        page.flow_edges(mixed, 3, 0, np.array([0]))
    with pytest.raises(ValueError, match=r"target must be in 0\.\.3"):
        page.flow_edges(mixed, 1, 4, np.array([0]))
    with pytest.raises(ValueError, match="sources must be 1 or more positions"):
        page.flow_edges(mixed, 1, 0, np.array([], dtype=int))
    with pytest.raises(ValueError, match="edge width must be one of flow, attention"):
        page.flow_edges(mixed, 1, 0, np.array([0]), by="width")
    with pytest.raises(ValueError, match=r"shape \(L, T, T\)"):
        page.flow_edges(mixed[0], 1, 0, np.array([0]))


def test_top_sources_and_strongest_edges():
    np.testing.assert_array_equal(page.top_sources(np.array([0.1, 0.5, 0.0, 0.5]), 3), [1, 3, 0])
    np.testing.assert_array_equal(page.top_sources(np.array([0.0, 0.2, 0.0]), 3), [1])
    edges = np.array([[1, 0, 0, 0.1], [1, 1, 0, 0.3], [2, 0, 1, 0.2], [1, 2, 0, 0.2]])
    np.testing.assert_array_equal(page.strongest(edges, 2)[:, 3], [0.3, 0.2, 0.2])


def test_the_flow_graph_figure_draws_every_edge_once_wider_when_heavier():
    mixed = _mixed(2, 5, 4, causal=False)
    flow = attention_flow(mixed_attention_input(mixed), residual=0.0)
    sources = page.top_sources(flow[2, 3], 3)
    edges = page.flow_edges(mixed, 2, 3, sources)
    fig = page.make_flow_paths_figure(edges, sources, flow[2, 3, sources], 3, 2, list("abcde"))
    lines = [t for t in fig.data if t.mode == "lines"]
    assert sum(int(np.isnan(np.asarray(t.x, dtype=float)).sum()) for t in lines) == len(edges)
    widths = [t.line.width for t in lines]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    names = [t.name for t in fig.data]
    assert names[-2:] == ["top 3 sources (size ∝ flow)", "target 3"]
    assert list(fig.data[-2].x) == list(sources)
    assert list(fig.layout.yaxis.ticktext) == ["input", "layer 1", "layer 2"]
    empty = page.make_flow_paths_figure(np.zeros((0, 4)), [], [], 0, 1, ["a"])
    assert [t.name for t in empty.data] == ["positions", "top 0 sources (size ∝ flow)", "target 0"]
    with pytest.raises(ValueError, match="sources and source_flow must match"):
        page.make_flow_paths_figure(edges, sources, [0.1], 3, 2, list("abcde"))
    with pytest.raises(ValueError, match="0 ≤ target < 5"):
        page.make_flow_paths_figure(edges, sources, flow[2, 3, sources], 5, 2, list("abcde"))


def test_a_checkpoint_switch_writes_the_layer_only_when_it_must():
    offered = [{"label": str(i), "value": i} for i in (1, 2)]
    assert page.kept_layer(2, offered, 2) is no_update
    assert page.kept_layer(2, [*offered, {"value": 3}], 2) == 2
    assert page.kept_layer(3, [*offered, {"value": 3}], 2) == 2  # the last layer
    for junk in (None, 0, True, "1", 1.0):
        assert page.kept_layer(junk, offered, 2) == 2, junk
    assert page.kept_layer(1, "junk", 4) == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, "budget must be in (0, 1], got budget=0"),
        (1.5, "budget must be in (0, 1]"),
        (float("nan"), "budget must be in (0, 1]"),
        ("abc", "budget must be a number in (0, 1], got 'abc'"),
        (True, "budget must be a number"),
        ([0.1], "budget must be a number"),
    ],
)
def test_float_options_refuse_what_is_not_a_number_in_range(value, error):
    with pytest.raises(
        (ValueError, TypeError), match=error.replace("(", r"\(").replace("[", r"\[")
    ):
        limits.float_option("budget", value, 0.0, 1.0, default=0.1, low_open=True)
    assert limits.float_option("budget", "", 0.0, 1.0, default=0.1, low_open=True) == 0.1
    assert limits.float_option("budget", " 0.25", 0.0, 1.0, default=0.1) == 0.25


# --- the page's logic on tiny trained runs --------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return shared_tiny_runs(tmp_path_factory)


@pytest.fixture
def state(runs) -> DashboardState:
    return DashboardState(runs, [], None)


TEXT = "0 1 2 1 0 2 2 1"


def test_the_figures_show_the_libraries_numbers(state):
    ckpt = state.checkpoint("tiny-metric")
    ids = ckpt.tokenize(TEXT)
    roll, flow = rollout(ckpt, ids, residual=0.3), attention_flow(ckpt, ids, residual=0.3)
    for layer in (1, 2):
        r_fig, f_fig = page.map_figures(state, "tiny-metric", TEXT, "text", 0.3, layer)
        assert [t.name for t in r_fig.data] == [f"layer {layer}"] and not r_fig.layout.sliders
        np.testing.assert_allclose(r_fig.data[0].z, roll[layer], atol=1e-6)  # float32 on the wire
        np.testing.assert_allclose(f_fig.data[0].z, flow[layer], atol=1e-6)
        assert f"layer {layer}: attention flow" in f_fig.layout.title.text
    graph, bars = page.graph_figures(state, "tiny-metric", TEXT, "text", 0.3, 2, 5, 3, "flow")
    sources = page.top_sources(flow[2, 5], 3)
    assert list(graph.data[-2].x) == list(sources)
    np.testing.assert_allclose(bars.data[1].y, roll[2, 5])  # rollout bars
    np.testing.assert_allclose(bars.data[2].y, flow[2, 5] / flow[2, 5].sum())  # flow shares
    np.testing.assert_allclose(bars.data[0].y, ckpt.attention(ids)[1].mean(axis=0)[5])
    report = page.fit_report(state, "tiny-metric", TEXT, "text", 0.5, "interleave")
    expected = fit_pattern(ckpt, [TEXT], budget=0.5, mode="interleave")
    assert [r["pattern"] for r in page.fit_rows(report)] == [f.label for f in expected.fits]
    assert page.fit_rows(report)[0]["kept"] == f"{expected.fits[0].kept:.3f}"


def test_a_repeated_view_is_served_from_the_cache(state):
    args = ("tiny-sdpa", TEXT, "text", None, 2)
    first = page.map_figures(state, *args)
    hits = state.results.hits
    assert page.map_figures(state, *args) is first
    graph = page.graph_figures(state, *args, None, None, "attention")
    assert page.graph_figures(state, *args, None, None, "attention") is graph
    assert state.results.hits >= hits + 4 and len(state.checkpoints) == 1


def test_ids_and_the_example_input_feed_the_fit_as_text(state):
    ckpt = state.checkpoint("tiny-sdpa")
    assert page.fit_text(ckpt, "0, 2 1", "ids") == "0 2 1"
    example = page.fit_text(ckpt, "", "text")
    np.testing.assert_array_equal(ckpt.tokenize(example), page.flow_ids(ckpt, "", "text"))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (
            lambda s: page.map_figures(s, "tiny-sdpa", TEXT, "text", None, 0),
            "layer must be in 1..2",
        ),
        (lambda s: page.map_figures(s, "tiny-sdpa", TEXT, "text", None, 1.0), "layer must be a"),
        (lambda s: page.map_figures(s, "tiny-sdpa", TEXT, "text", 2, 1), "residual must be in"),
        (lambda s: page.map_figures(s, "tiny-sdpa", "0 7", "ids", None, 1), "token id 7 is out"),
        (lambda s: page.map_figures(s, "/etc", "", "text", None, 1), "outside|not found"),
        (
            lambda s: page.graph_figures(s, "tiny-sdpa", TEXT, "text", None, 1, 8, 3, "flow"),
            r"token must be in 0\.\.7, got token=8",
        ),
        (
            lambda s: page.graph_figures(s, "tiny-sdpa", TEXT, "text", None, 1, 0, 0, "flow"),
            r"top-k must be in 1\.\.8",
        ),
        (
            lambda s: page.graph_figures(s, "tiny-sdpa", TEXT, "text", None, 1, 0, 2, "wide"),
            "edge width must be one of",
        ),
        (lambda s: page.fit_report(s, "tiny-sdpa", TEXT, "text", 0, "merged"), "budget must be"),
        (lambda s: page.fit_report(s, "tiny-sdpa", TEXT, "text", 0.1, "x"), "fit mode must be"),
        (lambda s: page.fit_report(s, "tiny-sdpa", "1", "text", 0.1, "merged"), "at least 2"),
    ],
)
def test_bad_input_is_a_message_naming_the_control(state, call, error):
    with pytest.raises((ValueError, TypeError), match=error):
        call(state)


def test_caps_on_tokens_and_layers_name_the_control(state, monkeypatch):
    ckpt = state.checkpoint("tiny-sdpa")
    monkeypatch.setattr(limits, "MAX_ATTENTION_FLOW_TOKENS", 4)
    with pytest.raises(ValueError, match=r"input has 5 tokens; the Flow page .* at most 4"):
        page.flow_ids(ckpt, "0 1 2 1 0", "text")
    monkeypatch.setattr(limits, "MAX_ATTENTION_FLOW_LAYERS", 1)
    with pytest.raises(ValueError, match=r"checkpoint tiny-sdpa has 2 layers; .* at most 1"):
        page.map_figures(state, "tiny-sdpa", "0 1", "text", None, 1)


# --- through the app's callbacks --------------------------------------------------------------
def _flow_callbacks(app) -> list[str]:
    return [
        k
        for k in app.callback_map
        if any(p.startswith("flow-") for p in k.strip(".").split("..."))
        and "callback" in app.callback_map[k]
    ]


def _body(app, key: str, values: dict[str, object]) -> dict:
    spec = app.callback_map[key]
    outputs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in key.strip(".").split("...")
    ]

    def props(items):
        return [
            {"id": i["id"], "property": i["property"], "value": values.get(i["id"])} for i in items
        ]

    inputs = props(spec["inputs"])
    return {
        "output": key,
        "outputs": outputs,
        "inputs": inputs,
        "state": props(spec["state"]),
        "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"],
    }


VALUES = {
    "flow-ckpt": "tiny-sdpa",
    "flow-text": TEXT,
    "flow-input-kind": "text",
    "flow-residual": 0.5,
    "flow-layer": 2,
    "flow-token": None,
    "flow-topk": 5,
    "flow-edges": "flow",
    "flow-budget": 0.1,
    "flow-mode": "merged",
    "flow-open": 1,
    "flow-path": "tiny-metric",
    "flow-path-message": None,
}
JUNK = [[], {}, [1, "x"], {"a": [1]}, 10**30, -1, 1.5, True, "x" * 10_000, "\x00", None]


@pytest.fixture(scope="module")
def app(runs):
    dash_app = create_app(runs, [], None)
    dash_app.server.test_client().get("/")
    return dash_app


def test_the_callbacks_answer_junk_with_messages(app, caplog):
    client = app.server.test_client()
    keys = _flow_callbacks(app)
    assert len(keys) == 5
    for key in keys:
        good = client.post("/_dash-update-component", json=_body(app, key, VALUES))
        assert good.status_code == 200 and "correct the input" not in good.data.decode(), key
        spec = app.callback_map[key]
        for item in spec["inputs"] + spec["state"]:
            for junk in JUNK:
                body = _body(app, key, {**VALUES, item["id"]: junk})
                answer = client.post("/_dash-update-component", json=body)
                assert answer.status_code in (200, 204), (key, item["id"], junk)
                text = answer.data.decode()
                assert "internal error" not in text and "Traceback" not in text, (item, junk)
    assert not [r for r in caplog.records if r.levelno >= 40]


def test_a_bad_value_empties_the_results(app):
    client = app.server.test_client()
    key = next(k for k in _flow_callbacks(app) if "flow-graph.figure" in k)
    shown = client.post(
        "/_dash-update-component", json=_body(app, key, {**VALUES, "flow-token": 99})
    ).get_json()["response"]
    assert "token must be in 0..7, got token=99" in json.dumps(shown["flow-graph-message"])
    for graph in ("flow-graph", "flow-sources"):
        assert "correct the input" in json.dumps(shown[graph]["figure"])
    key = next(k for k in _flow_callbacks(app) if "flow-fit.children" in k)
    shown = client.post(
        "/_dash-update-component", json=_body(app, key, {**VALUES, "flow-budget": 0})
    ).get_json()["response"]
    assert "budget must be in (0, 1]" in json.dumps(shown["flow-fit-message"])
    assert "correct the input" in json.dumps(shown["flow-fit"])


def test_open_by_path_switches_the_checkpoint(app):
    client = app.server.test_client()
    key = next(k for k in _flow_callbacks(app) if "flow-path-message" in k)
    shown = client.post("/_dash-update-component", json=_body(app, key, VALUES)).get_json()
    assert "opened tiny-metric" in json.dumps(shown["response"]["flow-path-message"])
    assert shown["response"]["flow-ckpt"]["value"].endswith("tiny-metric")
    body = _body(app, key, {**VALUES, "flow-path": "../../etc"})
    refused = json.dumps(client.post("/_dash-update-component", json=body).get_json())
    assert "outside the dashboard's roots" in refused or "not found" in refused


# --- in the browser ---------------------------------------------------------------------------
def _radio(page_, radio_id: str, value: str) -> None:
    page_.locator(f'#{radio_id} label:has(input[value="{value}"])').click()


def _type(page_, input_id: str, text: str) -> None:
    box = page_.locator(f"#{input_id}")
    box.fill(text)
    box.press("Enter")


@pytest.mark.browser
def test_flow_page_in_the_browser(runs, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = require_browser()
    log = tmp_path / "dashboard.log"
    with serve_dashboard("--runs", str(runs), log_path=log) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(STEP_TIMEOUT_MS)
        guard = OfflineGuard()
        context.route("**/*", guard)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(url)
        tab.click("#nav-flow")  # the nav links to the page
        for graph in ("flow-rollout", "flow-flow", "flow-graph", "flow-sources"):
            wait_for_figure_change(tab, graph, None)
        assert "layer 2: rollout" in figure_signature(tab, "flow-rollout")
        tab.locator("#flow-fit tbody tr").first.wait_for()

        # layer 2 → 1: both heatmaps and the graph redraw for layer 1
        below = figure_signature(tab, "flow-graph")
        _, sig = timed_change(tab, "flow-flow", lambda: _radio(tab, "flow-layer", "1"))
        assert "layer 1: attention flow" in sig
        assert "layer 1" in wait_for_figure_change(tab, "flow-rollout", None)
        assert "after layer 1" in wait_for_figure_change(tab, "flow-graph", below)

        # a typed input and a target token
        _, sig = timed_change(tab, "flow-flow", lambda: _type(tab, "flow-text", TEXT))
        assert sig.endswith("#8")  # 8 rows
        _, sig = timed_change(tab, "flow-graph", lambda: _type(tab, "flow-token", "3"))
        assert "into position 3 after layer 1" in sig
        _, sig = timed_change(tab, "flow-graph", lambda: _radio(tab, "flow-edges", "attention"))
        assert "attention ≤" in sig

        tab.screenshot(path=str(tmp_path / "flow-graph.png"), full_page=True)

        # the budget changes the fit table's verdict
        before = tab.inner_text("#flow-fit")
        _type(tab, "flow-budget", "0.9")
        tab.wait_for_function(
            "(before) => { const t = document.querySelector('#flow-fit').innerText;"
            " return t !== before && t.includes('budget 0.9'); }",
            arg=before,
        )
        assert "best within budget 0.9" in tab.inner_text("#flow-fit")

        # a bad token: a message naming the control, no stack trace, no stale figure
        _type(tab, "flow-token", "99")
        tab.locator("#flow-graph-message").get_by_text("token must be in 0..7").wait_for()
        wait_for_figure_change(tab, "flow-graph", sig)
        assert "correct the input" in figure_signature(tab, "flow-graph")
        text = tab.inner_text("body")
        assert "Traceback" not in text and 'File "' not in text
        tab.screenshot(path=str(tmp_path / "flow.png"), full_page=True)
        assert errors == [], errors
        assert guard.blocked == [], guard.blocked
        browser.close()
    server_log = log.read_text(encoding="utf-8")
    assert "Traceback" not in server_log, server_log[-2000:]
