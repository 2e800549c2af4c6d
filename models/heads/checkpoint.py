"""A trained model's heads, whatever the checkpoint kind: :class:`Checkpoint` and
:func:`load_checkpoint`.

:func:`load_checkpoint` recognises

- a run directory of ``flowgraph train`` (``DIR`` holding ``DIR/checkpoint``, or the checkpoint
  directory itself: ``config.json`` with ``"format"`` and ``"checksums"``, ``model.safetensors``);
- a Hugging Face model directory (``config.json`` with ``model_type`` bert, roberta,
  xlm-roberta or gpt2, and ``model.safetensors``, ``pytorch_model.bin`` or their sharded index);
- a nanoGPT ``ckpt.pt`` file (or a directory holding one).

A file inside a directory checkpoint (``model.safetensors``, ``config.json``) stands for its
directory.

Loading reads the configuration (every size an int in [1, :data:`MAX_CONFIG_SIZE`], named when
it is not) and checks every tensor's name, dtype and shape against it (from the safetensors
header, without reading the data), and that what a :class:`Checkpoint` computes fits in memory
(:func:`check_memory`: the weights, their float64 copies, the attention of a longest sequence,
against the machine's memory or ``FLOWGRAPH_MEMORY_LIMIT``); the weights are read, the torch
modules built and the float64 head weights converted on first use, once per :class:`Checkpoint`.
:meth:`Checkpoint.attention` keeps the last few results, since a dashboard asks for the same
sequence head after head. Nothing is ever unpickled except through :mod:`models.heads.safe_load`.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import flowgraph as fg
from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.metrics import QKForm, coverage, qk_form, token_distances
from flowgraph.models.heads.weights import HeadWeights

__all__ = [
    "ATTENTION_CACHE_SIZE",
    "MAX_CONFIG_SIZE",
    "MEMORY_LIMIT_ENV",
    "Checkpoint",
    "check_memory",
    "load_checkpoint",
    "memory_needed",
]

ATTENTION_CACHE_SIZE = 8  # sequences whose attention a Checkpoint keeps (a dashboard flips heads)
MAX_CONFIG_SIZE = 2**31 - 1  # a size beyond torch's int32 index range is a corrupt config
MEMORY_LIMIT_ENV = "FLOWGRAPH_MEMORY_LIMIT"  # bytes; default: the machine's physical memory


def _shown(value: object, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters (a config value may be a long string)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def config_int(
    config: Mapping[str, Any],
    key: str,
    where: object,
    default: int | None = None,
    *,
    minimum: int = 1,
    name: str | None = None,
) -> int:
    """``config[key]`` (``default`` when absent) checked to be an int in
    [``minimum``, :data:`MAX_CONFIG_SIZE`]; the error names ``where`` (the file), the key (or
    ``name``) and the value."""
    value = config.get(key, default)
    name = name or key
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{where}: {name} must be an int ≥ {minimum}, got {_shown(value)}")
    if value > MAX_CONFIG_SIZE:
        raise CheckpointError(
            f"{where}: {name} must be an int ≤ {MAX_CONFIG_SIZE}, got {value} (a corrupt config?)"
        )
    return value


def config_float(config: Mapping[str, Any], key: str, where: object, default: float) -> float:
    """``config[key]`` (``default`` when absent or null) checked to be a finite number > 0."""
    value = config.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise CheckpointError(f"{where}: {key} must be a finite number > 0, got {_shown(value)}")
    return float(value)


def config_bool(config: Mapping[str, Any], key: str, where: object, default: bool) -> bool:
    """``config[key]`` (``default`` when absent or null) checked to be true or false."""
    value = config.get(key)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise CheckpointError(f"{where}: {key} must be true or false, got {_shown(value)}")
    return value


def _is_int_scalar(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def as_ids(name: str, ids: object, *, vocab_size: int, max_len: int | None) -> np.ndarray:
    """``ids`` (a list, numpy array or torch tensor of ints, 1-D, non-empty) as int64 numpy,
    checked to lie in [0, vocab_size) and, when ``max_len`` is given, to be at most that long."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a torch tensor of {ids.dtype}")
        arr = ids.detach().cpu().numpy()
    elif isinstance(ids, np.ndarray):
        arr = ids
    elif isinstance(ids, (list, tuple)):
        bad = next((x for x in ids if not _is_int_scalar(x)), None)
        if bad is not None:
            raise TypeError(f"{name} must hold integers, got {bad!r} ({type(bad).__name__})")
        arr = np.asarray(ids, dtype=np.int64)
    else:
        raise TypeError(
            f"{name} must be a list, numpy array or torch tensor of ints, got {type(ids).__name__}"
        )
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one sequence), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one token id, got none")
    if max_len is not None and arr.size > max_len:
        raise ValueError(f"{name} has {arr.size} tokens, more than the model's n_ctx={max_len}")
    out_of_range = (arr < 0) | (arr >= vocab_size)
    if out_of_range.any():
        at = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"{name}[{at}] = {int(arr[at])} is not a token id: expected 0 ≤ id < {vocab_size}"
        )
    return arr.astype(np.int64)


