"""DistilBERT and ALBERT encoders from Hugging Face directories, without ``transformers``:
post-LayerNorm BERT-style layers under other tensor names and embeddings.

Both run the BERT layer: softmax(q·kᵀ/√d) over every token (no mask), a = LN(x + dense(ctx)),
x = LN(a + ffn_out(act(ffn_in(a)))).

- DistilBERT (``model_type`` distilbert, ``DistilBertModel`` layout): embeddings = word +
  position (no token types), LayerNorm with eps 1e-12 (fixed in transformers); the layers'
  ``attention.q_lin`` / ``k_lin`` / ``v_lin`` / ``out_lin``, ``sa_layer_norm``, ``ffn.lin1`` /
  ``ffn.lin2``, ``output_layer_norm``. Config keys ``dim``, ``n_heads``, ``n_layers``,
  ``hidden_dim``, ``activation``. With ``sinusoidal_pos_embds`` the position table is the
  stored (fixed, sinusoidal) one, as ``from_pretrained`` loads it.
- ALBERT (``model_type`` albert, ``AlbertModel`` layout): embeddings = word + position + token
  type 0 in ``embedding_size`` dims, LayerNorm, then ``encoder.embedding_hidden_mapping_in`` to
  ``hidden_size`` (the factorised embedding); ``num_hidden_groups`` groups of
  ``inner_group_num`` layers whose weights are shared: attention layer i·inner_group_num + j runs
  layer j of group int(i / (num_hidden_layers / num_hidden_groups)), as ``AlbertTransformer``
  does, so :attr:`num_layers` is num_hidden_layers × inner_group_num (one attention per layer
  run, as ``output_attentions`` lists them).

Token and position embeddings of ALBERT are given in model space: the tables times
``embedding_hidden_mapping_in``'s weight (its bias and the LayerNorm before it left out).
Everything is computed in float32; ``tests/test_heads_distil.py`` compares it with eager
``output_attentions``. The configuration is untrusted (:mod:`models.heads.hf`); absent keys take
``DistilBertConfig``'s / ``AlbertConfig``'s defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.checkpoint import (
    config_float,
    config_int,
    dot_attention_sizes,
    linear_per_head,
)
from flowgraph.models.heads.hf import _activation, _HFCheckpoint, _require_layers, _resolve_names
from flowgraph.models.heads.safe_load import Dim, TensorStore
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["AlbertCheckpoint", "DistilBertCheckpoint"]

_PARTS = ("q", "k", "v", "o", "ln_attn", "ff_in", "ff_out", "ln_out")  # one layer's modules


def _absolute_positions(config: Mapping[str, Any], file: Path) -> None:
    kind = config.get("position_embedding_type", "absolute") or "absolute"
    if kind != "absolute":
        raise CheckpointError(
            f"{file}: position_embedding_type={kind!r} is not supported (absolute only)"
        )


class _PostLNEncoder(_HFCheckpoint):
    """A BERT-style post-LayerNorm encoder whose layer ``i`` reads the modules
    ``self._layers[i][part]`` (part one of :data:`_PARTS`), each with weight and bias."""

    eps: float
    act: Callable[[torch.Tensor], torch.Tensor]
    _layers: list[dict[str, str]]

    def _layer_shapes(self, I: Dim) -> dict[str, tuple[int, ...]]:  # noqa: E741
        c = Dim(self.d_model, "hidden size")
        shapes = {"ff_in": (I, c), "ff_out": (c, I), "ln_attn": (c,), "ln_out": (c,)}
        return {part: shapes.get(part, (c, c)) for part in _PARTS}

    def _expect_layers(self, expected: dict[str, tuple[int, ...]], I: Dim) -> None:  # noqa: E741
        shapes = self._layer_shapes(I)
        for names in self._layers:
            for part, module in names.items():
                expected[module + ".weight"] = shapes[part]
                expected[module + ".bias"] = shapes[part][:1]

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._tensor(name + ".weight"), self._tensor(name + ".bias"))

    def _ln(self, x: torch.Tensor, name: str, width: int | None = None) -> torch.Tensor:
        w, b = self._tensor(name + ".weight"), self._tensor(name + ".bias")
        return F.layer_norm(x, (width or self.d_model,), w, b, self.eps)

    def _embed(self, ids_t: torch.Tensor) -> torch.Tensor:
        """(T, c): the first layer's input."""
        raise NotImplementedError

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H = len(ids_t), self.num_heads
        x_tc = self._embed(ids_t)
        scale = self.head_dim**-0.5
        out = []
        for i, names in enumerate(self._layers):
            q_htd, k_htd, v_htd = (
                self._linear(x_tc, names[p]).view(T, H, -1).transpose(0, 1) for p in "qkv"
            )
            p_htt = torch.softmax((q_htd @ k_htd.mT) * scale, dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, self.d_model)
            a_tc = self._ln(self._linear(ctx_tc, names["o"]) + x_tc, names["ln_attn"])
            h_ti = self.act(self._linear(a_tc, names["ff_in"]))
            x_tc = self._ln(self._linear(h_ti, names["ff_out"]) + a_tc, names["ln_out"])
        return torch.stack(out)

    def _head_weights(self, layer: int) -> HeadWeights:
        names = self._layers[layer]
        return HeadWeights(
            "dot",
            self.head_dim**-0.5,
            w_q_hcd=linear_per_head(self._tensor(names["q"] + ".weight"), self.num_heads),
            w_k_hcd=linear_per_head(self._tensor(names["k"] + ".weight"), self.num_heads),
        )


