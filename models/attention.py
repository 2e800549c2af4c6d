"""Attention modules with one interface, ``forward(x_bnc, attn_mask=None) -> y_bnc``.

- :class:`DotProductAttention`: standard multi-head attention, q·kᵀ/√d;
- :class:`QuadraticAttention`: one full bilinear form U per head, x·U·xᵀ/√c, values from their
  own projection (the seed's general quadratic form);
- :class:`MetricAttention`: one projection P and one symmetric metric M per head,
  p·M·pᵀ/√k with p = x·P, the scores applied to the same p (the seed's metric tensor attention);
  ``parameterisation="symmetric"`` learns the packed upper triangle of M freely, ``"psd"``
  learns S and uses M = S·Sᵀ.

Any of them can be restricted by a :class:`flowgraph.Pattern` of ``n_ctx`` positions, laid over
the model in a mode: ``"interleave"`` (layer i uses step i mod p, so the module is told its
``layer``), ``"merged"`` (the union of the steps) or ``"heads"`` (head h uses step h mod p).
Masks follow the project's convention: ``mask[q, k]`` is True iff query q attends key k. A
query that may attend no key outputs zeros (never NaN) on every path.

Paths: with no pattern and no ``attn_mask`` the fast path is ``F.scaled_dot_product_attention``
(dot-product, quadratic) or :func:`gpu.metric_attention`. With a pattern, where
:func:`gpu.backend_for` says the CuPy kernels run (CUDA), it is :func:`gpu.sparse_attention` /
:func:`gpu.metric_attention` with a :class:`gpu.SparseMask`; elsewhere it is the dense reference
:func:`masked_attention` with the pattern's (h, n, n) mask, which on a CPU at these sizes is
several times faster than the blockwise sparse reference (set a module's ``use_gpu_ops`` to
True to force the gpu functions, as the tests do: all paths agree). An explicit ``attn_mask``
always takes the dense reference path, the readable version of what every path computes.
Dropout applies to the output projection only, so every path computes the same function.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowgraph import Pattern, _validate, gpu
from flowgraph.gpu.reference import check_finite, softmax_limit

__all__ = [
    "ATTENTIONS",
    "PARAMETERISATIONS",
    "PATTERN_MODES",
    "DotProductAttention",
    "MetricAttention",
    "QuadraticAttention",
    "masked_attention",
    "pattern_mask",
]

PATTERN_MODES = ("interleave", "merged", "heads")
PARAMETERISATIONS = ("symmetric", "psd")


def pattern_mask(
    pattern: Pattern, *, n_head: int, layer: int, mode: str, causal: bool
) -> torch.Tensor:
    """The (h, n, n) bool mask a layer uses, h = n_head for ``mode="heads"`` else 1.

    Raises ValueError for an unknown mode or a bidirectional pattern in a causal model (the
    pattern would be silently cut to k ≤ q otherwise).
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(
            f"pattern must be a flowgraph.Pattern or None, got {type(pattern).__name__}"
        )
    if mode not in PATTERN_MODES:
        raise ValueError(f"pattern_mode must be one of {', '.join(PATTERN_MODES)}, got {mode!r}")
    if causal and not pattern.causal:
        raise ValueError(
            f"pattern {pattern.name!r} is bidirectional but the model is causal; "
            "use causal=False (an encoder; --bidirectional on the command line) or a causal pattern"
        )
    p = pattern.num_steps
    if mode == "interleave":
        masks = [pattern.dense(layer % p)]
    elif mode == "merged":
        masks = [pattern.merged().dense(0)]
    else:
        masks = [pattern.dense(h % p) for h in range(n_head)]
    return torch.from_numpy(np.stack(masks))


