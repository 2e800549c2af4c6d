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
