"""A trained model's heads, whatever the checkpoint kind: :class:`Checkpoint` and
:func:`load_checkpoint`.

:func:`load_checkpoint` recognises

- a run directory of ``flowgraph train`` (``DIR`` holding ``DIR/checkpoint``, or the checkpoint
  directory itself: ``config.json`` with ``"format"`` and ``"checksums"``, ``model.safetensors``);
- a Hugging Face model directory (``config.json`` with a ``model_type`` of the BERT family —
  bert, roberta, xlm-roberta, camembert, data2vec-text, ernie, electra —, distilbert, albert,
  gpt2, gpt_neox, opt, llama, mistral or qwen2, and ``model.safetensors``,
  ``pytorch_model.bin`` or their sharded index: docs/heads_loading.md);
- a nanoGPT ``ckpt.pt`` file (or a directory holding one).

A file inside a directory checkpoint (``model.safetensors``, ``config.json``) stands for its
directory.

Loading reads the configuration (every size an int in [1, :data:`MAX_CONFIG_SIZE`], named when
it is not) and checks every tensor's name, dtype and shape against it (from the safetensors
header, without reading the data), and that what a :class:`Checkpoint` computes fits in memory
(:func:`check_memory`: the weights, their float64 copies, the attention of a longest sequence,
against the machine's memory or ``FLOWGRAPH_MEMORY_LIMIT``); the weights are read, the torch
modules built and the float64 head weights converted on first use, once per :class:`Checkpoint`.
:meth:`Checkpoint.attention` keeps the last few results (at most :data:`ATTENTION_CACHE_SIZE`
sequences and ``cache_bytes`` bytes), since a dashboard asks for the same sequence head after
head. Nothing is ever unpickled except through :mod:`models.heads.safe_load`.
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
from flowgraph.models.heads.rotary import Rotary, RotaryPlanes, rotary_planes, rotary_qk_form
from flowgraph.models.heads.weights import HeadWeights

__all__ = [
    "ATTENTION_CACHE_BYTES",
    "ATTENTION_CACHE_SIZE",
    "ATTENTION_DTYPES",
    "LONG_CONTEXT_TOKENS",
    "MAX_CONFIG_SIZE",
    "MEMORY_LIMIT_ENV",
    "Checkpoint",
    "check_memory",
    "load_checkpoint",
    "memory_needed",
]

ATTENTION_CACHE_SIZE = 8  # sequences whose attention a Checkpoint keeps (a dashboard flips heads)
ATTENTION_CACHE_BYTES = 2**30  # and their bytes: holds a 1024-token GPT-2 small sequence (576 MiB)
ATTENTION_DTYPES = (np.float32, np.float64)  # what attention(dtype=...) may return
# A rotary model's n_ctx is a rope setting (up to 128k tokens), not a table's size: loading checks
# memory for sequences this long, and a longer one is checked when attention() is given it.
LONG_CONTEXT_TOKENS = 1024
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


def _cache_bytes(value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"cache_bytes must be an int, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"cache_bytes must be ≥ 0 (0 keeps nothing), got cache_bytes={value}")
    return int(value)


def _attention_dtype(dtype: object) -> np.dtype:
    try:
        out = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        out = None
    if out is None or out.type not in ATTENTION_DTYPES:
        raise ValueError(f"dtype must be numpy.float32 or numpy.float64, got dtype={dtype!r}")
    return out


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
    """One trained model's attention, weights and vocabulary, as numpy arrays: weights, forms
    and distances in float64, attention in the forward pass's precision (float32) unless asked.

    Attributes: ``path``, ``name`` (directory name or file stem), ``kind`` ("flowgraph",
    "nanogpt", or the config's model type: "bert", "gpt2", "gpt_neox", "opt", "llama", ...),
    ``attention_kind`` ("dot", "metric", "quadratic"), ``num_layers``, ``num_heads``,
    ``head_dim``, ``d_model``, ``n_ctx``,
    ``vocab_size``, ``causal``; ``num_kv_heads`` (key heads per layer: fewer than
    ``num_heads`` under grouped-query attention, :meth:`kv_group`) and ``rotary`` (the
    :class:`~models.heads.rotary.Rotary` position embedding, or None).

    Arrays returned are read-only (they may be shared with the cache); copy to modify.
    Build one with :func:`load_checkpoint`; the loaders subclass it. ``cache_bytes`` bounds
    the bytes of attention kept (:meth:`attention`; settable, 0 keeps nothing).
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
        num_kv_heads: int | None = None,
        rotary: Rotary | None = None,
        cache_bytes: int = ATTENTION_CACHE_BYTES,
    ) -> None:
        self.path, self.name = Path(path), name
        self.attention_kind = attention_kind
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        self.d_model, self.n_ctx, self.vocab_size = d_model, n_ctx, vocab_size
        self.causal = causal
        self.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if self.num_kv_heads < 1 or num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={num_heads}")
        self.rotary = rotary
        # the longest sequence whose attention memory check_memory has approved
        self._checked_tokens = n_ctx
        self._lock = threading.RLock()  # dashboard callbacks may run in threads
        self._cache_bytes = _cache_bytes(cache_bytes)
        self._attention_cache: OrderedDict[tuple[bytes, str], np.ndarray] = OrderedDict()
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

    def _check_memory(self, weight_bytes: int, tokens: int | None = None) -> None:
        """:func:`check_memory` for this checkpoint's sizes, with the attention of a sequence of
        ``tokens`` (default n_ctx) tokens; a longer one is checked when it is given."""
        tokens = self.n_ctx if tokens is None else min(tokens, self.n_ctx)
        check_memory(
            self.path,
            attention_kind=self.attention_kind,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            d_model=self.d_model,
            n_ctx=tokens,
            vocab_size=self.vocab_size,
            weight_bytes=weight_bytes,
        )
        self._checked_tokens = tokens

    def _check_sequence_memory(self, T: int) -> None:
        """Refuse a sequence longer than the load-time memory check covered whose attention
        cannot fit in :func:`memory_limit`."""
        L, H = self.num_layers, self.num_heads
        need = 12 * L * H * T * T + 16 * H * T * T  # as memory_needed counts it
        limit, source = memory_limit()
        if need > limit:
            raise ValueError(
                f"input_ids has {T} tokens: their ({L}, {H}, {T}, {T}) attention needs about "
                f"{need} bytes ({_gib(need)}), more than the limit of {limit} bytes "
                f"({_gib(limit)}, {source}); use a shorter sequence"
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

    def attention(self, input_ids: object, *, dtype: object = None) -> np.ndarray:
        """(L, H, T, T): every layer's attention probabilities for the sequence ``input_ids``
        (1-D ints, T ≤ n_ctx), from the model's own forward pass; row q is query q's
        distribution over keys (a query that may attend no key under a sparse pattern has a zero
        row). ``dtype``: numpy.float32 or numpy.float64; None (the default) keeps the forward
        pass's own precision: float32 for every loader here, which all compute in float32
        (float64 would only double the bytes), float64 for a forward that gives float64.
        Read-only. The last :data:`ATTENTION_CACHE_SIZE` results are cached, at
        most ``cache_bytes`` bytes of them (:data:`ATTENTION_CACHE_BYTES` unless the loader was
        told otherwise): the least recently used go first, and a result larger than the bound
        is returned without being kept. :meth:`clear` empties the cache."""
        out_dtype = None if dtype is None else _attention_dtype(dtype)
        ids = as_ids("input_ids", input_ids, vocab_size=self.vocab_size, max_len=self.n_ctx)
        if ids.size > self._checked_tokens:
            self._check_sequence_memory(int(ids.size))
        key = (ids.tobytes(), "native" if out_dtype is None else out_dtype.str)
        with self._lock:
            if key in self._attention_cache:
                self._attention_cache.move_to_end(key)
                return self._attention_cache[key]
            with torch.inference_mode():
                attn_lhtt = self._attention_lhtt(torch.from_numpy(ids)).detach()
            if out_dtype is None:
                native = attn_lhtt.dtype == torch.float64
                torch_dtype = torch.float64 if native else torch.float32
            else:
                torch_dtype = torch.float64 if out_dtype == np.float64 else torch.float32
            out = _readonly(attn_lhtt.to(torch_dtype).contiguous().numpy())
            self._keep(key, out)
            return out

    def _keep(self, key: tuple[bytes, str], out: np.ndarray) -> None:
        """Cache ``out`` under ``key``, evicting the oldest entries past either bound."""
        if out.nbytes > self._cache_bytes:
            return
        cache = self._attention_cache
        cache[key] = out
        while len(cache) > ATTENTION_CACHE_SIZE or self.cached_bytes > self._cache_bytes:
            cache.popitem(last=False)

    @property
    def cache_bytes(self) -> int:
        """The most bytes of attention :meth:`attention` keeps (0: none); setting it evicts
        down to the new bound."""
        return self._cache_bytes

    @cache_bytes.setter
    def cache_bytes(self, value: int) -> None:
        value = _cache_bytes(value)
        with self._lock:
            self._cache_bytes = value
            while self._attention_cache and self.cached_bytes > value:
                self._attention_cache.popitem(last=False)

    @property
    def cached_bytes(self) -> int:
        """The bytes of attention kept now."""
        with self._lock:
            return sum(a.nbytes for a in self._attention_cache.values())

    def clear(self) -> None:
        """Forget every cached attention result (weights and forms are not affected)."""
        with self._lock:
            self._attention_cache.clear()

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

    def qk_form(self, layer: int, head: int, space: str = "model", *, offset: int = 0) -> QKForm:
        """Head ``head`` of layer ``layer``'s bilinear form (:func:`models.heads.metrics.qk_form`):
        M in ``space="head"`` (metric heads only), PᵀMP / W_qʰW_kʰᵀ / U in ``"model"``.

        ``offset`` Δ = key position − query position (≤ 0 for the keys a causal query sees).
        A rotary model's form depends on it: W_q R(Δθ) W_kᵀ
        (:func:`~models.heads.rotary.rotary_qk_form`), and offset=0 is W_q W_kᵀ. Any other
        model's form does not (positions enter through its embeddings), so only offset=0 is
        accepted there: another value is a ValueError, never silently the same form."""
        head = _index("head", head, self.num_heads, "heads per layer")
        offset = self._offset(offset)
        if self.rotary is None or space != "model":  # space="head" is refused for dot heads
            return qk_form(self.head_weights(layer), head, space)
        return rotary_qk_form(self.head_weights(layer), head, self.rotary, offset)

    def _offset(self, offset: object) -> int:
        if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
            raise TypeError(
                f"offset must be an int (key position − query position), got {offset!r} "
                f"({type(offset).__name__})"
            )
        if self.rotary is None and offset != 0:
            raise ValueError(
                f"offset={offset}, but {self.name} ({self.kind}) has no rotary position "
                "embedding: its form does not depend on the offset; use offset=0"
            )
        return int(offset)

    def rotary_planes(self, layer: int, head: int) -> RotaryPlanes:
        """Head ``head`` of layer ``layer``'s rotation planes
        (:func:`~models.heads.rotary.rotary_planes`): per frequency θ_i its wavelength, scale
        and rotation. A model without rotary embeddings raises ValueError."""
        head = _index("head", head, self.num_heads, "heads per layer")
        if self.rotary is None:
            raise ValueError(
                f"{self.name} ({self.kind}) has no rotary position embedding, so no rotation planes"
            )
        return rotary_planes(self.head_weights(layer), head, self.rotary)

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads: ⌊head / g⌋ with g =
        num_heads / num_kv_heads (grouped-query attention, as transformers' ``repeat_kv``)."""
        head = _index("head", head, self.num_heads, "heads per layer")
        return head // (self.num_heads // self.num_kv_heads)

    def kv_group(self, head: int) -> tuple[int, ...]:
        """The query heads that share ``head``'s key head, ``head`` among them (just
        ``(head,)`` without grouped-query attention). Their forms share W_k."""
        size = self.num_heads // self.num_kv_heads
        first = self.kv_head(head) * size
        return tuple(range(first, first + size))

    def token_distances(
        self,
        layer: int,
        head: int,
        token_ids: object,
        positions: bool = False,
        *,
        offset: int = 0,
    ) -> np.ndarray:
        """(T, T) signed squared distances (e_a − e_b) S (e_a − e_b)ᵀ between the embeddings of
        ``token_ids`` under the symmetric part S of the head's model-space form. ``positions``:
        add the position embedding :meth:`attention` gives each token of the sequence (row t
        of :meth:`position_embeddings` for token t; RoBERTa skips padding tokens, as its
        forward does), and then T ≤ n_ctx. ``offset``: the form at that offset
        (:meth:`qk_form`; rotary models, whose positions enter through it)."""
        if not isinstance(positions, bool):
            raise TypeError(f"positions must be a bool, got {positions!r}")
        offset = self._offset(offset)
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
                hint = " (positions enter its form: pass offset=Δ)" if self.rotary else ""
                raise ValueError(
                    f"positions=True but {self.name} ({self.kind}) has no learned position "
                    f"embeddings; use positions=False{hint}"
                )
            e_tc = e_tc + pos_tc
        s_cc = self.qk_form(layer, head, "model", offset=offset).symmetric
        return token_distances(s_cc, e_tc)

    def coverage(self, input_ids: object, pattern: fg.Pattern, mode: str = "merged") -> np.ndarray:
        """(L, H): the fraction of each head's attention mass on ``input_ids`` that falls inside
        ``pattern``'s mask (:func:`models.heads.metrics.coverage`)."""
        return coverage(self.attention(input_ids), pattern, mode)

    def __repr__(self) -> str:
        extra = ""
        if self.num_kv_heads != self.num_heads:
            extra += f", kv_heads={self.num_kv_heads}"
        if self.rotary is not None:
            extra += f", rotary={self.rotary.rope_type!r}"
        return (
            f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, "
            f"attention_kind={self.attention_kind!r}, layers={self.num_layers}, "
            f"heads={self.num_heads}, head_dim={self.head_dim}, d_model={self.d_model}, "
            f"n_ctx={self.n_ctx}, vocab_size={self.vocab_size}, causal={self.causal}{extra})"
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


def load_checkpoint(
    path: str | Path,
    *,
    cache_bytes: int = ATTENTION_CACHE_BYTES,
    meta: str | Path | None = None,
) -> Checkpoint:
    """The :class:`Checkpoint` at ``path``, whichever kind it is (see the module docstring).
    ``cache_bytes``: the most bytes of attention results it keeps (:meth:`Checkpoint.attention`).
    ``meta``: a nanoGPT checkpoint's vocabulary ``meta.pkl`` when it is not where nanoGPT puts
    it (refused for other kinds).

    Raises :class:`~models.checkpoint.CheckpointError` (a ValueError) naming the path and what
    was looked for when ``path`` is none of the kinds, and naming the file (and tensor) when a
    file is unreadable, unsafe to unpickle, or lacks a tensor or has one of the wrong shape.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    cache_bytes = _cache_bytes(cache_bytes)
    if meta is not None and not isinstance(meta, (str, Path)):
        raise TypeError(f"meta must be a path to meta.pkl, got {type(meta).__name__}")
    ckpt = _load(Path(path), None if meta is None else Path(meta))
    ckpt.cache_bytes = cache_bytes
    return ckpt


def directory_name(path: Path) -> str:
    """A model directory's name: the repository for a Hugging Face hub-cache snapshot
    (``models--org--name/snapshots/<commit>`` → ``org/name``), else the folder's name."""
    path = path.resolve()
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--") :].replace("--", "/")
    return path.name


def _load(path: Path, meta: Path | None = None) -> Checkpoint:
    if path.is_file() and path.suffix != ".pt" and (path.parent / "config.json").is_file():
        return _load(path.parent, meta)  # a file of a directory checkpoint: the directory
    if path.is_file():
        from flowgraph.models.heads.nanogpt import load_nanogpt

        return load_nanogpt(path, meta=meta)
    if meta is not None and not (path / "ckpt.pt").is_file():
        raise CheckpointError(f"meta={meta} applies to nanoGPT checkpoints only; {path} is not one")
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

        ckpt = load_hf(path, _read_json(path / "config.json"))
        ckpt.name = directory_name(path)
        return ckpt
    if (path / "ckpt.pt").is_file():
        from flowgraph.models.heads.nanogpt import load_nanogpt

        return load_nanogpt(path / "ckpt.pt", name=path.name, meta=meta)
    found = sorted(p.name for p in path.iterdir())[:10]
    raise CheckpointError(
        f"{path} is not a checkpoint this loader knows; looked for {LOOKED_FOR}. "
        f"The directory holds: {', '.join(found) if found else 'nothing'}"
    )
