"""The `flowgraph check` command: exit codes (0 full information, 1 missing, 2 bad arguments),
human output naming the witness, JSON equal to the API's report, and masks from .npz files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flowgraph as fg
from flowgraph.app.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("argv", "expected_code"),
    [
        (["check", "strided", "--n", "64"], 0),
        (["check", "fixed", "--n", "64"], 1),
        (["check", "fixed", "--n", "64", "--bidirectional"], 0),
        (["check", "ltr", "--n", "64"], 0),
        (["check", "ltr", "--n", "10", "--stride", "4"], 1),
        (["check", "rtl", "--n", "12", "--stride", "4"], 0),
        (["check", "star", "--n", "20", "--hub", "3"], 0),
        (["check", "local", "--n", "16", "--window", "4"], 1),
        (["check", "dense", "--n", "16", "--bidirectional"], 0),
        (["check", "fixed", "--n", "64", "--layers", "3", "--mode", "interleave"], 1),
        (["check", "strided", "--n", "64", "--layers", "3", "--mode", "merged"], 0),
    ],
)
def test_exit_code_says_full_information(capsys, argv, expected_code):
    code, out, _ = run(capsys, *argv)
    assert code == expected_code
    assert ("NOT full information" in out) == (expected_code == 1)


def test_human_output_names_the_witness(capsys):
    code, out, _ = run(capsys, "check", "ltr", "--n", "10", "--stride", "4")
    assert code == 1
    assert "witness: key 8 never reaches query 0" in out


@pytest.mark.parametrize("flow", [False, True])
def test_json_equals_the_api_report(capsys, flow):
    argv = ["check", "fixed", "--n", "48", "--stride", "6", "--summary", "2", "--json"]
    code, out, _ = run(capsys, *argv, *(["--flow"] if flow else []))
    got = json.loads(out)
    expected = fg.check(fg.fixed(48, stride=6, summary=2), flow=flow).to_dict()
    assert code == (0 if expected["full_information"] else 1)
    assert got.pop("params") == {"stride": 6, "summary": 2}
    assert got == json.loads(json.dumps(expected))
    assert (got["flow"] is not None) == flow


@pytest.mark.parametrize("quiet", [False, True])
def test_a_long_check_shows_a_progress_bar_on_stderr_only(capsys, monkeypatch, quiet):
    """The bar (tqdm, past PROGRESS_DELAY_S: here 0) goes to stderr; --json stays parseable."""
    monkeypatch.setattr(sys.modules["flowgraph.check"], "PROGRESS_DELAY_S", 0.0)
    argv = ["check", "ltr", "--n", "40000", "--json", *(["--quiet"] if quiet else [])]
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert json.loads(out)["full_information"] is True
    assert ("check: 100%" in err) != quiet
    assert ("80.0k/80.0k" in err) != quiet  # n rows for each of the two steps


def test_stack_options_reach_the_report(capsys):
    code, out, _ = run(
        capsys,
        "check",
        "strided",
        "--n",
        "36",
        "--layers",
        "4",
        "--mode",
        "heads",
        "--heads",
        "1",
        "--json",
    )
    got = json.loads(out)
    expected = fg.check(fg.stack(fg.strided(36), 4, "heads", heads=1))
    assert got["num_steps"] == 4 and got["params"]["mode"] == "heads"
    assert got["missing_pairs"] == expected.missing_pairs
    assert code == (0 if expected.full_information else 1)


def _masks(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((2, n, n)) < 0.3


def test_masks_file_with_a_masks_array(tmp_path, capsys):
    masks = _masks(12, 0)
    path = tmp_path / "mine.npz"
    np.savez(path, masks=masks)
    for flag, causal in (("--causal", True), ("--bidirectional", False)):
        code, out, _ = run(capsys, "check", "--masks", str(path), flag, "--json")
        got = json.loads(out)
        expected = fg.check(fg.from_masks(masks, causal=causal))
        assert got["name"] == "mine"
        assert got["missing_pairs"] == expected.missing_pairs
        assert got["causality_violations"] == expected.causality_violations
        assert code == (0 if expected.full_information else 1)


def test_masks_file_steps_in_natural_order(tmp_path, capsys):
    steps = [np.eye(5, dtype=bool)] * 10 + [np.ones((5, 5), dtype=bool)]  # arr_10 comes last
    path = tmp_path / "eleven.npz"
    np.savez(path, *steps)
    code, out, _ = run(capsys, "check", "--masks", str(path), "--bidirectional", "--json")
    got = json.loads(out)
    assert got["num_steps"] == 11
    assert got["edges"] == [5] * 10 + [25]
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "strided", "--n", "0"], "n must be ≥ 1, got n=0"),
        (["check", "strided", "--n", "16", "--stride", "17"], "stride=17"),
        (["check", "strided", "--n", "16", "--stride", "0"], "stride=0"),
        (["check", "fixed", "--n", "16", "--stride", "4", "--summary", "5"], "summary=5"),
        (["check", "strided"], "--n is required"),
        (["check", "local", "--n", "8"], "--window is required"),
        (["check", "strided", "--n", "8", "--window", "2"], "--window does not apply"),
        (["check", "ltr", "--n", "8", "--causal"], "bidirectional by definition"),
        (["check", "star", "--n", "8", "--hub", "8"], "hub=8"),
        (["check", "strided", "--n", "8", "--mode", "merged"], "need --layers"),
        (["check", "strided", "--n", "8", "--layers", "0"], "layers must be ≥ 1"),
        (["check"], "either a PATTERN name or --masks"),
        (["check", "--masks", "missing.npz", "--causal"], "no such file"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err


def test_masks_need_a_direction_and_no_n(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, masks=np.eye(4, dtype=bool))
    code, _, err = run(capsys, "check", "--masks", str(path))
    assert code == 2 and "--causal or --bidirectional" in err
    code, _, err = run(capsys, "check", "--masks", str(path), "--causal", "--n", "4")
    assert code == 2 and "--n does not apply" in err
    code, _, err = run(capsys, "check", "strided", "--masks", str(path), "--causal")
    assert code == 2 and "one of them" in err


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"masks": np.ones((3, 4), dtype=bool)}, "square"),
        ({"masks": np.ones((4, 4), dtype=np.int8)}, "boolean"),
        ({"a": np.ones((4, 4), dtype=bool), "b": np.ones((5, 5), dtype=bool)}, "share n"),
    ],
)
def test_bad_mask_files_exit_2(tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    code, _, err = run(capsys, "check", "--masks", str(path), "--causal")
    assert code == 2
    assert message in err


def test_not_an_npz_file_exits_2(tmp_path, capsys):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    code, _, err = run(capsys, "check", "--masks", str(path), "--causal")
    assert code == 2 and "cannot read" in err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["check", "hexagonal", "--n", "8"])
    assert exc.value.code == 2


def test_console_script_runs(tmp_path: Path):
    """The installed entry point (python -m app.cli is the same code) gives the exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "flowgraph.app.cli", "check", "fixed", "--n", "16", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["witness"] == [0, 0]


