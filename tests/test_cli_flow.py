"""``flowgraph flow`` and ``flowgraph fit``: the files and tables they write are the library's
results, the HTML is self-contained and written atomically, and bad arguments exit 2 naming
the flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_heads_flow import save_gpt

from flowgraph.app.cli import main
from flowgraph.models.heads import attention_flow, fit_pattern, load_checkpoint, rollout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return save_gpt(tmp_path / "runs" / "gpt", n_layer=3, causal=True, seed=2)


def test_flow_writes_one_self_contained_html(run_dir, tmp_path, capsys):
    out = tmp_path / "flow.html"
    code = main(["flow", str(run_dir), "--text", "0 1 2 3 4 0", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"{out}: rollout, flow, sources"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "gpt: attention flow" in page
    assert page.count("plotly.js v") == 1  # plotly.js embedded once: the page opens offline
    assert re.search(r"<script[^>]*\bsrc=", page) is None  # nothing loaded from elsewhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.html", "runs"]  # no temp left


def test_flow_figures_hold_the_library_values(run_dir):
    import argparse

    from flowgraph.app.cli_flow import flow_figures

    ck = load_checkpoint(run_dir)
    args = argparse.Namespace(
        text=None, ids="1,2,3,4,0", residual=0.3, position=2, layer=2, threads=1
    )
    named = dict(flow_figures(ck, args))
    ids = np.array([1, 2, 3, 4, 0])
    roll, flow = rollout(ck, ids, residual=0.3), attention_flow(ck, ids, residual=0.3)
    for name, expected in (("rollout", roll), ("flow", flow)):
        traces = named[name].data
        assert [t.name for t in traces] == ["layer 1", "layer 2", "layer 3"]
        for layer, trace in enumerate(traces, 1):
            np.testing.assert_allclose(np.asarray(trace.z), expected[layer])
    bars = {t.name: np.asarray(t.y) for t in named["sources"].data}
    np.testing.assert_allclose(bars["raw attention"], ck.attention(ids)[1].mean(0)[2])
    np.testing.assert_allclose(bars["rollout"], roll[2, 2])
    np.testing.assert_allclose(bars["flow (share)"], flow[2, 2] / flow[2, 2].sum())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "flow.txt"], "--out must end in .html or .png"),
        (["--out", "missing/flow.html"], "--out's folder does not exist"),
        (["--position", "9"], "--position must be in 0..3 (the sequence has 4 tokens), got 9"),
        (["--layer", "0"], "--layer must be in 1..3 (gpt has 3 layers), got 0"),
        (["--residual", "2"], "--residual must be in [0, 1], got 2.0"),
        (["--threads", "0"], "--threads must be ≥ 1, got 0"),
    ],
)
def test_flow_bad_arguments_exit_2(run_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = ["flow", str(run_dir), "--ids", "0,1,2,3"]
    if "--out" not in extra:
        argv += ["--out", "flow.html"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowgraph flow: error: ") and message in err
    assert not (tmp_path / "flow.html").exists()


def test_flow_needs_tokens(run_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["flow", str(run_dir), "--out", str(tmp_path / "f.html")])
    assert exc.value.code == 2
    assert main(["flow", str(run_dir), "--ids", "0,7", "--out", str(tmp_path / "f.html")]) == 2


def test_fit_prints_the_ranked_table_and_json(run_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("0 1 2 3 4 0 1 2\n\n  4 3 2 1 0 1 2 3 4 0  \n", encoding="utf-8")
    assert main(["fit", str(run_dir), "--texts", str(corpus), "--budget", "0.5"]) == 0
    report = fit_pattern(
        load_checkpoint(run_dir), ["0 1 2 3 4 0 1 2", "4 3 2 1 0 1 2 3 4 0"], budget=0.5
    )
    assert capsys.readouterr().out.strip() == report.table()
    argv = ["fit", str(run_dir), "--texts", str(corpus), "--budget", "0.5", "--json"]
    assert main([*argv, "--mode", "interleave"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = fit_pattern(
        load_checkpoint(run_dir),
        ["0 1 2 3 4 0 1 2", "4 3 2 1 0 1 2 3 4 0"],
        budget=0.5,
        mode="interleave",
    ).to_dict()
    assert data == json.loads(json.dumps(expected))
    assert data["lengths"] == [8, 10] and data["mode"] == "interleave"


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("0 1\n", ["--budget", "0"], "--budget must be a density in (0, 1], got 0.0"),
        ("\n  \n", [], "holds no text (one text a line)"),
        ("0 1\n0\n", [], "--texts: text 2 ('0') gives 1 tokens; need 2 to 12"),
        (None, [], "--texts: cannot read"),
    ],
)
def test_fit_bad_arguments_exit_2(run_dir, tmp_path, capsys, content, extra, message):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_text(content, encoding="utf-8")
    assert main(["fit", str(run_dir), "--texts", str(corpus), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowgraph fit: error: ") and message in err
