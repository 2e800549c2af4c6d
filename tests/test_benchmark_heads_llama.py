"""benchmarks/heads_llama.py: it runs, compares our attention with transformers' (or fails),
and prints goal lines that follow from its table. No wall-clock assertions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_scripts import assert_quick_report, assert_rejected, run_script, tables

pytest.importorskip("transformers")


def test_quick_run_prints_the_table_and_the_goals(tmp_path: Path) -> None:
    md = tmp_path / "llama.md"
    proc = run_script("heads_llama", "--quick", "--no-memory", "--markdown", str(md))
    assert_quick_report(proc, md)
    (rows,) = tables(proc.stdout)
    assert rows[0] == ["step", "ours s", "transformers s"]
    assert [r[0] for r in rows[1:]][:3] == [
        "load",
        "load + first attention",
        "attention, every head, T = 32",
    ]
    assert "max |Δ| attention vs transformers = " in proc.stdout
    load = re.search(r"^- load ≤ transformers: ([\d.]+) s vs ([\d.]+) s — (met|NOT met)$",
                     proc.stdout, re.M)  # fmt: skip
    assert load is not None and (load[1], load[2]) == (rows[1][1], rows[1][2])
    assert "- one head's metrics < 0.5 s: " in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "--repeats must be ≥ 1, got 0"),
        (["--tokens", "1"], "--tokens must be ≥ 2"),
    ],
)
def test_bad_flags_are_rejected(args: list[str], message: str) -> None:
    assert_rejected("heads_llama", args, message)