# --- the pattern library ---------------------------------------------------------------------
LIBRARY_ARGV = [
    (["sliding_window", "--n", "40", "--window", "5"], fg.sliding_window(40, 5)),
    (
        ["dilated_window", "--n", "40", "--window", "3", "--dilation", "4", "--bidirectional"],
        fg.dilated_window(40, 3, 4, causal=False),
    ),
    (["sinks_window", "--n", "40", "--window", "5", "--sinks", "2"], fg.sinks_window(40, 5, 2)),
    (["longformer", "--n", "40", "--window", "3", "--global-tokens", "2"], fg.longformer(40, 3, 2)),
    (
        ["bigbird", "--n", "40", "--block", "4", "--random-blocks", "1", "--seed", "3", "--causal"],
        fg.bigbird(40, 4, random_blocks=1, seed=3, causal=True),
    ),
    (["document", "--lengths", "10,20,10"], fg.document([10, 20, 10])),
    (
        ["document", "--lengths", "10,30", "--n", "40", "--window", "4", "--bidirectional"],
        fg.document([10, 30], causal=False, window=4),
    ),
    (["prefix_lm", "--n", "40", "--prefix", "9"], fg.prefix_lm(40, 9)),
    (["fixed_heads", "--n", "64", "--pattern-heads", "2"], fg.fixed_heads(64, heads=2)),
    (["block_causal", "--n", "40", "--block", "8"], fg.block_causal(40, 8)),
    (["moba", "--n", "40", "--block", "8", "--top-k", "2", "--seed", "1"], fg.moba(40, 8, 2, 1)),
    (
        "nsa --n 64 --cmp-block 8 --cmp-stride 4 --sel-block 16 --sel-blocks 2 --window 8 "
        "--seed 0".split(),
        fg.nsa(64, 8, 4, 16, 2, 8, seed=0),
    ),
]


