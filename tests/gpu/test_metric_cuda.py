"""Metric tensor attention by the CUDA kernels (gpu/_metric_cuda.py through gpu.metric_attention)
against the float64 torch reference and its autograd: fresh random inputs per case, every output
buffer poisoned with NaN before the kernels write it, float32/float16/bfloat16, head dims 16–128
(24 and 96 padded up), causal and not, with a (permuted) SparseMask, gradients for p and the packed
metric with off-diagonal entries, non-contiguous inputs, several streams, torch.compile.
Skipped where there is no CUDA device or no CuPy."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch

import flowgraph.gpu._metric_cuda as metric_cuda
from flowgraph import gpu
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.metric import metric_attention_reference, packed_size

# poisoned outputs, a count of the calls (the `poisoned` fixture), the skips: tests/gpu/conftest.py
KERNEL_ENTRY = (metric_cuda, "metric_attention_cuda")
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # ‖x − ref‖/‖ref‖


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not x.isnan().any(), "NaN: an element was not written"
    return ((x.double().cpu() - ref).norm() / ref.norm()).item()


def make_case(seed, b, h, n, k, dtype, kind=None, block=64):
    rng = np.random.default_rng(seed)
    mask = None
    if kind is not None:
        masks = rng.random((h, n, n)) < 0.2
        masks[:, rng.random(n) < 0.1] = False  # empty rows: zeros, zero gradients
        perm = rng.permutation(n) if kind == "permuted" else None
        mask = SparseMask.from_masks(masks, block=block, permute=perm)
    p = torch.from_numpy(rng.standard_normal((b, h, n, k))).to(dtype)
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).to(dtype)
    dout = torch.from_numpy(rng.standard_normal((b, h, n, k))).to(dtype)
    return p, m, dout, mask


def reference(p, m, dout, causal, mask, scale=None):
    p64, m64 = p.double().requires_grad_(), m.double().requires_grad_()
    ref = metric_attention_reference(p64, m64, causal, mask, scale)
    dp, dm = torch.autograd.grad(ref, (p64, m64), dout.double())
    return ref.detach(), dp, dm


def run_cuda(p, m, dout, causal, mask, scale=None):
    pg, mg = p.cuda().requires_grad_(), m.cuda().requires_grad_()
    out = gpu.metric_attention(pg, mg, causal, None if mask is None else mask.to("cuda"), scale)
    out.backward(dout.cuda())
    torch.cuda.synchronize()
    return out, pg.grad, mg.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [16, 24, 32, 64, 96, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_kernels_match_the_float64_reference(poisoned, dtype, k, causal):
    seed = k * 10 + int(causal) + 2 * list(TOL).index(dtype)
    p, m, dout, _ = make_case(seed, 2, 3, 333, k, dtype)
    ref, want_dp, want_dm = reference(p, m, dout, causal, None)
    out, dp, dm = run_cuda(p, m, dout, causal, None)
    assert poisoned, "the kernels did not run"
    assert out.dtype == dp.dtype == dm.dtype == dtype
    assert rel(out, ref) < TOL[dtype]
    assert rel(dp, want_dp) < TOL[dtype]
    assert rel(dm, want_dm) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("block", "kind"), [(16, "random"), (32, "permuted"), (64, "permuted"), (128, "permuted")]
)
@pytest.mark.parametrize("causal", [True, False])
def test_kernels_with_a_sparse_mask(poisoned, dtype, block, kind, causal):
    p, m, dout, mask = make_case(block + int(causal), 2, 2, 300, 64, dtype, kind, block)
    ref, want_dp, want_dm = reference(p, m, dout, causal, mask, 0.2)
    out, dp, dm = run_cuda(p, m, dout, causal, mask, 0.2)
    assert poisoned
    assert rel(out, ref) < TOL[dtype]
    assert rel(dp, want_dp) < TOL[dtype]
    assert rel(dm, want_dm) < TOL[dtype]


def test_block_128_mask_runs_the_forward_kernel(poisoned):
    p, m, _, mask = make_case(5, 1, 2, 400, 32, torch.float32, "permuted", 128)
    ref = metric_attention_reference(p.double(), m.double(), True, mask)
    with torch.no_grad():
        out = gpu.metric_attention(p.cuda(), m.cuda(), True, mask.to("cuda"))
    assert poisoned and rel(out, ref) < TOL[torch.float32]


def test_non_contiguous_inputs(poisoned):
    p, m, _, _ = make_case(7, 2, 4, 200, 32, torch.float32)
    p_view = p.cuda().transpose(1, 2).contiguous().transpose(1, 2)  # (b, h, n, k), strided
    m_view = m.cuda().T.contiguous().T
    assert not p_view.is_contiguous() and not m_view.is_contiguous()
    ref = metric_attention_reference(p.double(), m.double(), True, None)
    out = gpu.metric_attention(p_view, m_view, True)
    assert poisoned and rel(out, ref) < TOL[torch.float32]


def test_several_streams(poisoned):
    """Each call launches on torch's current stream: results computed on two side streams at
    once match the reference (a launcher that cached one stream would race here)."""
    cases = [make_case(20 + i, 2, 2, 1000, 64, torch.float32) for i in range(2)]
    streams = [torch.cuda.Stream() for _ in cases]
    inputs = [(p.cuda(), m.cuda()) for p, m, _, _ in cases]
    torch.cuda.synchronize()
    outs = []
    for stream, (p, m) in zip(streams, inputs, strict=True):
        with torch.cuda.stream(stream):
            outs.append(gpu.metric_attention(p, m, True))
    torch.cuda.synchronize()
    for (p, m, _, _), out in zip(cases, outs, strict=True):
        assert rel(out, metric_attention_reference(p.double(), m.double(), True, None)) < 2e-5
    gc.collect()  # a collected cupy.cuda.Stream may destroy its handle: gpu._cupy keeps them
    for stream in streams:
        with torch.cuda.stream(stream):
            x = torch.ones(1000, device="cuda").cumsum(0)
        stream.synchronize()
        assert x[-1].item() == 1000


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_the_second_device(poisoned):
    """Kernels compiled, opted in and launched under cuda:1 while cuda:0 is current."""
    assert torch.cuda.current_device() == 0
    for dtype in (torch.float32, torch.bfloat16):
        p, m, dout, mask = make_case(40, 1, 2, 300, 128, dtype, "permuted", 128)
        ref, want_dp, want_dm = reference(p, m, dout, True, mask)
        pg, mg = p.to("cuda:1").requires_grad_(), m.to("cuda:1").requires_grad_()
        out = gpu.metric_attention(pg, mg, True, mask.to("cuda:1"))
        out.backward(dout.to("cuda:1"))
        assert out.device == torch.device("cuda", 1) and poisoned
        assert rel(out, ref) < TOL[dtype]
        assert rel(pg.grad, want_dp) < TOL[dtype] and rel(mg.grad, want_dm) < TOL[dtype]
    assert torch.cuda.current_device() == 0


def test_torch_compile_without_graph_breaks(poisoned):
    p, m, _, mask = make_case(9, 1, 2, 256, 32, torch.float32, "permuted", 32)
    pc, mc = p.cuda().requires_grad_(), m.cuda().requires_grad_()
    mask_c = mask.to("cuda")

    def loss(p, m):
        return gpu.metric_attention(p, m, True, mask_c).square().sum()

    got = torch.compile(loss, fullgraph=True)(pc, mc)
    got_dp, got_dm = torch.autograd.grad(got, (pc, mc))
    want = loss(pc, mc)
    want_dp, want_dm = torch.autograd.grad(want, (pc, mc))
    assert poisoned
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_dp, want_dp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_dm, want_dm, rtol=1e-5, atol=1e-5)


def test_unsupported_calls_use_the_torch_path(poisoned):
    p, m, _, _ = make_case(3, 1, 1, 50, 16, torch.float64)
    out = gpu.metric_attention(p.cuda(), m.cuda(), True)
    assert not poisoned  # float64: the reference ran
    torch.testing.assert_close(out.cpu(), metric_attention_reference(p, m, True, None))
