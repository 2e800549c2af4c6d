"""Checkpoints: round trip with tied weights, atomic replacement, recovery from a save killed
between its renames, and a clear error naming the file for every kind of damage."""

from __future__ import annotations

import json
import os

import pytest
import torch

from flowgraph.app.cli import main
from flowgraph.models.checkpoint import (
    CheckpointError,
    load_model_state,
    read_checkpoint,
    save_checkpoint,
)
from flowgraph.models.gpt import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=5, n_layer=2, n_head=2, d_model=16, n_ctx=8, attention="metric")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG)


def _save(path, model, extra=None):
    state = {"step": 3, "rng": torch.get_rng_state(), "nested": {"lr": [0.1, 0.2]}}
    return save_checkpoint(
        path,
        config={"model": CONFIG.to_dict(), **(extra or {})},
        model_state=model.state_dict(),
        trainer_state=state,
    )


def test_round_trip_restores_weights_and_ties(tmp_path):
    model = _model(0)
    path = _save(tmp_path / "ckpt", model)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "trainer.pt"]
    ckpt = read_checkpoint(path)
    assert "lm_head.weight" not in ckpt.model_state  # the tied copy is stored once
    other = _model(1)
    load_model_state(other, ckpt.model_state)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert other.lm_head.weight is other.wte.weight
    assert ckpt.trainer_state["step"] == 3 and ckpt.trainer_state["nested"]["lr"] == [0.1, 0.2]
    assert GPTConfig.from_dict(ckpt.config["model"]) == CONFIG


def test_replace_leaves_only_the_new_checkpoint(tmp_path):
    _save(tmp_path / "ckpt", _model(0), {"v": 1})
    _save(tmp_path / "ckpt", _model(1), {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary or old directory left
    assert read_checkpoint(tmp_path / "ckpt").config["v"] == 2


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path / "ckpt", _model(0), {"v": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "ckpt", _model(1), {"v": 2})
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert read_checkpoint(tmp_path / "ckpt").config["v"] == 1


def test_save_killed_between_renames_is_recovered(tmp_path):
    _save(tmp_path / "ckpt", _model(0), {"v": 1})
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.old-4242")  # the first rename happened
    (tmp_path / ".ckpt.tmp-zz").mkdir()  # a half-written new one
    assert read_checkpoint(tmp_path / "ckpt").config["v"] == 1
    _save(tmp_path / "ckpt", _model(1), {"v": 2})  # the next save cleans the stale temp dir
    assert ".ckpt.tmp-zz" not in os.listdir(tmp_path)
    assert read_checkpoint(tmp_path / "ckpt").config["v"] == 2


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "file, damage",
    [
        ("model.safetensors", lambda p: _truncate(p, 0.5)),
        ("model.safetensors", lambda p: _truncate(p, 0.0)),
        ("model.safetensors", lambda p: _flip(p, 0.7)),  # a bit flip in the weights
        ("model.safetensors", lambda p: p.unlink()),
        ("trainer.pt", lambda p: _truncate(p, 0.3)),
        ("trainer.pt", lambda p: _flip(p, 0.5)),
        ("config.json", lambda p: _truncate(p, 0.5)),
        ("config.json", lambda p: p.write_bytes(b"\xff\xfe")),
        ("config.json", lambda p: p.unlink()),
    ],
)
def test_damage_names_the_file(tmp_path, file, damage):
    path = _save(tmp_path / "ckpt", _model(0))
    damage(path / file)
    with pytest.raises(CheckpointError, match=f"checkpoint file .*{file}"):
        read_checkpoint(path)


def test_damage_without_checksums_still_names_the_file(tmp_path):
    """Even when config.json is rewritten to match a damaged file, the parse error is ours."""
    import hashlib

    path = _save(tmp_path / "ckpt", _model(0))
    for file in ("model.safetensors", "trainer.pt"):
        _truncate(path / file, 0.5)
    meta = json.loads((path / "config.json").read_text())
    for file in meta["checksums"]:
        meta["checksums"][file] = hashlib.sha256((path / file).read_bytes()).hexdigest()
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"):
        read_checkpoint(path)


def test_missing_and_mismatched(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "nothing")
    path = _save(tmp_path / "ckpt", _model(0))
    state = read_checkpoint(path).model_state
    other = GPT(GPTConfig(vocab_size=5, n_layer=2, n_head=2, d_model=16, n_ctx=8))
    with pytest.raises(CheckpointError, match="tensors the model lacks"):
        load_model_state(other, state)  # sdpa has no metric
    wider = GPT(GPTConfig(**{**CONFIG.to_dict(), "d_model": 32}))
    with pytest.raises(CheckpointError, match="shape"):
        load_model_state(wider, state)
    with pytest.raises(CheckpointError, match="lacks tensors"):
        load_model_state(_model(0), {k: v for k, v in state.items() if k != "wte.weight"})


def test_cli_resume_from_a_corrupted_checkpoint_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--steps", "4", "--n-layer", "1", "--d-model", "16", "--n-head", "2"]
    args += ["--length", "5", "--out", str(out), "--quiet"]
    assert main(args) == 0
    _truncate(out / "checkpoint" / "model.safetensors", 0.5)
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
