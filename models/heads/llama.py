"""Llama-style decoders from Hugging Face directories, without ``transformers``: Llama, Mistral
and Qwen2 (``model_type`` llama, mistral, qwen2), and so SmolLM, TinyLlama and their kin.

The block (``LlamaDecoderLayer``): x += o_proj(attn(RMSNorm(x))), x += down(act(gate(h)) ·
up(h)) with h = RMSNorm(x). Attention rotates q and k by their positions
(:class:`~models.heads.rotary.Rotary`: ``rope_theta`` and ``rope_scaling`` / ``rope_parameters``
of type default, linear or llama3), has ``num_key_value_heads`` key/value heads shared by
groups of query heads (grouped-query attention, as ``repeat_kv``), scales q·kᵀ by 1/√head_dim
and is causal; Mistral's ``sliding_window`` W (and Qwen2's on the layers ``layer_types`` /
``max_window_layers`` mark) further limits query q to keys k with q − W < k ≤ q, the mask of
``transformers``' ``sliding_window_overlay``. Biases: none (Llama: ``attention_bias`` on q/k/v/o,
``mlp_bias`` on the MLP; Qwen2: q/k/v always). The token embeddings are ``embed_tokens`` (or, with
``tie_word_embeddings`` and only the LM head stored, ``lm_head``); the final norm and LM head
change no attention and are not read.

RMSNorm is transformers': x · rsqrt(mean(x²) + eps) · weight, in float32. Everything is computed
in float32 (half-precision files are upcast); ``tests/test_heads_llama.py`` compares it with
``output_attentions`` of eager ``LlamaForCausalLM`` / ``MistralForCausalLM`` /
``Qwen2ForCausalLM``. The configuration is untrusted, as for every loader
(:mod:`models.heads.hf`); absent keys take each model's ``transformers`` defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.checkpoint import (
    LONG_CONTEXT_TOKENS,
    _shown,
    config_bool,
    config_float,
    config_int,
    linear_per_head,
)
from flowgraph.models.heads.hf import _activation, _HFCheckpoint, _require_layers, _resolve_names
from flowgraph.models.heads.rotary import rotary_from_config
from flowgraph.models.heads.safe_load import Dim, TensorStore
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["LLAMA_MODEL_TYPES", "LlamaCheckpoint", "rms_norm"]

LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
# transformers' config defaults (LlamaConfig, MistralConfig, Qwen2Config) for absent keys;
# num_key_value_heads None means "as many as query heads"
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
    "mistral": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096 * 32,
        sliding_window=4096,
    ),
    "qwen2": dict(
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=151936,
        max_position_embeddings=32768,
        sliding_window=4096,
        max_window_layers=28,
    ),
}
_LAYER_TYPES = ("full_attention", "sliding_attention")


def rms_norm(x_tc: torch.Tensor, weight_c: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm``: x · rsqrt(mean(x²) + eps) · weight, in float32."""
    x_tc = x_tc.to(torch.float32)
    variance_t1 = x_tc.pow(2).mean(-1, keepdim=True)
    return weight_c * (x_tc * torch.rsqrt(variance_t1 + eps))


