"""A small GPT (after nanoGPT's ``model.py``) whose attention is any module of
:mod:`models.attention`, optionally restricted by a flowgraph pattern.

Token and position embeddings, ``n_layer`` pre-LayerNorm blocks (attention and a 4× GELU MLP,
each on a residual branch), a final LayerNorm and an output head tied to the token embedding.
``causal=False`` gives an encoder (every position attends every other one, or the pattern's
keys), which the bidirectional LTR/RTL patterns need.
"""

from __future__ import annotations

import contextvars
import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import flowgraph as fg
from flowgraph.models.attention import (
    ATTENTIONS,
    PARAMETERISATIONS,
    PATTERN_MODES,
    check_param_bytes,
)

__all__ = ["GPT", "PATTERNS", "GPTConfig", "build_pattern"]

PATTERNS = ("dense", "local", "strided", "fixed", "ltr", "rtl", "star")
_BIDIRECTIONAL_ONLY = ("ltr", "rtl", "star")
# Set by from_dict(check_memory=False): a loader checks the sizes against its tensors first, so
# that a lying config.json is named as such rather than as a model too large to build.
_SKIP_MEMORY_CHECK = contextvars.ContextVar("skip_memory_check", default=False)


@dataclass
class GPTConfig:
    vocab_size: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    n_ctx: int = 64
    attention: str = "sdpa"  # "sdpa" | "quadratic" | "metric"
    pattern: str | fg.Pattern | None = None  # a name of PATTERNS, built for n_ctx, or a Pattern
    pattern_mode: str = "interleave"  # "interleave" | "merged" | "heads"
    causal: bool = True  # False: an encoder
    dropout: float = 0.0
    metric: str = "symmetric"  # MetricAttention's parameterisation: "symmetric" | "psd"
    pattern_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"stride": 4}

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "n_ctx"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int ≥ 1, got {name}={value!r}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model must be a multiple of n_head, got d_model={self.d_model}, "
                f"n_head={self.n_head}"
            )
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"
            )
        if self.pattern_mode not in PATTERN_MODES:
            raise ValueError(
                f"pattern_mode must be one of {', '.join(PATTERN_MODES)}, got {self.pattern_mode!r}"
            )
        if self.metric not in PARAMETERISATIONS:
            raise ValueError(
                f"metric must be one of {', '.join(PARAMETERISATIONS)}, got {self.metric!r}"
            )
        if isinstance(self.pattern, str) and self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}")
        if not isinstance(self.pattern, (str, fg.Pattern, type(None))):
            raise TypeError(
                f"pattern must be None, a name or a flowgraph.Pattern, got {type(self.pattern)}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1), got dropout={self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout}")
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be True or False, got causal={self.causal!r}")
        if not isinstance(self.pattern_args, Mapping):
            raise TypeError(
                f"pattern_args must be a dict of the pattern's options, got {self.pattern_args!r}"
            )
        # each layer keeps its own dense (h or 1, n_ctx, n_ctx) bool pattern mask
        heads = self.n_head if self.pattern_mode == "heads" else 1
        masks = self.n_layer * heads * self.n_ctx**2 if self.pattern is not None else 0
        if not _SKIP_MEMORY_CHECK.get():
            check_param_bytes(f"GPT({self.describe()})", self.num_params(), masks)

    def describe(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, n_layer={self.n_layer}, n_head={self.n_head}, "
            f"d_model={self.d_model}, n_ctx={self.n_ctx}"
        )

    def num_params(self) -> int:
        """The parameters :class:`GPT` allocates for this config (the head is tied to wte)."""
        c, h = self.d_model, self.n_head
        attention = ATTENTIONS[self.attention]._param_count(c, h)
        if self.attention == "metric" and self.metric == "symmetric":
            k = c // h
            attention -= h * (k * k - k * (k + 1) // 2)  # packed M, not S
        block = 4 * c + attention + 8 * c * c + 5 * c  # two LayerNorms, attention, MLP
        return (self.vocab_size + self.n_ctx) * c + self.n_layer * block + 2 * c

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; a custom Pattern is written as :meth:`flowgraph.Pattern.to_dict`."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["pattern_args"] = dict(self.pattern_args)
        if isinstance(self.pattern, fg.Pattern):
            data["pattern"] = self.pattern.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, check_memory: bool = True) -> GPTConfig:
        """The inverse of :meth:`to_dict`. ``check_memory=False`` leaves the memory check to the
        caller (a checkpoint loader compares the sizes with the stored tensors first)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known: {sorted(known)}")
        if isinstance(data.get("pattern"), dict):  # a custom pattern saved by to_dict
            data = {**data, "pattern": fg.Pattern.from_dict(data["pattern"])}
        token = _SKIP_MEMORY_CHECK.set(not check_memory)
        try:
            return cls(**data)
        finally:
            _SKIP_MEMORY_CHECK.reset(token)


def build_pattern(config: GPTConfig) -> fg.Pattern | None:
    """The config's pattern for n_ctx positions (None when unrestricted)."""
    if config.pattern is None or isinstance(config.pattern, fg.Pattern):
        return config.pattern
    kwargs = dict(config.pattern_args)
    if config.pattern not in _BIDIRECTIONAL_ONLY:
        kwargs.setdefault("causal", config.causal)
    return getattr(fg, config.pattern)(config.n_ctx, **kwargs)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x_bnc: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x_bnc))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, pattern: fg.Pattern | None) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(
            n_ctx=config.n_ctx,
            causal=config.causal,
            pattern=pattern,
            pattern_mode=config.pattern_mode,
            layer=layer,
            dropout=config.dropout,
        )
        if config.attention == "metric":
            kwargs["parameterisation"] = config.metric
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = ATTENTIONS[config.attention](config.d_model, config.n_head, **kwargs)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x_bnc: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x_bnc = x_bnc + self.attn(self.ln_1(x_bnc), attn_mask)
        return x_bnc + self.mlp(self.ln_2(x_bnc))


