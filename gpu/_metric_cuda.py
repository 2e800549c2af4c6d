"""Metric tensor attention on CUDA: the kernels of ``gpu/kernels/metric_attention.cu`` behind two
``torch.library`` custom ops, so that autograd and ``torch.compile`` (no graph break) see one
opaque forward and one opaque backward.

``flowgraph::metric_attention_fwd(p, m_packed, <mask tensors>, causal, scale, block)`` returns
``(out, lse)``; ``flowgraph::metric_attention_bwd(dout, p, m_packed, out, lse, <mask tensors>,
...)`` returns ``(dp, dm_packed)``. Both work on p in the mask's *stored* order and on a head dim
the kernels are built for (16, 32, 64, 128); :func:`metric_attention_cuda` pads k up to the next one
(zero columns of p and zero rows/columns of M change no score, and their outputs are cut off) and
permutes p into the stored order and the output back with differentiable gathers, so autograd
undoes both around the ops.

The backward op finishes what the kernel leaves (docs/gpu.md, "Metric attention"): the kernel
gives ``dkv`` (the key and value paths to p) and ``dq``; then ``dp = dq·M + dkv`` (the query path
through M, M = Mᵀ) and ``dM = Σ pᵀ·dq`` packed so that each off-diagonal entry gets both halves.

The kernels read p and M in their own dtype (float32, float16 or bfloat16) and write the output
in it. float32 runs on CUDA cores; float16/bfloat16 run their products on tensor cores (WMMA,
float accumulators) with q = p·M rounded to the dtype, in the forward and in the backward alike
(so the backward recomputes the forward's probabilities). The backward's dq and dK + dV are
float32, and the gradients are cast to the input dtypes at the end. What the kernels
cannot run (:func:`unsupported_reason`: float64, k > 128, b·h above the grid's y limit, a tile
above the device's shared memory) is left to the torch path by :func:`gpu.metric_attention`.

The launches go through :data:`launcher`: by default ``gpu._cupy`` (torch's current stream, a
device guard, the dynamic shared memory attribute); ``tests/test_metric_kernel_emu.py`` swaps in
the CPU emulator to run this whole module, custom ops and autograd included, on CPU tensors.
Setting ``poison_outputs = True`` (or ``FLOWGRAPH_POISON_OUTPUTS=1``) fills every output buffer
with NaN before the kernels write it, so a test sees an unwritten element.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from flowgraph.gpu._cupy import MAX_GRID_YZ
from flowgraph.gpu._launch_common import KERNEL_SUFFIX, aligned16, new_output
from flowgraph.gpu.kernels import (
    BLOCKS,
    METRIC_HEAD_DIMS,
    metric_attention_bwd_config,
    metric_attention_bwd_wmma_config,
    metric_attention_fwd_config,
    metric_attention_fwd_wmma_config,
    metric_bwd_keys,
)
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.metric import packed_size, unpack_symmetric
from flowgraph.gpu.reference import _per_head

__all__ = ["Launcher", "launcher", "metric_attention_cuda", "poison_outputs", "unsupported_reason"]

# without a mask: 512 threads; at k = 128, 81 KB (float32 forward), 84 KB (half forward) and
# 130 KB (backward) of shared memory
DEFAULT_BLOCK = 64
MAX_GRID_Y = MAX_GRID_YZ  # b·h is the grid's y dimension
SUFFIX = KERNEL_SUFFIX  # METRIC_TYPES
KERNEL_DTYPES = tuple(SUFFIX)
poison_outputs = os.environ.get("FLOWGRAPH_POISON_OUTPUTS") == "1"


class Launcher(Protocol):
    """Where the kernels run: CuPy on a GPU, or the CPU emulator in the tests."""

    def kernel(self, name: str, device: torch.device) -> Any: ...

    def launch(
        self, kern: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple,
        shared_mem: int, device: torch.device,
    ) -> None: ...  # fmt: skip

    def max_shared_mem(self, device: torch.device) -> int: ...


class _CupyLauncher:
    """``gpu._cupy``: compiled once per process and device, launched on torch's current stream."""

    def kernel(self, name: str, device: torch.device) -> Any:
        from flowgraph.gpu import _cupy  # type: ignore[attr-defined]

        return _cupy.kernel("metric_attention.cu", name, device)

    def launch(
        self, kern: Any, grid: tuple[int, int, int], block: tuple[int, int, int], args: tuple,
        shared_mem: int, device: torch.device,
    ) -> None:  # fmt: skip
        from flowgraph.gpu import _cupy  # type: ignore[attr-defined]

        raw = tuple(_cupy.ptr(a) if a is None or isinstance(a, torch.Tensor) else a for a in args)
        _cupy.launch(kern, grid, block, raw, shared_mem, device)

    def max_shared_mem(self, device: torch.device) -> int:
        return _shared_mem_optin(device.index)


