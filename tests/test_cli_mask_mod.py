"""`flowgraph check --mask-mod FILE.py:NAME`: the user's mask_mod read, checked and reported like
any pattern (exit 1 for a leak-free but incomplete mask, JSON equal to the API), and clear usage
errors (exit 2) for every way the argument can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowgraph as fg
from flowgraph.app.cli import main

MASKS = '''
import torch
from helpers import WINDOW   # a neighbour module: the file's folder is on sys.path

def cmp_mask(b, h, q_idx, kv_idx):
    return q_idx <= (kv_idx + 1) * 64 - 1

def cmp_fixed(b, h, q_idx, kv_idx):
    return q_idx >= (kv_idx + 1) * 64 - 1

def sliding_window(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)

def per_head(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 2 * (h + 1))

def returns_int(b, h, q_idx, kv_idx):
    return q_idx - kv_idx

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def masks(tmp_path: Path) -> Path:
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "helpers.py").write_text("WINDOW = 128\n")
    path = folder / "masks.py"
    path.write_text(MASKS)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_nsa_leak_is_reported_with_its_witness(capsys, masks):
    code, out, _ = run(capsys, "check", "--mask-mod", f"{masks}:cmp_mask", "--n", "4096",
                       "--kv-len", "64", "--key-span", "64", "--quiet")  # fmt: skip
    assert code == 1
    assert "query 0 attends key 0, whose span holds token 1" in out
    code, out, _ = run(capsys, "check", "--mask-mod", f"{masks}:cmp_fixed", "--n", "4096",
                       "--kv-len", "64", "--key-span", "64", "--quiet")  # fmt: skip
    assert "causality violations (k > q): 0" in out


def test_json_equals_the_api_report(capsys, masks):
    code, out, _ = run(capsys, "check", "--mask-mod", f"{masks}:sliding_window", "--n", "4096",
                       "--causal", "--json", "--quiet")  # fmt: skip
    data = json.loads(out)

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 128)

    report = fg.check(fg.from_mask_mod(sliding_window, 4096))
    assert code == 1
    assert {k: v for k, v in data.items() if k != "params"} == json.loads(
        json.dumps(report.to_dict())
    )


def test_heads_are_checked_as_one_layer_and_layers_stack(capsys, masks):
    code, out, _ = run(capsys, "check", "--mask-mod", f"{masks}:per_head", "--n", "64",
                       "--heads", "3", "--layers", "64", "--quiet")  # fmt: skip
    assert code == 0 and "per_head×64/heads" in out
    code, out, _ = run(capsys, "check", "--mask-mod", f"{masks}:sliding_window", "--n", "200",
                       "--layers", "2", "--quiet")  # fmt: skip
    assert code == 0 and "sliding_window×2/interleave" in out


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("{masks}", [], "--mask-mod must be FILE.py:NAME"),
        ("{masks}.nope:cmp_mask", [], "--mask-mod: no such file"),
        ("{masks}:nothing", [], "defines no 'nothing'; its functions: cmp_fixed, cmp_mask"),
        ("{masks}:NOT_A_FUNCTION", [], "is not a function"),
        ("{masks}:returns_int", [], "returns_int must return a bool tensor"),
        ("{masks}:per_head", [], "depends on h"),
        ("{masks}:cmp_mask", ["--kv-len", "64"], "kv_len=64 differs from n=4096"),
        ("{masks}:cmp_mask", ["--kv-len", "64", "--key-span", "a,b"], "--key-span must be"),
    ],
)
def test_bad_arguments_are_usage_errors(capsys, masks, spec, extra, message):
    code, _, err = run(capsys, "check", "--mask-mod", spec.format(masks=masks), "--n", "4096",
                       *extra)  # fmt: skip
    assert code == 2 and message in err


def test_mask_mod_needs_n_and_excludes_other_sources(capsys, masks):
    code, _, err = run(capsys, "check", "--mask-mod", f"{masks}:cmp_mask")
    assert code == 2 and "--mask-mod needs --n" in err
    code, _, err = run(capsys, "check", "strided", "--mask-mod", f"{masks}:cmp_mask", "--n", "64")
    assert code == 2 and "one of them" in err


def test_a_module_that_fails_to_import_is_named(capsys, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no GPU here')\n")
    code, _, err = run(capsys, "check", "--mask-mod", f"{bad}:m", "--n", "64")
    assert code == 2 and "importing" in err and "RuntimeError: no GPU here" in err
