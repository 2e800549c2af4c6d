"""The dashboard app and its command, without a browser: assets are local, each app keeps its
own roots, a failing callback answers with a message (never a traceback), and ``flowgraph
dashboard`` binds 127.0.0.1 with debug off unless told otherwise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flowgraph.app.cli import build_parser, main
from flowgraph.app.dashboard import create_app
from flowgraph.app.dashboard.state import STATE_KEY, current_state


def _run(folder: Path) -> Path:
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "config.json").write_text("{}")
    (folder / "checkpoint" / "model.safetensors").write_bytes(b"")
    return folder


def test_the_page_loads_only_local_assets(tmp_path):
    app = create_app(None, [], None)
    client = app.server.test_client()
    response = client.get("/")
    assert response.status_code == 200
    html = response.data.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http://" not in html.replace("http://localhost", "") and "https://" not in html
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert app.config.serve_locally and not app.config.external_stylesheets
    for url in urls:  # every script and stylesheet the page names is served by the app
        assert client.get(url).status_code == 200, url
    layout = client.get("/_dash-layout").get_json()
    assert "http" not in json.dumps(layout)


def test_each_app_keeps_its_own_roots(tmp_path):
    _run(tmp_path / "one" / "a")
    _run(tmp_path / "two" / "b")
    first = create_app(tmp_path / "one", [], None)
    second = create_app(tmp_path / "two", [], None)
    for app, label in ((first, "one/a"), (second, "two/b")):
        with app.server.test_request_context("/"):
            assert [lbl for lbl, _ in current_state().list_checkpoints()] == [label]
    assert first.server.config[STATE_KEY] is not second.server.config[STATE_KEY]


def test_missing_roots_are_an_error_naming_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--checkpoint: no such file"):
        create_app(None, [tmp_path / "missing"], None)


def _callback_body(app, output_prop: str, inputs: dict[str, object], changed: str) -> tuple:
    key = next(k for k in app.callback_map if output_prop in k)
    spec = app.callback_map[key]
    outputs = [
        {"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1]}
        for part in key.strip(".").split("...")
    ]
    ins = [
        {"id": i["id"], "property": i["property"], "value": inputs[i["id"]]} for i in spec["inputs"]
    ]
    body = {
        "output": key,
        "outputs": outputs,
        "inputs": ins,
        "changedPropIds": [changed],
        "state": [],
    }
    return key, body


def test_a_bad_value_answers_with_a_message_not_a_traceback():
    app = create_app(None, [], None)
    client = app.server.test_client()
    client.get("/")  # the first request sets the callbacks up
    values = {
        "patterns-name": "fixed",
        "patterns-n": 9999999,
        "patterns-stride": None,
        "patterns-summary": 1,
        "patterns-direction": "causal",
        "patterns-layers": None,
        "patterns-mode": "interleave",
        "patterns-flow": [],
        "patterns-upload-key": None,
    }
    _, body = _callback_body(app, "patterns-verdict.children", values, "patterns-n.value")
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    text = response.data.decode()
    assert "n must be in 2..1048576, got n=9999999" in text
    assert "Traceback" not in text and 'File \\"' not in text
    # the report of the previous, valid settings must not stay beside the message
    shown = response.get_json()["response"]
    assert shown["patterns-verdict"]["children"] == "no result: correct the input above"
    assert shown["patterns-report"]["children"] is None
    assert shown["patterns-summary-text"]["children"] is None
    assert "correct the input" in json.dumps(shown["patterns-masks"]["figure"])
    _, body = _callback_body(app, "patterns-reach.figure", values, "patterns-n.value")
    below = client.post("/_dash-update-component", json=body).get_json()["response"]
    for graph in ("patterns-reach", "patterns-flow-graph", "patterns-flow-plot", "patterns-edges"):
        assert "correct the input" in json.dumps(below[graph]["figure"]), graph
    values["patterns-n"] = 32
    _, body = _callback_body(app, "patterns-verdict.children", values, "patterns-n.value")
    response = client.post("/_dash-update-component", json=body)
    assert "NOT full information" in response.data.decode()


def test_requests_are_size_capped():
    app = create_app(None, [], None)
    client = app.server.test_client()
    too_big = b"x" * (app.server.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.post("/_dash-update-component", data=too_big, content_type="application/json")
    assert response.status_code == 413


def test_cli_defaults_are_local_and_quiet():
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.debug) == ("127.0.0.1", 8050, False)
    assert args.checkpoint == [] and args.runs is None and args.vectors is None
    args = build_parser().parse_args(
        ["dashboard", "--checkpoint", "a", "--checkpoint", "b", "--debug", "--host", "0.0.0.0"]
    )
    assert args.checkpoint == [Path("a"), Path("b")] and args.debug and args.host == "0.0.0.0"


def test_cli_serves_what_it_was_told(tmp_path, monkeypatch, capsys):
    import dash

    _run(tmp_path / "runs" / "a")
    served = {}

    def fake_run(self, host=None, port=None, debug=None, **kwargs):
        served.update(host=host, port=port, debug=debug, state=self.server.config[STATE_KEY])

    monkeypatch.setattr(dash.Dash, "run", fake_run)
    code = main(["dashboard", "--runs", str(tmp_path / "runs"), "--port", "8123", "--no-warm"])
    assert code == 0
    assert (served["host"], served["port"], served["debug"]) == ("127.0.0.1", 8123, False)
    assert [label for label, _ in served["state"].list_checkpoints()] == ["runs/a"]
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8123/" in out and "1 checkpoint(s)" in out


def test_cli_reports_bad_roots_and_ports(tmp_path, capsys):
    assert main(["dashboard", "--runs", str(tmp_path / "missing")]) == 2
    assert "--runs: no such file or folder" in capsys.readouterr().err
    assert main(["dashboard", "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_cli_says_when_a_root_holds_no_checkpoint(tmp_path, monkeypatch, capsys):
    import dash

    monkeypatch.setattr(dash.Dash, "run", lambda self, **kwargs: None)
    # a file is not a folder of runs: it was listed as one "checkpoint" named README.md
    (tmp_path / "notes.md").write_text("# notes")
    assert main(["dashboard", "--runs", str(tmp_path / "notes.md")]) == 2
    assert "--runs: expected a folder, got the file" in capsys.readouterr().err
    assert main(["dashboard", "--vectors", str(tmp_path / "notes.md")]) == 2
    assert "--vectors: expected a folder, got the file" in capsys.readouterr().err
    (tmp_path / "docs").mkdir()
    _run(tmp_path / "runs" / "a")
    argv = ["--runs", str(tmp_path / "runs"), "--checkpoint", str(tmp_path / "docs")]
    assert main(["dashboard", *argv, "--no-warm"]) == 0
    err = capsys.readouterr().err
    assert f"--checkpoint {tmp_path / 'docs'}: no checkpoint found there" in err
    assert "--runs" not in err


@pytest.mark.parametrize(
    ("env", "outcome"),
    [({}, "skip"), ({"CI": "true"}, "fail"), ({"REQUIRE_BROWSER": "1"}, "fail")],
)
def test_a_missing_browser_skips_or_fails_by_policy(monkeypatch, env, outcome):
    import browser

    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("REQUIRE_BROWSER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected):
        browser.require_browser()


def _post(app, client, output_prop: str, values: dict[str, object], changed: str) -> dict:
    _, body = _callback_body(app, output_prop, values, changed)
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    return response.get_json()["response"]


def test_a_bad_input_empties_the_heads_and_embeddings_results(tmp_path_factory):
    from browser import shared_tiny_runs

    runs = shared_tiny_runs(tmp_path_factory)
    app = create_app(runs, [], None)
    client = app.server.test_client()
    client.get("/")
    heads = {
        f"heads-{k}": v
        for k, v in (
            ("ckpt", "tiny-sdpa"),
            ("ckpt2", None),
            ("layer", 0),
            ("head", 0),
            ("space", "model"),
            ("parts", ["matrix"]),
            ("text", "0 1 99"),
            ("input-kind", "ids"),
            ("positions", []),
            ("pattern", "fixed"),
            ("mode", "merged"),
            ("offset", 0),
        )
    }
    top = _post(app, client, "heads-symmetry.children", heads, "heads-text.value")
    assert "token id 99 is out of range" in json.dumps(top["heads-message"])
    # the form and its symmetry depend on the weights alone: they stay (issue #19, item 7)
    assert top["heads-symmetry"]["children"].startswith("symmetry")
    assert "correct the input" not in json.dumps(top["heads-form"]["figure"])
    below = _post(app, client, "heads-attention.figure", heads, "heads-text.value")
    assert "correct the input" in json.dumps(below["heads-attention"]["figure"])
    coverage = _post(app, client, "heads-coverage.figure", heads, "heads-text.value")
    assert "correct the input" in json.dumps(coverage["heads-coverage"]["figure"])
    from flowgraph.app.pages.embeddings import source_options

    source = source_options(app.server.config[STATE_KEY])[0]["value"]
    emb = {
        "embeddings-source": source,
        "embeddings-query": "nope",
        "embeddings-k": 5,
        "embeddings-tokens": "",
    }
    shown = _post(app, client, "embeddings-pca.figure", emb, "embeddings-query.value")
    assert "not in" in json.dumps(shown["embeddings-message"])
    assert "correct the input" in json.dumps(shown["embeddings-neighbours"]["figure"])