class DistilBertCheckpoint(_PostLNEncoder):
    """A DistilBERT encoder (``DistilBertModel`` layout, ``distilbert.`` prefixed or not)."""

    kind = "distilbert"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "dim", file, 768), "dim")
        H = config_int(config, "n_heads", file, 12)
        L = config_int(config, "n_layers", file, 6)
        V = Dim(config_int(config, "vocab_size", file, 30522), "vocab_size")
        P = Dim(config_int(config, "max_position_embeddings", file, 512), "max_position_embeddings")
        I = Dim(config_int(config, "hidden_dim", file, 4 * 768), "hidden_dim")  # noqa: E741
        if c % H:
            raise CheckpointError(f"{file}: dim={c} is not a multiple of n_heads={H}")
        _absolute_positions(config, file)
        self.eps = 1e-12  # DistilBERT's LayerNorms: fixed, not a config key
        self.act = _activation(config, "activation", "gelu", file)
        names = _resolve_names(store, "embeddings.word_embeddings.weight", rename_gamma_beta=True)
        last = f"transformer.layer.{L - 1}.attention.q_lin.weight"
        _require_layers(store, names, last, "n_layers", L, file)
        sizes = dot_attention_sizes(layers=L, heads=H, width=c, n_ctx=P, vocab=V, causal=False)
        super().__init__(path, store, names, **sizes)
        self._layers = []
        for i in range(L):
            pre = f"transformer.layer.{i}."
            modules = ("q_lin", "k_lin", "v_lin", "out_lin")
            layer = {p: pre + "attention." + m for p, m in zip("qkvo", modules, strict=True)}
            layer.update(
                ln_attn=pre + "sa_layer_norm",
                ff_in=pre + "ffn.lin1",
                ff_out=pre + "ffn.lin2",
                ln_out=pre + "output_layer_norm",
            )
            self._layers.append(layer)
        expected: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (V, c),
            "embeddings.position_embeddings.weight": (P, c),
            "embeddings.LayerNorm.weight": (c,),
            "embeddings.LayerNorm.bias": (c,),
        }
        self._expect_layers(expected, I)
        self._check(expected, file)

    def _embed(self, ids_t: torch.Tensor) -> torch.Tensor:
        x_tc = self._token_embeddings()[ids_t] + self._position_embeddings()[: len(ids_t)]
        return self._ln(x_tc, "embeddings.LayerNorm")

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("embeddings.word_embeddings.weight")

    def _position_embeddings(self) -> torch.Tensor:
        return self._tensor("embeddings.position_embeddings.weight")


