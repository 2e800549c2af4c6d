"""docs/heads.md and docs/heads_loading.md say what the code does: their Python examples run
(against small runs saved under the names the pages use) and give what the pages promise, the
command-line example prints what the page shows, and the functions, arguments, constants and
lists the pages name are the code's."""

from __future__ import annotations

import inspect
import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.models import plots
from flowgraph.models.checkpoint import save_checkpoint
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads import QKForm
from flowgraph.models.heads.checkpoint import ATTENTION_CACHE_SIZE
from flowgraph.models.heads.hf import ACTIVATIONS, MODEL_TYPES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = Path(__file__).resolve().parents[1] / "docs"
HEADS, LOADING = DOCS / "heads.md", DOCS / "heads_loading.md"


def _fenced(page: Path, lang: str) -> list[str]:
    """The bodies of the ```lang blocks of a page."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(rf"^( *)```{lang}\n(.*?)^\1```", text, flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


def _save_run(directory: Path, attention: str, seed: int) -> None:
    """A small sorter over 3 symbols, as ``flowgraph train --demo`` saves it (untrained)."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=3, n_layer=2, n_head=4, d_model=16, n_ctx=12, attention=attention)
    save_checkpoint(
        directory / "checkpoint",
        config={
            "model": config.to_dict(),
            "task": {"name": "sort", "length": 5, "vocab": 3},
            "train": {},
            "step": 1,
        },
        model_state=GPT(config).state_dict(),
    )


@pytest.fixture
def in_demo_dir(tmp_path, monkeypatch) -> Path:
    """A working directory holding runs/sort-metric and runs/sort-sdpa."""
    _save_run(tmp_path / "runs" / "sort-metric", "metric", 0)
    _save_run(tmp_path / "runs" / "sort-sdpa", "sdpa", 1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _exec(page: Path, code: str) -> dict:
    namespace: dict = {}
    exec(compile(code, str(page), "exec"), namespace)
    return namespace


def test_heads_page_example_runs_and_gives_what_it_says(in_demo_dir):
    (code,) = _fenced(HEADS, "python")
    ns = _exec(HEADS, code)
    ckpt, ids = ns["ckpt"], ns["ids"]
    L, H, T = ckpt.num_layers, ckpt.num_heads, len(ids)
    assert isinstance(ns["form"], QKForm) and ns["form"].matrix.shape == (16, 16)
    assert ns["attn_lhtt"].shape == (L, H, T, T)
    np.testing.assert_allclose(ns["attn_lhtt"].sum(-1), 1.0, atol=1e-6)  # "rows sum to 1"
    d2_tt = ns["d2_tt"]
    assert d2_tt.shape == (T, T) and np.isfinite(d2_tt).all()
    kept_lh = ns["kept_lh"]
    assert kept_lh.shape == (L, H) and ((kept_lh >= 0) & (kept_lh <= 1)).all()  # "in [0, 1]"


def test_loading_page_example_runs_and_gives_what_it_says(in_demo_dir):
    (code,) = _fenced(LOADING, "python")
    ns = _exec(LOADING, code)
    ckpt = ns["ckpt"]
    assert ns["attn_lhtt"].shape == (ckpt.num_layers, ckpt.num_heads, 6, 6)
    assert ns["attn_lhtt"].dtype == np.float32  # the forward's precision unless asked
    assert ns["weights"].kind == "metric" and ns["weights"].p_hck.shape == (4, 16, 4)


def _commands(block: str) -> list[tuple[list[str], list[str]]]:
    """The ``$ `` commands of a console block (with ``\\`` continuations) and the lines each
    prints."""
    out: list[tuple[list[str], list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            out[-1][1].append(line)
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + lines[i].strip()
            i += 1
        out.append((shlex.split(command), []))
    return out


def test_heads_page_command_line_example_prints_what_the_page_shows(in_demo_dir, capsys):
    from flowgraph.app.cli import main

    (block,) = [b for b in _fenced(HEADS, "console") if "flowgraph heads" in b]
    commands = _commands(block)
    assert [argv[:2] for argv, _ in commands] == [["flowgraph", "train"], ["flowgraph", "heads"]]
    (argv, printed) = commands[1]  # the fixture stands in for `flowgraph train --demo`
    assert main(argv[1:]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines() == printed
    out = Path(argv[argv.index("--out") + 1])
    assert out.is_file() and out.stat().st_size > 0


def test_the_plots_table_names_real_functions_and_arguments():
    """Every row ``name(arg, kw=...)`` of the pictures table is a models.plots function that
    takes those arguments."""
    text = HEADS.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)\(([^)]*)\)` \|", text, flags=re.M)
    assert {name for name, _ in rows} == {
        "make_form_figure",
        "make_spectrum_figure",
        "make_token_distance_figure",
        "make_attention_figure",
        "make_coverage_figure",
        "side_by_side",
        "combine_figures",
    }
    for name, args in rows:
        params = inspect.signature(getattr(plots, name)).parameters
        for arg in args.split(","):
            arg = arg.strip().split("=")[0]
            assert arg in params, f"{name} has no argument {arg!r}"


def test_the_coverage_modes_and_pattern_names_are_the_codes():
    from flowgraph.models.heads.metrics import MODES

    text = HEADS.read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(\w+)` \| (?:the union|step)", text, flags=re.M))
    assert table == set(MODES)
    for name in ("dense", "local", "strided", "fixed", "ltr", "rtl", "star"):
        assert callable(getattr(fg, name))


def test_the_loading_page_lists_the_codes_constants():
    text = LOADING.read_text(encoding="utf-8")
    assert f"keeps the last {ATTENTION_CACHE_SIZE} sequences" in " ".join(text.split())
    listed = re.search(r"The supported\s+activations are (.*?)\.\n", text, flags=re.S).group(1)
    assert set(re.findall(r"`([\w-]+)`", listed)) == set(ACTIVATIONS)
    for model_type in MODEL_TYPES:
        assert f"`{model_type}`" in text


def test_heads_page_bad_argument_example_is_what_the_command_says(in_demo_dir, capsys):
    from flowgraph.app.cli import main

    text = " ".join(HEADS.read_text(encoding="utf-8").split())
    message = re.search(r"names the argument, e\.g\. `([^`]+)`", text).group(1)
    code = main(["heads", "runs/sort-metric", "--layer", "2", "--out", "bad.html"])
    assert code == 2 and message in capsys.readouterr().err
