"""benchmarks/attention_flow.py: it runs, prints its table and the goal lines from the table's
numbers, and it fails when the flow and networkx disagree. No wall-clock assertions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import assert_quick_report, assert_rejected, load_script, run_script, tables


def test_quick_run_prints_the_table_and_the_goals(tmp_path: Path) -> None:
    md = tmp_path / "flow.md"
    proc = run_script("attention_flow", "--quick", "--markdown", str(md))
    assert_quick_report(proc, md)
    (rows,) = tables(proc.stdout)
    assert rows[0] == list(load_script("attention_flow").COLUMNS)
    steps = [r[0] for r in rows[1:]]
    assert steps[0] == "rollout, every layer (numpy)"
    assert steps[4] == "baseline: networkx maximum_flow_value per pair"
    assert rows[5][3].endswith("(extrapolated)")  # the baseline is measured on a subset
    for row in rows[1:]:
        assert float(row[2]) > 0, row
    found = re.findall(r"^- (.*): ([\d.e+-]+)×? .*— (met|NOT met)$", proc.stdout, re.M)
    assert [g[0] for g in found] == [
        "≥ 100× networkx at 6 layers, T = 12",
        "6 layers at T = 24 < 60 s",
    ]
    ours = float(rows[2][3])
    baseline = float(rows[5][3].split()[0])
    speedup = float(found[0][1])
    assert speedup == pytest.approx(baseline / ours, rel=0.01)  # printed from the table
    assert found[0][2] == ("met" if speedup >= 100 else "NOT met")
    assert "max relative |Δ| vs networkx = " in proc.stdout
    assert "max relative |Δ| vs per-pair Dinic (big) = " in proc.stdout
    assert "share of big pairs settled by the certificate = " in proc.stdout
    assert "per-pair Dinic alone" in steps[5] and rows[6][3].endswith("(extrapolated)")
    assert steps[6].startswith("6 layers at T = 24, last layer") and rows[7][1] == f"{24 * 24:,}"
    big = float(rows[7][3])  # measured on every pair, not extrapolated
    assert float(re.search(r"6 layers at T = 24 < 60 s: ([\d.e+-]+) s", proc.stdout)[1]) == big
    causal = steps[7:]  # restricted to k..q, then the whole graph, per causal T
    assert causal == [
        f"6 layers at T = {T}, causal, last layer: per-pair Dinic on {what}"
        for T in (12, 24)
        for what in ("positions k..q", "the whole graph")
    ]
    for row in rows[8:]:
        assert row[1] == "6" and row[3].endswith("(extrapolated)"), row
    for T in (12, 24):
        assert f"max relative |Δ| restricted vs whole graph (causal, T = {T}) = " in proc.stdout
    assert "max relative |Δ| restricted vs networkx (causal, T = 12) = " in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        (["--tokens", "1"], "--tokens must be ≥ 2, got 1"),
        (["--big-targets", "-1"], "--big-targets must be ≥ 0, got -1"),
        (["--threads", "x"], "invalid int value"),
        (["--causal-pairs", "0"], "--causal-pairs must be ≥ 1, got 0"),
        (["--causal-tokens", "128", "1"], "--causal-tokens must be ≥ 2, got 1"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str) -> None:
    assert_rejected("attention_flow", args, message)


def test_the_script_fails_when_the_flows_disagree(monkeypatch) -> None:
    script = load_script("attention_flow")
    real = script.flow_networkx
    monkeypatch.setattr(
        script,
        "flow_networkx",
        lambda mixed, pairs: {p: v * 1.01 for p, v in real(mixed, pairs).items()},
    )
    with pytest.raises(AssertionError, match="attention_flow and networkx disagree"):
        script.measure(script.QUICK)


def test_the_script_fails_when_the_certificate_and_the_search_disagree(monkeypatch) -> None:
    script = load_script("attention_flow")
    real = script.solve_pairs
    monkeypatch.setattr(script, "solve_pairs", lambda mixed, tasks: real(mixed, tasks) * 1.01)
    with pytest.raises(AssertionError, match="the certificate and the per-pair Dinic disagree"):
        script.measure(script.QUICK)


def test_synthetic_attention_rows_are_distributions() -> None:
    attn = load_script("attention_flow").synthetic_attention(2, 3, 5, 2.0, 0)
    np.testing.assert_allclose(attn.sum(-1), 1.0)


def test_the_script_fails_when_the_causal_searches_disagree(monkeypatch) -> None:
    script = load_script("attention_flow")
    real = script.solve_pairs

    def skewed(mixed, tasks, restrict=None):
        return real(mixed, tasks, restrict=restrict) * (1.01 if restrict else 1.0)

    monkeypatch.setattr(script, "solve_pairs", skewed)
    with pytest.raises(AssertionError, match="causal restricted and whole-graph searches disagree"):
        script.measure_causal(script.QUICK, {})


def test_causal_attention_is_lower_triangular_distributions() -> None:
    attn = load_script("attention_flow").causal_attention(2, 5, 2.0, 0)
    np.testing.assert_allclose(attn.sum(-1), 1.0)
    assert (attn[..., np.triu(np.ones((5, 5), dtype=bool), 1)] == 0).all()