def _index(name: str, value: object, size: int, what: str) -> int:
    if not _is_int_scalar(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not 0 <= int(value) < size:  # type: ignore[arg-type]
        raise ValueError(f"{name}={value} is out of range: the model has {size} {what}")
    return int(value)  # type: ignore[arg-type]


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def linear_per_head(w_oc: torch.Tensor, n_head: int) -> np.ndarray:
    """A Linear weight (h·d, c) (out, in) as the float64 (h, c, d) maps x ↦ x @ w[h] of its
    heads (head h owns output rows h·d … h·d + d − 1, as every model here splits them)."""
    out, c = w_oc.shape
    w_cn = w_oc.detach().to(torch.float64).T
    return w_cn.reshape(c, n_head, out // n_head).permute(1, 0, 2).numpy()


def fused_qkv_weights(w_3cc: torch.Tensor, n_head: int, scale: float) -> HeadWeights:
    """Dot-product query/key weights of a fused (3c, c) q|k|v Linear weight (GPT-2, nanoGPT)."""
    c = w_3cc.shape[1]
    return HeadWeights(
        "dot",
        scale,
        w_q_hcd=linear_per_head(w_3cc[:c], n_head),
        w_k_hcd=linear_per_head(w_3cc[c : 2 * c], n_head),
    )


def dot_attention_sizes(
    *, layers: int, heads: int, width: int, n_ctx: int, vocab: int, causal: bool
) -> dict[str, Any]:
    """:class:`Checkpoint`'s size arguments for a transformer of dot-product heads that split
    the model width ``width`` evenly (BERT, GPT-2, nanoGPT)."""
    return dict(
        attention_kind="dot",
        num_layers=layers,
        num_heads=heads,
        head_dim=width // heads,
        d_model=width,
        n_ctx=n_ctx,
        vocab_size=vocab,
        causal=causal,
    )


def id_tokens(vocab_size: int) -> list[str]:
    """The vocabulary of a model without one: token i is ``str(i)``."""
    return [str(i) for i in range(vocab_size)]


def split_tokenize(text: str, tokens: Sequence[str]) -> list[int]:
    """Split ``text`` at whitespace and commas and look each piece up in ``tokens``; a text
    without separators whose tokens are all one character long is read character by character
    (so "0121" works for a vocabulary of digits)."""
    lookup = {t: i for i, t in enumerate(tokens)}
    pieces = [p for p in re.split(r"[\s,]+", text) if p]
    if len(pieces) == 1 and all(len(t) == 1 for t in tokens):
        pieces = list(pieces[0])
    unknown = [p for p in pieces if p not in lookup]
    if unknown:
        shown = ", ".join(repr(p) for p in unknown[:3])
        raise ValueError(
            f"text holds {shown}, not in the vocabulary ({len(tokens)} tokens: "
            f"{', '.join(tokens[:8])}{', …' if len(tokens) > 8 else ''})"
        )
    return [lookup[p] for p in pieces]


def char_tokenize(text: str, stoi: dict[str, int]) -> list[int]:
    """One token per character (character-level models); an unknown character is an error."""
    unknown = sorted({ch for ch in text if ch not in stoi})
    if unknown:
        raise ValueError(
            f"text holds characters {''.join(unknown[:10])!r} that are not in the model's "
            f"{len(stoi)}-character vocabulary"
        )
    return [stoi[ch] for ch in text]


def memory_needed(
    *,
    attention_kind: str,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    d_model: int,
    n_ctx: int,
    vocab_size: int,
    weight_bytes: int,
) -> dict[str, int]:
    """Bytes, by what they hold, that a :class:`Checkpoint` of these sizes needs for what it
    offers: ``weight_bytes`` (the caller's count of the weights as read and their float32
    working copies), the float64 head weights of every layer (:meth:`Checkpoint.head_weights`
    caches them), float64 embeddings, one c×c form with its spectra (:meth:`Checkpoint.qk_form`)
    and the (L, H, T, T) attention of one sequence of n_ctx tokens, float32 and its float64
    copy, with one layer's scores (:meth:`Checkpoint.attention`)."""
    L, H, d, c, T, V = num_layers, num_heads, head_dim, d_model, n_ctx, vocab_size
    per_layer = H * c * c if attention_kind == "quadratic" else 2 * H * c * d  # U, or W_q/W_k, P/M
    return {
        "the weights as read and as float32": weight_bytes,
        f"float64 head weights of {L} layers": 8 * L * per_layer,
        "float64 token and position embeddings": 8 * (V + T) * c,
        f"one {c}×{c} bilinear form and its spectra in float64": 8 * 8 * c * c,
        f"the ({L}, {H}, {T}, {T}) attention of a {T}-token sequence": 12 * L * H * T * T
        + 16 * H * T * T,
    }


def memory_limit() -> tuple[int, str]:
    """The bytes a checkpoint may need, and where that number comes from: the environment
    variable :data:`MEMORY_LIMIT_ENV` when set, else the machine's physical memory."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        if not text.isdigit():
            raise ValueError(f"{MEMORY_LIMIT_ENV} must be a number of bytes, got {text!r}")
        return int(text), f"{MEMORY_LIMIT_ENV}={text}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no limit known
        return 2**63, "no known memory size"
    return total, f"this machine's physical memory; set {MEMORY_LIMIT_ENV}=BYTES to change it"


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(where: object, **sizes: Any) -> None:
    """Refuse (:class:`CheckpointError` naming ``where``, the bytes needed, the largest part and
    the limit) a checkpoint whose computations (:func:`memory_needed`, with ``sizes`` its
    arguments) cannot fit in :func:`memory_limit` — better now than a raw allocator error in the
    middle of :meth:`Checkpoint.attention`."""
    parts = memory_needed(**sizes)
    need = sum(parts.values())
    limit, source = memory_limit()
    if need > limit:
        what, most = max(parts.items(), key=lambda item: item[1])
        raise CheckpointError(
            f"{where}: what this checkpoint offers needs about {need} bytes ({_gib(need)}; the "
            f"largest part, {what}, {most} bytes), more than the limit of {limit} bytes "
            f"({_gib(limit)}, {source}); the config's sizes may be corrupt"
        )


class Checkpoint(ABC):
    """One trained model's attention, weights and vocabulary, numpy float64 out.

    Attributes: ``path``, ``name`` (directory name or file stem), ``kind`` ("flowgraph", "bert",
    "gpt2", "nanogpt"), ``attention_kind`` ("dot", "metric", "quadratic"), ``num_layers``,
    ``num_heads``, ``head_dim``, ``d_model``, ``n_ctx``, ``vocab_size``, ``causal``.

    Arrays returned are read-only (they may be shared with the cache); copy to modify.
    Build one with :func:`load_checkpoint`; the loaders subclass it.
    """

    kind: str = ""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        attention_kind: str,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        d_model: int,
        n_ctx: int,
        vocab_size: int,
        causal: bool,
    ) -> None:
        self.path, self.name = Path(path), name
        self.attention_kind = attention_kind
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.d_model, self.n_ctx, self.vocab_size = d_model, n_ctx, vocab_size
        self.causal = causal
        self._lock = threading.RLock()  # dashboard callbacks may run in threads
        self._attention_cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._weights_cache: dict[int, HeadWeights] = {}
        self._lazy: dict[str, Any] = {}

    # --- what a loader provides -----------------------------------------------------------------
    @abstractmethod
    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        """(L, H, T, T) attention probabilities of the sequence ``ids_t`` (T,) int64."""

    @abstractmethod
    def _head_weights(self, layer: int) -> HeadWeights:
        """Layer ``layer``'s query/key weights."""

    @abstractmethod
    def _token_embeddings(self) -> torch.Tensor:
        """(V, c) token embeddings."""

    def _position_embeddings(self) -> torch.Tensor | None:
        """(n_ctx, c): row t is the embedding added at sequence position t; None if none."""
        return None

    def _sequence_positions(self, ids: np.ndarray) -> np.ndarray | None:
        """(T, c) float64: the position embedding the forward pass adds to each token of the
        sequence ``ids`` (row t of the table for most models); None if the model has none."""
        pos_nc = self.position_embeddings()
        return None if pos_nc is None else pos_nc[: len(ids)]

    @abstractmethod
    def _vocabulary(self) -> tuple[list[str], Callable[[str], list[int]]]:
        """The tokens (index = id) and a function text → ids."""

    def _check_memory(self, weight_bytes: int) -> None:
        """:func:`check_memory` for this checkpoint's sizes."""
        check_memory(
            self.path,
            attention_kind=self.attention_kind,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            d_model=self.d_model,
            n_ctx=self.n_ctx,
            vocab_size=self.vocab_size,
            weight_bytes=weight_bytes,
        )

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()`` once per Checkpoint (thread-safe)."""
        with self._lock:
            if key not in self._lazy:
                self._lazy[key] = build()
            return self._lazy[key]

    # --- the public API -------------------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        """The vocabulary as strings, index = token id (``str(id)`` where the checkpoint carries
        no vocabulary)."""
        return self._cached("vocabulary", self._vocabulary)[0]

    def tokenize(self, text: str) -> np.ndarray:
        """``text`` as int64 token ids with the checkpoint's own tokenizer (see
        docs/heads_loading.md for which one each kind uses)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._cached("vocabulary", self._vocabulary)[1](text)
        return np.asarray(ids, dtype=np.int64)

    def attention(self, input_ids: object) -> np.ndarray:
        """(L, H, T, T) float64: every layer's attention probabilities for the sequence
        ``input_ids`` (1-D ints, T ≤ n_ctx), from the model's own forward pass; row q is query q's
        distribution over keys (a query that may attend no key under a sparse pattern has a zero
        row). Read-only; the last :data:`ATTENTION_CACHE_SIZE` sequences are cached."""
        ids = as_ids("input_ids", input_ids, vocab_size=self.vocab_size, max_len=self.n_ctx)
        key = ids.tobytes()
        with self._lock:
            if key in self._attention_cache:
                self._attention_cache.move_to_end(key)
                return self._attention_cache[key]
            with torch.inference_mode():
                attn_lhtt = self._attention_lhtt(torch.from_numpy(ids))
            out = _readonly(attn_lhtt.detach().to(torch.float64).numpy())
            self._attention_cache[key] = out
            if len(self._attention_cache) > ATTENTION_CACHE_SIZE:
                self._attention_cache.popitem(last=False)
            return out

    def head_weights(self, layer: int) -> HeadWeights:
        """Layer ``layer``'s query/key weights in float64 (:class:`HeadWeights`), cached."""
        layer = _index("layer", layer, self.num_layers, "layers")
        with self._lock:
            if layer not in self._weights_cache:
                with torch.inference_mode():
                    self._weights_cache[layer] = self._head_weights(layer)
            return self._weights_cache[layer]

    def token_embeddings(self) -> np.ndarray:
        """(V, c) float64 token embeddings (BERT family: the word embeddings alone)."""

        def build() -> np.ndarray:
            with torch.inference_mode():
                e_vc = self._token_embeddings().detach().to(torch.float64)
            return _readonly(e_vc.numpy().copy())

        return self._cached("token_embeddings", build)

    def position_embeddings(self) -> np.ndarray | None:
        """(n_ctx, c) float64 learned position embeddings, row t for sequence position t
        (RoBERTa: the table's rows from padding_idx + 1 on); None if the model has none."""

        def build() -> np.ndarray | None:
            with torch.inference_mode():
                pos = self._position_embeddings()
            if pos is None:
                return None
            return _readonly(pos.detach().to(torch.float64).numpy().copy())

        return self._cached("position_embeddings", build)

    def qk_form(self, layer: int, head: int, space: str = "model") -> QKForm:
        """Head ``head`` of layer ``layer``'s bilinear form (:func:`models.heads.metrics.qk_form`):
        M in ``space="head"`` (metric heads only), PᵀMP / W_qʰW_kʰᵀ / U in ``"model"``."""
        head = _index("head", head, self.num_heads, "heads per layer")
        return qk_form(self.head_weights(layer), head, space)

    def token_distances(
        self, layer: int, head: int, token_ids: object, positions: bool = False
    ) -> np.ndarray:
        """(T, T) signed squared distances (e_a − e_b) S (e_a − e_b)ᵀ between the embeddings of
        ``token_ids`` under the symmetric part S of the head's model-space form. ``positions``:
        add the position embedding :meth:`attention` gives each token of the sequence (row t
        of :meth:`position_embeddings` for token t; RoBERTa skips padding tokens, as its
        forward does), and then T ≤ n_ctx."""
        if not isinstance(positions, bool):
            raise TypeError(f"positions must be a bool, got {positions!r}")
        ids = as_ids(
            "token_ids",
            token_ids,
            vocab_size=self.vocab_size,
            max_len=self.n_ctx if positions else None,
        )
        e_tc = self.token_embeddings()[ids]
        if positions:
            pos_tc = self._sequence_positions(ids)
            if pos_tc is None:
                raise ValueError(
                    f"positions=True but {self.name} ({self.kind}) has no learned position "
                    "embeddings; use positions=False"
                )
            e_tc = e_tc + pos_tc
        s_cc = self.qk_form(layer, head, "model").symmetric
        return token_distances(s_cc, e_tc)

    def coverage(self, input_ids: object, pattern: fg.Pattern, mode: str = "merged") -> np.ndarray:
        """(L, H): the fraction of each head's attention mass on ``input_ids`` that falls inside
        ``pattern``'s mask (:func:`models.heads.metrics.coverage`)."""
        return coverage(self.attention(input_ids), pattern, mode)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, "
            f"attention_kind={self.attention_kind!r}, layers={self.num_layers}, "
            f"heads={self.num_heads}, head_dim={self.head_dim}, d_model={self.d_model}, "
            f"n_ctx={self.n_ctx}, vocab_size={self.vocab_size}, causal={self.causal})"
        )


