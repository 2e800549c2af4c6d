"""benchmarks/entity_memory.py: its smoke run prints both tables, its seed baselines agree with the
module where the seed is right (and show the seed's off-by-one where it is not), and its agreement
check can fail. No wall-clock assertions: machines are noisy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_scripts import load_script, run_script
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgraph.models.entity_memory import find_mentions

SPEED_COLUMNS = [
    "variant",
    "forward + backward ms",
    "runs",
    "speed-up × vs loop",
    "max rel. diff vs module",
]
MEMORY_COLUMNS = [
    "variant",
    "N",
    "peak extra MiB (VmHWM, child process)",
    "one mentions × N float32 matrix MiB",
    "extra / matrix",
]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in the text, as lists of rows keyed by column name."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip("|").split("|")])
        elif block:
            header, sep, *rows = block
            assert set("".join(sep)) <= {"-", ":"}, sep
            found.append([dict(zip(header, row, strict=True)) for row in rows])
            block = []
    return found


def test_quick_run_prints_both_tables(tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    proc = run_script("entity_memory", "--quick", "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Machine: ") and "torch threads" in proc.stdout
    assert "Command: `" in proc.stdout and "--quick" in proc.stdout
    assert "1-minute load average" in proc.stdout
    speed, memory = tables(proc.stdout)
    assert list(speed[0]) == SPEED_COLUMNS and list(memory[0]) == MEMORY_COLUMNS
    script = load_script("entity_memory")
    assert [r["variant"] for r in speed] == [script.LABELS[v] for v in script.VARIANTS]
    for r in speed:
        assert float(r["forward + backward ms"].replace(",", "")) >= 0
        assert float(r["speed-up × vs loop"]) > 0
    assert float(speed[0]["speed-up × vs loop"]) == 1.0
    for r in speed[:2]:  # the script asserted these; the table must say what it checked
        assert float(r["max rel. diff vs module"]) <= script.RTOL
    assert [(r["variant"], r["N"]) for r in memory] == [
        ("loop (seed v1)", "2,000"),
        ("seed v2 (published)", "2,000"),
        ("EntityMemory", "2,000"),
        ("EntityMemory", "20,000"),
        ("seed v2 (published)", "20,000"),
    ]
    for r in memory:
        if r["peak extra MiB (VmHWM, child process)"] != "unavailable":
            assert float(r["one mentions × N float32 matrix MiB"]) > 0
    assert md.read_text(encoding="utf-8") == proc.stdout


@pytest.mark.parametrize(
    "args", [["--repeats", "0"], ["--loop-repeats", "0"], ["--memory-n", "-1"], ["--mentions", "0"]]
)
def test_script_rejects_bad_flags(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script("entity_memory").parse_args(args)
    assert exc.value.code == 2
    assert f"{args[0]} must be ≥" in capsys.readouterr().err


# --- the data and the seed's versions ------------------------------------------------------------
@pytest.mark.parametrize("quick", [True, False])
def test_data_has_the_promised_mentions_and_a_final_o(quick: bool) -> None:
    script = load_script("entity_memory")
    cfg = script.QUICK if quick else script.Config()
    x_bnc, bio_bn, ids_bn, g_bnc = script.make_data(cfg)
    assert x_bnc.shape == g_bnc.shape == (cfg.batch, cfg.tokens, cfg.d_model)
    spans = find_mentions(bio_bn)
    assert len(spans) == cfg.mentions
    assert (bio_bn[:, -1] == 0).all()  # no span reaches the last token (seed v2's off-by-one)
    lengths = spans[:, 2] - spans[:, 1] + 1
    assert lengths.min() >= 1 and lengths.max() <= 4
    assert int((bio_bn == 2).sum()) == int((lengths - 1).sum())  # every I belongs to a span
    assert 0 <= int(ids_bn.min()) and int(ids_bn.max()) < cfg.n_entities


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=12))
def test_seed_v2_span_ends_are_right_except_at_the_sequence_end(row: list[int]) -> None:
    """The seed's published ``_get_last_mention`` as an oracle where it is right, and its bug."""
    script = load_script("entity_memory")
    seed = script.SeedBatchedMemory.__new__(script.SeedBatchedMemory)
    seed.inner = 2
    bio_bn = torch.tensor([row])
    for b, s, e in find_mentions(bio_bn).tolist():
        pos = torch.tensor([b, s])
        got = int(seed._get_last_mention(bio_bn, pos))
        if e < len(row) - 1:
            assert got == e
        elif s < len(row) - 1:
            assert got == e - 1  # a span running to the last token: the seed stops one short
        else:
            assert got == s - 1  # a B at the last token: the seed's end is before its start


def small_case(script: ModuleType, **overrides: int) -> tuple:
    cfg = dataclasses.replace(script.QUICK, **overrides)
    x_bnc, bio_bn, ids_bn, g_bnc = script.make_data(cfg)
    return cfg, x_bnc.requires_grad_(True), bio_bn, ids_bn, g_bnc


def test_seed_baselines_agree_with_the_module() -> None:
    script = load_script("entity_memory")
    _, x_bnc, bio_bn, ids_bn, g_bnc = small_case(script)
    em = script.make_module(script.QUICK)
    results = {
        v: script.outputs(script.build(v, em), x_bnc, bio_bn, ids_bn, g_bnc)
        for v in script.VARIANTS
    }
    diffs = script.check_agreement(results)
    assert set(diffs) == set(script.VARIANTS) and max(diffs.values()) <= script.RTOL
    assert diffs["module"] == 0.0


def test_agreement_check_catches_the_seed_off_by_one() -> None:
    """A mention that runs to the last token: the fixed loop still agrees, seed v2 does not."""
    script = load_script("entity_memory")
    _, x_bnc, bio_bn, ids_bn, g_bnc = small_case(script)
    bio_bn = bio_bn.clone()
    bio_bn[0, -3:] = torch.tensor([1, 2, 2])
    em = script.make_module(script.QUICK)
    results = {
        v: script.outputs(script.build(v, em), x_bnc, bio_bn, ids_bn, g_bnc)
        for v in script.VARIANTS
    }
    assert script.check_agreement({v: results[v] for v in ("loop", "module")})["loop"] <= 2e-4
    with pytest.raises(AssertionError, match=r"seed_v2 disagrees with the module.* y"):
        script.check_agreement(results)


def test_agreement_check_fails_on_a_wrong_gradient() -> None:
    script = load_script("entity_memory")
    ref = {"y": torch.ones(3), "dE": torch.ones(2, 2)}
    bad = {"y": torch.ones(3), "dE": torch.ones(2, 2) * 1.01}
    with pytest.raises(AssertionError, match=r"loop disagrees .* 1\.00e-02 .* in dE"):
        script.check_agreement({"loop": bad, "module": ref})
