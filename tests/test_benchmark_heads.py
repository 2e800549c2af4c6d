"""benchmarks/heads.py: it runs, prints its table and the goal lines from the table's numbers,
and its checks fail when the things it compares disagree. No wall-clock assertions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import (
    assert_quick_report,
    assert_rejected,
    assert_verdict,
    load_script,
    run_script,
    tables,
)

pytest.importorskip("transformers")


def test_quick_run_prints_the_table_and_the_goals(tmp_path: Path) -> None:
    md = tmp_path / "heads.md"
    proc = run_script("heads", "--quick", "--repeats", "2", "--markdown", str(md))
    assert_quick_report(proc, md)
    (rows,) = tables(proc.stdout)
    assert rows[0] == ["step", "median ms", "min ms", "goal"]
    assert [r[0] for r in rows[1:]] == list(load_script("heads").ROWS)
    assert len(rows) == 11  # the ten steps, each timed
    for row in rows[1:]:
        assert float(row[1]) >= float(row[2]) > 0, row
    goals = {r[0]: r[3] for r in rows[1:]}
    assert goals["Checkpoint.attention: all heads"] == "< 1 s"
    assert goals["one head's metrics, cold caches"] == "< 0.5 s"
    found = re.findall(r"^- (.*): ([\d.e-]+) s — (met|NOT met)$", proc.stdout, re.M)
    assert [g[0] for g in found] == [
        "attention for all heads < 1 s",
        "every metric for one head < 0.5 s",
    ]
    medians = {r[0]: float(r[1]) / 1e3 for r in rows[1:]}
    names = ["Checkpoint.attention: all heads", "one head's metrics, cold caches"]
    for (_, value, verdict), name, limit in zip(found, names, [1.0, 0.5], strict=True):
        assert float(value) == pytest.approx(medians[name], rel=0.01)  # printed from the table
        cell = next(r[1] for r in rows[1:] if r[0] == name)  # milliseconds, as printed
        assert_verdict(verdict, cell, limit * 1e3, at_most=True)
    assert "attention max |Δ| vs transformers = " in proc.stdout
    assert "torch.get_num_threads() = " in proc.stdout
    assert "2 layers × 2 heads, width 16" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        (["--tokens", "600"], "--tokens must be ≤ 512"),
        (["--threads", "x"], "invalid int value"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str) -> None:
    assert_rejected("heads", args, message)


def test_distance_baseline_is_the_formula() -> None:
    script = load_script("heads")
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 4))
    e = rng.normal(size=(3, 4))
    expected = [[(e[a] - e[b]) @ s @ (e[a] - e[b]) for b in range(3)] for a in range(3)]
    np.testing.assert_allclose(script.pairwise_distances(s, e), expected)


def test_the_script_fails_when_attention_disagrees(tmp_path: Path, monkeypatch) -> None:
    """A loader whose attention differs from transformers' makes the benchmark raise."""
    script = load_script("heads")
    cfg = script.QUICK
    model = script.save_bert(cfg, tmp_path / "bert")
    real = script.load_checkpoint

    def skewed(path):
        ckpt = real(path)
        original = ckpt.attention
        ckpt.attention = lambda ids: original(ids) * 0.5 + 0.5 / len(ids)  # rows still sum to 1
        return ckpt

    monkeypatch.setattr(script, "load_checkpoint", skewed)
    with pytest.raises(AssertionError, match=r"Checkpoint\.attention and transformers disagree"):
        script.measure(cfg, tmp_path / "bert", model)
