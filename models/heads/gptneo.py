"""GPT-Neo decoders (``model_type`` gpt_neo: GPT-Neo, the TinyStories models) from Hugging Face
directories, without ``transformers``.

Embeddings: x = wte[ids] + wpe[t] (learned positions from row 0). The block (``GPTNeoBlock``) is
pre-LayerNorm: x += out_proj(attn(ln_1(x))), x += c_proj(act(c_fc(ln_2(x)))). q, k and v are
separate projections without bias (``attn.attention.q_proj`` …); ``out_proj`` has one. The
scores are q·kᵀ with NO 1/√d scaling (``GPTNeoSelfAttention`` leaves them unscaled), under the
causal mask. ``attention_types`` ([[["global", "local"], 12]] by default) expands to one type per
layer, as ``GPTNeoConfig.expand_attention_types_params`` does: each [types, n] adds the list
``types`` n times. A "local" layer's query q sees the keys k with q − ``window_size`` < k ≤ q
(transformers' ``tril(ones) ^ tril(ones, -window_size)``: the query and the window_size − 1
keys before it). The token table is ``wte`` (tied to the LM head by default: a file holding
only ``lm_head.weight`` is read from there); ``ln_f`` and the LM head are not read.

Everything is computed in float32; ``tests/test_heads_gptneo.py`` compares it with
``GPTNeoForCausalLM``'s eager ``output_attentions``. The configuration is untrusted
(:mod:`models.heads.hf`); absent keys take ``GPTNeoConfig``'s defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.checkpoint import (
    _shown,
    config_bool,
    config_float,
    config_int,
    dot_attention_sizes,
    linear_per_head,
)
from flowgraph.models.heads.hf import _activation, _HFCheckpoint, _require_layers, _resolve_names
from flowgraph.models.heads.safe_load import Dim, TensorStore
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["ATTENTION_TYPES", "GPTNeoCheckpoint", "expand_attention_types"]

ATTENTION_TYPES = ("global", "local")
_DEFAULT_ATTENTION_TYPES = [[["global", "local"], 12]]  # GPTNeoConfig's default (24 layers)


def expand_attention_types(value: object, L: int, file: Path) -> tuple[str, ...]:
    """The per-layer types that ``attention_types`` (a list of [types, count] pairs) expands
    to, checked to be ``L`` of "global"/"local"; any other shape is an error naming the key.
    The total is counted before anything is expanded (the file is untrusted)."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(
            f"{file}: attention_types must be a list of [[types…], count] pairs with types from "
            f"{', '.join(ATTENTION_TYPES)} expanding to num_layers={L} layers; {why}, "
            f"got {_shown(value)}"
        )

    if not isinstance(value, list) or not value:
        raise bad("not a non-empty list")
    total = 0
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise bad("an entry is not a [types, count] pair")
        types, count = item
        if not isinstance(types, (list, tuple)) or any(t not in ATTENTION_TYPES for t in types):
            raise bad("an entry's types are not a list of global/local")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise bad("an entry's count is not an int ≥ 0")
        total += len(types) * count
        if total > L:
            break
    if total != L:
        raise bad(f"it gives {'more than ' + str(L) if total > L else total} layers")
    return tuple(t for types, count in value for _ in range(count) for t in types)


