"""``flowgraph heads``: the files it writes carry the checkpoint's metrics (compared with the
Checkpoint methods), bad arguments exit 2 with a message naming the argument."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.app.cli import main
from flowgraph.app.cli_heads import head_figures, parse_ids
from flowgraph.models.checkpoint import save_checkpoint
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAS_BROWSER = bool(shutil.which("chromium") or shutil.which("google-chrome"))
needs_browser = pytest.mark.skipif(
    not HAS_BROWSER and os.environ.get("CI") != "true",
    reason="no chromium/google-chrome on PATH (with CI=true this test runs and fails instead)",
)
IDS = "1,2,0,1,2,0,1,2"


def _run(root: Path, attention: str, seed: int) -> Path:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=3, n_layer=2, n_head=2, d_model=16, n_ctx=12, attention=attention)
    model = GPT(config)
    with torch.no_grad():  # away from the init (M = I), so the metric is indefinite
        for name, p in model.named_parameters():
            if "ln_" not in name:
                p.normal_(0.0, 0.5)
    save_checkpoint(
        root / "checkpoint",
        config={
            "model": config.to_dict(),
            "task": {"name": "sort", "length": 6, "vocab": 3},
            "train": {},
            "step": 1,
        },
        model_state=model.state_dict(),
    )
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {
        "metric": _run(base / "sort-metric", "metric", 0),
        "sdpa": _run(base / "sort-sdpa", "sdpa", 1),
    }


def _args(path: Path, **kw) -> argparse.Namespace:
    defaults = dict(
        path=path,
        text=None,
        ids=None,
        layer=0,
        head=0,
        positions=False,
        pattern=None,
        mode="merged",
        stride=None,
        window=None,
        compare=None,
        out=Path("x.html"),
    )
    return argparse.Namespace(**{**defaults, **kw})


def test_figures_carry_the_checkpoint_metrics(runs) -> None:
    ckpt = load_checkpoint(runs["metric"])
    args = _args(runs["metric"], ids=IDS, layer=1, head=1, pattern="strided", stride=3)
    named = dict(head_figures(ckpt, args))
    assert list(named) == ["form", "metric", "spectrum", "attention", "distances", "coverage"]
    ids = parse_ids(IDS)
    form = ckpt.qk_form(1, 1, "model")
    np.testing.assert_array_equal(named["form"].data[0].z, form.matrix)
    np.testing.assert_array_equal(named["metric"].data[0].z, ckpt.qk_form(1, 1, "head").matrix)
    np.testing.assert_array_equal(named["spectrum"].data[0].y, form.eigenvalues)
    np.testing.assert_array_equal(named["attention"].data[0].z, ckpt.attention(ids)[1, 1])
    np.testing.assert_array_equal(named["distances"].data[0].z, ckpt.token_distances(1, 1, ids))
    expected = ckpt.coverage(ids, fg.strided(len(ids), stride=3), "merged")
    np.testing.assert_array_equal(named["coverage"].data[0].z, expected)
    labels = [ckpt.tokens[i] for i in ids]
    assert list(named["attention"].layout.xaxis.ticktext) == labels
    # a dot-product model has no head-space metric, and no tokens means form and spectra only
    dot = dict(head_figures(load_checkpoint(runs["sdpa"]), _args(runs["sdpa"])))
    assert list(dot) == ["form", "spectrum"]


def test_html_holds_every_figure_and_plotly_once(runs, tmp_path, capsys) -> None:
    out = tmp_path / "head.html"
    argv = ["heads", str(runs["metric"]), "--ids", IDS, "--layer", "1", "--head", "0"]
    code = main([*argv, "--pattern", "fixed", "--mode", "interleave", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == (
        f"{out}: form, metric, spectrum, attention, distances, coverage"
    )
    page = out.read_text(encoding="utf-8")
    assert page.count("<section>") == 6
    assert len(re.findall(r"Plotly\.newPlot\(", page)) == 6
    assert page.count("* plotly.js v") == 1  # the library is embedded once: it opens offline
    assert "<title>sort-metric: layer 1, head 0</title>" in page
    assert [p.name for p in tmp_path.iterdir()] == ["head.html"]  # no temp file left


def test_compare_puts_a_second_checkpoint_beside(runs, tmp_path, capsys) -> None:
    out = tmp_path / "both.html"
    argv = ["heads", str(runs["metric"]), "--ids", "0,1,2", "--compare", str(runs["sdpa"])]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert "sort-metric: layer 0, head 0 beside sort-sdpa" in page
    assert page.count("<section>") == 5  # form, metric (one side only), spectrum, attn, distances


@pytest.mark.browser
@needs_browser
def test_png_is_one_image(runs, tmp_path, capsys) -> None:
    out = tmp_path / "head.png"
    code = main(["heads", str(runs["sdpa"]), "--ids", "0,1,2,1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "2"], "--layer must be in 0..1 (sort-metric has 2 layers), got 2"),
        (["--head", "-1"], "--head must be in 0..1"),
        (["--ids", "1,x"], "--ids must be comma-separated non-negative integers"),
        (["--ids", "1,-2"], "--ids must be comma-separated non-negative integers"),
        (["--ids", "1,7"], "--ids holds 7, but sort-metric has 3 tokens"),
        (["--ids", ",".join(["1"] * 13)], "13 tokens, more than sort-metric's context of 12"),
        (["--text", "9 9"], "not in the vocabulary"),
        (["--pattern", "strided"], "--pattern needs tokens: give --text or --ids"),
        (["--positions"], "--positions needs tokens"),
        (["--ids", "1,2", "--pattern", "ltr"], "--pattern ltr is bidirectional"),
        (["--ids", "1,2", "--stride", "2"], "--stride and --window need --pattern"),
        (["--ids", "1,2,1", "--pattern", "strided", "--stride", "9"], "--stride must be in 1..3"),
        (["--ids", "1,2", "--pattern", "dense", "--window", "2"], "--window applies to"),
        (["--mode", "heads"], "--mode needs --pattern"),
        (["--window", "3"], "--stride and --window need --pattern"),
    ],
)
def test_bad_arguments_exit_2(runs, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "x.html"
    code = main(["heads", str(runs["metric"]), *extra, "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_paths_exit_2(runs, tmp_path, capsys) -> None:
    assert main(["heads", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["heads", str(runs["sdpa"]), "--out", str(tmp_path / "x.svg")]) == 2
    assert "--out must end in .html or .png" in capsys.readouterr().err
    assert main(["heads", str(runs["sdpa"]), "--out", str(tmp_path / "no" / "x.html")]) == 2
    assert "--out's folder does not exist" in capsys.readouterr().err


def test_argparse_errors_exit_2(runs, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["heads", str(runs["sdpa"]), "--text", "1", "--ids", "1", "--out", "x.html"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["heads", str(runs["sdpa"])])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_positions_on_a_bert_directory(tmp_path, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    ckpt = load_checkpoint(tmp_path / "bert")
    named = dict(head_figures(ckpt, _args(tmp_path / "bert", ids="3,4,5,3", positions=True)))
    ids = parse_ids("3,4,5,3")
    with_pos = ckpt.token_distances(0, 0, ids, positions=True)
    np.testing.assert_array_equal(named["distances"].data[0].z, with_pos)
    assert with_pos[0, 3] != 0  # the same token at two places: positions tell them apart
    assert ckpt.token_distances(0, 0, ids)[0, 3] == 0
    out = tmp_path / "bert.html"
    argv = ["heads", str(tmp_path / "bert"), "--ids", "3,4,5", "--positions", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "token + position embeddings" in out.read_text(encoding="utf-8")
