"""Shared by the loader tests: saving a random-weight transformers model the ways checkpoints
ship, the attentions transformers computes for it (the reference), and editing its config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def save_model(model, directory: Path, form: str = "safetensors") -> Path:
    """``form``: "safetensors" (save_pretrained), "bin" (a pytorch_model.bin state dict) or
    "sharded" (save_pretrained cut into small shards with an index)."""
    if form == "bin":
        directory.mkdir(parents=True)
        model.config.to_json_file(directory / "config.json")
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    elif form == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert (directory / "model.safetensors.index.json").is_file()
    else:
        model.save_pretrained(directory)
    return directory


def reference_attention(model, ids: list[int]) -> np.ndarray:
    """(layers, heads, T, T) float64: transformers' own ``output_attentions`` for ``ids``."""
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
    return torch.stack([a[0] for a in attentions]).double().numpy()


def edit_config(directory: Path, **changes) -> None:
    """Set keys of ``directory/config.json`` (None removes the key)."""
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))


def perturb_norms_and_biases(model, norm: str) -> None:
    """LayerNorms start at (1, 0) and biases at 0: draw them so they matter in a comparison.
    ``norm`` is the substring naming the model's norm weights (``"layernorm"``, ``".ln_"``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if norm in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.3, 0.3)
