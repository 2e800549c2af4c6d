"""OPT decoders (``model_type`` opt) from Hugging Face directories, without ``transformers``.

Embeddings: x = project_in(embed_tokens[ids]) + embed_positions[t + 2] — OPT's learned position
table has two extra rows in front (``OPTLearnedPositionalEmbedding``'s offset of 2), and
``project_in`` (no bias) exists only when ``word_embed_proj_dim`` ≠ ``hidden_size`` (OPT-350m).
The block (``OPTDecoderLayer``) with ``do_layer_norm_before`` (the default; every size but 350m):
x += out_proj(attn(LN₁(x))), x += fc2(act(fc1(LN₂(x)))); without it (350m) the LayerNorms come
after each residual sum: x = LN₁(x + out_proj(attn(x))), x = LN₂(x + fc2(act(fc1(x)))).
Attention scales q (bias included) by 1/√d before q·kᵀ, as transformers does, and is causal.
``enable_bias`` (default true) puts biases on q/k/v/out_proj and fc1/fc2;
``layer_norm_elementwise_affine`` false means LayerNorms without weight and bias. The token table
is ``embed_tokens`` (tied to the LM head by default: a file holding only ``lm_head.weight`` is
read from there); the final LayerNorm, ``project_out`` and the LM head are not read.

Everything is computed in float32; ``tests/test_heads_opt.py`` compares it with
``OPTForCausalLM``'s eager ``output_attentions``. The configuration is untrusted
(:mod:`models.heads.hf`); absent keys take ``OPTConfig``'s defaults.
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
    config_bool,
    config_int,
    dot_attention_sizes,
    linear_per_head,
)
from flowgraph.models.heads.hf import _activation, _HFCheckpoint, _require_layers, _resolve_names
from flowgraph.models.heads.safe_load import Dim, TensorStore
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["POSITION_OFFSET", "OPTCheckpoint"]

POSITION_OFFSET = 2  # OPT's position table starts two rows before position 0
_LN_EPS = 1e-5  # nn.LayerNorm's default; OPTConfig has no epsilon key


class OPTCheckpoint(_HFCheckpoint):
    """An OPT decoder (``OPTModel`` layout, ``decoder.`` or ``model.decoder.`` prefixed).
    Extra attributes: ``pre_norm`` (``do_layer_norm_before``), ``projected``
    (``word_embed_proj_dim`` ≠ ``hidden_size``)."""

    kind = "opt"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "hidden_size", file, 768), "hidden_size")
        H = config_int(config, "num_attention_heads", file, 12)
        L = config_int(config, "num_hidden_layers", file, 12)
        V = Dim(config_int(config, "vocab_size", file, 50272), "vocab_size")
        P = Dim(
            config_int(config, "max_position_embeddings", file, 2048), "max_position_embeddings"
        )
        I = Dim(config_int(config, "ffn_dim", file, 3072), "ffn_dim")  # noqa: E741
        if config.get("word_embed_proj_dim") is None:
            E = c
        else:
            E = Dim(config_int(config, "word_embed_proj_dim", file), "word_embed_proj_dim")
        if c % H:
            raise CheckpointError(
                f"{file}: hidden_size={c} is not a multiple of num_attention_heads={H}"
            )
        self.act = _activation(config, "activation_function", "relu", file)
        self.pre_norm = config_bool(config, "do_layer_norm_before", file, True)
        self.bias = config_bool(config, "enable_bias", file, True)
        self.affine = config_bool(config, "layer_norm_elementwise_affine", file, True)
        self.projected = int(E) != int(c)
        tied = config_bool(config, "tie_word_embeddings", file, True)
        names = _resolve_names(store, "layers.0.self_attn.q_proj.weight", rename_gamma_beta=False)
        if "embed_tokens.weight" not in names and tied and "lm_head.weight" in store:
            names["embed_tokens.weight"] = "lm_head.weight"  # tied: the LM head is the table
        _require_layers(
            store, names, f"layers.{L - 1}.self_attn.q_proj.weight", "num_hidden_layers", L, file
        )
        sizes = dot_attention_sizes(layers=L, heads=H, width=c, n_ctx=P, vocab=V, causal=True)
        super().__init__(path, store, names, **sizes)
        P2 = Dim(P + POSITION_OFFSET, "max_position_embeddings + 2")
        expected: dict[str, tuple[int, ...]] = {
            "embed_tokens.weight": (V, E),
            "embed_positions.weight": (P2, c),
        }
        if self.projected:
            expected["project_in.weight"] = (c, E)
        for i in range(L):
            pre = f"layers.{i}."
            for part, shape in (
                ("self_attn.q_proj", (c, c)),
                ("self_attn.k_proj", (c, c)),
                ("self_attn.v_proj", (c, c)),
                ("self_attn.out_proj", (c, c)),
                ("fc1", (I, c)),
                ("fc2", (c, I)),
            ):
                expected[pre + part + ".weight"] = shape
                if self.bias:
                    expected[pre + part + ".bias"] = shape[:1]
            if self.affine:
                for part in ("self_attn_layer_norm", "final_layer_norm"):
                    expected[pre + part + ".weight"] = expected[pre + part + ".bias"] = (c,)
        self._check(expected, file)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        b = self._tensor(name + ".bias") if self.bias else None
        return F.linear(x, self._tensor(name + ".weight"), b)

    def _ln(self, x_tc: torch.Tensor, name: str) -> torch.Tensor:
        w = self._tensor(name + ".weight") if self.affine else None
        b = self._tensor(name + ".bias") if self.affine else None
        return F.layer_norm(x_tc, (self.d_model,), w, b, _LN_EPS)

    def _embed(self, ids_t: torch.Tensor) -> torch.Tensor:
        x_te = self._tensor("embed_tokens.weight")[ids_t]
        if self.projected:
            x_te = F.linear(x_te, self._tensor("project_in.weight"))
        return x_te + self._position_embeddings()[: len(ids_t)]

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H, d = len(ids_t), self.num_heads, self.head_dim
        causal_tt = torch.ones(T, T, dtype=torch.bool).tril()
        scale = d**-0.5
        x_tc = self._embed(ids_t)
        out = []
        for i in range(self.num_layers):
            pre = f"layers.{i}."
            h_tc = self._ln(x_tc, pre + "self_attn_layer_norm") if self.pre_norm else x_tc
            q_htd = (self._linear(h_tc, pre + "self_attn.q_proj") * scale).view(T, H, d)
            k_htd, v_htd = (
                self._linear(h_tc, pre + f"self_attn.{p}_proj").view(T, H, d).transpose(0, 1)
                for p in ("k", "v")
            )
            s_htt = (q_htd.transpose(0, 1) @ k_htd.mT).masked_fill(~causal_tt, -math.inf)
            p_htt = torch.softmax(s_htt, dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, H * d)
            x_tc = x_tc + self._linear(ctx_tc, pre + "self_attn.out_proj")
            if not self.pre_norm:
                x_tc = self._ln(x_tc, pre + "self_attn_layer_norm")
            h_tc = self._ln(x_tc, pre + "final_layer_norm") if self.pre_norm else x_tc
            x_tc = x_tc + self._linear(self.act(self._linear(h_tc, pre + "fc1")), pre + "fc2")
            if not self.pre_norm:
                x_tc = self._ln(x_tc, pre + "final_layer_norm")
        return torch.stack(out)

    def _head_weights(self, layer: int) -> HeadWeights:
        pre = f"layers.{layer}.self_attn."
        return HeadWeights(
            "dot",
            self.head_dim**-0.5,
            w_q_hcd=linear_per_head(self._tensor(pre + "q_proj.weight"), self.num_heads),
            w_k_hcd=linear_per_head(self._tensor(pre + "k_proj.weight"), self.num_heads),
        )

    def _token_embeddings(self) -> torch.Tensor:
        """(V, hidden_size): the token table as the layers see it (through ``project_in``)."""
        table_ve = self._tensor("embed_tokens.weight")
        if self.projected:
            return F.linear(table_ve, self._tensor("project_in.weight"))
        return table_ve

    def _position_embeddings(self) -> torch.Tensor:
        """Row t: the embedding added at position t (the table's row t + 2)."""
        table = self._tensor("embed_positions.weight")
        return table[POSITION_OFFSET : POSITION_OFFSET + self.n_ctx]
