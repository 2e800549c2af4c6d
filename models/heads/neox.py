"""GPT-NeoX decoders (``model_type`` gpt_neox: Pythia, GPT-NeoX-20B) from Hugging Face
directories, without ``transformers``.

The block (``GPTNeoXLayer``): a = dense(attn(LN₁(x))); with ``use_parallel_residual`` (the
default) x ← x + a + mlp(LN₂(x)), else x ← x + a, then x ← x + mlp(LN₂(x)). The fused
``query_key_value`` Linear is laid out per head: its output viewed as (T, H, 3·d) holds head h's
q, k and v side by side (``[h, 3, d]``), not GPT-2's q|k|v blocks. Attention rotates the first
rotary_dim = int(d · ``rotary_pct``) dims of q and k (:class:`~models.heads.rotary.Rotary`, the
half layout; the other dims pass through), scales q·kᵀ by 1/√d and is causal. Old configs say
``rotary_pct`` (default 0.25) and ``rotary_emb_base``; newer ones ``rope_parameters`` with
``partial_rotary_factor`` and ``rope_theta``, as transformers' ``GPTNeoXConfig`` reads them.
``attention_bias`` (default true) puts biases on query_key_value and dense. The token table is
``embed_in`` (with ``tie_word_embeddings`` and only the LM head stored, ``embed_out`` /
``lm_head``); the final LayerNorm and LM head change no attention and are not read.

Everything is computed in float32; ``tests/test_heads_neox.py`` compares it with
``GPTNeoXForCausalLM``'s eager ``output_attentions``. The configuration is untrusted
(:mod:`models.heads.hf`); absent keys take ``GPTNeoXConfig``'s defaults.
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
    LONG_CONTEXT_TOKENS,
    config_bool,
    config_float,
    config_int,
    linear_per_head,
)
from flowgraph.models.heads.hf import _activation, _HFCheckpoint, _require_layers, _resolve_names
from flowgraph.models.heads.rotary import rotary_from_config
from flowgraph.models.heads.safe_load import Dim, TensorStore
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["NeoXCheckpoint", "neox_rope_config"]

DEFAULT_ROTARY_PCT = 0.25  # GPTNeoXConfig's default when neither key is given
DEFAULT_ROTARY_BASE = 10000.0


def neox_rope_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config``'s rope settings in the form :func:`~models.heads.rotary.rotary_from_config`
    reads, as ``GPTNeoXConfig`` fills them in: ``rope_parameters`` (or ``rope_scaling``), then
    ``rotary_emb_base`` for a missing ``rope_theta`` and ``rotary_pct`` (default 0.25) for a
    missing ``partial_rotary_factor``."""
    raw = config.get("rope_parameters") or config.get("rope_scaling") or {}
    params = dict(raw) if isinstance(raw, Mapping) else raw
    if isinstance(params, dict):
        if params.get("rope_theta") is None:
            params["rope_theta"] = config.get(
                "rope_theta", config.get("rotary_emb_base", DEFAULT_ROTARY_BASE)
            )
        if params.get("partial_rotary_factor") is None:
            params["partial_rotary_factor"] = config.get(
                "partial_rotary_factor", config.get("rotary_pct", DEFAULT_ROTARY_PCT)
            )
    return {"rope_parameters": params}