class GPTNeoCheckpoint(_HFCheckpoint):
    """A GPT-Neo decoder (``GPTNeoModel`` layout, ``transformer.`` prefixed in
    ``GPTNeoForCausalLM``). Extra attributes: ``attention_layers`` (per layer "global" or
    "local"), ``window_size`` and ``sliding_windows`` (per layer, window_size or None)."""

    kind = "gpt_neo"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "hidden_size", file, 2048), "hidden_size")
        H = config_int(config, "num_heads", file, 16)
        L = config_int(config, "num_layers", file, 24)
        V = Dim(config_int(config, "vocab_size", file, 50257), "vocab_size")
        P = Dim(
            config_int(config, "max_position_embeddings", file, 2048), "max_position_embeddings"
        )
        if config.get("intermediate_size") is not None:
            I = Dim(config_int(config, "intermediate_size", file), "intermediate_size")  # noqa: E741
        else:
            I = Dim(4 * c, "4·hidden_size (intermediate_size is null)")  # noqa: E741
        if c % H:
            raise CheckpointError(f"{file}: hidden_size={c} is not a multiple of num_heads={H}")
        self.eps = config_float(config, "layer_norm_epsilon", file, 1e-5)
        self.act = _activation(config, "activation_function", "gelu_new", file)
        self.window_size = config_int(config, "window_size", file, 256)
        tied = config_bool(config, "tie_word_embeddings", file, True)
        names = _resolve_names(store, "h.0.attn.attention.q_proj.weight", rename_gamma_beta=False)
        if "wte.weight" not in names and tied and "lm_head.weight" in store:
            names["wte.weight"] = "lm_head.weight"  # tied: the LM head is the table
        _require_layers(
            store, names, f"h.{L - 1}.attn.attention.q_proj.weight", "num_layers", L, file
        )
        types = config.get("attention_types")
        self.attention_layers = expand_attention_types(
            _DEFAULT_ATTENTION_TYPES if types is None else types, L, file
        )
        self.sliding_windows = tuple(
            self.window_size if t == "local" else None for t in self.attention_layers
        )
        sizes = dot_attention_sizes(layers=L, heads=H, width=c, n_ctx=P, vocab=V, causal=True)
        super().__init__(path, store, names, **sizes)
        expected: dict[str, tuple[int, ...]] = {"wte.weight": (V, c), "wpe.weight": (P, c)}
        for i in range(L):
            pre = f"h.{i}."
            for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
                expected[pre + "attn.attention." + part + ".weight"] = (c, c)
            expected[pre + "attn.attention.out_proj.bias"] = (c,)
            for part, shape in (("mlp.c_fc", (I, c)), ("mlp.c_proj", (c, I))):
                expected[pre + part + ".weight"] = shape
                expected[pre + part + ".bias"] = shape[:1]
            for part in ("ln_1", "ln_2"):
                expected[pre + part + ".weight"] = expected[pre + part + ".bias"] = (c,)
        self._check(expected, file)

    def _linear(self, x: torch.Tensor, name: str, bias: bool = True) -> torch.Tensor:
        b = self._tensor(name + ".bias") if bias else None
        return F.linear(x, self._tensor(name + ".weight"), b)

    def _ln(self, x_tc: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self._tensor(name + ".weight"), self._tensor(name + ".bias")
        return F.layer_norm(x_tc, (self.d_model,), w, b, self.eps)

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H, d = len(ids_t), self.num_heads, self.head_dim
        q_idx_t1 = torch.arange(T).unsqueeze(1)
        k_idx_1t = torch.arange(T).unsqueeze(0)
        causal_tt = k_idx_1t <= q_idx_t1
        x_tc = self._tensor("wte.weight")[ids_t] + self._tensor("wpe.weight")[:T]
        out = []
        for i in range(self.num_layers):
            pre = f"h.{i}."
            attn = pre + "attn.attention."
            h_tc = self._ln(x_tc, pre + "ln_1")
            q_htd, k_htd, v_htd = (
                self._linear(h_tc, attn + f"{p}_proj", bias=False).view(T, H, d).transpose(0, 1)
                for p in ("q", "k", "v")
            )
            allowed_tt = causal_tt
            window = self.sliding_windows[i]
            if window is not None:
                allowed_tt = causal_tt & (k_idx_1t > q_idx_t1 - window)
            s_htt = (q_htd @ k_htd.mT).masked_fill(~allowed_tt, -math.inf)  # no 1/√d
            p_htt = torch.softmax(s_htt, dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, H * d)
            x_tc = x_tc + self._linear(ctx_tc, attn + "out_proj")
            h_tc = self._ln(x_tc, pre + "ln_2")
            x_tc = x_tc + self._linear(
                self.act(self._linear(h_tc, pre + "mlp.c_fc")), pre + "mlp.c_proj"
            )
        return torch.stack(out)

    def _head_weights(self, layer: int) -> HeadWeights:
        pre = f"h.{layer}.attn.attention."
        return HeadWeights(
            "dot",
            1.0,  # GPT-Neo does not scale q·kᵀ
            w_q_hcd=linear_per_head(self._tensor(pre + "q_proj.weight"), self.num_heads),
            w_k_hcd=linear_per_head(self._tensor(pre + "k_proj.weight"), self.num_heads),
        )

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("wte.weight")

    def _position_embeddings(self) -> torch.Tensor:
        return self._tensor("wpe.weight")
