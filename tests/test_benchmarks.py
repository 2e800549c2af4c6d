"""benchmarks/check_scaling.py: it runs, prints one row per pattern and n, and its baseline agrees
with ``check``. No wall-clock assertions: machines are noisy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_scripts import load_script, run_script

import flowgraph as fg

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "check_scaling.py"
PATTERNS = ("strided", "fixed", "ltr", "rtl")
COLUMNS = [
    "pattern",
    "n",
    "build s",
    "check s",
    "check peak MiB",
    "missing pairs",
    "networkx s",
    "speed-up ×",
]


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


def test_script_prints_a_row_per_pattern_and_n(tmp_path: Path) -> None:
    md = tmp_path / "table.md"
    ns = (32, 64, 128)
    proc = run_script("check_scaling",
        "--ns", ",".join(map(str, ns)), "--repeats", "1", "--baseline-max-n", "64",
        "--markdown", str(md),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [(r["pattern"], int(r["n"])) for r in rows] == [(p, n) for p in PATTERNS for n in ns]
    for r in rows:
        for col in ("build s", "check s", "check peak MiB"):
            assert float(r[col]) >= 0, r
        expected = fg.check(getattr(fg, r["pattern"])(int(r["n"]))).missing_pairs
        assert int(r["missing pairs"].replace(",", "")) == expected, r
        if int(r["n"]) <= 64:  # the baseline ran, and the script asserted it agrees with check
            assert float(r["networkx s"]) > 0, r
            assert float(r["speed-up ×"]) > 0, r
        else:
            assert (r["networkx s"], r["speed-up ×"]) == ("—", "—"), r
    assert proc.stdout.startswith("Machine: ")
    assert "Command: `" in proc.stdout and "--baseline-max-n 64" in proc.stdout
    assert "ru_maxrss" in proc.stdout
    assert md.read_text(encoding="utf-8") == proc.stdout


def test_script_patterns_flag_and_budget() -> None:
    # A zero budget stops the baseline after its first size: only n=16 gets a speed-up.
    proc = run_script("check_scaling",
        "--ns", "16,32", "--patterns", "ltr", "--repeats", "2", "--baseline-budget", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [(r["pattern"], r["n"]) for r in rows] == [("ltr", "16"), ("ltr", "32")]
    assert float(rows[0]["speed-up ×"]) > 0
    assert rows[1]["speed-up ×"] == "—"


@pytest.mark.parametrize("args", [["--ns", "0"], ["--ns", "x"], ["--patterns", "dense"]])
def test_script_rejects_bad_flags(args: list[str]) -> None:
    proc = run_script("check_scaling", *args)
    assert proc.returncode == 2
    assert "expected" in proc.stderr


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


def test_script_fails_when_the_baseline_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script("check_scaling")
    monkeypatch.setattr(script, "networkx_missing", lambda p: (fg.check(p).missing_pairs + 1, 0.0))
    with pytest.raises(AssertionError, match="networkx baseline finds 1 missing pairs"):
        script.measure("ltr", 16, repeats=1, run_baseline=True)
    assert script.measure("ltr", 16, repeats=1, run_baseline=False).networkx_s is None
