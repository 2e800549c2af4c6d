"""Hugging Face model directories, without ``transformers``: the BERT family and GPT-2 here,
Llama-style decoders (llama, mistral, qwen2) in :mod:`models.heads.llama`, GPT-NeoX
(gpt_neox) in :mod:`models.heads.neox`, OPT in :mod:`models.heads.opt`, GPT-Neo (gpt_neo)
in :mod:`models.heads.gptneo`, DistilBERT and ALBERT in :mod:`models.heads.distil`.

A directory with ``config.json`` (``model_type`` one of :data:`MODEL_TYPES`) and its
weights as ``model.safetensors``, ``pytorch_model.bin`` (read with ``weights_only=True``) or a
sharded ``*.index.json``. Tensor names may carry a head model's prefix (``bert.``, ``roberta.``,
``transformer.``) and old BERT files' LayerNorm ``gamma``/``beta``; tensors other than the
encoder's/decoder's (pooler, LM heads) are ignored.

``config.json`` is untrusted: every size must be an int in [1, 2³¹ − 1] (named with its value
when not), booleans true/false, epsilons finite and positive; each tensor the model uses must be
a real float tensor of the shape the config gives (a wrong dimension names its key), the last
layer's tensors must exist before the layers are listed, and what the checkpoint computes must
fit in memory (:func:`models.heads.checkpoint.check_memory`). Shard names in an index are plain
file names beside it.

The forward passes are written here from the state dict, each layer's softmax kept:

- BERT family (post-LayerNorm encoder): embeddings = word + position + token type 0 (what
  ``transformers`` adds when no ``token_type_ids`` are given), LayerNorm; per layer
  softmax(q·kᵀ/√d) (under the causal mask when ``is_decoder`` is set, as in
  ``BertLMHeadModel``), output dense + residual + LayerNorm, MLP + residual + LayerNorm. RoBERTa's
  position ids are transformers' ``create_position_ids_from_input_ids``: padding_idx + 1 + the
  count of non-padding tokens so far, and padding_idx for a padding token.
- GPT-2 (pre-LayerNorm causal decoder, ``Conv1D`` weights stored (in, out)):
  softmax(q·kᵀ/√d) under the causal mask, with ``scale_attn_weights`` and
  ``scale_attn_by_inverse_layer_idx`` honoured. :func:`decoder_attention` is shared with
  nanoGPT.

Computation is in float32 (half-precision checkpoints are upcast); the tests compare it with
``transformers``' ``output_attentions`` (eager attention).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.checkpoint import (
    Checkpoint,
    config_bool,
    config_float,
    config_int,
    dot_attention_sizes,
    fused_qkv_weights,
    id_tokens,
    linear_per_head,
    split_tokenize,
)
from flowgraph.models.heads.safe_load import Dim, TensorStore, check_tensors
from flowgraph.models.heads.weights import HeadWeights

__all__ = [
    "ACTIVATIONS",
    "MODEL_TYPES",
    "BertCheckpoint",
    "DecoderLayer",
    "GPT2Checkpoint",
    "decoder_attention",
    "hf_vocabulary",
    "load_hf",
]

MODEL_TYPES = {  # model_type → the loader's family
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
    "data2vec-text": "roberta",
    "ernie": "bert",
    "electra": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
    "gpt_neo": "gpt_neo",
    "distilbert": "distilbert",
    "albert": "albert",
}
_FAMILIES = (
    "BERT family: BertModel/RobertaModel layout (BERT, RoBERTa, XLM-R, CamemBERT, "
    "data2vec-text, ERNIE, ELECTRA); GPT-2; Llama-style decoders: Llama, Mistral, "
    "Qwen2, SmolLM, TinyLlama; GPT-NeoX (Pythia); OPT; GPT-Neo (TinyStories); DistilBERT; ALBERT"
)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # the exact (erf) GELU
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _weight_files(directory: Path) -> list[Path]:
    """The weight file(s) of a Hugging Face directory, safetensors first."""
    for name in WEIGHT_FILES:
        file = directory / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return [file]
        try:
            weight_map = json.loads(file.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{file}: not a shard index (no weight_map)") from None
        bad = [s for s in shards if not _is_shard_name(s, name)]
        if bad:
            raise CheckpointError(
                f"{file}: shard {bad[0]!r} is not a file name beside the index ending in "
                f"{_shard_suffix(name)}"
            )
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{file} lists shards that are missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    raise CheckpointError(
        f"{directory} has a config.json but no weights: looked for {', '.join(WEIGHT_FILES)}"
    )


def _shard_suffix(index_name: str) -> str:
    return ".safetensors" if index_name.startswith("model.safetensors") else ".bin"


def _is_shard_name(shard: object, index_name: str) -> bool:
    """A plain file name in the index's directory (no path, no ``..``), of the index's format."""
    return (
        isinstance(shard, str)
        and "/" not in shard
        and "\\" not in shard
        and shard not in ("", ".", "..")
        and shard.endswith(_shard_suffix(index_name))
    )


def _require_layers(
    store: TensorStore, names: dict[str, str], last: str, key: str, L: int, file: Path
) -> None:
    """The tensor ``last`` of the config's last layer exists (before ``L`` layers of names are
    listed: a config claiming 10⁹ layers is refused at once)."""
    if names.get(last, last) not in store:
        raise CheckpointError(
            f"tensor {last} missing from {store.where()}: {file} says {key}={L}, so layer {L - 1} "
            "should exist"
        )


def _activation(config: Mapping[str, Any], key: str, default: str, file: Path) -> Callable:
    name = config.get(key, default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise CheckpointError(
            f"{file}: {key}={name!r} is not supported; supported: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _resolve_names(store: TensorStore, anchor: str, rename_gamma_beta: bool) -> dict[str, str]:
    """canonical name → stored name: the prefix in front of ``anchor`` (a head model's
    ``bert.`` / ``transformer.``) stripped, old LayerNorm ``gamma``/``beta`` read as
    ``weight``/``bias``."""
    prefixes = [n[: -len(anchor)] for n in store.names() if n.endswith(anchor)]
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        raise CheckpointError(f"tensor {anchor} missing from {store.where()}")
    prefix = min(prefixes, key=len)
    names = {}
    for stored in store.names():
        if not stored.startswith(prefix):
            continue
        name = stored[len(prefix) :]
        if rename_gamma_beta and ".LayerNorm." in name:
            name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight")
            name = name.replace(".LayerNorm.beta", ".LayerNorm.bias")
        names.setdefault(name, stored)
    return names


class _HFCheckpoint(Checkpoint):
    """What the BERT and GPT-2 loaders share: named tensors, read once as float32."""

    def __init__(self, path: Path, store: TensorStore, names: dict[str, str], **sizes: Any):
        super().__init__(path, name=path.name, **sizes)
        self.store, self._names = store, names

    def _check(self, expected: dict[str, tuple[int, ...]], config: Path) -> None:
        """The tensors' names, shapes and dtypes, then whether the computations fit in memory."""
        stored = {self._names.get(k, k): shape for k, shape in expected.items()}
        check_tensors(self.store, stored, config=str(config))
        used = sum(math.prod(shape) for shape in stored.values())
        self._check_memory(self.store.nbytes() + 4 * used)

    def _tensor(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (canonical) as float32, read once."""

        def build() -> torch.Tensor:
            t = self.store.get(self._names.get(name, name))
            return t.to(torch.float32) if t.dtype != torch.float32 else t

        return self._cached(f"tensor:{name}", build)

    def _vocabulary(self) -> tuple[list[str], Callable[[str], list[int]]]:
        return hf_vocabulary(self.path, self.vocab_size)


class BertCheckpoint(_HFCheckpoint):
    """A BERT, RoBERTa or XLM-R encoder (``BertModel`` / ``RobertaModel`` layout)."""

    kind = "bert"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        # absent keys take transformers' BertConfig defaults, as from_pretrained builds the model
        c = Dim(config_int(config, "hidden_size", file, 768), "hidden_size")
        H = config_int(config, "num_attention_heads", file, 12)
        L = config_int(config, "num_hidden_layers", file, 12)
        V = Dim(config_int(config, "vocab_size", file, 30522), "vocab_size")
        P = Dim(config_int(config, "max_position_embeddings", file, 512), "max_position_embeddings")
        I = Dim(config_int(config, "intermediate_size", file, 3072), "intermediate_size")  # noqa: E741
        if c % H:
            raise CheckpointError(f"{file}: hidden_size={c} is not a multiple of heads={H}")
        kind = config.get("position_embedding_type", "absolute") or "absolute"
        if kind != "absolute":
            raise CheckpointError(
                f"{file}: position_embedding_type={kind!r} is not supported (absolute only)"
            )
        model_type = config["model_type"]
        self.roberta = MODEL_TYPES[model_type] == "roberta"
        # ELECTRA: embeddings of embedding_size, projected by embeddings_project when it differs
        E = c
        if model_type == "electra":
            E = Dim(config_int(config, "embedding_size", file, 128), "embedding_size")
        self.embedding_size, self.projected = int(E), int(E) != int(c)
        # ERNIE with use_task_id adds task type 0's embedding too (no task_type_ids given)
        self.task_vocab: Dim | None = None
        if model_type == "ernie" and config_bool(config, "use_task_id", file, False):
            tasks = config_int(config, "task_type_vocab_size", file, 3)
            self.task_vocab = Dim(tasks, "task_type_vocab_size")
        # transformers' RoBERTa numbers positions from padding_idx + 1
        pad = config.get("pad_token_id", 1)
        self.padding_idx = (
            config_int({"pad_token_id": pad or 0}, "pad_token_id", file, minimum=0)
            if self.roberta
            else None
        )
        offset = self.padding_idx + 1 if self.padding_idx is not None else 0
        if P - offset < 1:
            raise CheckpointError(f"{file}: max_position_embeddings={P} leaves no positions")
        types = config.get("type_vocab_size", 2)
        self.type_vocab = Dim(
            config_int({"type_vocab_size": types or 0}, "type_vocab_size", file, minimum=0),
            "type_vocab_size",
        )
        self.eps = config_float(config, "layer_norm_eps", file, 1e-12)
        self.act = _activation(config, "hidden_act", "gelu", file)
        names = _resolve_names(store, "embeddings.word_embeddings.weight", rename_gamma_beta=True)
        _require_layers(
            store,
            names,
            f"encoder.layer.{L - 1}.attention.self.query.weight",
            "num_hidden_layers",
            L,
            file,
        )
        # BertLMHeadModel / RobertaForCausalLM: transformers masks the self-attention causally
        causal = config_bool(config, "is_decoder", file, False)
        sizes = dot_attention_sizes(
            layers=L, heads=H, width=c, n_ctx=P - offset, vocab=V, causal=causal
        )
        super().__init__(path, store, names, **sizes)
        expected = {
            "embeddings.word_embeddings.weight": (V, E),
            "embeddings.position_embeddings.weight": (P, E),
            "embeddings.LayerNorm.weight": (E,),
            "embeddings.LayerNorm.bias": (E,),
        }
        if self.type_vocab:
            expected["embeddings.token_type_embeddings.weight"] = (self.type_vocab, E)
        if self.task_vocab is not None:
            expected["embeddings.task_type_embeddings.weight"] = (self.task_vocab, c)
        if self.projected:
            expected["embeddings_project.weight"] = (c, E)
            expected["embeddings_project.bias"] = (c,)
        for i in range(L):
            pre = f"encoder.layer.{i}."
            for part, shape in (
                ("attention.self.query", (c, c)),
                ("attention.self.key", (c, c)),
                ("attention.self.value", (c, c)),
                ("attention.output.dense", (c, c)),
                ("intermediate.dense", (I, c)),
                ("output.dense", (c, I)),
            ):
                expected[pre + part + ".weight"] = shape
                expected[pre + part + ".bias"] = shape[:1]
            for part in ("attention.output.LayerNorm", "output.LayerNorm"):
                expected[pre + part + ".weight"] = expected[pre + part + ".bias"] = (c,)
        self._check(expected, file)

    def position_ids(self, ids_t: torch.Tensor) -> torch.Tensor:
        """The position id of each token, as transformers computes it without padding input."""
        if self.padding_idx is None:
            return torch.arange(len(ids_t))
        real_t = (ids_t != self.padding_idx).long()
        return torch.cumsum(real_t, 0) * real_t + self.padding_idx

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w, b = self._tensor(name + ".weight"), self._tensor(name + ".bias")
        return F.layer_norm(x, w.shape, w, b, self.eps)

    def _to_model_space(self, table_ne: torch.Tensor) -> torch.Tensor:
        """An embedding table in model space: ELECTRA's through ``embeddings_project``'s weight
        (its bias and the LayerNorm before it left out); others unchanged."""
        if not self.projected:
            return table_ne
        return F.linear(table_ne, self._tensor("embeddings_project.weight"))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._tensor(name + ".weight"), self._tensor(name + ".bias"))

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        T, H = len(ids_t), self.num_heads
        x_tc = self._tensor("embeddings.word_embeddings.weight")[ids_t]
        x_tc = (
            x_tc + self._tensor("embeddings.position_embeddings.weight")[self.position_ids(ids_t)]
        )
        if self.type_vocab:
            x_tc = x_tc + self._tensor("embeddings.token_type_embeddings.weight")[0]
        if self.task_vocab is not None:
            x_tc = x_tc + self._tensor("embeddings.task_type_embeddings.weight")[0]
        x_tc = self._ln(x_tc, "embeddings.LayerNorm")
        if self.projected:
            x_tc = self._linear(x_tc, "embeddings_project")
        scale = 1.0 / math.sqrt(self.head_dim)
        allowed_tt = torch.ones(T, T, dtype=torch.bool).tril() if self.causal else None
        out = []
        for i in range(self.num_layers):
            pre = f"encoder.layer.{i}."
            q_htd, k_htd, v_htd = (
                self._linear(x_tc, pre + "attention.self." + part).view(T, H, -1).transpose(0, 1)
                for part in ("query", "key", "value")
            )
            s_htt = (q_htd @ k_htd.mT) * scale
            if allowed_tt is not None:
                s_htt = s_htt.masked_fill(~allowed_tt, -math.inf)
            p_htt = torch.softmax(s_htt, dim=-1)
            out.append(p_htt)
            if i == self.num_layers - 1:
                break  # the last layer's output changes no attention
            ctx_tc = (p_htt @ v_htd).transpose(0, 1).reshape(T, self.d_model)
            a_tc = self._ln(
                self._linear(ctx_tc, pre + "attention.output.dense") + x_tc,
                pre + "attention.output.LayerNorm",
            )
            h_ti = self.act(self._linear(a_tc, pre + "intermediate.dense"))
            x_tc = self._ln(
                self._linear(h_ti, pre + "output.dense") + a_tc, pre + "output.LayerNorm"
            )
        return torch.stack(out)

    def _head_weights(self, layer: int) -> HeadWeights:
        pre = f"encoder.layer.{layer}.attention.self."
        return HeadWeights(
            "dot",
            1.0 / math.sqrt(self.head_dim),
            w_q_hcd=linear_per_head(self._tensor(pre + "query.weight"), self.num_heads),
            w_k_hcd=linear_per_head(self._tensor(pre + "key.weight"), self.num_heads),
        )

    def _token_embeddings(self) -> torch.Tensor:
        return self._to_model_space(self._tensor("embeddings.word_embeddings.weight"))

    def _sequence_positions(self, ids: np.ndarray) -> np.ndarray:
        if self.padding_idx is None:
            return super()._sequence_positions(ids)
        rows_t = self.position_ids(torch.from_numpy(ids))  # padding tokens: row padding_idx
        with torch.inference_mode():
            table = self._tensor("embeddings.position_embeddings.weight")
            return table[rows_t].to(torch.float64).numpy()

    def _position_embeddings(self) -> torch.Tensor:
        offset = 0 if self.padding_idx is None else self.padding_idx + 1
        table = self._to_model_space(self._tensor("embeddings.position_embeddings.weight"))
        return table[offset : offset + self.n_ctx]


@dataclass
class DecoderLayer:
    """One pre-LayerNorm decoder block's tensors, Linear orientation (out, in); biases may be
    None (nanoGPT's ``bias=False``)."""

    ln_1: tuple[torch.Tensor, torch.Tensor | None]
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # (3c, c): q, k, v rows
    proj: tuple[torch.Tensor, torch.Tensor | None]
    ln_2: tuple[torch.Tensor, torch.Tensor | None]
    fc: tuple[torch.Tensor, torch.Tensor | None]
    fc_proj: tuple[torch.Tensor, torch.Tensor | None]


def decoder_attention(
    x_tc: torch.Tensor,
    layers: list[DecoderLayer],
    *,
    n_head: int,
    eps: float,
    act: Callable[[torch.Tensor], torch.Tensor],
    scales: list[float],
) -> torch.Tensor:
    """(L, H, T, T) causal attention probabilities of a GPT-2-style decoder on the embedded
    sequence ``x_tc`` (token + position embeddings): x += proj(attn(ln_1(x))), x += mlp(ln_2(x));
    ``scales[i]`` is layer i's factor on q·kᵀ."""
    T, c = x_tc.shape
    causal_tt = torch.ones(T, T, dtype=torch.bool).tril()
    out = []
    for i, layer in enumerate(layers):
        h_tc = F.layer_norm(x_tc, (c,), *layer.ln_1, eps)
        q_tc, k_tc, v_tc = F.linear(h_tc, *layer.qkv).split(c, dim=-1)
        q_htd, k_htd, v_htd = (t.view(T, n_head, -1).transpose(0, 1) for t in (q_tc, k_tc, v_tc))
        s_htt = ((q_htd @ k_htd.mT) * scales[i]).masked_fill(~causal_tt, -math.inf)
        p_htt = torch.softmax(s_htt, dim=-1)
        out.append(p_htt)
        if i == len(layers) - 1:
            break
        x_tc = x_tc + F.linear((p_htt @ v_htd).transpose(0, 1).reshape(T, c), *layer.proj)
        h_tc = F.layer_norm(x_tc, (c,), *layer.ln_2, eps)
        x_tc = x_tc + F.linear(act(F.linear(h_tc, *layer.fc)), *layer.fc_proj)
    return torch.stack(out)


class GPT2Checkpoint(_HFCheckpoint):
    """A GPT-2 decoder (``GPT2Model`` / ``GPT2LMHeadModel`` layout)."""

    kind = "gpt2"

    def __init__(self, path: Path, config: Mapping[str, Any], store: TensorStore) -> None:
        file = path / "config.json"
        c = Dim(config_int(config, "n_embd", file, 768), "n_embd")
        H = config_int(config, "n_head", file, 12)
        L = config_int(config, "n_layer", file, 12)
        V = Dim(config_int(config, "vocab_size", file, 50257), "vocab_size")
        P = Dim(config_int(config, "n_positions", file, 1024), "n_positions")
        if config.get("n_inner") is not None:
            I = Dim(config_int(config, "n_inner", file), "n_inner")  # noqa: E741
        else:
            I = Dim(4 * c, "4·n_embd (n_inner is null)")  # noqa: E741
        if c % H:
            raise CheckpointError(f"{file}: n_embd={c} is not a multiple of n_head={H}")
        self.eps = config_float(config, "layer_norm_epsilon", file, 1e-5)
        self.act = _activation(config, "activation_function", "gelu_new", file)
        scaled = config_bool(config, "scale_attn_weights", file, True)
        base = 1.0 / math.sqrt(c // H) if scaled else 1.0
        by_layer = config_bool(config, "scale_attn_by_inverse_layer_idx", file, False)
        names = _resolve_names(store, "wte.weight", rename_gamma_beta=False)
        _require_layers(store, names, f"h.{L - 1}.attn.c_attn.weight", "n_layer", L, file)
        self.scales = [base / (i + 1) if by_layer else base for i in range(L)]
        sizes = dot_attention_sizes(layers=L, heads=H, width=c, n_ctx=P, vocab=V, causal=True)
        super().__init__(path, store, names, **sizes)
        c3 = Dim(3 * c, "3·n_embd")
        expected = {"wte.weight": (V, c), "wpe.weight": (P, c)}
        for i in range(L):
            for part, shape in (
                ("attn.c_attn", (c, c3)),
                ("attn.c_proj", (c, c)),
                ("mlp.c_fc", (c, I)),
                ("mlp.c_proj", (I, c)),
            ):
                expected[f"h.{i}.{part}.weight"] = shape
                expected[f"h.{i}.{part}.bias"] = shape[1:]
            for part in ("ln_1", "ln_2"):
                expected[f"h.{i}.{part}.weight"] = expected[f"h.{i}.{part}.bias"] = (c,)
        self._check(expected, file)

    def _layers(self) -> list[DecoderLayer]:
        def conv(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # Conv1D (in, out) → Linear
            return self._tensor(name + ".weight").T, self._tensor(name + ".bias")

        def ln(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return self._tensor(name + ".weight"), self._tensor(name + ".bias")

        def build() -> list[DecoderLayer]:
            return [
                DecoderLayer(
                    ln(f"h.{i}.ln_1"),
                    conv(f"h.{i}.attn.c_attn"),
                    conv(f"h.{i}.attn.c_proj"),
                    ln(f"h.{i}.ln_2"),
                    conv(f"h.{i}.mlp.c_fc"),
                    conv(f"h.{i}.mlp.c_proj"),
                )
                for i in range(self.num_layers)
            ]

        return self._cached("layers", build)

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        x_tc = self._tensor("wte.weight")[ids_t] + self._tensor("wpe.weight")[: len(ids_t)]
        return decoder_attention(
            x_tc,
            self._layers(),
            n_head=self.num_heads,
            eps=self.eps,
            act=self.act,
            scales=self.scales,
        )

    def _head_weights(self, layer: int) -> HeadWeights:
        w_3cc = self._layers()[layer].qkv[0]  # (3c, c), Linear orientation
        return fused_qkv_weights(w_3cc, self.num_heads, self.scales[layer])

    def _token_embeddings(self) -> torch.Tensor:
        return self._tensor("wte.weight")

    def _position_embeddings(self) -> torch.Tensor:
        return self._tensor("wpe.weight")


def hf_vocabulary(directory: Path, vocab_size: int) -> tuple[list[str], Callable[[str], list[int]]]:
    """Tokens and tokenizer of a Hugging Face directory: ``tokenizer.json`` (special tokens
    added as its post-processor says, whatever ``tokenizer_config.json``'s ``add_bos_token`` /
    ``add_eos_token``; transformers 5 does the same), else WordPiece ``vocab.txt``
    (lower-cased unless ``tokenizer_config.json`` says ``do_lower_case: false``; [CLS] … [SEP]
    added), else byte-level BPE ``vocab.json`` + ``merges.txt`` (no special tokens), else the
    ids themselves (tokens ``str(id)``, text "5 17 3"). Ids the tokenizer does not cover are
    shown as str(id). Padding and truncation configured in the file are switched off: a text
    longer than n_ctx is an error in :meth:`Checkpoint.attention`, never silently cut."""
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise CheckpointError(f"cannot read {directory / 'tokenizer.json'}: {exc}") from None
    elif (directory / "vocab.txt").is_file():
        from tokenizers import BertWordPieceTokenizer

        lower = True
        options = directory / "tokenizer_config.json"
        if options.is_file():
            try:
                lower = bool(
                    json.loads(options.read_text(encoding="utf-8")).get("do_lower_case", True)
                )
            except (ValueError, RecursionError, AttributeError):
                raise CheckpointError(f"{options}: not valid JSON") from None
        tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lower)
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        from tokenizers import ByteLevelBPETokenizer

        tokenizer = ByteLevelBPETokenizer(
            str(directory / "vocab.json"), str(directory / "merges.txt")
        )
    tokens = id_tokens(vocab_size)
    if tokenizer is None:
        return tokens, lambda text: split_tokenize(text, tokens)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if 0 <= i < vocab_size:
            tokens[i] = token
    return tokens, lambda text: tokenizer.encode(text).ids


def load_hf(path: Path, config: Any) -> Checkpoint:
    """The Hugging Face directory ``path`` with its parsed ``config.json``."""
    file = path / "config.json"
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        architectures = config.get("architectures")
        named = (  # the architecture names the model best; cut, the file is untrusted
            f" ({', '.join(architectures)[:80]})"
            if isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
            else ""
        )
        raise CheckpointError(
            f"{file}: model_type={model_type!r}{named} is not supported; supported: "
            f"{', '.join(MODEL_TYPES)} ({_FAMILIES})"
        )
    store = TensorStore(_weight_files(path))
    family = MODEL_TYPES[model_type]
    if family == "gpt2":
        return GPT2Checkpoint(path, config, store)
    if family == "llama":
        from flowgraph.models.heads.llama import LlamaCheckpoint

        return LlamaCheckpoint(path, config, store)
    if family == "gpt_neox":
        from flowgraph.models.heads.neox import NeoXCheckpoint

        return NeoXCheckpoint(path, config, store)
    if family == "opt":
        from flowgraph.models.heads.opt import OPTCheckpoint

        return OPTCheckpoint(path, config, store)
    if family == "gpt_neo":
        from flowgraph.models.heads.gptneo import GPTNeoCheckpoint

        return GPTNeoCheckpoint(path, config, store)
    if family in ("distilbert", "albert"):
        from flowgraph.models.heads.distil import AlbertCheckpoint, DistilBertCheckpoint

        loader = DistilBertCheckpoint if family == "distilbert" else AlbertCheckpoint
        return loader(path, config, store)
    return BertCheckpoint(path, config, store)
