"""Masked sparse attention on the GPU: the kernels of ``gpu/kernels/sparse_attention.cu`` as
``torch.library`` custom ops (forward and backward, with autograd and fake implementations, so
``torch.compile`` traces through them without a graph break), launched through :mod:`gpu._cupy`.

:func:`sparse_attention` is what ``gpu.sparse_attention`` calls when ``gpu.backend_for`` says
``"cupy"`` and :func:`supports` the call: float32, float16 or bfloat16, head dim 32, 64 or 128
(float64 and other head dims run the torch reference). It checks everything before any launch,
gathers q, k and v into the mask's stored order when the mask is permuted (torch ops: autograd
and compile see them), runs the forward op, and scatters the output back.

The ops take the mask as its tensors (custom ops take tensors and scalars only): the forward the
CSR by query block, the backward the CSR by key block, both the partial tiles' bits. Scalars reach
the kernels as ``numpy.int32``/``numpy.float32``; outputs are allocated by torch; a launch of more
than 65535 batch·heads is split into launches of whole heads (grid y ≤ 65535).
"""

from __future__ import annotations

import numpy as np
import torch

from flowgraph.gpu import _cupy
from flowgraph.gpu._launch_common import KERNEL_SUFFIX, aligned16, new_output
from flowgraph.gpu.kernels import (
    BLOCKS,
    HEAD_DIMS,
    sparse_attention_bwd_config,
    sparse_attention_bwd_wmma_config,
    sparse_attention_fwd_config,
    sparse_attention_fwd_wmma_config,
    sparse_bwd_keys,
)
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import _per_head

__all__ = ["DTYPES", "sparse_attention", "supports"]

SOURCE = "sparse_attention.cu"
DTYPES = KERNEL_SUFFIX
MAX_GRID_Y = _cupy.MAX_GRID_YZ

# How kernels are fetched, tensors passed and launches made: CuPy on a GPU. The emulation tests
# replace these three with the CPU emulator's (tests/test_sparse_kernel_emu.py), so the op
# plumbing below runs in CI too.
_kernel = _cupy.kernel
_ptr = _cupy.ptr
_launch = _cupy.launch
poison_outputs = False  # tests set it: outputs start as NaN, so an element no kernel writes shows


