"""benchmarks/partial_embedding.py: it runs, prints both tables and the goal lines, and its
baselines are the thread's modules doing what the thread says. No wall-clock assertions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from bench_scripts import (
    ROOT,
    assert_quick_report,
    assert_rejected,
    assert_verdict,
    load_script,
    run_script,
    tables,
)

METHODS = [
    "PartiallyFrozenEmbedding (this module)",
    "nn.Embedding, fully trainable",
    "seed: PartiallyFixedEmbedding (copy into buffer)",
    "seed: gradient-hook masking",
]
STEP_COLUMNS = [
    "method",
    "median ms / step",
    "min ms / step",
    "this module ÷ method",
    "parameters, buffers, Adam state MiB",
]


def test_quick_run_prints_both_tables_and_the_goals(tmp_path: Path) -> None:
    md = tmp_path / "table.md"
    proc = run_script("partial_embedding", "--quick", "--steps", "2", "--markdown", str(md))
    assert_quick_report(proc, md)
    steps, remapped = tables(proc.stdout)
    assert steps[0] == STEP_COLUMNS
    assert [row[0] for row in steps[1:]] == METHODS
    for row in steps[1:]:
        assert all(float(cell) >= 0 for cell in row[1:]), row  # 0.00 on a tiny table
    assert steps[1][3] == "1.00"  # this module against itself
    assert remapped[0] == ["remap of 6,000 ids", "seconds", "speed-up ×"]  # 500 × 12 ids
    assert [row[0] for row in remapped[1:]] == [
        "models.embedding.remap (vectorised)",
        "models.embedding.remap, out= a reused buffer",
        "seed: dict + .apply_ (run once)",
    ]
    assert all(float(row[1]) > 0 and float(row[2]) >= 0 for row in remapped[1:]), remapped
    assert remapped[3][2] == "1"
    goals = re.findall(r"^- (.*): ([\d.]+)× (?:faster )?— (met|NOT met)$", proc.stdout, re.M)
    assert [g[0] for g in goals] == [
        "step ≤ 0.6× the seed's PartiallyFixedEmbedding's",
        "step ≤ 0.5× the fully trainable nn.Embedding's",
        "remap ≥ 50× faster than the dict .apply_",
    ]
    ratios = [row[3] for row in steps[1:]]  # the goals are printed from the table
    assert_verdict(goals[0][2], ratios[2], 0.6, at_most=True)
    assert_verdict(goals[1][2], ratios[1], 0.5, at_most=True)
    assert "torch.get_num_threads() = " in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["--warmup", "-1"], "--warmup must be ≥ 0, got -1"),
        (["--remap-repeats", "0"], "--remap-repeats must be ≥ 1, got 0"),
        (["--steps", "x"], "invalid int value"),
    ],
)
def test_script_rejects_bad_flags(args: list[str], message: str) -> None:
    assert_rejected("partial_embedding", args, message)


def test_the_baselines_do_what_the_thread_says() -> None:
    script = load_script("partial_embedding")
    methods, mask_v, order_v = script.build_methods(script.QUICK)
    by_name = {m.name: m for m in methods}
    # the seed's module trains only its last num_to_learn rows of a sorted vocabulary
    seed = by_name[script.SEED].module
    assert seed.num_fixed == int((~mask_v).sum()) and seed.num_to_learn == int(mask_v.sum())
    assert [p.shape for p in seed.parameters()] == [(seed.num_to_learn, script.QUICK.dim)]
    # the hook masks the frozen rows' gradient of a full table
    hook = by_name[script.HOOK].module
    hook(torch.arange(script.QUICK.vocab)).sum().backward()
    assert torch.equal(hook.weight.grad.abs().sum(1) > 0, mask_v)
    # the sorted numbering the seed's module reads is the dict remap's
    ids = methods[0].batches[0]
    assert torch.equal(by_name[script.SEED].batches[0], script.seed_apply_remap(ids, order_v))


def test_the_script_fails_when_the_methods_disagree() -> None:
    script = load_script("partial_embedding")
    methods, mask_v, _ = script.build_methods(script.QUICK)
    modules = [(m.name, m.module, m.batches) for m in methods]
    script.check_same_rows(modules, mask_v)
    with torch.no_grad():
        methods[1].module.weight.add_(1.0)  # the full nn.Embedding now looks up other vectors
    with pytest.raises(AssertionError, match=r"nn\.Embedding, fully trainable does not return"):
        script.check_same_rows(modules, mask_v)


def test_docs_page_holds_a_full_run() -> None:
    """docs/embedding.md shows a full (not --quick) run of the script, with its command."""
    page = (ROOT / "docs" / "embedding.md").read_text(encoding="utf-8")
    section = page.split("## Benchmark", 1)[1]
    steps, remapped = tables(section)
    assert steps[0] == STEP_COLUMNS
    assert [row[0] for row in steps[1:]] == METHODS
    assert remapped[0][0] == "remap of 7,500,000 ids"
    assert "Command: `" in section and "benchmarks/partial_embedding.py" in section
    command = re.search(r"^Command: `(.*)`$", section, re.M)
    assert command is not None and "--quick" not in command.group(1)
    assert "a --quick smoke run" not in section and "V = 75,000, D = 300" in section
    assert "torch.get_num_threads() = " in section and "1-minute load average" in section