@torch.compiler.assume_constant_result  # a device property: torch.compile folds it, no break
def _shared_mem_optin(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).shared_memory_per_block_optin)


launcher: Launcher = _CupyLauncher()


# --- what the kernels run -----------------------------------------------------------------------
def kernel_head_dim(k: int) -> int | None:
    """The smallest head dim the kernels are built for that holds k, or None above 128."""
    return next((d for d in METRIC_HEAD_DIMS if d >= k), None)


def unsupported_reason(
    p_bhnk: torch.Tensor, mask: SparseMask | None, needs_grad: bool
) -> str | None:
    """Why the kernels cannot run this (checked) call, or None when they can."""
    b, h, _, k = p_bhnk.shape
    if p_bhnk.dtype not in KERNEL_DTYPES:
        return f"no kernel for dtype {p_bhnk.dtype}"
    d = kernel_head_dim(k)
    if d is None:
        return f"head dim k={k} is above the kernels' {METRIC_HEAD_DIMS[-1]}"
    if b * h > MAX_GRID_Y:
        return f"b·h={b * h} is above the grid's y limit {MAX_GRID_Y}"
    block = DEFAULT_BLOCK if mask is None else mask.block
    shared = fwd_config(p_bhnk.dtype, block, d)[1]
    if needs_grad:
        shared = max(shared, bwd_config(p_bhnk.dtype, block, d)[1])
    limit = launcher.max_shared_mem(p_bhnk.device)
    if shared > limit:
        return f"block {block} at k={d} needs {shared} bytes of shared memory, the device {limit}"
    return None


def fwd_config(dtype: torch.dtype, block: int, d: int) -> tuple[int, int]:
    """(threads, dynamic shared memory bytes) of the forward kernel for ``dtype``."""
    if dtype == torch.float32:
        return metric_attention_fwd_config(block, d)
    return metric_attention_fwd_wmma_config(block, d)


def bwd_config(dtype: torch.dtype, block: int, d: int) -> tuple[int, int]:
    """(threads, dynamic shared memory bytes) of the backward kernel for ``dtype``."""
    if dtype == torch.float32:
        return metric_attention_bwd_config(block, d)
    return metric_attention_bwd_wmma_config(block, d)


