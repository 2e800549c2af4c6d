"""benchmarks/check_scaling.py: it runs, prints one row per pattern and n and the goal lines, its
oracles (the bitsets engine, the networkx baseline) agree with ``check`` and fail the script when
they do not, and its child processes measure memory. No wall-clock assertions: machines are
noisy."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
from bench_scripts import assert_verdict, load_script, run_script

import flowgraph as fg

PATTERNS = ("strided", "fixed", "ltr", "rtl", "local")
COLUMNS = [
    "pattern",
    "n",
    "build s",
    "check s",
    "check peak MiB",
    "missing pairs",
    "bitsets s",
    "bitsets peak MiB",
    "speed-up vs bitsets ×",
    "networkx s",
    "speed-up vs networkx ×",
]
GOAL = re.compile(
    r"^- n = ([\d,]+): (.+?): "
    r"(?:worst ([\d.]+)(?:×| s| MiB) \((\w+)\)|(not measured .*)) — (met|NOT met)$",
    re.M,
)


def make(name: str, n: int) -> fg.Pattern:
    return fg.local(n, window=math.isqrt(n)) if name == "local" else getattr(fg, name)(n)


def table_rows(text: str) -> list[dict[str, str]]:
    """The markdown table's body rows as dicts keyed by column name."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}  # the separator row
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def goal_lines(text: str) -> list[tuple[str, ...]]:
    """(n, goal, worst value, worst pattern, not-measured note, verdict) per goal line."""
    assert len(GOAL.findall(text)) == text.count("\n- n = "), text  # every goal line parses
    return GOAL.findall(text)