# --- detection --------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5000-digit int, deep nesting
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _is_run_checkpoint(directory: Path) -> bool:
    config = directory / "config.json"
    if not config.is_file():
        return False
    meta = _read_json(config)
    return isinstance(meta, dict) and "checksums" in meta and "format" in meta


def _run_name(checkpoint_dir: Path) -> str:
    """A run's name: ``runs/NAME/checkpoint`` is called NAME."""
    return (
        checkpoint_dir.parent.name if checkpoint_dir.name == "checkpoint" else checkpoint_dir.name
    )


LOOKED_FOR = (
    "a flowgraph run directory (DIR/checkpoint/config.json with checksums) or its checkpoint "
    "directory; a Hugging Face directory (config.json with model_type and model.safetensors, "
    "pytorch_model.bin or a sharded *.index.json); a nanoGPT ckpt.pt file (or a directory "
    "holding ckpt.pt)"
)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The :class:`Checkpoint` at ``path``, whichever kind it is (see the module docstring).

    Raises :class:`~models.checkpoint.CheckpointError` (a ValueError) naming the path and what
    was looked for when ``path`` is none of the kinds, and naming the file (and tensor) when a
    file is unreadable, unsafe to unpickle, or lacks a tensor or has one of the wrong shape.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_file() and path.suffix != ".pt" and (path.parent / "config.json").is_file():
        return load_checkpoint(path.parent)  # a file of a directory checkpoint: the directory
    if path.is_file():
        from flowgraph.models.heads.nanogpt import load_nanogpt

        return load_nanogpt(path)
    from flowgraph.models.checkpoint import find_checkpoint
    from flowgraph.models.heads.flowgraph_run import load_flowgraph_run

    if not path.is_dir():
        # an interrupted save leaves a run's checkpoint aside as .checkpoint.old-PID
        aside = find_checkpoint(path)
        if aside is not None and _is_run_checkpoint(aside):
            return load_flowgraph_run(path, name=_run_name(path))
        raise CheckpointError(f"no checkpoint at {path}: no such file or directory")
    run = find_checkpoint(path / "checkpoint")
    if run is not None and _is_run_checkpoint(run):
        return load_flowgraph_run(path / "checkpoint", name=path.name)
    if _is_run_checkpoint(path):
        return load_flowgraph_run(path, name=_run_name(path))
    if (path / "config.json").is_file():
        from flowgraph.models.heads.hf import load_hf

        return load_hf(path, _read_json(path / "config.json"))
    if (path / "ckpt.pt").is_file():
        from flowgraph.models.heads.nanogpt import load_nanogpt

        return load_nanogpt(path / "ckpt.pt", name=path.name)
    found = sorted(p.name for p in path.iterdir())[:10]
    raise CheckpointError(
        f"{path} is not a checkpoint this loader knows; looked for {LOOKED_FOR}. "
        f"The directory holds: {', '.join(found) if found else 'nothing'}"
    )