class GPT(nn.Module):
    """``GPT(config)(idx_bt) -> logits_btv``; the output head shares the token embedding."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        pattern = build_pattern(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.n_ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i, pattern) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one (V, C) matrix
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def forward(self, idx_bt: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(idx_bt, torch.Tensor):
            raise TypeError(f"idx_bt must be a torch.Tensor, got {type(idx_bt).__name__}")
        if idx_bt.dim() != 2 or idx_bt.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"idx_bt must be a (B, T) integer tensor, got {idx_bt.dtype} {tuple(idx_bt.shape)}"
            )
        _, T = idx_bt.size()
        if T > self.config.n_ctx:
            raise ValueError(f"sequence length T={T} exceeds n_ctx={self.config.n_ctx}")
        self._check_ids(idx_bt)
        pos_t = torch.arange(T, device=idx_bt.device)
        x_bnc = self.drop(self.wte(idx_bt) + self.wpe(pos_t))
        for block in self.blocks:
            x_bnc = block(x_bnc, attn_mask)
        return self.lm_head(self.ln_f(x_bnc))  # (B, T, V)

    def _check_ids(self, idx_bt: torch.Tensor) -> None:
        """Token ids in [0, vocab_size) (one reduction; on CUDA a host sync): an embedding
        lookup would raise an IndexError without the value, or a device assert on CUDA."""
        if idx_bt.numel() == 0 or idx_bt.device.type == "meta":
            return
        lo, hi = (int(v) for v in torch.aminmax(idx_bt))
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"idx_bt must hold token ids in [0, vocab_size={self.config.vocab_size}), "
                f"got values from {lo} to {hi}"
            )

    @torch.no_grad()
    def generate(self, idx_bt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding (causal models): append ``max_new_tokens`` argmax tokens to
        ``idx_bt``, feeding each back in; the context is cropped to the last n_ctx tokens."""
        if not self.config.causal:
            raise ValueError("generate needs a causal model (config.causal=True)")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, numbers.Integral)
            or max_new_tokens < 0
        ):
            raise ValueError(f"max_new_tokens must be an int ≥ 0, got {max_new_tokens!r}")
        for _ in range(max_new_tokens):
            logits_btv = self(idx_bt[:, -self.config.n_ctx :])
            idx_bt = torch.cat([idx_bt, logits_btv[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx_bt