def masked_attention(
    q_bhnd: torch.Tensor,
    k_bhnd: torch.Tensor,
    v_bhne: torch.Tensor,
    mask_bhnn: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ) · v over the keys ``mask_bhnn`` allows (broadcast to (b, h, n, n);
    None: all); a query with no allowed key gives zeros. The dense reference path."""
    s_bhnn = (q_bhnd @ k_bhnd.transpose(-1, -2)) * scale
    if mask_bhnn is not None:
        s_bhnn = s_bhnn.masked_fill(~mask_bhnn, -math.inf)
    s_bhnn = softmax_limit(s_bhnn)  # an overflowed score (+inf) takes the weight, not NaN
    m_bhn1 = s_bhnn.amax(-1, keepdim=True).detach()
    m_bhn1 = torch.where(torch.isfinite(m_bhn1), m_bhn1, 0.0)
    w_bhnn = torch.exp(s_bhnn - m_bhn1)
    total_bhn1 = w_bhnn.sum(-1, keepdim=True)
    return (w_bhnn @ v_bhne) / torch.where(total_bhn1 > 0, total_bhn1, 1.0)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int ≥ 1, got {name}={value!r}")
    return int(value)


def _check_sizes(d_model: object, n_head: object, n_ctx: object) -> None:
    for name, value in (("d_model", d_model), ("n_head", n_head), ("n_ctx", n_ctx)):
        _positive(name, value)


def _check_options(causal: object, layer: object, dropout: object, pattern_mode: object) -> None:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 0:
        raise ValueError(f"layer must be an int ≥ 0, got layer={layer!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1), got dropout={dropout!r}")
    if not 0.0 <= dropout < 1.0:  # also refuses NaN
        raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
    if pattern_mode not in PATTERN_MODES:
        raise ValueError(
            f"pattern_mode must be one of {', '.join(PATTERN_MODES)}, got {pattern_mode!r}"
        )


def check_param_bytes(what: str, params: int, extra_bytes: int = 0) -> None:
    """Refuse, before any allocation, a module whose parameters (in the default dtype) and
    ``extra_bytes`` of buffers need more than ``flowgraph``'s memory limit (8 GiB)."""
    itemsize = torch.empty((), dtype=torch.get_default_dtype()).element_size()
    _validate.memory(
        f"{what} with {params:,} parameters",
        params * itemsize + extra_bytes,
        _validate.MEMORY_LIMIT_BYTES,
        fix="build it in pieces",
    )


def _block_for(n: int) -> int:
    return 16 if n <= 128 else 64  # small tiles waste less on short sequences


