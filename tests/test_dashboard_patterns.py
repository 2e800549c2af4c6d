"""The Patterns page's logic without a browser: the controls build the same patterns as the
flowgraph constructors, the report is ``flowgraph.check``'s, uploads are size-checked and read
by ``app.cli.load_masks``, and errors become messages."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from dash import html, no_update
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.errors import guard
from flowgraph.app.dashboard.state import DashboardState
from flowgraph.app.demo import comparison_rows
from flowgraph.app.pages import patterns as page


def _state() -> DashboardState:
    return DashboardState(None, [], None)


def _oracle(name: str, n: int, stride: int | None, causal: bool) -> fg.Pattern:
    """The pattern as the flowgraph constructors build it from the same numbers."""
    l = stride if stride is not None else max(1, math.isqrt(n))  # noqa: E741
    if name == "dense":
        return fg.dense(n, causal=causal)
    if name == "local":
        return fg.local(n, l, causal=causal)
    if name == "star":
        return fg.star(n, hub=stride or 0)
    if name in ("ltr", "rtl"):
        return getattr(fg, name)(n, stride=l)
    return getattr(fg, name)(n, stride=l, causal=causal)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(page.PATTERNS),
    n=st.integers(2, 80),
    stride_frac=st.none() | st.floats(0, 1),
    causal=st.booleans(),
)
def test_controls_build_the_constructors_pattern(name, n, stride_frac, causal):
    stride = None if stride_frac is None else max(1, min(n - 1, int(stride_frac * n)))
    built = page.build_pattern(name, n, stride, 1, causal)
    assert built == _oracle(name, n, stride, causal)


def test_numbers_typed_as_text_or_floats_are_read_as_ints():
    assert page.build_pattern("strided", "16", 4.0, 1, True) == fg.strided(16, stride=4)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("fixed", limits.MAX_CHECK_N + 1, None, 1), r"n must be in 2\.\.1048576"),
        (("fixed", "abc", None, 1), "n must be an integer"),
        (("fixed", None, None, 1), "n is required"),
        (("fixed", 64, 0, 1), "stride must be in 1..64"),
        (("fixed", 64, 8, 9), "summary must be in 1..8"),
        (("star", 16, 16, 1), "hub"),
        (("nope", 16, None, 1), "pattern must be one of"),
        (("upload", 16, None, 1), "needs an .npz"),
    ],
)
def test_bad_controls_raise_a_message_naming_the_control(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        page.build_pattern(*args, causal=True)


def test_layers_and_mode_are_flowgraph_stack():
    p = fg.fixed(32, stride=4)
    assert page.stack_pattern(p, None, "interleave") is p
    for mode in page.MODES:
        assert page.stack_pattern(p, 3, mode) == fg.stack(p, 3, mode)
    with pytest.raises(ValueError, match=r"layers must be in 1\.\.16"):
        page.stack_pattern(p, 17, "merged")
    with pytest.raises(ValueError, match="mode must be one of"):
        page.stack_pattern(p, 2, "diagonal")


def test_analysis_is_the_check_report_and_its_figures():
    state = _state()
    out = page.analyse(state, "fixed", 64, None, 1, "causal", None, "interleave", False, None)
    report = fg.check(fg.fixed(64))
    assert out["report"] == report
    rows = dict(out["rows"])
    assert rows["full information"] == "NO"
    assert rows["witness"] == "key 0 never reaches query 0"
    assert rows["missing pairs"].startswith(f"{report.missing_pairs:,} of")
    assert "n·√n" in rows["edges"] and rows["flow per query"].startswith("not computed")
    assert [t.name for t in out["masks"].data] == ["step 1", "step 2"]
    assert any("witness" in (t.name or "") for t in out["reach"].data)
    assert out["edges"].data[-1].y == (report.edges_total,)
    # fixed → strided: the report turns to full information
    strided = page.analyse(state, "strided", 64, None, 1, "causal", None, "interleave", True, None)
    assert dict(strided["rows"])["full information"] == "yes"
    assert strided["report"].flow == fg.check(fg.strided(64), flow=True).flow
    assert strided["flow"].data[0].y.tolist() == list(strided["report"].flow.per_query)


def test_the_analysis_is_cached_by_its_inputs():
    state = _state()
    args = ("strided", 64, None, 1, "causal", None, "interleave", False, None)
    first = page.analyse(state, *args)
    assert page.analyse(state, *args) is first
    assert page.analyse(state, "strided", 65, *args[2:]) is not first


def test_bidirectional_only_patterns_ignore_the_causal_setting():
    out = page.analyse(_state(), "ltr", 16, 4, 1, "causal", None, "interleave", False, None)
    assert out["pattern"] == fg.ltr(16, stride=4) and not out["report"].causal


def test_a_locked_direction_comes_back_after_the_lock():
    """fixed → ltr → rtl → fixed: the lock keeps the direction it replaced, and the first
    pattern with both directions gets it back (fixed stayed bidirectional: full information)."""
    direction, before = "causal", None
    seen = []
    for name in ("ltr", "rtl", "fixed", "strided"):
        value, options, before, note = page.direction_for(name, direction, before)
        direction = direction if value is no_update else value
        causal_offered = not next(o for o in options if o["value"] == "causal")["disabled"]
        seen.append((name, direction, causal_offered, note))
    assert [s[:3] for s in seen] == [
        ("ltr", "bidirectional", False),
        ("rtl", "bidirectional", False),
        ("fixed", "causal", True),
        ("strided", "causal", True),
    ]
    assert "bidirectional only" in seen[0][3] and "back to causal" in seen[2][3]
    assert seen[3][3] is None
    # chosen bidirectional before the lock: it stays, and no note claims a change
    value, _, before, _ = page.direction_for("star", "bidirectional", None)
    assert page.direction_for("dense", value, before)[::3] == ("bidirectional", None)


def test_large_n_draws_a_block_view_and_placeholders_not_huge_figures():
    n = limits.MAX_HEATMAP_N + 1
    out = page.analyse(_state(), "strided", n, None, 1, "causal", None, "interleave", True, None)
    assert "block view" in out["masks"].layout.title.text
    assert "reach of every pair is drawn for n ≤" in out["reach"].layout.meta["placeholder"]
    assert "flow graph is drawn for n ≤" in out["graph"].layout.meta["placeholder"]
    assert out["report"].flow is None  # n above MAX_FLOW_N
    assert "above" in dict(out["rows"])["flow per query"]


def test_a_million_tokens_are_checked_and_drawn_as_blocks():
    """The report is exact at n = 2²⁰ (from the pattern's rules) and the masks figure has at most
    MAX_BLOCK_CELLS² cells, each the fraction of its block's pairs that attend."""
    n = 2**20
    out = page.analyse(_state(), "ltr", n, None, 1, "bidirectional", None, "interleave", [], None)
    report = out["report"]
    assert report.full_information and report.edges == fg.ltr(n).edges()
    panels = [t for t in out["masks"].data if t.type == "heatmap"]
    assert len(panels) == 2
    for trace, edges in zip(panels, report.edges, strict=True):
        z = np.asarray(trace.z, dtype=float)
        assert z.shape == (limits.MAX_BLOCK_CELLS, limits.MAX_BLOCK_CELLS)
        assert 0 <= z.min() and z.max() <= 1
        block = n // limits.MAX_BLOCK_CELLS
        assert round(float(z.sum()) * block * block) == edges  # fractions of whole blocks


@pytest.mark.parametrize(
    ("n", "layers", "mode", "match"),
    [
        (2**20, 5, "interleave", r"layers=5 at n=1,048,576 is 5,242,880 rows to check"),
        (limits.MAX_UNION_CHECK_N + 1, 2, "merged", r"mode 'merged' joins steps"),
        (limits.MAX_UNION_CHECK_N + 1, 2, "heads", r"checks it for n ≤ 16,384"),
    ],
)
def test_stacks_that_would_take_minutes_are_refused(n, layers, mode, match):
    with pytest.raises(ValueError, match=match):
        page.stack_pattern(fg.strided(n), layers, mode)


def test_wide_fixed_summaries_are_checked_only_at_small_n():
    assert page.build_pattern("fixed", 4096, 64, 9, causal=True).rules is None  # CSR, fine
    with pytest.raises(ValueError, match=r"fixed with summary=9 > 8 is built entry by entry"):
        page.build_pattern("fixed", 8192, 64, 9, causal=True)


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def test_uploaded_masks_are_read_like_flowgraph_check_masks():
    masks = np.stack([fg.strided(16, stride=4).dense(s) for s in range(2)])
    data = page.decode_upload(_data_url(_npz(masks=masks)))
    pattern = page.masks_from_npz(data, causal=True, name="mine")
    assert pattern == fg.from_masks(masks, causal=True)
    assert pattern.name == "mine"
    state = _state()
    state.uploads.get("sha1", lambda: data)
    upload = {"sha": "sha1", "name": "mine"}
    out = page.analyse(
        state, "upload", None, None, None, "causal", None, "interleave", False, upload
    )
    assert out["report"] == fg.check(pattern)


def test_upload_names_are_labels_never_paths():
    assert page.upload_label("../../etc/passwd.npz") == "passwd"
    assert page.upload_label("/abs/x y;rm -rf.npz") == "x_y_rm_-rf"
    assert page.upload_label(None) == "upload"


def test_bad_uploads_are_refused():
    with pytest.raises(ValueError, match="not valid base64"):
        page.decode_upload("data:x;base64,@@@@")
    with pytest.raises(ValueError, match="data URL"):
        page.decode_upload("no comma here")
    with pytest.raises(ValueError, match=r"not an \.npz"):
        page.decode_upload(_data_url(b"just bytes"))
    with pytest.raises(ValueError, match="limit"):
        limits.check_npz_bytes("upload", b"x" * (limits.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="characters"):
        page.decode_upload("x" * (limits.MAX_UPLOAD_BYTES * 2))
    # a zip bomb: a few kB on the wire, more than the cap once unpacked
    bomb = _npz(masks=np.zeros(limits.MAX_NPZ_UNPACKED_BYTES + 1, dtype=np.uint8))
    assert len(bomb) < limits.MAX_UPLOAD_BYTES
    with pytest.raises(ValueError, match="unpacks to"):
        page.decode_upload(_data_url(bomb))
    with pytest.raises(TypeError, match="must be boolean"):
        page.masks_from_npz(_npz(masks=np.ones((4, 4), np.int8)), causal=True, name="ints")
    state = _state()
    with pytest.raises(ValueError, match="upload it again"):
        page.analyse(
            state, "upload", None, None, None, "causal", None, "merged", False, {"sha": "x"}
        )


def test_compare_table_is_the_demo_comparison():
    rows = comparison_rows(64)
    table = page.compare_table(rows)
    body = table.children[1].children
    assert len(body) == len(rows) == 9
    assert [td.children for td in body[3].children] == [str(v) for v in rows[3].values()]


def test_guard_turns_errors_into_messages_without_tracebacks():
    @guard(outputs=3, message_at=1)
    def fails_with(exc: Exception):
        raise exc

    result = fails_with(ValueError("n must be in 2..4096, got n=5000"))
    assert result[0] is no_update and result[2] is no_update
    assert isinstance(result[1], html.Div)
    assert result[1].children == "n must be in 2..4096, got n=5000"
    assert fails_with(KeyError("word: 'x' is not in the vocabulary"))[1].children == (
        "word: 'x' is not in the vocabulary"
    )
    internal = fails_with(RuntimeError("secret internals"))[1].children
    assert internal.startswith("internal error (RuntimeError)")
    assert "secret" not in internal and "Traceback" not in internal

    @guard(outputs=1, message_at=0)
    def long_message():
        raise ValueError("x" * 5000)

    assert len(long_message().children) <= 600


@pytest.mark.parametrize(
    ("name", "layers", "idle"),
    [
        ("fixed", None, {"params", "mode"}),
        ("fixed", 3, {"params"}),
        ("dense", None, {"stride", "summary", "params", "mode"}),
        ("local", 2, {"summary", "params"}),
        ("star", "", {"summary", "params", "mode"}),
        ("upload", 4, {"n", "stride", "summary", "params"}),
        ("sinks_window", None, {"stride", "summary", "mode"}),
        ("bigbird", 2, {"stride", "summary"}),
        ("document", 2, {"n", "stride", "summary"}),
    ],
)
def test_controls_that_change_nothing_are_disabled(name, layers, idle):
    # a box the pattern ignores (the summary of dense, the mode without layers, the parameters
    # of a classic pattern, the stride of a library one) would look as if it changed the figures
    assert page.idle_controls(name, layers) == idle


@pytest.mark.parametrize(
    ("controls", "argv"),
    [
        (("fixed", 64, None, 1, "causal", None, "interleave"), ["fixed", "--n", "64"]),
        (
            ("fixed", 48, 6, 2, "bidirectional", None, "interleave"),
            ["fixed", "--n", "48", "--stride", "6", "--summary", "2", "--bidirectional"],
        ),
        (
            ("local", 32, 5, 1, "causal", None, "interleave"),
            ["local", "--n", "32", "--window", "5"],
        ),
        (
            ("strided", 32, None, 1, "causal", 3, "merged"),
            ["strided", "--n", "32", "--layers", "3", "--mode", "merged"],
        ),
        (
            ("star", 20, 7, 1, "causal", 2, "heads"),
            ["star", "--n", "20", "--hub", "7", "--layers", "2", "--mode", "heads"],
        ),
        (("rtl", 27, 4, 1, "causal", None, "interleave"), ["rtl", "--n", "27", "--stride", "4"]),
        (
            ("dense", 12, None, 1, "bidirectional", None, "interleave"),
            ["dense", "--n", "12", "--bidirectional"],
        ),
    ],
)
def test_the_report_is_what_flowgraph_check_prints(controls, argv, capsys):
    from flowgraph.app.cli import main

    out = page.analyse(_state(), *controls, True, None)
    main(["check", *argv, "--flow"])
    assert out["report"].summary() == capsys.readouterr().out.strip()
    assert out["rows"][-1][0] == "flow per query" and "of the targets" in out["rows"][-1][1]


# --- the library patterns: the parameter box ---------------------------------------------------
@pytest.mark.parametrize(
    ("name", "n", "params", "causal", "expected"),
    [
        ("sliding_window", 64, "window=5", True, fg.sliding_window(64, 5)),
        ("sliding_window", 64, "", False, fg.sliding_window(64, 8, causal=False)),
        ("dilated_window", 40, "window=3 dilation=4", True, fg.dilated_window(40, 3, 4)),
        ("sinks_window", 64, "window=6; sinks=2", False, fg.sinks_window(64, 6, 2)),
        ("longformer", 50, "window=3, global_tokens=2", False, fg.longformer(50, 3, 2)),
        ("longformer", 50, "", True, fg.longformer(50, 7, 1, causal=True)),
        ("bigbird", 64, "block=8,random_blocks=1,seed=4", False, fg.bigbird(64, 8, 3, 2, 1, 4)),
        ("document", None, "lengths=[10, 20, 34]", True, fg.document([10, 20, 34])),
        ("document", 7, "lengths=[3,4] window=2", False, fg.document([3, 4], False, 2)),
        ("prefix_lm", 30, "prefix=4", True, fg.prefix_lm(30, 4)),
        ("block_causal", 30, "", True, fg.block_causal(30, 5)),
        ("moba", 64, "block=8, top_k=2, seed=none", True, fg.moba(64, 8, 2)),
        ("moba", 64, "block=8, top_k=2, seed=3", True, fg.moba(64, 8, 2, seed=3)),
        ("nsa", 256, "", True, fg.nsa(256, 32, 16, 64, 4, 256)),
    ],
)
def test_the_parameter_box_builds_the_library_constructors_pattern(
    name, n, params, causal, expected
):
    """Empty parameters are the registry's defaults at n (⌊√n⌋ windows and blocks, defaults
    lowered to what n allows); a pattern with one direction ignores the radio."""
    built = page.build_pattern(name, n, "99", "99", causal, params=params)  # boxes it ignores
    assert built == expected and built.name == name and built.params == expected.params


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("sinks_window", "stride=4", "sinks_window takes no parameter 'stride'; its parameters: "),
        ("sinks_window", "window=4 window=5", "window is given twice"),
        ("sinks_window", "window=four", r"window must be an integer \(1 ≤ window ≤ n\)"),
        ("sinks_window", "window=0", r"window must be in 1\.\.64"),
        ("sinks_window", "window 4", "cannot read 'window 4'; write name=value pairs, e.g. "),
        ("sinks_window", "window=none", "window needs a value"),
        ("sinks_window", "window=[1,2]", "window must be an integer"),
        ("moba", "top_k=9, block=8", r"top_k must be in 1\.\.8"),
        ("bigbird", "block=8, window_blocks=2", "window_blocks must be odd"),
        ("document", "", r"document needs lengths, e.g. lengths=\[512, 256, 256\]"),
        ("document", "lengths=100", r"lengths is a list, e.g. lengths=\[512, 256\]"),
        ("document", "lengths=[1, x]", "lengths must be a list of integers"),
        ("document", "lengths=[3, 0]", r"lengths\[1\] must be ≥ 1"),
        ("document", f"lengths=[{limits.MAX_CHECK_N}, 1]", "the dashboard checks n ≤ 1,048,576"),
        ("sliding_window", 12, "parameters must be text"),
        ("sliding_window", "x" * (limits.MAX_TEXT_CHARS + 1), "characters; the limit is"),
    ],
)
def test_bad_parameters_raise_a_message_naming_them(name, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        page.build_pattern(name, 64, None, None, True, params=params)


def test_the_dashboard_refuses_what_would_take_minutes():
    with pytest.raises(ValueError, match=r"n must be in 2\.\.4096"):
        page.build_pattern("nsa", 8192, None, None, True, params="")
    with pytest.raises(ValueError, match="draws its random blocks one block at a time"):
        page.build_pattern("bigbird", 2**20, None, None, False, params="block=8")
    with pytest.raises(ValueError, match=r"is 24,576 rows .* n × layers ≤ 16,384"):
        page.stack_pattern(fg.dilated_window(8192, 8, 2), 3, "interleave")
    assert page.stack_pattern(fg.dilated_window(4096, 8, 2), 4, "interleave").num_steps == 4
    # one step at a million tokens is checked from its rules
    p = page.build_pattern("bigbird", 2**20, None, None, False, params="block=64")
    assert p.n == 2**20 and p.rules is not None


def test_every_placeholder_and_hint_is_the_registry_at_that_n():
    for name in page.LIBRARY_PATTERNS:
        example = page.example_params(name)
        n = 1024 if fg.LIBRARY[name].n_from is None else None
        assert page.build_pattern(name, n, None, None, True, params=example).name == name
    assert page.example_params("sinks_window") == "window=32, sinks=4"
    assert page.params_hint("sinks_window", 64) == "window 1..64 (8); sinks 0..64 (4)"
    assert page.params_hint("moba", 64).startswith("block 1..64 (8); top_k 1..8 (3); seed ")
    assert (
        page.params_hint("sinks_window", "bad")
        == "window 1 ≤ window ≤ n (⌊√n⌋); sinks 0 ≤ sinks ≤ n (4)"
    )
    assert "required" in page.params_hint("document", 64)
    assert page.params_hint("fixed", 64).startswith("for the library patterns")


def test_library_analysis_is_the_check_report():
    state = _state()
    args = ("sinks_window", 64, None, None, "bidirectional", None, "interleave", False, None)
    out = page.analyse(state, *args, "window=6, sinks=2")
    assert out["pattern"] == fg.sinks_window(64, 6, 2) and out["pattern"].causal  # causal only
    assert out["report"] == fg.check(fg.sinks_window(64, 6, 2))
    # the boxes a library pattern ignores are not part of its cache key
    again = page.analyse(state, "sinks_window", 64, 5, 3, "causal", None, "interleave", False,
                         None, "window=6, sinks=2")  # fmt: skip
    assert again is out
    stacked = page.analyse(state, "longformer", 64, None, None, "causal", 3, "merged", True, None,
                           "window=4, global_tokens=1")  # fmt: skip
    assert stacked["report"] == fg.check(
        fg.stack(fg.longformer(64, 4, 1, causal=True), 3, "merged"), flow=True
    )
    small = "cmp_block=8, cmp_stride=4, sel_block=16, sel_blocks=2, window=8"
    nsa = page.analyse(
        state, "nsa", 64, None, None, "causal", None, "interleave", True, None, small
    )
    assert nsa["report"].flow is None and nsa["pattern"].compressed
    assert dict(nsa["rows"])["flow per query"].startswith("not defined: a step attends compressed")
    doc = page.analyse(state, "document", 999, None, None, "causal", None, "interleave", False,
                       None, "lengths=[10, 6]")  # fmt: skip
    assert doc["pattern"] == fg.document([10, 6])  # the n box is off: n is the lengths' sum


def test_locked_directions_of_the_library_come_back_after_the_lock():
    value, options, before, note = page.direction_for("moba", "bidirectional", None)
    assert value == "causal" and before == "bidirectional"
    assert next(o for o in options if o["value"] == "bidirectional")["disabled"]
    assert note == "moba is causal only: direction set to causal"
    assert page.direction_for("bigbird", value, before)[0] == "bidirectional"
    value, _, before, note = page.direction_for("prefix_lm", "causal", None)
    assert (value, before, note) == (
        "bidirectional",
        "causal",
        "prefix_lm is bidirectional only: direction set to bidirectional",
    )


@pytest.mark.parametrize(
    ("controls", "params", "argv"),
    [
        (("sliding_window", 48, None, None, "causal", None, "interleave"), "window=5",
         ["sliding_window", "--n", "48", "--window", "5"]),
        (("bigbird", 64, None, None, "causal", 2, "interleave"), "block=8, seed=2",
         ["bigbird", "--n", "64", "--block", "8", "--seed", "2", "--causal", "--layers", "2"]),
        (("document", None, None, None, "bidirectional", None, "interleave"), "lengths=[5, 9]",
         ["document", "--lengths", "5,9", "--bidirectional"]),
    ],
)  # fmt: skip
def test_library_reports_are_what_flowgraph_check_prints(controls, params, argv, capsys):
    from flowgraph.app.cli import main

    out = page.analyse(_state(), *controls, True, None, params)
    main(["check", *argv, "--flow"])
    assert out["report"].summary() == capsys.readouterr().out.strip()


def _post(client, app, key: str, values: dict, changed: str):
    spec = app.callback_map[key]
    body = {
        "output": key,
        "outputs": [
            {"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1]}
            for part in key.strip(".").split("...")
        ],
        "inputs": [
            {"id": i["id"], "property": i["property"], "value": values[i["id"]]}
            for i in spec["inputs"]
        ],
        "changedPropIds": [changed],
        "state": [],
    }
    return client.post("/_dash-update-component", json=body)


def test_the_library_callbacks_answer_for_the_library_and_the_others_for_the_rest():
    from flowgraph.app.dashboard import create_app

    app = create_app(None, [], None)
    client = app.server.test_client()
    client.get("/")
    values = {
        "patterns-name": "sinks_window", "patterns-n": 64, "patterns-stride": None,
        "patterns-summary": 1, "patterns-direction": "causal", "patterns-layers": None,
        "patterns-mode": "interleave", "patterns-flow": [], "patterns-upload-key": None,
        "patterns-params": "window=6, sinks=2",
    }  # fmt: skip
    keys = [k for k in app.callback_map if "patterns-verdict.children" in k]
    library = next(k for k in keys if "@" in k)
    classic = next(k for k in keys if "@" not in k)
    response = _post(client, app, library, values, "patterns-params.value")
    shown = response.get_json()["response"]
    assert shown["patterns-verdict"]["children"].startswith("sinks_window (n=64, causal, 1 steps)")
    assert (
        shown["patterns-summary-text"]["children"] == fg.check(fg.sinks_window(64, 6, 2)).summary()
    )
    assert _post(client, app, classic, values, "patterns-n.value").get_json()["response"] == {}
    values["patterns-params"] = "sinks=99"
    text = _post(client, app, library, values, "patterns-params.value").data.decode()
    assert "sinks must be in 0..64" in text and "Traceback" not in text
    values["patterns-name"] = "fixed"
    assert _post(client, app, library, values, "patterns-name.value").get_json()["response"] == {}
    text = _post(client, app, classic, values, "patterns-name.value").data.decode()
    assert "NOT full information" in text


@pytest.mark.browser
def test_the_parameter_box_in_a_browser(tmp_path):
    """Chromium against `flowgraph dashboard`: a library pattern answers through its own
    callbacks (the verdict, the masks, the hint), a bad parameter names itself, and back on a
    classic pattern the classic callbacks answer again."""
    from browser import (
        CHROMIUM_ARGS,
        STEP_TIMEOUT_MS,
        OfflineGuard,
        require_browser,
        serve_dashboard,
        wait_for_figure_change,
    )
    from playwright.sync_api import sync_playwright

    chromium = require_browser()

    def select(page, value: str) -> None:
        page.click("#patterns-name")
        page.locator(f'.dash-dropdown-option:has(input[value="{value}"])').click()

    def type_(page, box: str, text: str) -> None:
        page.locator(f"#{box}").fill(text)
        page.locator(f"#{box}").press("Enter")

    def verdict_has(page, text: str) -> None:
        page.wait_for_function(
            f"() => document.querySelector('#patterns-verdict').innerText.includes({text!r})"
        )

    with serve_dashboard(log_path=tmp_path / "dashboard.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(STEP_TIMEOUT_MS)
        context.route("**/*", OfflineGuard())
        page = context.new_page()
        page.goto(url)
        before = wait_for_figure_change(page, "patterns-masks", None)
        assert page.locator("#patterns-params").is_disabled()  # fixed: a classic pattern
        select(page, "sinks_window")
        verdict_has(page, "sinks_window (n=64, causal, 1 steps)")
        wait_for_figure_change(page, "patterns-masks", before)
        assert page.locator("#patterns-stride").is_disabled()
        assert page.locator('#patterns-direction input[value="bidirectional"]').is_disabled()
        assert page.inner_text("#patterns-params-hint") == "window 1..64 (8); sinks 0..64 (4)"
        type_(page, "patterns-params", "window=6, sinks=2")
        page.wait_for_function(
            "() => document.querySelector('#patterns-summary-text').innerText"
            ".includes('in-degree per step: 1..8')"
        )
        assert (
            page.inner_text("#patterns-summary-text")
            == fg.check(fg.sinks_window(64, 6, 2)).summary()
        )
        type_(page, "patterns-params", "sinks=99")
        page.wait_for_function(
            "() => document.querySelector('#patterns-message').innerText"
            ".includes('sinks must be in 0..64')"
        )
        select(page, "strided")
        verdict_has(page, "strided (n=64, causal, 2 steps): full information")
        assert page.inner_text("#patterns-message") == ""
        context.close()
        browser.close()
