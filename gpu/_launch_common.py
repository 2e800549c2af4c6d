"""What the CUDA ops of :mod:`gpu` (``gpu._sparse_cuda``, ``gpu._metric_cuda``) do alike around a
launch: the kernel suffix of each dtype, the 16-byte alignment the half-precision kernels' row
loads need, and output buffers (NaN-poisoned on request, so a test sees an element no kernel
wrote). The per-head gather into and out of a mask's stored order is the reference's,
``gpu.reference._per_head``, which both ops use.

Each op keeps its own checks, grid arithmetic and ``poison_outputs`` switch; this module holds
only the pieces that are the same for both.
"""

from __future__ import annotations

import torch

__all__ = ["KERNEL_SUFFIX", "aligned16", "new_output"]

# the kernels' entry-point suffix per element type (gpu.kernels.METRIC_TYPES, SPARSE_KERNELS)
KERNEL_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def aligned16(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy when its address is not 16-byte aligned: the half kernels copy rows in
    16-byte pieces, and a contiguous view can start anywhere in its storage."""
    return t.clone() if t.data_ptr() % 16 else t


def new_output(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, poison: bool
) -> torch.Tensor:
    """A fresh output buffer; NaN-filled when ``poison`` is set."""
    if poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
