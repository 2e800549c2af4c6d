"""Which implementation runs a call: the CuPy kernels or the torch reference."""

from __future__ import annotations

import importlib.util

import torch

__all__ = ["backend_for"]


def _kernels_available() -> bool:
    """The CuPy launchers live in ``gpu/_cupy.py`` (absent from a trimmed install: no kernels)."""
    return importlib.util.find_spec("flowgraph.gpu._cupy") is not None


def backend_for(q_bhnd: torch.Tensor) -> str:
    """``"cupy"`` when ``q_bhnd`` is a CUDA tensor, CuPy is importable and the kernels exist;
    ``"torch"`` (the reference, any device) otherwise. Never imports CuPy itself."""
    if not isinstance(q_bhnd, torch.Tensor):
        raise TypeError(f"q_bhnd must be a torch.Tensor, got {type(q_bhnd).__name__}")
    if q_bhnd.is_cuda and _kernels_available() and importlib.util.find_spec("cupy") is not None:
        return "cupy"
    return "torch"