# --- validation right before a launch -----------------------------------------------------------
def _check_float(name: str, t: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} must have dtype {like.dtype}, got {t.dtype}")
    if t.device != like.device:
        raise ValueError(f"expected {name} on {like.device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def _check_index(name: str, t: torch.Tensor | None, like: torch.Tensor, dims: int) -> None:
    if t is None:
        return
    if t.dtype != torch.int32 or t.dim() != dims:
        raise TypeError(f"{name} must be a {dims}-D int32 tensor, got {t.dtype} {tuple(t.shape)}")
    if t.device != like.device:
        raise ValueError(f"expected {name} on {like.device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def _check_launch(
    p: torch.Tensor, m_packed: torch.Tensor, indptr: torch.Tensor | None,
    indices: torch.Tensor | None, slots: torch.Tensor | None, bits: torch.Tensor | None,
    perm: torch.Tensor | None, block: int,
) -> int:  # fmt: skip
    """Everything a kernel reads, checked: shapes, dtypes, devices, contiguity. Returns the
    mask's head count (1 without a mask)."""
    if p.dim() != 4 or p.dtype not in KERNEL_DTYPES:
        raise TypeError(f"p must be a 4-D float16/bfloat16/float32 tensor, got {p.dtype} "
                        f"{tuple(p.shape)}")  # fmt: skip
    b, h, n, d = p.shape
    if d not in METRIC_HEAD_DIMS:
        raise ValueError(f"p's head dim must be one of {METRIC_HEAD_DIMS}, got {d}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block}")
    _check_float("p", p, (b, h, n, d), p)
    _check_float("m_packed", m_packed, (h, packed_size(d)), p)
    if (indptr is None) != (indices is None) or (indptr is None) != (slots is None):
        raise ValueError("the mask's indptr, indices and slots must be given together or not")
    for name, t, dims in (("indptr", indptr, 2), ("indices", indices, 1), ("slots", slots, 1),
                          ("bits", bits, 3), ("perm", perm, 2)):  # fmt: skip
        _check_index(name, t, p, dims)
    if indptr is None:
        if bits is not None or perm is not None:
            raise ValueError("bits and perm come with a mask's indptr, got them without one")
        return 1
    heads = indptr.shape[0]
    nb = -(-n // block)
    if heads not in (1, h) or indptr.shape[1] != nb + 1:
        raise ValueError(f"indptr must be (1 or h={h}, nb+1={nb + 1}), got {tuple(indptr.shape)}")
    if indices.shape != slots.shape:
        raise ValueError(f"indices and slots must have one length, got {tuple(indices.shape)} "
                         f"and {tuple(slots.shape)}")  # fmt: skip
    words = -(-block // 32)
    if bits is None or bits.shape[1:] != (block, words):
        raise ValueError(f"bits must be (P, block={block}, W={words}), got "
                         f"{None if bits is None else tuple(bits.shape)}")  # fmt: skip
    if perm is not None and tuple(perm.shape) != (heads, n):
        raise ValueError(f"perm must be (mask heads={heads}, n={n}), got {tuple(perm.shape)}")
    return heads


def _output(shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return new_output(shape, dtype, like.device, poison=poison_outputs)


def _grid(n: int, block: int, bh: int) -> tuple[int, int, int]:
    return (-(-n // block), bh, 1)


def _pack_gradient(dm_hkk: torch.Tensor) -> torch.Tensor:
    """(h, k, k) gradient of the full M → packed: dM[i, j] + dM[j, i] off the diagonal."""
    k = dm_hkk.shape[-1]
    i, j = torch.triu_indices(k, k, device=dm_hkk.device)
    both = dm_hkk[:, i, j] + dm_hkk[:, j, i]
    return torch.where(i == j, dm_hkk[:, i, j], both)


# --- the custom ops -----------------------------------------------------------------------------
@torch.library.custom_op("flowgraph::metric_attention_fwd", mutates_args=())
def _fwd(
    p: torch.Tensor, m_packed: torch.Tensor, kv_indptr: torch.Tensor | None,
    kv_indices: torch.Tensor | None, kv_slots: torch.Tensor | None, bits: torch.Tensor | None,
    perm: torch.Tensor | None, q_indptr: torch.Tensor | None, q_indices: torch.Tensor | None,
    q_slots: torch.Tensor | None, causal: bool, scale: float, block: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out, lse) in the stored order; the backward CSR (q_*) is only saved for the backward."""
    mask_heads = _check_launch(p, m_packed, kv_indptr, kv_indices, kv_slots, bits, perm, block)
    _check_launch(p, m_packed, q_indptr, q_indices, q_slots, bits, perm, block)
    b, h, n, d = p.shape
    if p.dtype != torch.float32:
        p = aligned16(p)
    out = _output((b, h, n, d), p, p.dtype)
    lse = _output((b, h, n), p, torch.float32)
    threads, shared = fwd_config(p.dtype, block, d)
    kern = launcher.kernel(f"metric_attention_fwd_{SUFFIX[p.dtype]}<{block}, {d}>", p.device)
    args = (p, m_packed, kv_indptr, kv_indices, kv_slots, bits, perm, out, lse, np.int32(n),
            np.int32(h), np.int32(mask_heads), np.int32(causal), np.float32(scale))  # fmt: skip
    launcher.launch(kern, _grid(n, block, b * h), (threads, 1, 1), args, shared, p.device)
    return out, lse


@_fwd.register_fake
def _fwd_fake(p, m_packed, kv_indptr, kv_indices, kv_slots, bits, perm, q_indptr, q_indices,
              q_slots, causal, scale, block):  # fmt: skip
    return torch.empty_like(p), p.new_empty(p.shape[:3], dtype=torch.float32)


@torch.library.custom_op("flowgraph::metric_attention_bwd", mutates_args=())
def _bwd(
    dout: torch.Tensor, p: torch.Tensor, m_packed: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, q_indptr: torch.Tensor | None, q_indices: torch.Tensor | None,
    q_slots: torch.Tensor | None, bits: torch.Tensor | None, perm: torch.Tensor | None,
    causal: bool, scale: float, block: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dp, dm_packed): the kernel's dq and dkv, then dp = dq·M + dkv and the packed pᵀ·dq."""
    mask_heads = _check_launch(p, m_packed, q_indptr, q_indices, q_slots, bits, perm, block)
    b, h, n, d = p.shape
    _check_float("dout", dout, (b, h, n, d), p)
    _check_float("out", out, (b, h, n, d), p)
    if lse.shape != (b, h, n) or lse.dtype != torch.float32 or not lse.is_contiguous():
        raise ValueError(f"lse must be a contiguous float32 ({b}, {h}, {n}), got {lse.dtype} "
                         f"{tuple(lse.shape)}")  # fmt: skip
    p32 = p.float()  # no copy in float32
    m_hkk = unpack_symmetric(m_packed.float(), d)
    q = torch.matmul(p32, m_hkk)  # (b, h, n, d) = p·M, recomputed, not saved
    if p.dtype != torch.float32:  # the tensor-core forward scored with q rounded to the dtype:
        q = q.to(p.dtype)  # the backward recomputes the same probabilities, on tensor cores
        p, dout = aligned16(p), aligned16(dout)
    q = q.contiguous()
    delta = torch.linalg.vecdot(dout.float(), out.float()).contiguous()  # rowsum(dout ∘ out)
    dkv = _output((b, h, n, d), p, torch.float32)
    dq = torch.zeros((b, h, n, d), dtype=torch.float32, device=p.device)  # atomicAdd target
    threads, shared = bwd_config(p.dtype, block, d)
    kern = launcher.kernel(f"metric_attention_bwd_{SUFFIX[p.dtype]}<{block}, {d}>", p.device)
    args = (p, q, dout, lse, delta, q_indptr, q_indices, q_slots, bits, perm, dkv, dq,
            np.int32(n), np.int32(h), np.int32(mask_heads), np.int32(causal),
            np.float32(scale))  # fmt: skip
    grid = (-(-n // block) * (block // metric_bwd_keys(block)), b * h, 1)  # KB keys per block
    launcher.launch(kern, grid, (threads, 1, 1), args, shared, p.device)
    dp = torch.matmul(dq, m_hkk).add_(dkv)  # the query path through M, plus key and value
    dm_hkk = torch.einsum("bhnk,bhnj->hkj", p32, dq)  # not symmetric
    return dp.to(p.dtype), _pack_gradient(dm_hkk).to(m_packed.dtype)


@_bwd.register_fake
def _bwd_fake(dout, p, m_packed, out, lse, q_indptr, q_indices, q_slots, bits, perm, causal,
              scale, block):  # fmt: skip
    return torch.empty_like(p), torch.empty_like(m_packed)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    p, m_packed, _, _, _, bits, perm, q_indptr, q_indices, q_slots, causal, scale, block = inputs
    out, lse = output
    ctx.save_for_backward(p, m_packed, out, lse, q_indptr, q_indices, q_slots, bits, perm)
    ctx.causal, ctx.scale, ctx.block = causal, scale, block


def _backward(ctx: Any, dout: torch.Tensor, _dlse: torch.Tensor | None) -> tuple:
    # lse is an internal output (metric_attention_cuda never returns it): no gradient flows in
    p, m_packed, out, lse, q_indptr, q_indices, q_slots, bits, perm = ctx.saved_tensors
    dp, dm = _bwd(dout.contiguous(), p, m_packed, out, lse, q_indptr, q_indices, q_slots, bits,
                  perm, ctx.causal, ctx.scale, ctx.block)  # fmt: skip
    return (dp, dm) + (None,) * 11


_fwd.register_autograd(_backward, setup_context=_setup_context)


# --- the entry point ----------------------------------------------------------------------------
def _pad_metric(m_packed_hl: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """The packed k×k metrics as packed d×d ones, zero outside the k×k corner (differentiable)."""
    m_hdd = F.pad(unpack_symmetric(m_packed_hl, k), (0, d - k, 0, d - k))
    i, j = torch.triu_indices(d, d, device=m_packed_hl.device)
    return m_hdd[:, i, j]


def metric_attention_cuda(
    p_bhnk: torch.Tensor,
    m_packed_hl: torch.Tensor,
    causal: bool,
    mask: SparseMask | None,
    scale: float,
) -> torch.Tensor:
    """Metric attention by the kernels, differentiable w.r.t. p and the packed metric.

    Arguments as for :func:`gpu.metric_attention`, already checked by
    :func:`gpu.metric.check_metric_inputs` (``scale`` resolved to a float) and accepted by
    :func:`unsupported_reason`. Non-contiguous inputs are copied once.
    """
    k = p_bhnk.shape[-1]
    d = kernel_head_dim(k)
    if d is None:
        raise ValueError(f"p_bhnk's head dim must be at most {METRIC_HEAD_DIMS[-1]}, got k={k}")
    p, m = p_bhnk, m_packed_hl
    if d != k:  # zero columns: no score changes, the padded output columns are cut off below
        p, m = F.pad(p, (0, d - k)), _pad_metric(m, k, d)
    if mask is not None and mask.perm_hn is not None:
        p = _per_head(p, mask.perm_hn)
    csr: tuple[torch.Tensor | None, ...] = (None,) * 8
    block = DEFAULT_BLOCK
    if mask is not None:
        block = mask.block
        csr = (mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.bits_pbw, mask.perm_hn,
               mask.q_indptr, mask.q_indices, mask.q_slots)  # fmt: skip
    out, _ = _fwd(p.contiguous(), m.contiguous(), *csr, bool(causal), float(scale), block)
    if mask is not None and mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
    return out if d == k else out[..., :k]
