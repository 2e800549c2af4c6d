"""nanoGPT checkpoints: ``ckpt.pt`` as nanoGPT's ``train.py`` writes it.

The file is a dict with ``model`` (the GPT's state dict; names may start with ``_orig_mod.``,
what ``torch.compile`` puts in front) and ``model_args`` (``n_layer``, ``n_head``, ``n_embd``,
``block_size``, ``bias``, ``vocab_size``), besides the optimizer state and the training config.
It is read with ``torch.load(weights_only=True)`` after a static scan of its pickle
(:mod:`models.heads.safe_load`); ``model_args`` sizes must be ints in [1, 2³¹ − 1], and every
tensor must be a dense float tensor of the shape they give (a wrong dimension names its key).

The vocabulary is ``meta.pkl`` (``prepare.py`` of the character-level datasets writes
``{"vocab_size", "itos", "stoi"}``; read, after the same scan, with an unpickler that builds only
builtin dicts, lists, strings and numbers), looked for where nanoGPT keeps it: the ``meta=``
path when given, else beside the file, else ``data/<dataset>/meta.pkl`` — the dataset the
checkpoint's ``config`` names — in the checkpoint's folder, the folders above it and the working
directory (nanoGPT runs from its repository root, ``out-*/ckpt.pt`` beside ``data/``).
:meth:`tokenize` then maps each character through ``stoi``. Without it the tokens are
``str(id)``, text is read as ids, and a text that is not ids gets an error naming meta.pkl.

A run is named by its folder (``out-shakespeare-char``), not by the file name ``ckpt``.

The forward pass is nanoGPT's, written here from the state dict (:func:`models.heads.hf.
decoder_attention`): token + position embeddings, pre-LayerNorm blocks (eps 1e-5, biases
optional), causal softmax(q·kᵀ/√d), exact GELU MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.checkpoint import (
    Checkpoint,
    char_tokenize,
    config_bool,
    config_int,
    dot_attention_sizes,
    fused_qkv_weights,
    id_tokens,
    split_tokenize,
)
from flowgraph.models.heads.hf import DecoderLayer, decoder_attention
from flowgraph.models.heads.safe_load import (
    Dim,
    TensorStore,
    check_tensors,
    load_plain_pickle,
    load_weights_only,
)
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["COMPILED_PREFIX", "NanoGPTCheckpoint", "load_nanogpt"]

COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper names its module's tensors this way
_EPS = 1e-5  # nanoGPT's LayerNorm


def _arg(args: Mapping[str, Any], key: str, file: Path) -> Dim:
    return Dim(config_int(args, key, file, name=f"model_args[{key!r}]"), key)


class NanoGPTCheckpoint(Checkpoint):
    """A nanoGPT model (see the module docstring)."""

    kind = "nanogpt"

    def __init__(
        self,
        path: Path,
        name: str,
        store: TensorStore,
        args: Mapping[str, Any],
        *,
        meta: Path | None = None,
        dataset: str | None = None,
    ) -> None:
        self._meta, self._dataset = meta, dataset
        c, H = _arg(args, "n_embd", path), _arg(args, "n_head", path)
        L, V = _arg(args, "n_layer", path), _arg(args, "vocab_size", path)
        P = _arg(args, "block_size", path)
        if c % H:
            raise CheckpointError(f"{path}: n_embd={c} is not a multiple of n_head={H}")
        last = f"transformer.h.{L - 1}.attn.c_attn.weight"
        if last not in store:
            raise CheckpointError(
                f"tensor {last} missing from {path}: model_args['n_layer']={L}, so layer {L - 1} "
                "should exist"
            )
        sizes = dot_attention_sizes(layers=L, heads=H, width=c, n_ctx=P, vocab=V, causal=True)
        super().__init__(path, name=name, **sizes)
        self.store = store
        self.bias = config_bool(args, "bias", path, "transformer.h.0.ln_1.bias" in store)
        c3, c4 = Dim(3 * c, "3·n_embd"), Dim(4 * c, "4·n_embd")
        expected = {"transformer.wte.weight": (V, c), "transformer.wpe.weight": (P, c)}
        for i in range(L):
            pre = f"transformer.h.{i}."
            for part, shape in (
                ("ln_1", (c,)),
                ("ln_2", (c,)),
                ("attn.c_attn", (c3, c)),
                ("attn.c_proj", (c, c)),
                ("mlp.c_fc", (c4, c)),
                ("mlp.c_proj", (c, c4)),
            ):
                expected[pre + part + ".weight"] = shape
                if self.bias:
                    expected[pre + part + ".bias"] = shape[:1]
        check_tensors(store, expected, config=f"{path}'s model_args")
        used = sum(math.prod(shape) for shape in expected.values())
        self._check_memory(store.nbytes() + 4 * used)

    def _tensor(self, name: str) -> torch.Tensor:
        def build() -> torch.Tensor:
            t = self.store.get(name)
            return t.to(torch.float32) if t.dtype != torch.float32 else t

        return self._cached(f"tensor:{name}", build)

    def _pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = self._tensor(name + ".bias") if self.bias else None
        return self._tensor(name + ".weight"), bias

    def _layers(self) -> list[DecoderLayer]:
        def build() -> list[DecoderLayer]:
            return [
                DecoderLayer(
                    *(
                        self._pair(f"transformer.h.{i}.{part}")
                        for part in (
                            "ln_1",
                            "attn.c_attn",
                            "attn.c_proj",
                            "ln_2",
                            "mlp.c_fc",
                            "mlp.c_proj",
                        )
                    )
                )
                for i in range(self.num_layers)
            ]

        return self._cached("layers", build)

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        x_tc = self._tensor("transformer.wte.weight")[ids_t]
        x_tc = x_tc + self._tensor("transformer.wpe.weight")[: len(ids_t)]
        scale = 1.0 / math.sqrt(self.head_dim)
        return decoder_attention(
            x_tc,
            self._layers(),
            n_head=self.num_heads,
            eps=_EPS,
            act=F.gelu,
            scales=[scale] * self.num_layers,
        )

    def _head_weights(self, layer: int) -> HeadWeights:
        w_3cc = self._layers()[layer].qkv[0]  # (3c, c), Linear orientation
        return fused_qkv_weights(w_3cc, self.num_heads, 1.0 / math.sqrt(self.head_dim))

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("transformer.wte.weight")

    def _position_embeddings(self) -> torch.Tensor:
        return self._tensor("transformer.wpe.weight")

    def meta_candidates(self) -> list[Path]:
        """Where the vocabulary is looked for, in order (see the module docstring)."""
        if self._meta is not None:
            return [self._meta]
        out = [self.path.parent / "meta.pkl"]
        if self._dataset:
            roots = [self.path.parent, *list(self.path.parent.parents)[:3], Path.cwd()]
            out += [root / "data" / self._dataset / "meta.pkl" for root in roots]
        return out

    def _vocabulary(self) -> tuple[list[str], Callable[[str], list[int]]]:
        tokens = id_tokens(self.vocab_size)
        meta_file = next((p for p in self.meta_candidates() if p.is_file()), None)
        if meta_file is None:
            looked = ", ".join(str(p) for p in self.meta_candidates())

            def ids_only(text: str) -> list[int]:
                try:
                    return split_tokenize(text, tokens)
                except ValueError as exc:
                    raise ValueError(
                        f"{exc}. This nanoGPT checkpoint has no vocabulary: no meta.pkl at "
                        f"{looked}; give its path (meta=PATH, flowgraph heads --meta PATH) or "
                        "give token ids"
                    ) from None

            return tokens, ids_only
        meta = load_plain_pickle(meta_file)
        itos = meta.get("itos") if isinstance(meta, dict) else None
        if not isinstance(itos, dict) or not all(
            isinstance(i, int) and isinstance(s, str) for i, s in itos.items()
        ):
            raise CheckpointError(f"{meta_file}: expected a dict with 'itos' {{int: str}}")
        for i, s in itos.items():
            if 0 <= i < self.vocab_size:
                tokens[i] = s
        stoi = {s: i for i, s in itos.items() if 0 <= i < self.vocab_size}
        if all(len(s) == 1 for s in stoi):
            return tokens, lambda text: char_tokenize(text, stoi)
        return tokens, lambda text: split_tokenize(text, tokens)


def load_nanogpt(
    path: Path, *, name: str | None = None, meta: Path | None = None
) -> NanoGPTCheckpoint:
    """The nanoGPT checkpoint file ``path``, named ``name`` — by default its folder's name for
    nanoGPT's ``ckpt.pt``, else the file's stem; ``meta`` the vocabulary's ``meta.pkl``."""
    path = Path(path)
    if meta is not None and not Path(meta).is_file():
        raise CheckpointError(f"meta: no such file: {meta} (nanoGPT's meta.pkl was asked for)")
    data = load_weights_only(path)
    if not isinstance(data, dict) or "model" not in data or "model_args" not in data:
        got = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path} is not a nanoGPT checkpoint: expected a dict with 'model' and 'model_args', "
            f"got {got}"
        )
    state, args = data["model"], data["model_args"]
    if not isinstance(state, Mapping) or not isinstance(args, Mapping):
        raise CheckpointError(f"{path}: 'model' and 'model_args' must be dicts")
    bad = next((k for k in state if not isinstance(k, str)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: 'model' has a key {bad!r} that is not a tensor name")
    state = {
        (k[len(COMPILED_PREFIX) :] if k.startswith(COMPILED_PREFIX) else k): v
        for k, v in state.items()
    }
    config = data.get("config")
    dataset = config.get("dataset") if isinstance(config, Mapping) else None
    if not isinstance(dataset, str) or "/" in dataset or dataset in ("", ".", ".."):
        dataset = None  # only a plain folder name is looked up under data/
    default = path.parent.name if path.stem == "ckpt" and path.parent.name else path.stem
    return NanoGPTCheckpoint(
        path, name or default, TensorStore.from_state(state, path), args,
        meta=None if meta is None else Path(meta), dataset=dataset,
    )  # fmt: skip