class AlbertCheckpoint(_PostLNEncoder):
    """An ALBERT encoder (``AlbertModel`` layout, ``albert.`` prefixed or not). Extra
    attributes: ``embedding_size``, ``num_hidden_groups``, ``inner_group_num``."""

    kind = "albert"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "hidden_size", file, 4096), "hidden_size")
        E = Dim(config_int(config, "embedding_size", file, 128), "embedding_size")
        H = config_int(config, "num_attention_heads", file, 64)
        L = config_int(config, "num_hidden_layers", file, 12)
        G = config_int(config, "num_hidden_groups", file, 1)
        inner = config_int(config, "inner_group_num", file, 1)
        V = Dim(config_int(config, "vocab_size", file, 30000), "vocab_size")
        P = Dim(config_int(config, "max_position_embeddings", file, 512), "max_position_embeddings")
        I = Dim(config_int(config, "intermediate_size", file, 16384), "intermediate_size")  # noqa: E741
        types = Dim(config_int(config, "type_vocab_size", file, 2), "type_vocab_size")
        if c % H:
            raise CheckpointError(
                f"{file}: hidden_size={c} is not a multiple of num_attention_heads={H}"
            )
        if G > L:
            raise CheckpointError(
                f"{file}: num_hidden_groups={G} is more than num_hidden_layers={L}"
            )
        _absolute_positions(config, file)
        self.eps = config_float(config, "layer_norm_eps", file, 1e-12)
        self.act = _activation(config, "hidden_act", "gelu_new", file)
        self.embedding_size, self.num_hidden_groups, self.inner_group_num = int(E), G, inner
        names = _resolve_names(store, "embeddings.word_embeddings.weight", rename_gamma_beta=True)
        group = "encoder.albert_layer_groups.{g}.albert_layers.{j}."
        last = group.format(g=G - 1, j=inner - 1) + "attention.query.weight"
        _require_layers(store, names, last, "num_hidden_groups", G, file)
        sizes = dot_attention_sizes(
            layers=L * inner, heads=H, width=c, n_ctx=P, vocab=V, causal=False
        )
        super().__init__(path, store, names, **sizes)
        self._layers = []
        for i in range(L):
            g = int(i / (L / G))  # AlbertTransformer's group index, float division and all
            for j in range(inner):
                pre = group.format(g=g, j=j)
                layer = {
                    p: pre + "attention." + m
                    for p, m in zip("qkv", ("query", "key", "value"), strict=True)
                }
                layer.update(
                    o=pre + "attention.dense",
                    ln_attn=pre + "attention.LayerNorm",
                    ff_in=pre + "ffn",
                    ff_out=pre + "ffn_output",
                    ln_out=pre + "full_layer_layer_norm",
                )
                self._layers.append(layer)
        expected: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (V, E),
            "embeddings.position_embeddings.weight": (P, E),
            "embeddings.token_type_embeddings.weight": (types, E),
            "embeddings.LayerNorm.weight": (E,),
            "embeddings.LayerNorm.bias": (E,),
            "encoder.embedding_hidden_mapping_in.weight": (c, E),
            "encoder.embedding_hidden_mapping_in.bias": (c,),
        }
        self._expect_layers(expected, I)  # each shared layer's tensors once
        self._check(expected, file)

    def _embed(self, ids_t: torch.Tensor) -> torch.Tensor:
        x_te = self._tensor("embeddings.word_embeddings.weight")[ids_t]
        x_te = x_te + self._tensor("embeddings.token_type_embeddings.weight")[0]
        x_te = x_te + self._tensor("embeddings.position_embeddings.weight")[: len(ids_t)]
        x_te = self._ln(x_te, "embeddings.LayerNorm", self.embedding_size)
        return self._linear(x_te, "encoder.embedding_hidden_mapping_in")

    def _to_model_space(self, table_ne: torch.Tensor) -> torch.Tensor:
        return F.linear(table_ne, self._tensor("encoder.embedding_hidden_mapping_in.weight"))

    def _token_embeddings(self) -> torch.Tensor:
        return self._to_model_space(self._tensor("embeddings.word_embeddings.weight"))

    def _position_embeddings(self) -> torch.Tensor:
        return self._to_model_space(self._tensor("embeddings.position_embeddings.weight"))
