"""benchmarks/metric_attention.py: a --quick run prints both tables and the goal lines, its
baselines compute metric attention (against the float64 reference), the correctness gate fails
a wrong method, and the CPU memory measure sees torch's allocations. No wall-clock assertions."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from bench_scripts import assert_quick_report, assert_verdict, load_script, run_script, tables

from flowgraph.gpu.metric import metric_attention_reference, packed_size

CPU_METHODS = ["op (CPU path)", "reference", "materialised"]


def half_step(cell: str) -> float:
    """Half the last printed digit: how far the printed number may be from the measured one."""
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return 0.5 * 10.0**-decimals


def test_quick_run_prints_both_tables_and_the_goals(tmp_path: Path) -> None:
    md = tmp_path / "table.md"
    proc = run_script("metric_attention", "--quick", "--device", "cpu", "--markdown", str(md))
    assert_quick_report(proc, md)
    times, memory = tables(proc.stdout)
    assert times[0] == [
        "n",
        *(f"{m} ms" for m in CPU_METHODS),
        "reference ÷ op",
        "materialised ÷ op",
    ]
    assert [row[0] for row in times[1:]] == ["64", "128", "256"]
    for row in times[1:]:
        ms = [float(cell) for cell in row[1:4]]
        assert all(v > 0 for v in ms), row
        low, high = (
            (ms[2] - half_step(row[3])) / (ms[0] + half_step(row[1])),
            (ms[2] + half_step(row[3])) / (ms[0] - half_step(row[1])),
        )  # the ratio of the unrounded times
        assert low - half_step(row[5]) <= float(row[5]) <= high + half_step(row[5]), row
    assert memory[0] == ["n", *(f"{m} peak MiB" for m in CPU_METHODS)]
    assert [row[0] for row in memory[1:]] == ["64", "128", "256", "log-log slope"]
    assert all(float(cell) >= 0 for row in memory[1:-1] for cell in row[1:])
    goal = r"^- peak memory of op \(CPU path\) linear in n .*: ([\d.]+) — (met|NOT met)$"
    goals = re.findall(goal, proc.stdout, re.M)
    assert len(goals) == 1 and goals[0][0] == memory[-1][1]  # printed from the table
    assert_verdict(goals[0][1], goals[0][0], 1.2, at_most=True)
    assert "- at least SDPA's speed: measured on a GPU only" in proc.stdout
    assert "device: cpu" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        (["--warmup", "-1"], "--warmup must be ≥ 0, got -1"),
        (["--sizes", "0", "64"], "--sizes must be ≥ 1"),
        (["--dtype", "float64"], "invalid choice"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str, capsys) -> None:
    script = load_script("metric_attention")  # parse_args in-process: no torch import per case
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("causal", [True, False])
def test_the_baselines_compute_metric_attention(causal: bool) -> None:
    script = load_script("metric_attention")
    gen = torch.Generator().manual_seed(int(causal))
    p = torch.randn(2, 3, 50, 8, generator=gen, dtype=torch.float64)
    m = torch.randn(3, packed_size(8), generator=gen, dtype=torch.float64)  # c ≠ c' entries
    ref = metric_attention_reference(p, m, causal, None)
    torch.testing.assert_close(script.materialised(p, m, causal), ref)
    torch.testing.assert_close(script.sdpa(p, m, causal), ref)


def test_the_correctness_gate_fails_a_wrong_method() -> None:
    script = load_script("metric_attention")
    cfg = script.QUICK
    methods = script.build_methods(cuda=False)
    script.check_outputs(methods, cfg, 40, torch.device("cpu"))
    methods[2].fn = lambda p, m, causal: script.materialised(p, m, not causal)
    with pytest.raises(AssertionError, match="materialised is off the float64 reference at n=40"):
        script.check_outputs(methods, cfg, 40, torch.device("cpu"))


def test_measures() -> None:
    script = load_script("metric_attention")
    peak = script.cpu_peak_bytes(lambda: torch.empty(10_000_000).fill_(1.0).sum())  # 40 MB
    assert 38e6 < peak < 60e6
    assert script.slope({100: 1.0, 200: 2.0, 400: 4.0}) == pytest.approx(1.0)
    assert script.slope({100: 1.0, 400: 16.0}) == pytest.approx(2.0)
    assert script.slope({100: 1.0}) is None
    cfg = script.Config(batch=2, heads=3)
    assert script.materialised_bytes(cfg, 100) == 3 * 2 * 3 * 100 * 100 * 4
    assert math.isclose(script.budget(cfg), cfg.max_materialised_gib * 2**30)


def test_the_gpu_report_states_the_speed_goal_from_its_table() -> None:
    """The GPU branch of the report (no GPU here): made-up medians, the goal line follows them."""
    script = load_script("metric_attention")
    cfg = script.Config(sizes=(1024, 2048), repeats=3)
    methods = script.build_methods(cuda=True)
    assert [m.name for m in methods] == ["op (CUDA kernel)", "SDPA", "materialised"]
    for m, ms in zip(methods, (1.0, 1.5, 4.0), strict=True):
        m.ms = {1024: ms, 2048: 2 * ms}
        m.peak_mib = {1024: ms, 2048: 2 * ms}
    methods[2].ms.pop(2048)  # skipped: too large
    text = script.report(methods, cfg, "a GPU", "cmd", "load", quick=False)
    times, memory = tables(text)
    assert times[2] == ["2048", "2.00", "3.00", "—", "1.50", "—"]
    assert memory[-1] == ["log-log slope", "1.00", "1.00", "1.00"]
    assert "at least SDPA's speed at every n (SDPA ms ÷ op ms ≥ 1): worst 1.50 — met" in text
    methods[1].ms[2048] = 1.0  # SDPA faster than the kernel at n = 2048
    text = script.report(methods, cfg, "a GPU", "cmd", "load", quick=False)
    assert "worst 0.50 — NOT met" in text
