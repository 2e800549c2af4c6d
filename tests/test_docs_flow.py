"""docs/flow.md says what the code does: its Python examples run (against a small run saved
under the name the page uses) and print what the page shows, and its commands run."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import textwrap
from pathlib import Path

import pytest
from test_heads_flow import save_gpt

from flowgraph.models.heads import FitReport

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "flow.md"


def _fenced(lang: str) -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(rf"^( *)```{lang}\n(.*?)^\1```", text, flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks]


@pytest.fixture
def in_demo_dir(tmp_path, monkeypatch) -> Path:
    save_gpt(tmp_path / "runs" / "sort-sdpa", n_layer=3, causal=True, seed=0)
    (tmp_path / "corpus.txt").write_text("2 0 1 2 2 0\n1 1 0 2 0 1 2\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(code: str) -> tuple[dict, str]:
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace, out.getvalue()


def test_api_example_runs(in_demo_dir):
    api, _ = _fenced("python")
    ns, printed = _run(api)
    L, T = ns["ckpt"].num_layers, len(ns["ids"])
    assert ns["roll_lqk"].shape == ns["flow_lqk"].shape == (L + 1, T, T)
    assert isinstance(ns["fit"], FitReport)
    assert printed.strip() == (
        ns["fit"].best.label if ns["fit"].best else "no pattern within the budget"
    )


def test_toy_example_prints_what_the_page_shows():
    _, toy = _fenced("python")
    (expected,) = _fenced("text")
    _, printed = _run(toy)
    assert printed == expected


def test_command_line_example_runs(in_demo_dir, capsys):
    from flowgraph.app.cli import main

    (block,) = _fenced("console")
    lines = block.splitlines()
    commands = [(i, shlex.split(line[2:])) for i, line in enumerate(lines) if line.startswith("$ ")]
    assert [argv[:2] for _, argv in commands] == [["flowgraph", "flow"], ["flowgraph", "fit"]]
    for n, (i, argv) in enumerate(commands):
        assert main(argv[1:]) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        end = commands[n + 1][0] if n + 1 < len(commands) else len(lines)
        shown = lines[i + 1 : end]
        if shown:  # the page shows this command's output
            assert printed.splitlines() == shown
    assert (in_demo_dir / "flow.html").is_file()