class NeoXCheckpoint(_HFCheckpoint):
    """A GPT-NeoX decoder (``GPTNeoXModel`` layout, with or without the ``gpt_neox.`` prefix of
    ``GPTNeoXForCausalLM``). Extra attribute: ``parallel_residual``."""

    kind = "gpt_neox"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "hidden_size", file, 6144), "hidden_size")
        H = config_int(config, "num_attention_heads", file, 64)
        L = config_int(config, "num_hidden_layers", file, 44)
        V = Dim(config_int(config, "vocab_size", file, 50432), "vocab_size")
        P = config_int(config, "max_position_embeddings", file, 2048)
        I = Dim(config_int(config, "intermediate_size", file, 24576), "intermediate_size")  # noqa: E741
        if c % H:
            raise CheckpointError(
                f"{file}: hidden_size={c} is not a multiple of num_attention_heads={H}"
            )
        d = c // H
        self.eps = config_float(config, "layer_norm_eps", file, 1e-5)
        self.act = _activation(config, "hidden_act", "gelu", file)
        self.parallel_residual = config_bool(config, "use_parallel_residual", file, True)
        self.bias = config_bool(config, "attention_bias", file, True)
        rotary = rotary_from_config(
            neox_rope_config(config), head_dim=d, max_position_embeddings=P, where=file
        )
        tied = config_bool(config, "tie_word_embeddings", file, False)
        names = _resolve_names(
            store, "layers.0.attention.query_key_value.weight", rename_gamma_beta=False
        )
        if "embed_in.weight" not in names and tied:
            for head in ("embed_out.weight", "lm_head.weight"):  # tied: the LM head is the table
                if head in store:
                    names["embed_in.weight"] = head
                    break
        _require_layers(
            store,
            names,
            f"layers.{L - 1}.attention.query_key_value.weight",
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
            rotary=rotary,
        )
        c3 = Dim(3 * c, "3·hidden_size")
        expected: dict[str, tuple[int, ...]] = {"embed_in.weight": (V, c)}
        for i in range(L):
            pre = f"layers.{i}."
            for part, shape, bias in (
                ("attention.query_key_value", (c3, c), self.bias),
                ("attention.dense", (c, c), self.bias),
                ("mlp.dense_h_to_4h", (I, c), True),
                ("mlp.dense_4h_to_h", (c, I), True),
            ):
                expected[pre + part + ".weight"] = shape
                if bias:
                    expected[pre + part + ".bias"] = shape[:1]
            for part in ("input_layernorm", "post_attention_layernorm"):
                expected[pre + part + ".weight"] = expected[pre + part + ".bias"] = (c,)
        self._check(expected, file)

    def _check_memory(self, weight_bytes: int, tokens: int | None = None) -> None:
        # as for Llama: n_ctx is a rope setting, check a long sequence now, a longer one later
        super()._check_memory(weight_bytes, LONG_CONTEXT_TOKENS if tokens is None else tokens)

    def _linear(self, x: torch.Tensor, name: str, bias: bool = True) -> torch.Tensor:
        b = self._tensor(name + ".bias") if bias else None
        return F.linear(x, self._tensor(name + ".weight"), b)

    def _ln(self, x_tc: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self._tensor(name + ".weight"), self._tensor(name + ".bias")
        return F.layer_norm(x_tc, (self.d_model,), w, b, self.eps)

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H, d = len(ids_t), self.num_heads, self.head_dim
        assert self.rotary is not None
        cos_tp, sin_tp = self.rotary.cos_sin(torch.arange(T))
        causal_tt = torch.ones(T, T, dtype=torch.bool).tril()
        scale = d**-0.5
        x_tc = self._tensor("embed_in.weight")[ids_t]
        out = []
        for i in range(self.num_layers):
            pre = f"layers.{i}."
            h_tc = self._ln(x_tc, pre + "input_layernorm")
            qkv_t3c = self._linear(h_tc, pre + "attention.query_key_value", self.bias)
            qkv_ht3d = qkv_t3c.view(T, H, 3 * d).transpose(0, 1)  # per head: q | k | v
            q_htd, k_htd, v_htd = qkv_ht3d.chunk(3, dim=-1)
            q_htd = self.rotary.apply(q_htd, cos_tp, sin_tp)
            k_htd = self.rotary.apply(k_htd, cos_tp, sin_tp)
            s_htt = ((q_htd @ k_htd.mT) * scale).masked_fill(~causal_tt, -math.inf)
            p_htt = torch.softmax(s_htt, dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, H * d)
            a_tc = self._linear(ctx_tc, pre + "attention.dense", self.bias)
            if self.parallel_residual:
                m_tc = self._mlp(self._ln(x_tc, pre + "post_attention_layernorm"), pre)
                x_tc = x_tc + a_tc + m_tc
            else:
                x_tc = x_tc + a_tc
                x_tc = x_tc + self._mlp(self._ln(x_tc, pre + "post_attention_layernorm"), pre)
        return torch.stack(out)

    def _mlp(self, h_tc: torch.Tensor, pre: str) -> torch.Tensor:
        return self._linear(
            self.act(self._linear(h_tc, pre + "mlp.dense_h_to_4h")), pre + "mlp.dense_4h_to_h"
        )

    def _head_weights(self, layer: int) -> HeadWeights:
        H, d, c = self.num_heads, self.head_dim, self.d_model
        w_h3dc = self._tensor(f"layers.{layer}.attention.query_key_value.weight").view(H, 3, d, c)
        return HeadWeights(
            "dot",
            d**-0.5,
            w_q_hcd=linear_per_head(w_h3dc[:, 0].reshape(H * d, c), H),
            w_k_hcd=linear_per_head(w_h3dc[:, 1].reshape(H * d, c), H),
        )

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("embed_in.weight")
