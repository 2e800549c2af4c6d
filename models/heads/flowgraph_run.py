"""Our own runs (``flowgraph train``): a :class:`~models.heads.checkpoint.Checkpoint` over
:class:`models.gpt.GPT`.

The checkpoint is read with :func:`models.checkpoint.read_checkpoint` (every file checked
against its sha256, the safetensors header against the file) and the GPT rebuilt from the stored
config — after the config's sizes are checked against the stored tensors (a wrong dimension
names its key) and what the checkpoint computes against the memory limit
(:func:`models.heads.checkpoint.check_memory`), so a lying config cannot make the rebuild
allocate what the file does not back. :meth:`attention` runs the GPT's
own forward pass; a pre-hook on each block's attention module captures the module's input x, and
:func:`attention_probs` recomputes from x and the module's weights the probabilities the module
uses — the dense reference path of :mod:`models.attention` (scores, the layer's causal and sparse
pattern mask as :meth:`~models.attention._Attention.dense_mask` gives it, softmax with empty rows
as zeros), which every path of the module agrees with. The tests rebuild each module's output
from these probabilities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowgraph.models.attention import DotProductAttention, MetricAttention, QuadraticAttention
from flowgraph.models.checkpoint import (
    CheckpointError,
    load_model_state,
    read_checkpoint,
)
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads.checkpoint import (
    Checkpoint,
    char_tokenize,
    check_memory,
    id_tokens,
    linear_per_head,
    split_tokenize,
)
from flowgraph.models.heads.safe_load import Dim, TensorStore, check_tensors
from flowgraph.models.heads.weights import HeadWeights
from flowgraph.models.tasks import make_task

__all__ = ["FlowgraphRun", "attention_probs", "load_flowgraph_run", "masked_softmax"]

_KIND = {DotProductAttention: "dot", MetricAttention: "metric", QuadraticAttention: "quadratic"}


def masked_softmax(s_bhnn: torch.Tensor, mask_hnn: torch.Tensor | None) -> torch.Tensor:
    """softmax over the keys ``mask_hnn`` allows (broadcast; None: all), as
    :func:`models.attention.masked_attention` weighs the values: a row with no allowed key is 0."""
    if mask_hnn is not None:
        s_bhnn = s_bhnn.masked_fill(~mask_hnn, -math.inf)
    m_bhn1 = s_bhnn.amax(-1, keepdim=True)
    m_bhn1 = torch.where(torch.isfinite(m_bhn1), m_bhn1, 0.0)
    w_bhnn = torch.exp(s_bhnn - m_bhn1)
    total_bhn1 = w_bhnn.sum(-1, keepdim=True)
    return w_bhnn / torch.where(total_bhn1 > 0, total_bhn1, 1.0)


def _split_heads(t_bnc: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, _ = t_bnc.shape
    return t_bnc.view(B, T, n_head, -1).transpose(1, 2)  # (B, h, T, d)


def _dot_scores(attn: DotProductAttention, x_bnc: torch.Tensor) -> torch.Tensor:
    C = x_bnc.shape[-1]
    q_bnc, k_bnc, _ = attn.c_attn(x_bnc).split(C, dim=2)
    q_bhnd, k_bhnd = _split_heads(q_bnc, attn.n_head), _split_heads(k_bnc, attn.n_head)
    return (q_bhnd @ k_bhnd.mT) / math.sqrt(attn.d_head)


def _metric_scores(attn: MetricAttention, x_bnc: torch.Tensor) -> torch.Tensor:
    p_bhnk = _split_heads(attn.c_p(x_bnc), attn.n_head)
    q_bhnk = p_bhnk @ attn.metric_hkk()[None]
    return (q_bhnk @ p_bhnk.mT) / math.sqrt(attn.d_head)


def _quadratic_scores(attn: QuadraticAttention, x_bnc: torch.Tensor) -> torch.Tensor:
    q_bhnc = torch.einsum("bnc,hcd->bhnd", x_bnc, attn.u_hcc)
    return (q_bhnc @ x_bnc[:, None].mT) / math.sqrt(x_bnc.shape[-1])


_SCORES: dict[type, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    DotProductAttention: _dot_scores,
    MetricAttention: _metric_scores,
    QuadraticAttention: _quadratic_scores,
}


def attention_probs(attn: nn.Module, x_bnc: torch.Tensor) -> torch.Tensor:
    """(B, h, T, T) attention probabilities of the :mod:`models.attention` module ``attn`` on
    its input ``x_bnc`` (after the block's layer norm), with the layer's causal/pattern mask."""
    scores = _SCORES.get(type(attn))
    if scores is None:
        raise TypeError(
            f"attn must be one of {', '.join(t.__name__ for t in _SCORES)}, "
            f"got {type(attn).__name__}"
        )
    mask_hnn = attn.dense_mask(x_bnc.shape[1], x_bnc.device)
    return masked_softmax(scores(attn, x_bnc), mask_hnn)


class FlowgraphRun(Checkpoint):
    """A run of ``flowgraph train`` (see the module docstring)."""

    kind = "flowgraph"

    def __init__(self, path: Path, name: str, model: GPT, run_config: dict[str, Any]) -> None:
        config = model.config
        attn = model.blocks[0].attn
        super().__init__(
            path,
            name=name,
            attention_kind=_KIND[type(attn)],
            num_layers=config.n_layer,
            num_heads=config.n_head,
            head_dim=config.d_model // config.n_head,
            d_model=config.d_model,
            n_ctx=config.n_ctx,
            vocab_size=config.vocab_size,
            causal=config.causal,
        )
        self.model, self.run_config = model, run_config

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hooks = [
            block.attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            for block in self.model.blocks
        ]
        try:
            self.model(ids_t[None])
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(
            [
                attention_probs(block.attn, x_bnc)[0]
                for block, x_bnc in zip(self.model.blocks, captured, strict=True)
            ]
        )

    def _head_weights(self, layer: int) -> HeadWeights:
        attn = self.model.blocks[layer].attn
        H, C = self.num_heads, self.d_model
        if isinstance(attn, DotProductAttention):
            w_3cc = attn.c_attn.weight
            return HeadWeights(
                "dot",
                1.0 / math.sqrt(attn.d_head),
                w_q_hcd=linear_per_head(w_3cc[:C], H),
                w_k_hcd=linear_per_head(w_3cc[C : 2 * C], H),
            )
        if isinstance(attn, MetricAttention):
            return HeadWeights(
                "metric",
                1.0 / math.sqrt(attn.d_head),
                p_hck=linear_per_head(attn.c_p.weight, H),
                m_hkk=attn.metric_hkk().detach().double().numpy(),
            )
        return HeadWeights(
            "quadratic", 1.0 / math.sqrt(C), u_hcc=attn.u_hcc.detach().double().numpy()
        )

    def _token_embeddings(self) -> torch.Tensor:
        return self.model.wte.weight

    def _position_embeddings(self) -> torch.Tensor:
        return self.model.wpe.weight

    def _vocabulary(self) -> tuple[list[str], Callable[[str], list[int]]]:
        task = dict(self.run_config.get("task") or {})
        name = task.pop("name", None)
        V = self.vocab_size
        if name == "chars":
            try:
                chars = make_task("chars", **task).chars
            except (ValueError, TypeError, OSError) as exc:
                warnings.warn(
                    f"{self.name}: the character vocabulary comes from the training text, which "
                    f"cannot be read now ({exc}); tokens are shown as ids",
                    stacklevel=3,
                )
            else:
                if len(chars) == V:
                    stoi = {ch: i for i, ch in enumerate(chars)}
                    return list(chars), lambda text: char_tokenize(text, stoi)
        tokens = id_tokens(V)  # the sorter's symbols are their values
        return tokens, lambda text: split_tokenize(text, tokens)


def _check_sizes(config: GPTConfig, state: dict[str, torch.Tensor], ckpt_dir: Path) -> None:
    """The config's sizes against the stored tensors, and the memory the checkpoint needs, before
    the GPT is built (its constructor allocates whatever the config says)."""
    c, H = Dim(config.d_model, "d_model"), Dim(config.n_head, "n_head")
    L, d = config.n_layer, config.d_model // config.n_head
    expected: dict[str, tuple[int, ...]] = {
        "wte.weight": (Dim(config.vocab_size, "vocab_size"), c),
        "wpe.weight": (Dim(config.n_ctx, "n_ctx"), c),
        "ln_f.weight": (c,),
        f"blocks.{L - 1}.ln_1.weight": (c,),  # the last of n_layer blocks
    }
    attn = "blocks.0.attn."
    if config.attention == "metric" and config.metric == "psd":
        expected[attn + "c_p.weight"] = (c, c)
        k = Dim(d, "d_model/n_head")
        expected[attn + "s_hkk"] = (H, k, k)
    elif config.attention == "metric":
        expected[attn + "c_p.weight"] = (c, c)
        expected[attn + "m_packed_hl"] = (H, Dim(d * (d + 1) // 2, "k(k+1)/2, k = d_model/n_head"))
    elif config.attention == "quadratic":
        expected[attn + "u_hcc"] = (H, c, c)
    else:
        expected[attn + "c_attn.weight"] = (Dim(3 * c, "3·d_model"), c)
    check_tensors(
        TensorStore.from_state(state, ckpt_dir / "model.safetensors"),
        expected,
        config=f"{ckpt_dir / 'config.json'} (model)",
    )
    stored = sum(t.numel() for t in state.values())
    check_memory(
        ckpt_dir,
        attention_kind={"metric": "metric", "quadratic": "quadratic"}.get(config.attention, "dot"),
        num_layers=L,
        num_heads=config.n_head,
        head_dim=d,
        d_model=config.d_model,
        n_ctx=config.n_ctx,
        vocab_size=config.vocab_size,
        weight_bytes=2 * 4 * stored,  # the tensors as read, and the GPT's float32 parameters
    )


def load_flowgraph_run(path: Path, *, name: str) -> FlowgraphRun:
    """The run checkpoint directory ``path`` (or the copy an interrupted save left aside)."""
    ckpt = read_checkpoint(path, trainer=False)  # the optimizer state (a pickle) is never read
    config_file = ckpt.path / "config.json"
    model = ckpt.config.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{config_file}: no usable model config ('model' is not an object)")
    try:
        model_config = GPTConfig.from_dict(dict(model), check_memory=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: no usable model config ({exc})") from None
    _check_sizes(model_config, ckpt.model_state, ckpt.path)
    try:
        model = GPT(model_config)
    except (TypeError, ValueError) as exc:  # the pattern's arguments, checked when it is built
        raise CheckpointError(f"{config_file}: no usable model config ({exc})") from None
    try:
        load_model_state(model, ckpt.model_state)
    except CheckpointError as exc:
        raise CheckpointError(f"{ckpt.path / 'model.safetensors'}: {exc}") from None
    return FlowgraphRun(Path(path), name, model.eval(), ckpt.config)
