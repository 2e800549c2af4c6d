"""One layer's query/key weights in a form every checkpoint kind shares: :class:`HeadWeights`.

The loaders (:mod:`models.heads.checkpoint`) fill it from a checkpoint; the head metrics
(:mod:`models.heads.metrics`) read it. Everything acts on the attention's input ``x`` as row
vectors (after the layer norm where the model has one), so a score is ``x_a @ U @ x_bᵀ``; biases
are not part of the form.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "HeadWeights"]

KINDS = ("dot", "metric", "quadratic")
_FIELDS = {  # the arrays each kind needs; the others must be None
    "dot": ("w_q_hcd", "w_k_hcd"),
    "metric": ("p_hck", "m_hkk"),
    "quadratic": ("u_hcc",),
}
_ALL_ARRAYS = ("w_q_hcd", "w_k_hcd", "p_hck", "m_hkk", "u_hcc")
SYMMETRY_RTOL = 1e-5  # M from a float32 checkpoint (or S·Sᵀ) is symmetric only to rounding


def _as_float64(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D, got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {arr.shape}")
    arr = np.array(arr, dtype=np.float64, copy=True)  # our own copy: the caller's stays writable
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values; the checkpoint may be corrupt")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class HeadWeights:
    """One layer's attention weights, numpy float64, acting on the attention's input x (row
    vectors, after the layer norm where the model has one); biases are not part of the form.

    ``kind`` says which arrays are set (the others are None):

    - ``"dot"``: ``w_q_hcd``, ``w_k_hcd`` (H, c, d): q_h = x @ w_q_hcd[h], k_h = x @ w_k_hcd[h];
    - ``"metric"``: ``p_hck`` (H, c, k) and the symmetric ``m_hkk`` (H, k, k): p_h = x @ p_hck[h],
      r = p_h M pᵀ;
    - ``"quadratic"``: ``u_hcc`` (H, c, c): r = x @ u_hcc[h] @ xᵀ.

    ``scale`` is the factor the model puts on the scores before the softmax (1/√d for dot heads,
    1/√k for metric heads, 1/√c for our quadratic heads). Arrays are converted to read-only
    float64 copies; shapes, finiteness and the symmetry of M (to a relative 1e-5) are checked.

    Examples
    --------
    >>> import numpy as np
    >>> w = HeadWeights("dot", 0.5, w_q_hcd=np.ones((2, 8, 4)), w_k_hcd=np.ones((2, 8, 4)))
    >>> w.num_heads, w.d_model, w.head_dim
    (2, 8, 4)
    """

    kind: str
    scale: float
    w_q_hcd: np.ndarray | None = None
    w_k_hcd: np.ndarray | None = None
    p_hck: np.ndarray | None = None
    m_hkk: np.ndarray | None = None
    u_hcc: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got kind={self.kind!r}")
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number, got {scale!r} ({type(scale).__name__})")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got scale={scale!r}")
        object.__setattr__(self, "scale", float(scale))
        needed = _FIELDS[self.kind]
        for name in _ALL_ARRAYS:
            value = getattr(self, name)
            if name in needed:
                if value is None:
                    raise ValueError(f"kind={self.kind!r} needs {name}, got None")
                object.__setattr__(self, name, _as_float64(name, value))
            elif value is not None:
                raise ValueError(
                    f"kind={self.kind!r} uses {' and '.join(needed)} only; {name} must be None"
                )
        getattr(self, f"_check_{self.kind}")()

    def _check_dot(self) -> None:
        q, k = self.w_q_hcd, self.w_k_hcd
        assert q is not None and k is not None
        if q.shape != k.shape:
            raise ValueError(
                f"w_q_hcd and w_k_hcd must have one shape (H, c, d), got {q.shape} and {k.shape}"
            )

    def _check_metric(self) -> None:
        p, m = self.p_hck, self.m_hkk
        assert p is not None and m is not None
        H, _, k = p.shape
        if m.shape != (H, k, k):
            raise ValueError(
                f"m_hkk must have shape (H, k, k) = {(H, k, k)} to match p_hck {p.shape}, "
                f"got {m.shape}"
            )
        gap_h = np.abs(m - m.transpose(0, 2, 1)).max(axis=(1, 2))
        size_h = np.abs(m).max(axis=(1, 2))
        bad = np.flatnonzero(gap_h > SYMMETRY_RTOL * size_h)
        if bad.size:
            h = int(bad[0])
            raise ValueError(
                f"m_hkk must be symmetric (metric heads), but head {h} has "
                f"max|M − Mᵀ| = {gap_h[h]:.3g} against max|M| = {size_h[h]:.3g}"
            )

    def _check_quadratic(self) -> None:
        u = self.u_hcc
        assert u is not None
        if u.shape[1] != u.shape[2]:
            raise ValueError(f"u_hcc must have shape (H, c, c), got {u.shape}")

    # --- sizes ----------------------------------------------------------------------------------
    def _first(self) -> np.ndarray:
        arr = getattr(self, _FIELDS[self.kind][0])
        assert arr is not None
        return arr

    @property
    def num_heads(self) -> int:
        return int(self._first().shape[0])

    @property
    def d_model(self) -> int:
        """c, the width of the attention's input x."""
        return int(self._first().shape[1])

    @property
    def head_dim(self) -> int:
        """d (dot), k (metric) or c (quadratic: the form acts on x itself)."""
        return int(self._first().shape[2])

    def __repr__(self) -> str:
        arrays = ", ".join(
            f"{name}={getattr(self, name).shape}"
            for name in _ALL_ARRAYS
            if getattr(self, name) is not None
        )
        return f"HeadWeights(kind={self.kind!r}, scale={self.scale:.6g}, {arrays})"