def _sliding_windows(
    config: Mapping[str, Any], model_type: str, L: int, file: Path
) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: full causal attention), as transformers reads the
    config: Mistral's ``sliding_window`` on every layer; Qwen2's where ``use_sliding_window``
    is set, on the layers ``layer_types`` calls ``sliding_attention`` (by default those from
    ``max_window_layers`` on); Llama none."""
    if model_type == "llama":
        return (None,) * L
    defaults = _DEFAULTS[model_type]
    window = config.get("sliding_window", defaults["sliding_window"])
    if window is not None:
        window = config_int({"sliding_window": window}, "sliding_window", file)
    if model_type == "mistral":
        return (window,) * L
    if not config_bool(config, "use_sliding_window", file, False):
        return (None,) * L
    types = config.get("layer_types")
    if types is None:
        first = config_int(
            config, "max_window_layers", file, defaults["max_window_layers"], minimum=0
        )
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(L)]
    if not isinstance(types, list) or len(types) != L or any(t not in _LAYER_TYPES for t in types):
        raise CheckpointError(
            f"{file}: layer_types must list {L} of {', '.join(_LAYER_TYPES)}, got {_shown(types)}"
        )
    return tuple(window if t == "sliding_attention" else None for t in types)


class LlamaCheckpoint(_HFCheckpoint):
    """A Llama, Mistral or Qwen2 decoder (``LlamaModel`` layout, with or without the
    ``model.`` prefix of ``*ForCausalLM``); ``kind`` is the config's ``model_type``.

    Extra attributes: ``sliding_windows`` (per layer, the window W or None) and the
    :class:`~models.heads.Checkpoint` ones ``num_kv_heads`` and ``rotary``.
    """

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        model_type = config["model_type"]
        defaults = _DEFAULTS[model_type]
        c = Dim(config_int(config, "hidden_size", file, defaults["hidden_size"]), "hidden_size")
        H = config_int(config, "num_attention_heads", file, defaults["num_attention_heads"])
        L = config_int(config, "num_hidden_layers", file, defaults["num_hidden_layers"])
        kv = config.get("num_key_value_heads", defaults["num_key_value_heads"])
        H_kv = H if kv is None else config_int(config, "num_key_value_heads", file)
        V = Dim(config_int(config, "vocab_size", file, defaults["vocab_size"]), "vocab_size")
        P = config_int(config, "max_position_embeddings", file, defaults["max_position_embeddings"])
        I = Dim(  # noqa: E741
            config_int(config, "intermediate_size", file, defaults["intermediate_size"]),
            "intermediate_size",
        )
        if config.get("head_dim") is not None:
            d = config_int(config, "head_dim", file)
        elif c % H:
            raise CheckpointError(
                f"{file}: hidden_size={c} is not a multiple of num_attention_heads={H} "
                "(and no head_dim is given)"
            )
        else:
            d = c // H
        if H % H_kv:
            raise CheckpointError(
                f"{file}: num_attention_heads={H} is not a multiple of num_key_value_heads={H_kv}"
            )
        self.eps = config_float(config, "rms_norm_eps", file, 1e-6)
        self.act = _activation(config, "hidden_act", "silu", file)
        rotary = rotary_from_config(config, head_dim=d, max_position_embeddings=P, where=file)
        if rotary.rotary_dim != d:  # transformers' Llama rotates the whole head
            raise CheckpointError(
                f"{file}: partial_rotary_factor (rotary_dim={rotary.rotary_dim} of head_dim={d}) "
                f"is not supported for model_type={model_type!r}"
            )
        self.sliding_windows = _sliding_windows(config, model_type, L, file)
        qkv_bias = model_type == "qwen2" or (
            model_type == "llama" and config_bool(config, "attention_bias", file, False)
        )
        o_bias = model_type == "llama" and qkv_bias
        mlp_bias = model_type == "llama" and config_bool(config, "mlp_bias", file, False)
        tied = config_bool(config, "tie_word_embeddings", file, False)
        names = _resolve_names(store, "layers.0.self_attn.q_proj.weight", rename_gamma_beta=False)
        if "embed_tokens.weight" not in names and tied and "lm_head.weight" in store:
            names["embed_tokens.weight"] = "lm_head.weight"  # tied: the LM head is the table
        _require_layers(
            store,
            names,
            f"layers.{L - 1}.self_attn.q_proj.weight",
            "num_hidden_layers",
            L,
            file,
        )
        super().__init__(
            path,
            store,
            names,
            attention_kind="dot",
            num_layers=L,
            num_heads=H,
            head_dim=d,
            d_model=int(c),
            n_ctx=P,
            vocab_size=int(V),
            causal=True,
            num_kv_heads=H_kv,
            rotary=rotary,
        )
        self.kind = model_type
        self._biases = (qkv_bias, o_bias, mlp_bias)
        q_out = Dim(H * d, "num_attention_heads·head_dim")
        kv_out = Dim(H_kv * d, "num_key_value_heads·head_dim")
        expected: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (V, c)}
        for i in range(L):
            pre = f"layers.{i}."
            for part, shape, bias in (
                ("self_attn.q_proj", (q_out, c), qkv_bias),
                ("self_attn.k_proj", (kv_out, c), qkv_bias),
                ("self_attn.v_proj", (kv_out, c), qkv_bias),
                ("self_attn.o_proj", (c, q_out), o_bias),
                ("mlp.gate_proj", (I, c), mlp_bias),
                ("mlp.up_proj", (I, c), mlp_bias),
                ("mlp.down_proj", (c, I), mlp_bias),
            ):
                expected[pre + part + ".weight"] = shape
                if bias:
                    expected[pre + part + ".bias"] = shape[:1]
            for part in ("input_layernorm", "post_attention_layernorm"):
                expected[pre + part + ".weight"] = (c,)
        self._check(expected, file)

    def _check_memory(self, weight_bytes: int, tokens: int | None = None) -> None:
        # n_ctx is a rope setting, often far beyond what anyone runs: check a long sequence now,
        # a longer one when attention() is given it
        super()._check_memory(weight_bytes, LONG_CONTEXT_TOKENS if tokens is None else tokens)

    def _linear(self, x: torch.Tensor, name: str, bias: bool) -> torch.Tensor:
        b = self._tensor(name + ".bias") if bias else None
        return F.linear(x, self._tensor(name + ".weight"), b)

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H, H_kv, d = len(ids_t), self.num_heads, self.num_kv_heads, self.head_dim
        qkv_bias, o_bias, mlp_bias = self._biases
        assert self.rotary is not None
        cos_tp, sin_tp = self.rotary.cos_sin(torch.arange(T))
        q_idx_t1, k_idx_1t = torch.arange(T)[:, None], torch.arange(T)[None, :]
        causal_tt = k_idx_1t <= q_idx_t1
        scale = d**-0.5
        x_tc = self._tensor("embed_tokens.weight")[ids_t]
        out = []
        for i in range(self.num_layers):
            pre = f"layers.{i}."
            h_tc = rms_norm(x_tc, self._tensor(pre + "input_layernorm.weight"), self.eps)
            q_htd = self._linear(h_tc, pre + "self_attn.q_proj", qkv_bias)
            q_htd = q_htd.view(T, H, d).transpose(0, 1)
            k_gtd, v_gtd = (
                self._linear(h_tc, pre + f"self_attn.{p}_proj", qkv_bias)
                .view(T, H_kv, d)
                .transpose(0, 1)
                for p in ("k", "v")
            )
            q_htd = self.rotary.apply(q_htd, cos_tp, sin_tp)
            k_gtd = self.rotary.apply(k_gtd, cos_tp, sin_tp)
            k_htd = k_gtd.repeat_interleave(H // H_kv, dim=0)  # transformers' repeat_kv
            s_htt = (q_htd @ k_htd.mT) * scale
            allowed_tt = causal_tt
            window = self.sliding_windows[i]
            if window is not None:
                allowed_tt = causal_tt & (k_idx_1t > q_idx_t1 - window)
            p_htt = torch.softmax(s_htt.masked_fill(~allowed_tt, -math.inf), dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            v_htd = v_gtd.repeat_interleave(H // H_kv, dim=0)
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, H * d)
            x_tc = x_tc + self._linear(ctx_tc, pre + "self_attn.o_proj", o_bias)
            h_tc = rms_norm(x_tc, self._tensor(pre + "post_attention_layernorm.weight"), self.eps)
            gate_ti = self.act(self._linear(h_tc, pre + "mlp.gate_proj", mlp_bias))
            up_ti = self._linear(h_tc, pre + "mlp.up_proj", mlp_bias)
            x_tc = x_tc + self._linear(gate_ti * up_ti, pre + "mlp.down_proj", mlp_bias)
        return torch.stack(out)

    def _head_weights(self, layer: int) -> HeadWeights:
        pre = f"layers.{layer}.self_attn."
        w_k_gcd = linear_per_head(self._tensor(pre + "k_proj.weight"), self.num_kv_heads)
        return HeadWeights(
            "dot",
            self.head_dim**-0.5,
            w_q_hcd=linear_per_head(self._tensor(pre + "q_proj.weight"), self.num_heads),
            # each query head with the key head it reads (grouped-query attention)
            w_k_hcd=np.repeat(w_k_gcd, self.num_heads // self.num_kv_heads, axis=0),
        )

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("embed_tokens.weight")