def test_script_prints_a_row_per_pattern_and_n(tmp_path: Path) -> None:
    md = tmp_path / "table.md"
    ns = (32, 64, 128)
    proc = run_script("check_scaling",
        "--ns", ",".join(map(str, ns)), "--repeats", "1", "--baseline-max-n", "64",
        "--bitsets-max-n", "64", "--no-memory", "--markdown", str(md),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [(r["pattern"], int(r["n"])) for r in rows] == [(p, n) for p in PATTERNS for n in ns]
    for r in rows:
        n = int(r["n"])
        for col in ("build s", "check s"):
            assert float(r[col]) >= 0, r
        assert (r["check peak MiB"], r["bitsets peak MiB"]) == ("—", "—"), r  # --no-memory
        expected = fg.check(make(r["pattern"], n), engine="bitsets").missing_pairs
        assert int(r["missing pairs"].replace(",", "")) == expected, r
        for other in ("bitsets", "networkx"):  # both run up to n = 64 (and were asserted equal)
            cells = (r[f"{other} s"], r[f"speed-up vs {other} ×"])
            if n <= 64:
                assert float(cells[0]) > 0 and float(cells[1]) > 0, r
            else:
                assert cells == ("—", "—"), r
    assert proc.stdout.startswith("Machine: ")
    assert "numba " in proc.stdout.splitlines()[0]
    assert "Command: `" in proc.stdout and "--bitsets-max-n 64" in proc.stdout
    assert "ru_maxrss" in proc.stdout and "1-minute load average at start / end: " in proc.stdout
    assert "Goals" not in proc.stdout  # no goal n was run
    assert md.read_text(encoding="utf-8") == proc.stdout


def test_script_patterns_flag_and_budget() -> None:
    # A zero budget stops the baseline after its first size: only n=16 gets a speed-up.
    proc = run_script("check_scaling",
        "--ns", "16,32", "--patterns", "ltr,local", "--repeats", "2", "--baseline-budget", "0",
        "--no-memory",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [(r["pattern"], r["n"]) for r in rows] == [
        ("ltr", "16"), ("ltr", "32"), ("local", "16"), ("local", "32"),
    ]  # fmt: skip
    for first, second in (rows[:2], rows[2:]):
        assert float(first["speed-up vs networkx ×"]) > 0
        assert second["speed-up vs networkx ×"] == "—"
        assert float(second["speed-up vs bitsets ×"]) > 0  # the default --bitsets-max-n


def test_script_measures_memory_in_child_processes() -> None:
    script = load_script("check_scaling")
    if not script.memory_supported():
        pytest.skip("no /proc/self/clear_refs: peak memory is Linux only")
    proc = run_script("check_scaling", "--ns", "64", "--patterns", "fixed", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    (row,) = table_rows(proc.stdout)
    assert float(row["check peak MiB"]) >= 0 and float(row["bitsets peak MiB"]) >= 0, row
    assert "memory: fixed n=64 engine=auto (child process)" in proc.stderr
    assert "memory: fixed n=64 engine=bitsets (child process)" in proc.stderr


def test_child_peak_sees_what_numba_and_numpy_allocate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that cannot fail is worse than none: a check that holds 64 MiB must show it."""
    script = load_script("check_scaling")
    if not script.memory_supported():
        pytest.skip("no /proc/self/clear_refs: peak memory is Linux only")
    real = script.run_check

    def greedy(p: fg.Pattern, engine: str) -> fg.Report:
        held = np.ones(64 * script.MIB, np.uint8)  # touched: resident
        report = real(p, engine)
        del held
        return report

    before = script.child_peak("ltr", 64, "auto")
    monkeypatch.setattr(script, "run_check", greedy)
    assert script.child_peak("ltr", 64, "auto") >= before + 60 * script.MIB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ns", "0"], "expected positive integers"),
        (["--ns", "x"], "expected comma-separated integers"),
        (["--patterns", "dense"], "expected a comma-separated subset"),
        (["--repeats", "0"], "--repeats must be ≥ 1"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str) -> None:
    proc = run_script("check_scaling", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


# --- goal lines ------------------------------------------------------------------------------
def fake_row(name: str, n: int, check_s: float, peak_mib: float | None, bitsets_s: float | None):
    script = load_script("check_scaling")
    peak = None if peak_mib is None else int(peak_mib * script.MIB)
    return script.Row(name, n, 0.1, check_s, peak, 0, bitsets_s, None, None)


def test_goal_lines_follow_the_unrounded_numbers() -> None:
    script = load_script("check_scaling")
    rows = [
        fake_row("strided", 65536, 1.0, 100.0, 12.0),
        fake_row("fixed", 65536, 1.0, 256.04, 4.96),  # prints 256.0 MiB and 5.0×: both NOT met
        fake_row("strided", 262144, 9.9999, 1000.0, None),  # prints 10.0 s: met
        fake_row("strided", 1048576, 61.0, None, None),  # memory not measured
    ]
    goals = goal_lines(script.report(rows, "cmd", 1, "load"))
    assert [(g[0], g[1]) for g in goals] == [
        ("65,536", "check ≥ 5× faster than bitsets, every pattern"),
        ("65,536", "check peak ≤ 256 MiB, every pattern"),
        ("262,144", "check < 10 s, every pattern"),
        ("262,144", "check peak ≤ 1024 MiB, every pattern"),
        ("1,048,576", "check < 60 s, every pattern"),
        ("1,048,576", "check peak ≤ 4096 MiB, every pattern"),
    ]
    assert [(g[2], g[3], g[5]) for g in goals] == [
        ("5.0", "fixed", "NOT met"),
        ("256.0", "fixed", "NOT met"),
        ("10.0", "strided", "met"),
        ("1000.0", "strided", "met"),
        ("61.0", "strided", "NOT met"),
        ("", "", "NOT met"),
    ]
    assert goals[-1][4].startswith("not measured")


def test_goal_lines_need_the_bitsets_timing_at_65536() -> None:
    script = load_script("check_scaling")
    rows = [fake_row("ltr", 65536, 1.0, 10.0, None)]
    (speed, memory) = goal_lines(script.report(rows, "cmd", 1, "load"))
    assert speed[4].startswith("not measured") and speed[5] == "NOT met"
    assert memory[5] == "met"


def test_script_prints_the_goal_lines_from_its_table() -> None:
    """A real run at a goal n (the bitsets engine skipped: it needs 1 GiB there)."""
    proc = run_script("check_scaling",
        "--ns", "65536", "--patterns", "ltr", "--repeats", "1", "--bitsets-max-n", "0",
        "--baseline-max-n", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = table_rows(proc.stdout)
    assert "Goals (issue 15):" in proc.stdout
    speed, memory = goal_lines(proc.stdout)
    assert speed[1].startswith("check ≥ 5× faster") and speed[5] == "NOT met"  # not measured
    if row["check peak MiB"] == "—":  # no /proc here
        assert memory[4].startswith("not measured")
    else:
        assert (memory[2], memory[3]) == (row["check peak MiB"], "ltr")
        assert_verdict(memory[5], memory[2], 256, at_most=True)


# --- the oracles -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pattern",
    [
        fg.strided(48),
        fg.strided(30, stride=4, causal=False),
        fg.fixed(40, stride=6, summary=2),
        fg.ltr(10, stride=4),  # the stride does not divide n: information is lost
        fg.rtl(10, stride=4),
        fg.ltr(36),
        fg.local(20, window=3, causal=False),
        fg.from_masks(np.triu(np.ones((12, 12), bool)), causal=True),  # k > q: violations
        fg.stack(fg.fixed(16, stride=4), layers=3, mode="interleave"),
    ],
    ids=lambda p: repr(p)[:40],
)
def test_networkx_baseline_agrees_with_check(pattern: fg.Pattern) -> None:
    """The script's baseline is an oracle: it must count the same missing pairs as check."""
    missing, graph_s = load_script("check_scaling").networkx_missing(pattern)
    assert missing == fg.check(pattern).missing_pairs
    assert graph_s >= 0


def test_networkx_baseline_detects_missing_pairs() -> None:
    # A test that cannot fail is worse than none: the oracle must see a loss when there is one.
    missing, _ = load_script("check_scaling").networkx_missing(fg.ltr(10, stride=4))
    assert missing > 0


def measure(name: str, n: int, **flags: bool):
    options = {"run_bitsets": False, "run_baseline": False, "memory": False, **flags}
    return load_script("check_scaling").measure(name, n, 1, **options)


def test_script_fails_when_the_baseline_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script("check_scaling")
    monkeypatch.setattr(script, "networkx_missing", lambda p: (fg.check(p).missing_pairs + 1, 0.0))
    with pytest.raises(AssertionError, match="networkx baseline finds 1 missing pairs"):
        measure("ltr", 16, run_baseline=True)
    assert measure("ltr", 16).networkx_s is None


def test_script_fails_when_the_bitsets_engine_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script("check_scaling")
    real = script.run_check
    assert measure("fixed", 36, run_bitsets=True).bitsets_s is not None  # they agree

    def off_by_one(p: fg.Pattern, engine: str) -> fg.Report:
        report = real(p, engine)
        if engine == "bitsets":
            return dataclasses.replace(report, missing_pairs=report.missing_pairs + 1)
        return report

    monkeypatch.setattr(script, "run_check", off_by_one)
    with pytest.raises(AssertionError, match=r"bitsets engine's Report differs .* missing_pairs"):
        measure("fixed", 36, run_bitsets=True)
    assert measure("fixed", 36).bitsets_s is None  # not run: nothing to disagree with
    with pytest.raises(AssertionError, match="bitsets engine's Report differs"):
        script.main(["--ns", "16", "--patterns", "rtl", "--repeats", "1", "--no-memory"])