def _output(like: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    """A fresh output buffer like ``like`` (NaN-filled when poison_outputs is set)."""
    shape = like.shape if shape is None else shape
    dtype = like.dtype if dtype is None else dtype
    return new_output(shape, dtype, like.device, poison=poison_outputs)


def supports(q_bhnd: torch.Tensor) -> bool:
    """Whether the kernels handle q's dtype and head dim (float64 and other head dims run the
    reference)."""
    return q_bhnd.dtype in DTYPES and q_bhnd.shape[-1] in HEAD_DIMS


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SparseMask) -> None:
    """What the kernels need beyond gpu.reference.check_inputs (which ran before)."""
    if q.dtype not in DTYPES:
        raise TypeError(
            f"q_bhnd must be float32, float16 or bfloat16 for the kernels, got dtype {q.dtype}"
        )
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(
            f"q_bhnd must have a head dim in {HEAD_DIMS} for the kernels, got d={q.shape[-1]}"
        )
    if mask.block not in BLOCKS:
        raise ValueError(f"mask.block must be one of {BLOCKS}, got {mask.block}")
    for name, x in (("q_bhnd", q), ("k_bhnd", k), ("v_bhnd", v)):
        if x.device != mask.device:
            raise ValueError(
                f"expected {name} and mask on one device, got {x.device} and {mask.device}"
            )


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels read it: contiguous, its base 16-byte aligned."""
    return aligned16(x.contiguous())


def _chunks(bh: int, heads: int) -> list[tuple[int, int]]:
    """(first, count) launches over the b·h rows: whole multiples of the heads, ≤ 65535 each, so
    that a launch's blockIdx.y % heads is still the head."""
    step = max(MAX_GRID_Y // heads, 1) * heads
    return [(first, min(step, bh - first)) for first in range(0, bh, step)]


def _offset(pointer, first: int, per_row: int, item: int):
    """A pointer ``first`` (b·h) rows further; the emulator's tensors are sliced instead."""
    if isinstance(pointer, int):
        return pointer + first * per_row * item
    return pointer.reshape(-1, per_row)[first:]


@torch.library.custom_op("flowgraph::sparse_attention_fwd", mutates_args=())
def _forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_slots: torch.Tensor,
    q_indptr: torch.Tensor,
    q_indices: torch.Tensor,
    q_slots: torch.Tensor,
    bits: torch.Tensor,
    block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of inputs in the mask's stored order; lse float32 (b, h, n), −inf where a query
    sees no key. The backward CSR (q_*) is not read here: it is kept for the backward."""
    b, h, n, d = q.shape
    q, k, v = (_kernel_input(x) for x in (q, k, v))
    out = _output(q)
    lse = _output(q, (b, h, n), torch.float32)
    suffix = DTYPES[q.dtype]
    config = sparse_attention_fwd_config if suffix == "f32" else sparse_attention_fwd_wmma_config
    threads, shared = config(block, d)
    kern = _kernel(SOURCE, f"sparse_attention_fwd_{suffix}<{block}, {d}>", q.device)
    nb = -(-n // block)
    mask_heads = kv_indptr.shape[0]
    csr = tuple(_ptr(x) for x in (kv_indptr, kv_indices, kv_slots, bits))
    scalars = (np.int32(n), np.int32(h), np.int32(mask_heads), np.float32(scale))
    item, per_row = q.element_size(), n * d
    for first, count in _chunks(b * h, h):
        rows = (_offset(_ptr(x), first, per_row, item) for x in (q, k, v))
        tail = (_offset(_ptr(out), first, per_row, item), _offset(_ptr(lse), first, n, 4))
        args = (*rows, *csr, *tail, *scalars)
        _launch(kern, (nb, count, 1), (threads, 1, 1), args, shared, q.device)
    return out, lse


@_forward_op.register_fake
def _(q, k, v, kv_indptr, kv_indices, kv_slots, q_indptr, q_indices, q_slots, bits, block, scale):
    b, h, n, _ = q.shape
    return torch.empty_like(q), q.new_empty((b, h, n), dtype=torch.float32)


@torch.library.custom_op("flowgraph::sparse_attention_bwd", mutates_args=())
def _backward_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_indptr: torch.Tensor,
    q_indices: torch.Tensor,
    q_slots: torch.Tensor,
    bits: torch.Tensor,
    block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the stored order from the forward's out and lse."""
    b, h, n, d = q.shape
    q, k, v, dout = (_kernel_input(x) for x in (q, k, v, dout))
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # D = rowsum(dO ∘ O)
    dq = torch.zeros((b, h, n, d), dtype=torch.float32, device=q.device)  # atomicAdd target
    dk, dv = _output(k), _output(v)
    suffix = DTYPES[q.dtype]
    config = sparse_attention_bwd_config if suffix == "f32" else sparse_attention_bwd_wmma_config
    threads, shared = config(block, d)
    kern = _kernel(SOURCE, f"sparse_attention_bwd_{suffix}<{block}, {d}>", q.device)
    grid_x = -(-n // block) * (block // sparse_bwd_keys(block))
    mask_heads = q_indptr.shape[0]
    csr = tuple(_ptr(x) for x in (q_indptr, q_indices, q_slots, bits))
    scalars = (np.int32(n), np.int32(h), np.int32(mask_heads), np.float32(scale))
    item, per_row = q.element_size(), n * d
    for first, count in _chunks(b * h, h):
        rows = tuple(_offset(_ptr(x), first, per_row, item) for x in (q, k, v, dout))
        stats = (_offset(_ptr(lse), first, n, 4), _offset(_ptr(delta), first, n, 4))
        grads = (
            _offset(_ptr(dq), first, per_row, 4),
            _offset(_ptr(dk), first, per_row, item),
            _offset(_ptr(dv), first, per_row, item),
        )
        args = (*rows, *stats, *csr, *grads, *scalars)
        _launch(kern, (grid_x, count, 1), (threads, 1, 1), args, shared, q.device)
    return dq.to(q.dtype), dk, dv


@_backward_op.register_fake
def _(dout, q, k, v, out, lse, q_indptr, q_indices, q_slots, bits, block, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, _, _, _, q_indptr, q_indices, q_slots, bits, block, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_indptr, q_indices, q_slots, bits)
    ctx.block, ctx.scale = block, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, q_indptr, q_indices, q_slots, bits = ctx.saved_tensors
    dq, dk, dv = _backward_op(
        dout.contiguous(),
        q,
        k,
        v,
        out,
        lse,
        q_indptr,
        q_indices,
        q_slots,
        bits,
        ctx.block,
        ctx.scale,
    )
    return dq, dk, dv, *(None,) * 9


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _apply(
    q_bhnd: torch.Tensor, k_bhnd: torch.Tensor, v_bhnd: torch.Tensor, mask: SparseMask, scale: float
) -> torch.Tensor:
    """Permute into the stored order, run the op, permute back (no device check: the emulation
    tests run this on the CPU with the emulator's kernels)."""
    _check(q_bhnd, k_bhnd, v_bhnd, mask)
    q, k, v = q_bhnd, k_bhnd, v_bhnd
    if mask.perm_hn is not None:
        q, k, v = (_per_head(x, mask.perm_hn) for x in (q, k, v))
    out, _ = _forward_op(
        q.contiguous(), k.contiguous(), v.contiguous(),
        mask.kv_indptr, mask.kv_indices, mask.kv_slots,
        mask.q_indptr, mask.q_indices, mask.q_slots, mask.bits_pbw,
        mask.block, float(scale),
    )  # fmt: skip
    if mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
    return out


def sparse_attention(
    q_bhnd: torch.Tensor, k_bhnd: torch.Tensor, v_bhnd: torch.Tensor, mask: SparseMask, scale: float
) -> torch.Tensor:
    """``gpu.sparse_attention`` on the kernels, for inputs that gpu.reference.check_inputs has
    accepted (``scale`` resolved): CUDA tensors of a dtype and head dim :func:`supports`.
    Differentiable; the backward runs the backward kernel."""
    for name, x in (("q_bhnd", q_bhnd), ("k_bhnd", k_bhnd), ("v_bhnd", v_bhnd)):
        if not x.is_cuda:
            raise ValueError(f"{name} must be a CUDA tensor for the kernels, got device {x.device}")
    return _apply(q_bhnd, k_bhnd, v_bhnd, mask, scale)
