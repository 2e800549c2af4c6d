"""Masked sparse attention by the CUDA kernels (gpu/_sparse_cuda.py through gpu.sparse_attention)
against the float64 torch reference and its autograd: fresh random inputs for every case, every
output buffer poisoned with NaN before the kernels write it, float32/float16/bfloat16, head dims
32/64/128, blocks 16–128, masks with empty rows and keys nobody sees, permuted masks, one or h
mask heads, non-contiguous inputs, several streams, more than 65535 batch·heads, torch.compile
without graph breaks. ‖x − ref‖/‖ref‖ < 1e-5 (float32), < 2e-2 (float16, bfloat16).
Skipped where there is no CUDA device or no CuPy."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import flowgraph as fg
import flowgraph.gpu._sparse_cuda as sparse_cuda
from flowgraph import gpu
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import sparse_attention_reference

# poisoned outputs, a count of the calls (the `poisoned` fixture), the skips: tests/gpu/conftest.py
KERNEL_ENTRY = (sparse_cuda, "sparse_attention")
TOL = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}  # ‖x − ref‖/‖ref‖
DEVICE = torch.device("cuda")


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not x.isnan().any(), "NaN: an element was not written"
    norm = ref.norm()
    return ((x.double() - ref).norm() / norm).item() if norm > 0 else x.double().norm().item()


def make_case(seed, b, h, n, d, dtype, *, block=64, mask_heads=None, permuted=False):
    rng = np.random.default_rng(seed)
    heads = h if mask_heads is None else mask_heads
    masks = rng.random((heads, n, n)) < 0.2
    masks[:, rng.random(n) < 0.1] = False  # empty rows: zeros, zero gradients
    masks[:, :, rng.random(n) < 0.05] = False  # keys nobody sees: zero dk, dv
    perm = rng.permutation(n) if permuted else None
    mask = SparseMask.from_masks(masks, block=block, permute=perm).to(DEVICE)
    q, k, v, dout = (
        torch.from_numpy(rng.standard_normal((b, h, n, d))).to(DEVICE, dtype) for _ in range(4)
    )
    return q, k, v, dout, mask


def check(q, k, v, dout, mask, scale=None, run=gpu.sparse_attention):
    """Forward and gradients of ``run`` against float64 autograd of the reference."""
    dtype = q.dtype
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = run(*leaves, mask, scale)
    out.backward(dout)
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = sparse_attention_reference(*ref_leaves, mask, scale)
    ref.backward(dout.double())
    assert out.dtype == dtype and rel(out.detach(), ref.detach()) < TOL[dtype]
    for name, leaf, want in zip(("dq", "dk", "dv"), leaves, ref_leaves, strict=True):
        assert leaf.grad.dtype == dtype
        assert rel(leaf.grad, want.grad) < TOL[dtype], name
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("block", [16, 64, 128])
def test_every_dtype_head_dim_and_block(poisoned, dtype, d, block):
    seed = 1000 * d + 10 * block + list(TOL).index(dtype)  # a different case each
    case = make_case(seed, 2, 3, 200, d, dtype, block=block)
    check(*case)
    assert poisoned, "the call did not reach the kernels"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_permuted_one_mask_head_for_all_and_a_scale(poisoned, dtype):
    check(*make_case(1, 2, 4, 333, 64, dtype, block=32, mask_heads=1, permuted=True), scale=0.3)


def test_the_strided_pattern_under_its_transpose():
    mask = SparseMask.from_pattern(
        fg.strided(1024), heads=4, mode="heads", block=64, permute="auto"
    ).to(DEVICE)
    assert mask.permuted
    rng = np.random.default_rng(2)
    q, k, v, dout = (
        torch.from_numpy(rng.standard_normal((1, 4, 1024, 64))).to(DEVICE, torch.bfloat16)
        for _ in range(4)
    )
    check(q, k, v, dout, mask)


def test_non_contiguous_inputs():
    q, k, v, dout, mask = make_case(3, 2, 2, 150, 64, torch.float16, block=32)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # (b, n, h, d) memory
    k_t = k.transpose(2, 3).contiguous().transpose(2, 3)
    v_s = torch.cat([v, v], dim=-1)[..., :64]  # strided rows
    assert not (q_t.is_contiguous() or k_t.is_contiguous() or v_s.is_contiguous())
    check(q_t, k_t, v_s, dout, mask)


def test_several_streams():
    cases = [make_case(10 + i, 1, 2, 256, 64, torch.float32, block=64) for i in range(3)]
    streams = [torch.cuda.Stream() for _ in cases]
    outs = []
    for stream, (q, k, v, _, mask) in zip(streams, cases, strict=True):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outs.append(gpu.sparse_attention(q, k, v, mask))
    torch.cuda.synchronize()
    for out, (q, k, v, _, mask) in zip(outs, cases, strict=True):
        ref = sparse_attention_reference(q.double(), k.double(), v.double(), mask)
        assert rel(out, ref) < TOL[torch.float32]
    with torch.cuda.stream(streams[0]):  # the backward on a side stream too
        check(*cases[0])
    streams_survive_the_launches(streams)


def streams_survive_the_launches(streams: list[torch.cuda.Stream]) -> None:
    """The side streams still work once CuPy's wrappers of them could have been collected (a
    collected cupy.cuda.Stream may destroy its handle; gpu._cupy keeps them)."""
    gc.collect()
    for stream in streams:
        with torch.cuda.stream(stream):
            x = torch.ones(1000, device=DEVICE).cumsum(0)
        stream.synchronize()
        assert x[-1].item() == 1000


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_the_second_device():
    """Kernels compiled, opted in and launched under cuda:1 while cuda:0 is current."""
    second = torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    for dtype in (torch.float32, torch.bfloat16):
        case = make_case(30, 1, 2, 300, 128, dtype, block=128)
        q, k, v, dout, mask = (x.to(second) for x in case)
        out = check(q, k, v, dout, mask)
        assert out.device == second
    assert torch.cuda.current_device() == 0


def test_more_batch_heads_than_one_grid_holds():
    q, k, v, dout, mask = make_case(4, 33000, 2, 16, 32, torch.float32, block=16, mask_heads=1)
    assert q.shape[0] * q.shape[1] > 65535
    check(q, k, v, dout, mask)


def test_empty_rows_give_zeros_and_zero_gradients():
    q, k, v, dout, mask = make_case(5, 1, 2, 100, 32, torch.bfloat16, block=16)
    masks = mask.to_dense().cpu()
    empty = ~masks.any(-1)  # (H, n)
    assert empty.any()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = gpu.sparse_attention(*leaves, mask)
    out.backward(dout)
    assert (out[:, empty.to(DEVICE)] == 0).all()
    assert (leaves[0].grad[:, empty.to(DEVICE)] == 0).all()


def test_torch_compile_without_graph_breaks(poisoned):
    q, k, v, dout, mask = make_case(6, 2, 2, 128, 64, torch.bfloat16, block=64)

    def layer(q, k, v):
        return gpu.sparse_attention(q * 1.5, k, v, mask).float().relu()

    compiled = torch.compile(layer, fullgraph=True)  # a graph break raises
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves)
    out.backward(dout.float())
    ref_leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = sparse_attention_reference(ref_leaves[0] * 1.5, *ref_leaves[1:], mask).relu()
    ref.backward(dout.double())
    assert rel(out.detach(), ref.detach()) < TOL[torch.bfloat16]
    for leaf, want in zip(leaves, ref_leaves, strict=True):
        assert rel(leaf.grad, want.grad) < TOL[torch.bfloat16]


def test_float64_and_other_head_dims_run_the_reference(poisoned):
    q, k, v, _, mask = make_case(7, 1, 2, 50, 32, torch.float32, block=16)
    out = gpu.sparse_attention(q.double(), k.double(), v.double(), mask)
    assert out.dtype == torch.float64 and not poisoned
    q16 = q[..., :16].contiguous()
    gpu.sparse_attention(q16, q16, q16, mask)
    assert not poisoned
    assert gpu.backend_for(q) == "cupy"
