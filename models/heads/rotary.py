"""Rotary position embeddings (RoPE) and what they do to a head's bilinear form.

A rotary model rotates each query and key by an angle proportional to its position before the
dot product: q_m = R(mθ) W_qᵀx_m, k_n = R(nθ) W_kᵀx_n (column vectors), so the score is
q_mᵀk_n = x_mᵀ W_q R((n − m)θ) W_kᵀ x_n: the head's form depends on the offset Δ = n − m (key
position minus query position; a causal model's keys sit at Δ ≤ 0) and not on m itself.
R(φ) is block-diagonal: the head dim is cut into planes, pairs of dims (a_i, b_i) that rotate by
φ_i = Δθ_i, and the dims past ``rotary_dim`` (partial rotary, GPT-NeoX) do not rotate.

- :class:`Rotary`: the frequencies θ_i of a model, its plane layout, the torch rotation its
  forward pass applies (bit-for-bit the one of ``transformers``' ``apply_rotary_pos_emb``) and
  R(Δθ) as a matrix;
- :func:`rotary_from_config`: a ``config.json``'s ``rope_theta`` / ``rope_scaling`` /
  ``rope_parameters`` / ``partial_rotary_factor`` read and checked (types ``default``,
  ``linear``, ``llama3``; others are refused by name);
- :func:`rotary_qk_form`: the head's form W_q R(Δθ) W_kᵀ at an offset, as a
  :class:`~models.heads.metrics.QKForm`;
- :func:`rotary_planes`: per plane, θ_i, the wavelength 2π/θ_i and the plane's scale and
  rotation (:class:`RotaryPlanes`; docs/heads.md, "Rotary heads", has the algebra).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.metrics import QKForm, qk_form
from flowgraph.models.heads.weights import HeadWeights

__all__ = [
    "LAYOUTS",
    "ROPE_TYPES",
    "Rotary",
    "RotaryPlanes",
    "rope_inv_freq",
    "rotary_from_config",
    "rotary_planes",
    "rotary_qk_form",
]

ROPE_TYPES = ("default", "linear", "llama3")
LAYOUTS = ("half", "interleaved")
DEFAULT_THETA = 10000.0  # transformers' default rope_theta


def _offset(offset: object) -> int:
    """``offset`` checked to be an int (positions are integers)."""
    if isinstance(offset, (bool, np.bool_)) or not isinstance(offset, (int, np.integer)):
        raise TypeError(
            f"offset must be an int (key position − query position), got {offset!r} "
            f"({type(offset).__name__})"
        )
    return int(offset)


@dataclass(frozen=True)
class Rotary:
    """A model's rotary position embedding.

    ``inv_freq_p`` (P,) float64: θ_i, the angle per position of plane i (radians; the float32
    values the model computes with, so the forward pass matches ``transformers``). The planes
    cover the first ``rotary_dim`` = 2P dims of the ``head_dim``-wide head; the rest pass
    through. ``layout`` says which dims form plane i: ``"half"`` (a_i, b_i) = (i, i + P), as
    ``rotate_half`` pairs them (Llama, Mistral, Qwen2, GPT-NeoX); ``"interleaved"``
    (2i, 2i + 1) (GPT-J). On a plane R(φ) maps (x_a, x_b) to
    (x_a cos φ − x_b sin φ, x_b cos φ + x_a sin φ). ``rope_type`` records where θ came from.
    """

    inv_freq_p: np.ndarray
    head_dim: int
    layout: str = "half"
    rope_type: str = "default"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        inv = np.array(self.inv_freq_p, dtype=np.float64, copy=True)
        if inv.ndim != 1 or inv.size == 0 or not np.isfinite(inv).all() or (inv <= 0).any():
            raise ValueError(f"inv_freq_p must be a non-empty 1-D array of θ > 0, got {inv!r}")
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int):
            raise TypeError(f"head_dim must be an int, got {self.head_dim!r}")
        if 2 * inv.size > self.head_dim:
            raise ValueError(
                f"{inv.size} planes need rotary_dim={2 * inv.size} ≤ head_dim, got "
                f"head_dim={self.head_dim}"
            )
        inv.flags.writeable = False
        object.__setattr__(self, "inv_freq_p", inv)

    @property
    def num_planes(self) -> int:
        return int(self.inv_freq_p.size)

    @property
    def rotary_dim(self) -> int:
        """The dims that rotate (2 per plane); dims rotary_dim … head_dim − 1 pass through."""
        return 2 * self.num_planes

    def plane_dims(self) -> tuple[np.ndarray, np.ndarray]:
        """(a_p, b_p): plane i rotates head dims a_p[i] and b_p[i]."""
        P = self.num_planes
        if self.layout == "half":
            return np.arange(P), np.arange(P) + P
        return 2 * np.arange(P), 2 * np.arange(P) + 1

    def rotation(self, offset: int) -> np.ndarray:
        """(d, d) float64 R(Δθ): column vectors, ``q_mᵀ k_n = qᵀ R((n − m)θ) k`` for the
        unrotated q, k; identity on the pass-through dims."""
        phi_p = _offset(offset) * self.inv_freq_p
        a_p, b_p = self.plane_dims()
        r_dd = np.eye(self.head_dim)
        r_dd[a_p, a_p] = np.cos(phi_p)
        r_dd[b_p, b_p] = np.cos(phi_p)
        r_dd[a_p, b_p] = -np.sin(phi_p)
        r_dd[b_p, a_p] = np.sin(phi_p)
        return r_dd

    def cos_sin(self, positions_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, P) float32 cos and sin of every position's angles, computed as transformers'
        rotary embedding does (float32 position × float32 θ)."""
        inv_p = torch.tensor(self.inv_freq_p, dtype=torch.float32)  # exact: float32 values
        freqs_tp = positions_t.to(torch.float32)[:, None] * inv_p[None]
        return freqs_tp.cos(), freqs_tp.sin()

    def apply(
        self, x_htd: torch.Tensor, cos_tp: torch.Tensor, sin_tp: torch.Tensor
    ) -> torch.Tensor:
        """``x_htd`` (heads, T, d) with token t rotated by its angles (:meth:`cos_sin`); the
        pass-through dims are kept. For the half layout this is ``transformers``'
        ``q * cos + rotate_half(q) * sin`` with cos = cat(cos, cos), term by term."""
        r = self.rotary_dim
        rot, rest = x_htd[..., :r], x_htd[..., r:]
        if self.layout == "half":
            cos_td, sin_td = torch.cat([cos_tp, cos_tp], -1), torch.cat([sin_tp, sin_tp], -1)
            x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
            turned = torch.cat([-x2, x1], dim=-1)
        else:
            cos_td = cos_tp.repeat_interleave(2, -1)
            sin_td = sin_tp.repeat_interleave(2, -1)
            turned = torch.stack([-rot[..., 1::2], rot[..., 0::2]], dim=-1).flatten(-2)
        out = rot * cos_td + turned * sin_td
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    def __repr__(self) -> str:
        return (
            f"Rotary(rope_type={self.rope_type!r}, head_dim={self.head_dim}, "
            f"rotary_dim={self.rotary_dim}, layout={self.layout!r}, "
            f"θ∈[{self.inv_freq_p.min():.4g}, {self.inv_freq_p.max():.4g}])"
        )