@pytest.mark.parametrize(("argv", "pattern"), LIBRARY_ARGV, ids=[a[0] for a, _ in LIBRARY_ARGV])
def test_library_patterns_are_checked_as_the_api_checks_them(capsys, argv, pattern):
    code, out, _ = run(capsys, "check", *argv, "--json")
    got = json.loads(out)
    expected = fg.check(pattern).to_dict()
    assert got.pop("params") == json.loads(json.dumps(pattern.params))
    assert got == json.loads(json.dumps(expected))
    assert code == (0 if expected["full_information"] else 1)


def test_library_defaults_come_from_the_registry(capsys):
    code, out, _ = run(capsys, "check", "bigbird", "--n", "4096", "--json")
    assert json.loads(out)["params"] == fg.LIBRARY["bigbird"].build(4096).params
    assert json.loads(out)["params"]["block"] == 64 and code == 1
    _, out, _ = run(capsys, "check", "nsa", "--n", "100", "--json")
    params = json.loads(out)["params"]
    assert (params["window"], params["sel_blocks"]) == (100, 2)  # defaults lowered to what n allows


def test_help_lists_every_named_pattern(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    for name in fg.LIBRARY:
        assert f"\n  {name} " in out
    assert "--top-k=3" in out and "--lengths A,B,..." in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sinks_window", "--n", "8", "--stride", "2"], "--stride does not apply to the sinks_"),
        (["sliding_window", "--n", "8", "--sinks", "2"], "--sinks does not apply"),
        (["moba", "--n", "8", "--bidirectional"], "moba is causal by definition; drop --bidi"),
        (["prefix_lm", "--n", "8", "--causal"], "prefix_lm is bidirectional by definition"),
        (["document"], "--lengths is required with the document pattern"),
        (["document", "--lengths", "3,4", "--n", "8"], "n=8 but the lengths of document sum to 7"),
        (["document", "--lengths", "3,0"], "lengths[1] must be ≥ 1"),
        (["sliding_window", "--window", "3"], "--n is required"),
        (["sinks_window", "--n", "8", "--sinks", "9"], "sinks must be in 0..8"),
        (["bigbird", "--n", "64", "--block", "8", "--window-blocks", "4"], "must be odd"),
        (["moba", "--n", "64", "--block", "8", "--top-k", "9"], "top_k must be in 1..8"),
        (["nsa", "--n", "64", "--cmp-block", "8", "--cmp-stride", "9"], "cmp_stride must be in"),
        (["fixed", "--n", "64", "--pattern-heads", "2"], "--pattern-heads does not apply to the"),
    ],
)
def test_bad_library_arguments_exit_2_with_a_message(capsys, argv, message):
    code, out, err = run(capsys, "check", *argv)
    assert code == 2 and out == ""
    assert message in err


def test_library_options_do_not_apply_to_masks(tmp_path, capsys):
    path = tmp_path / "m.npz"
    np.savez(path, masks=np.eye(4, dtype=bool))
    code, _, err = run(capsys, "check", "--masks", str(path), "--causal", "--sinks", "2")
    assert code == 2 and "--sinks does not apply to --masks" in err


def test_malformed_lengths_are_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "document", "--lengths", "3,x"])
    assert exc.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_train_still_offers_the_patterns_models_build():
    from flowgraph.app.cli import TRAIN_PATTERNS
    from flowgraph.models.gpt import PATTERNS as GPT_PATTERNS

    assert TRAIN_PATTERNS == GPT_PATTERNS
