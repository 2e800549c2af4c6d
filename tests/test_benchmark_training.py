"""benchmarks/training.py keeps running: a tiny smoke run prints one row per attention kind with
positive throughput, and the sdpa row is the 1.00× reference (no time assertions)."""

from __future__ import annotations

from bench_scripts import run_script


def test_quick_run_prints_a_row_per_attention_kind():
    done = run_script("training", "--quick", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Machine: ")
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]
    assert header == ["size", "attention", "batch", "step ms", "tokens/s", "speed vs sdpa"]
    kinds = {r[1] for r in body}
    assert {"sdpa", "quadratic", "metric"} <= kinds
    assert all(float(r[4].replace(",", "")) > 0 for r in body)
    assert next(r for r in body if r[1] == "sdpa")[5] == "1.00×"


def test_unknown_size_exits_2():
    done = run_script("training", "--sizes", "huge")
    assert done.returncode == 2
    assert "unknown size 'huge'" in done.stderr
