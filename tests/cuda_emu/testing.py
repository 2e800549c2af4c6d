"""What the emulator tests (tests/test_cuda_emu.py, tests/test_sparse_kernel_emu.py,
tests/test_metric_kernel_emu.py) share: their skip mark without a C++ compiler, the kernels'
suffix per dtype and the mask cases the sparse kernels are run on. (The per-head gather into and
out of a mask's stored order is the reference's and the launchers', ``gpu.reference._per_head``.)"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from flowgraph.gpu._launch_common import KERNEL_SUFFIX

__all__ = ["SUFFIX", "mask_case", "needs_cxx"]

needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and os.environ.get("CI") != "true",
    reason="no C++ compiler on PATH (with CI=true these tests run and fail instead)",
)
SUFFIX = KERNEL_SUFFIX  # dtype → the entry point's suffix, as the launchers name it


def mask_case(
    kind: str, heads: int, n: int, rng: np.random.Generator, *, unseen_keys: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(masks (heads, n, n), perm or None) of a kind: "random" (with empty rows, and with
    ``unseen_keys`` keys nobody sees), "permuted", "causal" (full tiles below the diagonal,
    partial ones on it) or "empty" (nothing allowed)."""
    if kind == "random":
        masks = rng.random((heads, n, n)) < 0.3
        masks[:, rng.random(n) < 0.2] = False  # empty rows
        if unseen_keys:
            masks[:, :, rng.random(n) < 0.1] = False
        return masks, None
    if kind == "permuted":
        return rng.random((heads, n, n)) < 0.2, rng.permutation(n)
    if kind == "causal":
        return np.broadcast_to(np.tril(np.ones((n, n), dtype=bool)), (heads, n, n)), None
    if kind == "empty":
        return np.zeros((heads, n, n), dtype=bool), None
    raise ValueError(f"kind must be random, permuted, causal or empty, got kind={kind!r}")