class _Attention(nn.Module):
    """Mask bookkeeping shared by the three modules: causal flag, pattern mask, sparse masks."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        *,
        n_ctx: int,
        causal: bool = True,
        pattern: Pattern | None = None,
        pattern_mode: str = "interleave",
        layer: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_sizes(d_model, n_head, n_ctx)
        _check_options(causal, layer, dropout, pattern_mode)
        if d_model % n_head != 0:
            raise ValueError(
                f"d_model must be a multiple of n_head, got d_model={d_model}, n_head={n_head}"
            )
        if pattern is not None and not isinstance(pattern, Pattern):
            raise TypeError(
                f"pattern must be a flowgraph.Pattern or None, got {type(pattern).__name__}"
            )
        if pattern is not None and pattern.n != n_ctx:
            raise ValueError(
                f"pattern has n={pattern.n} positions, expected n_ctx={n_ctx}; "
                "build it with the model's context length"
            )
        self.d_model, self.n_head, self.n_ctx = d_model, n_head, n_ctx
        self.d_head = d_model // n_head
        self.causal, self.layer = causal, layer
        self.pattern_mode = pattern_mode if pattern is not None else None
        self.mask_hnn: torch.Tensor | None
        if pattern is None:
            self.mask_hnn = None
        else:
            mask = pattern_mask(
                pattern, n_head=n_head, layer=layer, mode=pattern_mode, causal=causal
            )
            self.register_buffer("mask_hnn", mask, persistent=False)
        check_param_bytes(type(self).__name__, self._param_count(d_model, n_head))
        self._sparse: dict[tuple[int, str], gpu.SparseMask] = {}
        self.use_gpu_ops: bool | None = None  # None: when gpu.backend_for says "cupy"
        self.resid_dropout = nn.Dropout(dropout)

    @staticmethod
    def _param_count(d_model: int, n_head: int) -> int:
        """The parameters this module allocates (checked before it does)."""
        raise NotImplementedError

    def dense_mask(self, T: int, device: torch.device) -> torch.Tensor | None:
        """The (h, T, T) bool mask of this layer (causal and pattern), None when unrestricted."""
        if self.mask_hnn is not None:
            return self.mask_hnn[:, :T, :T].to(device)
        if self.causal:
            return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None]
        return None

    def sparse_mask(self, T: int, device: torch.device) -> gpu.SparseMask:
        """The pattern's mask for T positions as a SparseMask on ``device`` (cached)."""
        key = (T, str(device))
        if key not in self._sparse:
            assert self.mask_hnn is not None
            # built outside inference mode: a mask first made during inference_mode() evaluation
            # must still serve training, whose backward saves its index tensors
            with torch.inference_mode(False):
                dense = self.mask_hnn[:, :T, :T].cpu()
                mask = gpu.SparseMask.from_masks(dense, block=_block_for(T)).to(device)
            self._sparse[key] = mask
        return self._sparse[key]

    def _own_or_combined(
        self, B: int, T: int, attn_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """The layer's own mask AND ``attn_mask`` (either may be absent)."""
        if attn_mask is None:
            return self.dense_mask(T, device)
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attn_mask must be a bool tensor or None, got {type(attn_mask)}")
        if attn_mask.dtype != torch.bool:
            raise TypeError(
                f"attn_mask must be a bool tensor (True: attend), got {attn_mask.dtype}"
            )
        if attn_mask.shape[-2:] != (T, T) or attn_mask.dim() not in (2, 3, 4):
            raise ValueError(
                f"attn_mask must be (T, T), (h, T, T) or (b, h, T, T) with T={T}, "
                f"got shape {tuple(attn_mask.shape)}"
            )
        lead = tuple(attn_mask.shape[:-2])  # broadcast against (B, h): each 1 or the full size
        full = (B, self.n_head)[-len(lead) :] if lead else ()
        if any(got not in (1, want) for got, want in zip(lead, full, strict=True)):
            raise ValueError(
                f"attn_mask's leading dimensions {lead} must each be 1 or match (B, h)="
                f"{(B, self.n_head)[-len(lead) :]}, got shape {tuple(attn_mask.shape)}"
            )
        if attn_mask.device != device:
            raise ValueError(
                f"expected x_bnc and attn_mask on one device, got {device} and {attn_mask.device}"
            )
        own = self.dense_mask(T, device)
        return attn_mask if own is None else attn_mask & own

    def _pattern_path(self, x_bnc: torch.Tensor) -> str | None:
        """None (no pattern), "gpu" (gpu.* with a SparseMask) or "dense" (masked_attention)."""
        if self.mask_hnn is None:
            return None
        use = self.use_gpu_ops
        if use is None:
            use = gpu.backend_for(x_bnc) == "cupy"
        return "gpu" if use else "dense"

    def _check_x(self, x_bnc: torch.Tensor) -> tuple[int, int, int]:
        """Shape, dtype and device of the input, and finite values (one reduction; on CUDA a
        host synchronisation): NaN or inf in x has no attention to compute."""
        if not isinstance(x_bnc, torch.Tensor):
            raise TypeError(f"x_bnc must be a torch.Tensor, got {type(x_bnc).__name__}")
        if x_bnc.dim() != 3 or x_bnc.shape[-1] != self.d_model:
            raise ValueError(
                f"x_bnc must be (B, T, d_model={self.d_model}), got shape {tuple(x_bnc.shape)}"
            )
        weight = next(self.parameters())
        if x_bnc.dtype != weight.dtype or x_bnc.device != weight.device:
            raise TypeError(
                f"x_bnc must match the module's parameters ({weight.dtype} on {weight.device}), "
                f"got {x_bnc.dtype} on {x_bnc.device}; move the module with .to(...)"
            )
        B, T, C = x_bnc.size()
        if T > self.n_ctx:
            raise ValueError(f"sequence length T={T} exceeds n_ctx={self.n_ctx}")
        check_finite(x_bnc=x_bnc)
        return B, T, C

    def _heads(self, x_bnc: torch.Tensor, B: int, T: int) -> torch.Tensor:
        d = x_bnc.shape[-1] // self.n_head  # explicit: -1 is ambiguous when B·T = 0
        return x_bnc.view(B, T, self.n_head, d).transpose(1, 2)  # (B, h, T, d)

    def _merge(self, y_bhnd: torch.Tensor, B: int, T: int) -> torch.Tensor:
        return y_bhnd.transpose(1, 2).contiguous().view(B, T, self.n_head * y_bhnd.shape[-1])

    def extra_repr(self) -> str:
        mode = f", pattern_mode={self.pattern_mode!r}" if self.pattern_mode else ""
        head = f"d_model={self.d_model}, n_head={self.n_head}, causal={self.causal}"
        return f"{head}, layer={self.layer}{mode}"


class DotProductAttention(_Attention):
    """Multi-head scaled dot-product attention: softmax(q·kᵀ/√d)·v per head, then a projection."""

    @staticmethod
    def _param_count(d_model: int, n_head: int) -> int:
        return 4 * d_model * d_model + 4 * d_model  # c_attn, c_proj

    def __init__(self, d_model: int, n_head: int, **kwargs) -> None:
        super().__init__(d_model, n_head, **kwargs)
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x_bnc: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = self._check_x(x_bnc)
        if B * T == 0:  # nothing to attend: an empty output (softmax needs a key)
            return self.c_proj(x_bnc)
        q_bnc, k_bnc, v_bnc = self.c_attn(x_bnc).split(C, dim=2)
        q_bhnd, k_bhnd, v_bhnd = (self._heads(t, B, T) for t in (q_bnc, k_bnc, v_bnc))
        scale = 1.0 / math.sqrt(self.d_head)
        path = self._pattern_path(x_bnc)
        if attn_mask is not None or path == "dense":  # dense reference path
            mask = self._own_or_combined(B, T, attn_mask, x_bnc.device)
            y_bhnd = masked_attention(q_bhnd, k_bhnd, v_bhnd, mask, scale)
        elif path == "gpu":
            mask = self.sparse_mask(T, x_bnc.device)
            y_bhnd = gpu.sparse_attention(q_bhnd, k_bhnd, v_bhnd, mask, scale)
        else:
            y_bhnd = F.scaled_dot_product_attention(
                q_bhnd, k_bhnd, v_bhnd, is_causal=self.causal, scale=scale
            )
        return self.resid_dropout(self.c_proj(self._merge(y_bhnd, B, T)))


class QuadraticAttention(_Attention):
    """One full bilinear form per head: softmax(x·U_h·xᵀ/√c)·v_h, v_h = x·V_h (the seed's
    quadratic attention; U_h is c×c and not constrained to be symmetric)."""

    @staticmethod
    def _param_count(d_model: int, n_head: int) -> int:
        return (n_head + 2) * d_model * d_model + 2 * d_model  # u_hcc, c_value, c_proj

    def __init__(self, d_model: int, n_head: int, **kwargs) -> None:
        super().__init__(d_model, n_head, **kwargs)
        self.u_hcc = nn.Parameter(torch.randn(n_head, d_model, d_model) * d_model**-0.5)
        self.c_value = nn.Linear(d_model, d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x_bnc: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = self._check_x(x_bnc)
        if B * T == 0:  # nothing to attend: an empty output (softmax needs a key)
            return self.c_proj(x_bnc)
        q_bhnc = torch.einsum("bnc,hcd->bhnd", x_bnc, self.u_hcc)  # x·U per head
        k_bhnc = x_bnc[:, None].expand(B, self.n_head, T, C)
        v_bhnd = self._heads(self.c_value(x_bnc), B, T)
        scale = 1.0 / math.sqrt(C)
        path = self._pattern_path(x_bnc)
        if attn_mask is not None or path == "dense":
            mask = self._own_or_combined(B, T, attn_mask, x_bnc.device)
            y_bhnd = masked_attention(q_bhnc, k_bhnc, v_bhnd, mask, scale)
        elif path == "gpu":
            # gpu.sparse_attention wants v shaped like q: pad the d value columns to c
            v_bhnc = F.pad(v_bhnd, (0, C - self.d_head))
            mask = self.sparse_mask(T, x_bnc.device)
            y_bhnd = gpu.sparse_attention(q_bhnc, k_bhnc, v_bhnc, mask, scale)[..., : self.d_head]
        else:
            y_bhnd = F.scaled_dot_product_attention(
                q_bhnc, k_bhnc, v_bhnd, is_causal=self.causal, scale=scale
            )
        return self.resid_dropout(self.c_proj(self._merge(y_bhnd, B, T)))


class MetricAttention(_Attention):
    """Metric tensor attention: p = x·P per head, softmax(p·M·pᵀ/√k)·p, then a projection.

    ``parameterisation="symmetric"``: the parameter ``m_packed_hl`` (h, k(k+1)/2) is the packed
    upper triangle of M (:func:`gpu.pack_symmetric` order), free. ``"psd"``: the parameter
    ``s_hkk`` and M = S·Sᵀ (positive semi-definite, so p·M·pᵀ is a squared norm's polarisation).
    Both start at M = I, where the head is dot-product attention with q = k = v = p.
    """

    @staticmethod
    def _param_count(d_model: int, n_head: int) -> int:
        k = d_model // n_head
        return 2 * d_model * d_model + d_model + n_head * k * k  # c_p, c_proj, M (or S)

    def __init__(self, d_model: int, n_head: int, parameterisation: str = "symmetric", **kwargs):
        super().__init__(d_model, n_head, **kwargs)
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"parameterisation must be one of {', '.join(PARAMETERISATIONS)}, "
                f"got {parameterisation!r}"
            )
        self.parameterisation = parameterisation
        k = self.d_head
        eye_hkk = torch.eye(k).expand(n_head, k, k)
        if parameterisation == "symmetric":
            self.m_packed_hl = nn.Parameter(gpu.pack_symmetric(eye_hkk).clone())
        else:
            self.s_hkk = nn.Parameter(eye_hkk.clone())
        self.c_p = nn.Linear(d_model, d_model, bias=False)  # the h projections P, side by side
        self.c_proj = nn.Linear(d_model, d_model)

    def metric_hkk(self) -> torch.Tensor:
        """M per head, (h, k, k)."""
        if self.parameterisation == "symmetric":
            return gpu.unpack_symmetric(self.m_packed_hl, self.d_head)
        return self.s_hkk @ self.s_hkk.mT

    def metric_packed_hl(self) -> torch.Tensor:
        """M per head, packed (h, k(k+1)/2)."""
        if self.parameterisation == "symmetric":
            return self.m_packed_hl
        m_hkk = self.s_hkk @ self.s_hkk.mT
        return gpu.pack_symmetric((m_hkk + m_hkk.mT) / 2)

    def forward(self, x_bnc: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = self._check_x(x_bnc)
        if B * T == 0:  # nothing to attend: an empty output (softmax needs a key)
            return self.c_proj(x_bnc)
        p_bhnk = self._heads(self.c_p(x_bnc), B, T)
        scale = 1.0 / math.sqrt(self.d_head)
        path = self._pattern_path(x_bnc)
        if attn_mask is not None or path == "dense":
            mask = self._own_or_combined(B, T, attn_mask, x_bnc.device)
            q_bhnk = p_bhnk @ self.metric_hkk()[None]
            t_bhnk = masked_attention(q_bhnk, p_bhnk, p_bhnk, mask, scale)
        elif path == "gpu":  # the pattern mask is already causal when it must be
            mask = self.sparse_mask(T, x_bnc.device)
            t_bhnk = gpu.metric_attention(
                p_bhnk, self.metric_packed_hl(), causal=False, mask=mask, scale=scale
            )
        else:
            t_bhnk = gpu.metric_attention(
                p_bhnk, self.metric_packed_hl(), causal=self.causal, scale=scale
            )
        return self.resid_dropout(self.c_proj(self._merge(t_bhnk, B, T)))


ATTENTIONS = {
    "sdpa": DotProductAttention,
    "quadratic": QuadraticAttention,
    "metric": MetricAttention,
}
