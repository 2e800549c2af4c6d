"""`flowgraph word2vec`: trains on a text file, saves the dashboard's layout, exit status 2 with
a message naming the argument on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowgraph.app.cli import main
from flowgraph.models.word2vec import WordVectors, train_word2vec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--vector-size", "8", "--window", "2", "--negative", "2", "--epochs", "2", "--quiet"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    lines = [" ".join(rng.choice(words, 10)) for _ in range(50)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_trains_and_saves_what_the_api_gives(corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "vectors" / "tiny"
    argv = ["word2vec", str(corpus), "--out", str(out), *ARGS, "--min-count", "1", "--seed", "7"]
    assert main([*argv, "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{out}: 12 words × 8 dimensions"
    assert sorted(p.name for p in out.iterdir()) == ["vectors.safetensors", "vocab.json"]
    saved = WordVectors.load(out)
    direct = train_word2vec(
        corpus, vector_size=8, window=2, negative=2, epochs=2, min_count=1, seed=7, workers=1,
        progress=False,
    )  # fmt: skip
    assert saved.words == direct.words
    np.testing.assert_array_equal(saved.vectors, direct.vectors)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-count", "1000"], "flowgraph word2vec: error: min_count: no word occurs"),
        (["--window", "0"], "flowgraph word2vec: error: window: expected an integer ≥ 1, got 0"),
        (["--sample", "2"], "flowgraph word2vec: error: sample: expected a number in [0, 1)"),
    ],
)
def test_bad_options_exit_2(corpus: Path, tmp_path: Path, capsys, extra, message) -> None:
    assert main(["word2vec", str(corpus), "--out", str(tmp_path / "v"), *ARGS, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_hogwild_flag_trains(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "h"
    argv = ["word2vec", str(corpus), "--out", str(out), *ARGS, "--min-count", "1"]
    assert main([*argv, "--workers", "2", "--hogwild"]) == 0
    assert len(WordVectors.load(out)) == 12


def test_missing_corpus_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["word2vec", str(tmp_path / "none.txt"), "--out", str(tmp_path / "v")]) == 2
    assert "CORPUS.txt: no such file" in capsys.readouterr().err


def test_out_is_required_and_help_lists_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flowgraph.app.cli", "word2vec", "--help"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    for flag in ("--out", "--vector-size", "--window", "--negative", "--min-count", "--sample",
                 "--epochs", "--alpha", "--seed", "--device", "--hogwild"):  # fmt: skip
        assert flag in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "flowgraph.app.cli", "word2vec", "c.txt"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "--out" in missing.stderr
