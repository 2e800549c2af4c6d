"""gpu — masked sparse and metric attention as CuPy RawKernels, with torch autograd bridges and
the torch reference implementation every kernel is tested against.

Layer: imports ``flowgraph`` only (never ``models`` or ``app``); CuPy is imported lazily so that
everything runs on a machine without CUDA through the torch reference path.

>>> import flowgraph as fg, torch
>>> from flowgraph import gpu
>>> mask = gpu.SparseMask.from_pattern(fg.strided(100, stride=10), heads=4, mode="heads")
>>> q_bhnd = torch.randn(2, 4, 100, 32)
>>> out_bhnd = gpu.sparse_attention(q_bhnd, q_bhnd, q_bhnd, mask)
>>> out_bhnd.shape, gpu.backend_for(q_bhnd)
(torch.Size([2, 4, 100, 32]), 'torch')

On a CUDA tensor with CuPy installed the kernels run (``gpu/_sparse_cuda.py``,
``gpu/_metric_cuda.py``, launched by ``gpu/_cupy.py``); otherwise the reference. See
``docs/gpu.md``.
"""

from __future__ import annotations

import torch

from flowgraph.gpu.backend import backend_for
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.metric import (
    metric_attention,
    metric_attention_reference,
    pack_symmetric,
    quadratic_attention_reference,
    unpack_symmetric,
)
from flowgraph.gpu.reference import check_inputs, sparse_attention_reference

__all__ = [
    "SparseMask",
    "backend_for",
    "metric_attention",
    "metric_attention_reference",
    "pack_symmetric",
    "quadratic_attention_reference",
    "sparse_attention",
    "unpack_symmetric",
]


def sparse_attention(
    q_bhnd: torch.Tensor,
    k_bhnd: torch.Tensor,
    v_bhnd: torch.Tensor,
    mask: SparseMask,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked sparse attention, differentiable: out[q] = Σ_k softmax over the keys ``mask``
    allows for q of (scale·q·k) · v[k], scale = 1/√d by default.

    A query with no allowed key gives zeros (never NaN) and zero gradients. q, k, v are
    (b, h, n, d) tensors of one dtype (float16, bfloat16, float32, float64) on one device;
    ``mask`` has n positions, 1 or h heads, and lives on the same device (``mask.to``). A
    permuted mask's permutation is applied to q, k, v and undone on the output. Inputs are
    checked before any work; the backend is :func:`backend_for`.
    """
    scale = check_inputs(q_bhnd, k_bhnd, v_bhnd, mask, scale)
    if backend_for(q_bhnd) == "cupy":  # pragma: no cover - needs a GPU and CuPy
        from flowgraph.gpu import (
            _sparse_cuda,  # registers the custom ops; CuPy loads at the first launch
        )

        if _sparse_cuda.supports(q_bhnd):  # float64 and other head dims: the reference
            return _sparse_cuda.sparse_attention(q_bhnd, k_bhnd, v_bhnd, mask, scale)
    return sparse_attention_reference(q_bhnd, k_bhnd, v_bhnd, mask, scale)
