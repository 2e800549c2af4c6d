"""Training: the schedule, determinism for a seed, metrics, resume after a real SIGKILL ending
bit for bit where an uninterrupted run ends, and the demo (shortened; no wall-clock checks)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowgraph.app.cli import main
from flowgraph.models.checkpoint import read_checkpoint
from flowgraph.models.gpt import GPTConfig
from flowgraph.models.tasks import SortTask
from flowgraph.models.train import DEMO_RUNS, TrainConfig, evaluate, load_model, lr_at, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, d_model=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_schedule_warmup_then_cosine():
    config = TrainConfig(steps=100, warmup=10, lr=1e-2, min_lr=1e-3)
    lrs = [lr_at(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(lrs[9:]))
    assert lr_at(100, config) == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx((1e-2 + 1e-3) / 2)  # half way through the cosine


def _run(tmp_path, name, seed=0, steps=6, **model):
    task = SortTask(length=5)
    config = GPTConfig(vocab_size=3, n_ctx=task.n_ctx, **{**TINY, **model})
    train_config = TrainConfig(
        steps=steps, warmup=2, seed=seed, log_every=2, eval_every=3, eval_size=128
    )
    return train(config, task, train_config, tmp_path / name, progress=False)


def test_deterministic_for_a_seed_and_metrics_written(tmp_path):
    a = _run(tmp_path, "a", attention="metric", pattern="fixed")
    b = _run(tmp_path, "b", attention="metric", pattern="fixed")
    c = _run(tmp_path, "c", seed=1, attention="metric", pattern="fixed")
    b_state = b["model"].state_dict()
    for name, x in a["model"].state_dict().items():
        assert torch.equal(x, b_state[name]), name
    assert not torch.equal(a["model"].wte.weight, c["model"].wte.weight)
    lines = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [d for d in lines if "loss" in d]
    eval_lines = [d for d in lines if "test_accuracy" in d]
    assert [d["step"] for d in train_lines] == [2, 4, 6]
    assert [d["step"] for d in eval_lines] == [3, 6]
    assert set(train_lines[0]) == {"step", "loss", "accuracy", "lr", "tokens_per_s", "elapsed_s"}
    assert eval_lines[-1]["test_accuracy"] == pytest.approx(a["test_accuracy"])


def test_resume_rejects_other_settings(tmp_path):
    _run(tmp_path, "a", steps=4)
    with pytest.raises(ValueError, match=r"model\.d_model: saved 16, given 32"):
        task = SortTask(length=5)
        config = GPTConfig(vocab_size=3, n_ctx=9, **{**TINY, "d_model": 32})
        train(config, task, TrainConfig(steps=4, warmup=2), tmp_path / "a", resume=True)


def test_bad_device_is_a_usage_error(tmp_path, capsys):
    args = ["train", "--steps", "2", "--length", "5", "--quiet", "--out", str(tmp_path / "r")]
    assert main([*args, "--device", "tpu"]) == 2
    assert "device must be cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err


# Far more steps than the kill needs: the poller below may be seconds late on a loaded machine,
# and the run must still be going when the signal arrives (120 steps left a 0.3 s margin).
STEPS = 1000


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "flowgraph.app.cli", "train", "--task", "sort", "--length", "7",
        "--attention", "metric", "--pattern", "fixed", "--mode", "interleave",
        "--n-layer", "2", "--n-head", "2", "--d-model", "16", "--steps", str(STEPS),
        "--ckpt-every", "10", "--log-every", "5", "--eval-every", "500", "--seed", "3",
        "--threads", "1", "--quiet", "--out", str(out), *extra,
    ]  # fmt: skip


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "checkpoint").model_state


def _logged_step(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(s)["step"] for s in lines if s.endswith("}")]
    return max(steps, default=0)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = tmp_path / "whole"
    subprocess.run(_cli(whole), cwd=ROOT, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _logged_step(killed / "metrics.jsonl") < 50:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    stopped_at = read_checkpoint(killed / "checkpoint").config["step"]
    assert 40 <= stopped_at < STEPS  # the log runs ahead of the last checkpoint

    done = subprocess.run(
        [*_cli(killed), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(s)["step"] for s in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [
        json.loads(s)["step"] for s in (whole / "metrics.jsonl").read_text().splitlines()
    ]


def test_demo_shortened_trains_reuses_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--demo", "--steps", "12", "--quiet", "--threads", "1"])
    first = capsys.readouterr().out
    accuracies = {}
    for name in DEMO_RUNS:
        line = next(s for s in first.splitlines() if s.strip().startswith(name))
        accuracies[name] = float(line.split()[1])
        assert 0.0 <= float(line.split()[2]) <= accuracies[name] + 1e-9  # exact ≤ per token
        assert (tmp_path / "runs" / name / "checkpoint" / "model.safetensors").is_file()
    assert code == (0 if min(accuracies.values()) >= 0.95 else 1)
    before = {n: (tmp_path / "runs" / n / "metrics.jsonl").read_text() for n in DEMO_RUNS}
    assert main(["train", "--demo", "--steps", "12", "--quiet", "--threads", "1"]) == code
    assert capsys.readouterr().out == first  # reused: the same models, evaluated again
    after = {n: (tmp_path / "runs" / n / "metrics.jsonl").read_text() for n in DEMO_RUNS}
    assert after == before  # nothing was trained again
    model, config = load_model(tmp_path / "runs" / "sort-metric")
    assert config["step"] == 12 and config["model"]["attention"] == "metric"
    _, test_accuracy = evaluate(model, SortTask())
    assert test_accuracy == pytest.approx(accuracies["sort-metric"], abs=1e-4)


def test_ddp_two_processes_match_one(tmp_path):
    """torchrun, 2 CPU processes with gloo: each trains on half of the same global batch, so
    the losses follow the single-process run up to float reassociation."""
    args = ["train", "--length", "7", "--n-layer", "1", "--n-head", "2", "--d-model", "16"]
    args += ["--steps", "20", "--log-every", "5", "--batch-size", "32", "--threads", "1"]
    args += ["--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    two = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "flowgraph.app.cli"]
    done = subprocess.run(
        [*two, *args, "--out", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    subprocess.run(
        [sys.executable, "-m", "flowgraph.app.cli", *args, "--out", str(tmp_path / "one")],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(d["step"], d["loss"]) for d in map(json.loads, lines) if "loss" in d]

    one, two_ = losses("one"), losses("two")
    assert [s for s, _ in one] == [s for s, _ in two_] == [5, 10, 15, 20]
    for (_, a), (_, b) in zip(one, two_, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    # (weights are not compared entry by entry: the key bias has an exactly-zero gradient in
    # exact arithmetic, so Adam turns rounding noise there into lr-sized, run-dependent steps)


def test_training_benchmark_quick_prints_every_variant(capsys):
    from bench_scripts import load_script

    bench = load_script("training")
    assert bench.main(["--quick", "--threads", "1"]) == 0
    rows = [s for s in capsys.readouterr().out.splitlines() if s.startswith("| quick")]
    assert [r.split("|")[2].strip() for r in rows] == list(bench.VARIANTS)
    assert rows[0].rstrip().endswith("1.00× |")  # sdpa is the baseline
