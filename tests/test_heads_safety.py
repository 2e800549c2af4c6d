"""models.heads never runs code from a checkpoint: pickles whose __reduce__ would call os.system or
eval are refused (and the payload is shown to be live: plain pickle.loads runs it), in every
place a pickle is read; truncated, missing and mis-shaped tensors are errors that name the file
and the tensor."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads import UnsafeCheckpointError, load_checkpoint

CONFIG = {
    "model_type": "bert",
    "hidden_size": 8,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "intermediate_size": 16,
    "vocab_size": 10,
    "max_position_embeddings": 6,
    "type_vocab_size": 2,
}


def _bert_state() -> dict[str, torch.Tensor]:
    c, i = 8, 16
    shapes = {
        "embeddings.word_embeddings.weight": (10, c),
        "embeddings.position_embeddings.weight": (6, c),
        "embeddings.token_type_embeddings.weight": (2, c),
        "embeddings.LayerNorm.weight": (c,),
        "embeddings.LayerNorm.bias": (c,),
    }
    for part, shape in {
        "attention.self.query": (c, c),
        "attention.self.key": (c, c),
        "attention.self.value": (c, c),
        "attention.output.dense": (c, c),
        "intermediate.dense": (i, c),
        "output.dense": (c, i),
        "attention.output.LayerNorm": (c,),
        "output.LayerNorm": (c,),
    }.items():
        shapes[f"encoder.layer.0.{part}.weight"] = shape
        shapes[f"encoder.layer.0.{part}.bias"] = shape[:1]
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(*shape, generator=g) for name, shape in shapes.items()}


def _config_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    return directory


def _bert_dir(directory: Path, state=None, weights="model.safetensors") -> Path:
    _config_dir(directory)
    state = _bert_state() if state is None else state
    if weights.endswith(".safetensors"):
        save_file(state, str(directory / weights))
    else:
        torch.save(state, directory / weights)
    return directory


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


PAYLOADS = {"os.system": _System, "eval": _Eval}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_are_live(tmp_path, payload):
    """What the refusals below guard against: plain unpickling runs the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(PAYLOADS[payload](marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_crafted_pytorch_model_bin_is_refused(tmp_path, payload, writer):
    marker = tmp_path / "ran"
    state = {
        **_bert_state(),
        "encoder.layer.0.attention.self.key.weight": PAYLOADS[payload](marker),
    }
    directory = _config_dir(tmp_path / "hf")
    file = directory / "pytorch_model.bin"
    if writer == "pickle":
        file.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, file)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load") as info:
        load_checkpoint(directory)
    assert str(file) in str(info.value) and "nothing from this one was run" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_nanogpt_ckpt_is_refused(tmp_path, payload):
    marker = tmp_path / "ran"
    file = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_args": {}, "config": PAYLOADS[payload](marker)}, file)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {file}")):
        load_checkpoint(file)
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_meta_pkl_is_refused(tmp_path, payload):
    from test_heads_nanogpt import _write  # a valid nanoGPT checkpoint beside the crafted file

    marker = tmp_path / "ran"
    file = _write(tmp_path / "out", meta=False)
    meta = {"vocab_size": 11, "itos": {0: "a"}, "stoi": PAYLOADS[payload](marker)}
    (tmp_path / "out" / "meta.pkl").write_bytes(pickle.dumps(meta, protocol=4))
    ckpt = load_checkpoint(file)  # the weights are fine; the vocabulary is read on first use
    with pytest.raises(UnsafeCheckpointError, match=r"meta\.pkl: it asks for"):
        ckpt.tokens  # noqa: B018
    assert not marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_crafted_trainer_state_of_a_run_is_never_unpickled(tmp_path, payload):
    """A run's trainer.pt (optimizer state) is a pickle too. The head loader never reads it; the
    training reader (resume) refuses a crafted one, with its checksum updated to match, naming the
    file and without torch's advice to retry unsafely; the payload never runs."""
    import hashlib

    from test_heads_load import _model, _save_run

    from flowgraph.models.checkpoint import read_checkpoint

    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    marker = tmp_path / "ran"
    file = run / "checkpoint" / "trainer.pt"
    torch.save({"optimizer": PAYLOADS[payload](marker)}, file)
    config_file = run / "checkpoint" / "config.json"
    config = json.loads(config_file.read_text())
    config["checksums"]["trainer.pt"] = hashlib.sha256(file.read_bytes()).hexdigest()
    config_file.write_text(json.dumps(config))
    assert load_checkpoint(run).num_layers == 2  # weights only: trainer.pt untouched
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: refused")) as info:
        read_checkpoint(run / "checkpoint")
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()
    file.write_bytes(b"garbage")  # a damaged trainer.pt does not stop the weights from loading
    assert load_checkpoint(run).num_layers == 2


def test_a_truncated_safetensors_file(tmp_path):
    directory = _bert_dir(tmp_path / "hf")
    file = directory / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 64])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        load_checkpoint(directory)
    assert str(file) in str(info.value)
    file.write_bytes(data[:20])  # cut inside the header
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read {file}")):
        load_checkpoint(directory)
    file.write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="too short for safetensors"):
        load_checkpoint(directory)


def test_a_truncated_pytorch_model_bin(tmp_path):
    directory = _bert_dir(tmp_path / "hf", weights="pytorch_model.bin")
    file = directory / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read {file}")):
        load_checkpoint(directory)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_missing_tensor_is_named(tmp_path, weights):
    state = _bert_state()
    del state["encoder.layer.0.attention.self.key.weight"]
    directory = _bert_dir(tmp_path / "hf", state=state, weights=weights)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "tensor encoder.layer.0.attention.self.key.weight missing" in message
    assert str(directory / weights) in message


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_wrong_shape_is_named(tmp_path, weights):
    state = _bert_state()
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(16, 9)
    directory = _bert_dir(tmp_path / "hf", state=state, weights=weights)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    assert str(info.value) == (
        f"tensor encoder.layer.0.intermediate.dense.weight in {directory / weights} has shape "
        "(16, 9), expected (16, 8) from the config (dimension 1 is hidden_size=8 in "
        f"{directory / 'config.json'}, the tensor's is 9)"
    )


def test_a_missing_shard_is_named(tmp_path):
    directory = _bert_dir(tmp_path / "hf", weights="model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors",
            "encoder.layer.0.output.dense.weight": "model-00002-of-00002.safetensors",
        }
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing: model-00002-of-00002\.safetensors"):
        load_checkpoint(directory)


def test_nanogpt_missing_and_misshapen_tensors(tmp_path):
    from test_heads_nanogpt import ARGS, _state

    state = _state(bias=True)
    del state["transformer.h.1.mlp.c_fc.weight"]
    file = tmp_path / "ckpt.pt"
    torch.save({"model": state, "model_args": {**ARGS, "bias": True}}, file)
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"tensor transformer.h.1.mlp.c_fc.weight missing from {file}"),
    ):
        load_checkpoint(file)
    state = _state(bias=True)
    state["transformer.wpe.weight"] = torch.zeros(8, 32)
    torch.save({"model": state, "model_args": {**ARGS, "bias": True}}, file)
    with pytest.raises(CheckpointError, match=r"transformer.wpe.weight in .* has shape \(8, 32\)"):
        load_checkpoint(file)