# --- frequencies from a config ---------------------------------------------------------------
def rope_inv_freq(
    rope_type: str, theta: float, rotary_dim: int, params: Mapping[str, float]
) -> torch.Tensor:
    """(rotary_dim / 2,) float32 θ_i exactly as ``transformers``' ``ROPE_INIT_FUNCTIONS`` (and
    its default) compute them: θ_i = theta^(−2i/rotary_dim); ``linear`` divides every θ_i by
    ``factor``; ``llama3`` divides the low frequencies (wavelength > original context /
    low_freq_factor) by ``factor``, keeps the high ones (wavelength < original context /
    high_freq_factor) and interpolates between. ``params``: the checked scaling keys."""
    steps = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    inv = 1.0 / (theta**steps)
    if rope_type == "default":
        return inv
    factor = params["factor"]
    if rope_type == "linear":
        return inv / factor
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, inv_llama)


def _number(value: object, key: str, where: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise CheckpointError(f"{where}: {key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise CheckpointError(f"{where}: {key} must be > 0, got {value!r}")
    return float(value)


def _rope_parameters(config: Mapping[str, Any], where: object) -> dict[str, Any]:
    """The rope settings of either config format as one flat dict: ``rope_parameters``
    (transformers ≥ 5, with ``rope_theta`` inside) or ``rope_theta`` + ``rope_scaling`` (older
    files); ``type`` is read as ``rope_type``."""
    raw = config.get("rope_parameters")
    if raw is None:
        raw = config.get("rope_scaling")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{where}: rope_scaling/rope_parameters must be an object or null, got {raw!r}"
        )
    nested = [k for k, v in raw.items() if isinstance(v, Mapping)]
    if nested:
        raise CheckpointError(
            f"{where}: rope parameters per layer type ({', '.join(map(repr, nested))}) are not "
            "supported; one rope for every layer only"
        )
    params = dict(raw)
    params.setdefault("rope_type", params.get("type", "default"))
    if params.get("rope_theta") is None:
        params["rope_theta"] = config.get("rope_theta", DEFAULT_THETA)
    if params.get("partial_rotary_factor") is None and "partial_rotary_factor" in config:
        params["partial_rotary_factor"] = config["partial_rotary_factor"]
    return params


def rotary_from_config(
    config: Mapping[str, Any],
    *,
    head_dim: int,
    max_position_embeddings: int,
    where: object,
    layout: str = "half",
) -> Rotary:
    """The :class:`Rotary` a ``config.json`` describes, its values checked.

    Reads ``rope_parameters`` (transformers ≥ 5) or ``rope_theta`` and ``rope_scaling`` (older
    files), and ``partial_rotary_factor`` (rotary_dim = int(head_dim × factor), even, ≥ 2).
    Supported ``rope_type``\\ s (:data:`ROPE_TYPES`): ``default``; ``linear`` (``factor``);
    ``llama3`` (``factor``, ``low_freq_factor`` < ``high_freq_factor``,
    ``original_max_position_embeddings``, which defaults to ``max_position_embeddings`` as in
    transformers). Anything else (dynamic, yarn, longrope, …) is a :class:`CheckpointError`
    naming the type and the supported ones, raised at load rather than giving wrong attention.
    """
    params = _rope_parameters(config, where)
    rope_type = params["rope_type"]
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(
            f"{where}: rope type {rope_type!r} (rope_scaling/rope_parameters) is not supported; "
            f"supported: {', '.join(ROPE_TYPES)}"
        )
    theta = _number(params["rope_theta"], "rope_theta", where)
    factor = params.get("partial_rotary_factor")
    factor = 1.0 if factor is None else _number(factor, "partial_rotary_factor", where)
    if factor > 1:
        raise CheckpointError(f"{where}: partial_rotary_factor must be ≤ 1, got {factor}")
    rotary_dim = int(head_dim * factor)
    if rotary_dim < 2 or rotary_dim % 2:
        raise CheckpointError(
            f"{where}: partial_rotary_factor={factor} × head_dim={head_dim} gives rotary_dim="
            f"{rotary_dim}; it must be even and ≥ 2"
        )
    checked: dict[str, float] = {}
    if rope_type in ("linear", "llama3"):
        checked["factor"] = _number(params.get("factor"), "rope factor", where)
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            checked[key] = _number(params.get(key), key, where)
        if checked["high_freq_factor"] <= checked["low_freq_factor"]:
            raise CheckpointError(
                f"{where}: llama3 rope needs low_freq_factor < high_freq_factor, got "
                f"{checked['low_freq_factor']} and {checked['high_freq_factor']}"
            )
        old = params.get("original_max_position_embeddings", max_position_embeddings)
        checked["original_max_position_embeddings"] = _number(
            old, "original_max_position_embeddings", where
        )
    inv_p = rope_inv_freq(rope_type, theta, rotary_dim, checked)
    if not torch.isfinite(inv_p).all() or (inv_p <= 0).any():
        raise CheckpointError(f"{where}: the rope settings give frequencies that are not > 0")
    return Rotary(inv_p.double().numpy(), head_dim, layout=layout, rope_type=rope_type)


# --- the form at an offset and its planes -----------------------------------------------------
def _check_head(weights: HeadWeights, head: int, rotary: Rotary) -> None:
    if not isinstance(weights, HeadWeights):
        raise TypeError(f"weights must be a HeadWeights, got {type(weights).__name__}")
    if weights.kind != "dot":
        raise ValueError(f"rotary heads are dot-product heads, got kind={weights.kind!r}")
    if not isinstance(rotary, Rotary):
        raise TypeError(f"rotary must be a Rotary, got {type(rotary).__name__}")
    if weights.head_dim != rotary.head_dim:
        raise ValueError(
            f"the weights' head_dim={weights.head_dim} differs from the rotary's "
            f"head_dim={rotary.head_dim}"
        )
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise TypeError(f"head must be an int, got {head!r} ({type(head).__name__})")
    if not 0 <= head < weights.num_heads:
        raise ValueError(
            f"head must be in 0..{weights.num_heads - 1} (the layer has {weights.num_heads} "
            f"heads), got head={head}"
        )


def rotary_qk_form(weights: HeadWeights, head: int, rotary: Rotary, offset: int = 0) -> QKForm:
    """Head ``head``'s model-space form at offset Δ = ``offset`` (key position − query
    position): U(Δ) = W_q R(Δθ) W_kᵀ (c×c, row vectors), so the pre-softmax score of query x_m
    against key x_{m+Δ} is ``scale · x_m U(Δ) x_{m+Δ}ᵀ`` (biases aside). U(0) = W_q W_kᵀ, the
    form of :func:`~models.heads.metrics.qk_form`. Spectra as there, from the factors
    W_q and W_k R(Δθ)ᵀ."""
    _check_head(weights, head, rotary)
    offset = _offset(offset)
    assert weights.w_q_hcd is not None and weights.w_k_hcd is not None
    w_k_cd = weights.w_k_hcd[head] @ rotary.rotation(offset).T  # (R W_kᵀ)ᵀ
    turned = HeadWeights(
        "dot", weights.scale, w_q_hcd=weights.w_q_hcd[head][None], w_k_hcd=w_k_cd[None]
    )
    return qk_form(turned, 0, "model")


@dataclass(frozen=True)
class RotaryPlanes:
    """What each rotation plane of one head contributes (docs/heads.md, "Rotary heads").

    For plane i (head dims ``dims_p2[i]`` = (a_i, b_i)) G_i is the 2×2 block of the head-space
    Gram matrix W_qᵀW_k on those dims (rows: query dims, columns: key dims), split into its
    rotation-scaling part ρ_i·R(α_i) and a remainder A_i orthogonal to every rotation:

    - ``theta_p``: θ_i, radians per position; ``wavelength_p``: 2π/θ_i, in tokens;
    - ``scale_p``: ρ_i = ½·‖(G₁₁ + G₂₂, G₂₁ − G₁₂)‖ ≥ 0;
    - ``rotation_p``: α_i = atan2(G₂₁ − G₁₂, G₁₁ + G₂₂) ∈ (−π, π];
    - ``residual_p``: ‖A_i‖_F, so ‖G_i‖_F² = 2ρ_i² + ‖A_i‖_F²;
    - ``passthrough_trace``: the trace of W_qᵀW_k on the dims that do not rotate (0 when all do).

    Then tr U(Δ) = Σ_i 2ρ_i cos(Δθ_i − α_i) + passthrough_trace for every offset Δ
    (:meth:`trace`): the score a whitened input gets against itself Δ positions away.
    """

    theta_p: np.ndarray
    wavelength_p: np.ndarray
    scale_p: np.ndarray
    rotation_p: np.ndarray
    residual_p: np.ndarray
    dims_p2: np.ndarray
    block_p22: np.ndarray
    passthrough_trace: float

    def trace(self, offset: int) -> float:
        """tr U(Δ) from the planes: Σ_i 2ρ_i cos(Δθ_i − α_i) + passthrough_trace."""
        phi_p = _offset(offset) * self.theta_p
        return float(2 * (self.scale_p * np.cos(phi_p - self.rotation_p)).sum()) + (
            self.passthrough_trace
        )

    def __repr__(self) -> str:
        top = int(np.argmax(self.scale_p))
        return (
            f"RotaryPlanes(planes={self.theta_p.size}, strongest=plane {top} "
            f"(wavelength {self.wavelength_p[top]:.4g}, scale {self.scale_p[top]:.4g}), "
            f"passthrough_trace={self.passthrough_trace:.4g})"
        )


def rotary_planes(weights: HeadWeights, head: int, rotary: Rotary) -> RotaryPlanes:
    """Head ``head``'s rotation planes (:class:`RotaryPlanes`): per frequency θ_i its
    wavelength, scale ρ_i and rotation α_i, read off the 2×2 blocks of W_qᵀW_k."""
    _check_head(weights, head, rotary)
    assert weights.w_q_hcd is not None and weights.w_k_hcd is not None
    g_dd = weights.w_q_hcd[head].T @ weights.w_k_hcd[head]
    a_p, b_p = rotary.plane_dims()
    row_a_p2 = np.stack([g_dd[a_p, a_p], g_dd[a_p, b_p]], -1)
    row_b_p2 = np.stack([g_dd[b_p, a_p], g_dd[b_p, b_p]], -1)
    block_p22 = np.stack([row_a_p2, row_b_p2], -2)
    cos_part_p = (block_p22[:, 0, 0] + block_p22[:, 1, 1]) / 2
    sin_part_p = (block_p22[:, 1, 0] - block_p22[:, 0, 1]) / 2
    # A = G − ρR(α): its symmetric trace-free part, ½(G₁₁ − G₂₂, G₁₂ + G₂₁) in the two axes
    refl_a_p = (block_p22[:, 0, 0] - block_p22[:, 1, 1]) / 2
    refl_b_p = (block_p22[:, 0, 1] + block_p22[:, 1, 0]) / 2
    rest = np.arange(rotary.rotary_dim, rotary.head_dim)
    theta_p = rotary.inv_freq_p.copy()
    out = RotaryPlanes(
        theta_p=theta_p,
        wavelength_p=2 * np.pi / theta_p,
        scale_p=np.hypot(cos_part_p, sin_part_p),
        rotation_p=np.arctan2(sin_part_p, cos_part_p),
        residual_p=np.sqrt(2.0) * np.hypot(refl_a_p, refl_b_p),
        dims_p2=np.stack([a_p, b_p], -1),
        block_p22=block_p22,
        passthrough_trace=float(np.trace(g_dd[np.ix_(rest, rest)])) if rest.size else 0.0,
    )
    for value in vars(out).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return out
