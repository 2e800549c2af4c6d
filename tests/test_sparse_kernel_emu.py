"""gpu/kernels/sparse_attention.cu run on the CPU emulator (tests/cuda_emu): the forward and the
backward in float32, float16 and bfloat16 (the half types on WMMA tiles), on small shapes — blocks
16–128 (128: the backward's two thread blocks per key block), head dims 32–128, n not a multiple
of the block, masks with empty rows, one or h mask heads, permuted masks, nothing allowed — under
two fiber schedules, against float64 gpu.reference (outputs and logsumexp; gradients of q, k, v by
autograd) on the same rounded inputs: ‖x − ref‖/‖ref‖ < 1e-5 in float32, < 2e-2 in the half types.
Outputs are poisoned (NaN) before each launch, so an unwritten element fails. Also the emulator's
WMMA fragments against numpy, and their refusals of what CUDA leaves undefined."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cuda_emu import HERE, KERNELS, EmuError, load
from cuda_emu.testing import SUFFIX, mask_case, needs_cxx

import flowgraph as fg
from flowgraph.gpu.kernels import (
    NAME_EXPRESSIONS,
    sparse_attention_bwd_config,
    sparse_attention_bwd_wmma_config,
    sparse_attention_fwd_config,
    sparse_attention_fwd_wmma_config,
    sparse_bwd_keys,
)
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import _per_head, sparse_attention_reference

pytestmark = needs_cxx
i32 = np.int32
BOUND = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def sparse():
    # every instantiation: the same build test_kernels_compile's emulator test makes (cached)
    return load(KERNELS / "sparse_attention.cu", NAME_EXPRESSIONS["sparse_attention.cu"])


def _forward_config(dtype, block, d):
    config = (
        sparse_attention_fwd_config if dtype == torch.float32 else sparse_attention_fwd_wmma_config
    )
    return config(block, d)


def emulated_forward_stored(module, q, k, v, mask, scale, seed=0):
    """The forward launch on inputs already in the mask's stored order, as the CuPy launcher
    makes it: poisoned outputs, (out, lse) in the stored order."""
    b, h, n, d = q.shape
    out = torch.full_like(q, float("nan"))
    lse = torch.full((b, h, n), float("nan"))
    threads, shared = _forward_config(q.dtype, mask.block, d)
    kernel = module.get_function(f"sparse_attention_fwd_{SUFFIX[q.dtype]}<{mask.block}, {d}>")
    args = (q, k, v, mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.bits_pbw, out, lse)
    args += (i32(n), i32(h), i32(mask.heads), np.float32(scale))
    kernel((mask.num_blocks, b * h), (threads,), args, shared_mem=shared, seed=seed)
    return out, lse


def emulated_forward(module, q, k, v, mask, scale, seed=0):
    """Permute, launch, un-permute: (out, lse) in token order."""
    if mask.perm_hn is not None:
        q, k, v = (_per_head(x, mask.perm_hn) for x in (q, k, v))
    q, k, v = (x.contiguous() for x in (q, k, v))
    out, lse = emulated_forward_stored(module, q, k, v, mask, scale, seed)
    if mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
        lse = _per_head(lse[..., None], mask.inv_perm_hn)[..., 0]
    return out, lse


def emulated_backward(module, q, k, v, dout, mask, scale, seed=0):
    """What the launcher does for the backward, with the emulator: permute, forward for out and
    lse, delta = rowsum(dout ∘ out) in float32, the backward on poisoned dk, dv and a zeroed
    float32 dq, un-permute. Returns (dq, dk, dv) in token order, of q's dtype."""
    b, h, n, d = q.shape
    if mask.perm_hn is not None:
        q, k, v, dout = (_per_head(x, mask.perm_hn) for x in (q, k, v, dout))
    q, k, v, dout = (x.contiguous() for x in (q, k, v, dout))
    out, lse = emulated_forward_stored(module, q, k, v, mask, scale, seed)
    delta = (dout.float() * out.float()).sum(-1).contiguous()
    dq = torch.zeros(b, h, n, d)
    dk, dv = torch.full_like(k, float("nan")), torch.full_like(v, float("nan"))
    config = (
        sparse_attention_bwd_config
        if q.dtype == torch.float32
        else sparse_attention_bwd_wmma_config
    )
    threads, shared = config(mask.block, d)
    kernel = module.get_function(f"sparse_attention_bwd_{SUFFIX[q.dtype]}<{mask.block}, {d}>")
    args = (q, k, v, dout, lse, delta, mask.q_indptr, mask.q_indices, mask.q_slots, mask.bits_pbw)
    args += (dq, dk, dv, i32(n), i32(h), i32(mask.heads), np.float32(scale))
    grid = (mask.num_blocks * (mask.block // sparse_bwd_keys(mask.block)), b * h)
    kernel(grid, (threads,), args, shared_mem=shared, seed=seed)
    grads = (dq.to(q.dtype), dk, dv)
    if mask.inv_perm_hn is not None:
        grads = tuple(_per_head(x, mask.inv_perm_hn) for x in grads)
    return grads


def _inputs(rng, shape, dtype, count):
    return [torch.from_numpy(rng.standard_normal(shape)).to(dtype) for _ in range(count)]


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not x.isnan().any(), "an element was not written"
    norm = ref.norm()
    return ((x.double() - ref).norm() / norm).item() if norm > 0 else x.double().norm().item()


CASES = [  # (dtype, block, d, n, b, h, mask heads, mask)
    (torch.float32, 16, 32, 40, 2, 3, 3, "random"),
    (torch.float32, 16, 32, 40, 1, 2, 1, "permuted"),
    (torch.float32, 32, 64, 70, 1, 2, 2, "causal"),
    (torch.float32, 16, 128, 20, 1, 2, 2, "empty"),
    (torch.float32, 128, 32, 130, 1, 1, 1, "random"),
    (torch.float16, 16, 32, 40, 2, 2, 2, "random"),
    (torch.float16, 32, 64, 45, 1, 2, 1, "permuted"),
    (torch.float16, 128, 32, 130, 1, 1, 1, "causal"),
    (torch.bfloat16, 16, 128, 33, 1, 2, 2, "random"),
    (torch.bfloat16, 64, 32, 70, 1, 1, 1, "permuted"),
    (torch.bfloat16, 16, 32, 17, 1, 2, 1, "empty"),
]


@pytest.mark.parametrize(("dtype", "block", "d", "n", "b", "h", "mask_heads", "kind"), CASES)
def test_forward_and_backward_match_the_reference(
    sparse, dtype, block, d, n, b, h, mask_heads, kind
):
    rng = np.random.default_rng(block * n + d + len(kind))
    masks, perm = mask_case(kind, mask_heads, n, rng, unseen_keys=True)
    mask = SparseMask.from_masks(masks, block=block, permute=perm)
    q, k, v, dout = _inputs(rng, (b, h, n, d), dtype, 4)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref, ref_lse = sparse_attention_reference(q64, k64, v64, mask, 0.3, return_lse=True)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    empty = torch.isneginf(ref_lse)
    for seed in (0, 5):
        out, lse = emulated_forward(sparse, q, k, v, mask, 0.3, seed=seed)
        assert out.dtype == dtype
        assert _rel(out, ref.detach()) < BOUND[dtype]
        assert torch.equal(torch.isneginf(lse), empty) and (out[empty] == 0).all()
        torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty].detach(), rtol=0, atol=(
            1e-5 if dtype == torch.float32 else 1e-2
        ))  # fmt: skip
        grads = emulated_backward(sparse, q, k, v, dout, mask, 0.3, seed=seed)
        for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
            assert got.dtype == dtype
            assert _rel(got, want) < BOUND[dtype], name
        assert (grads[0][empty] == 0).all(), "an empty query row gets a zero gradient"


def test_the_strided_pattern_permuted_in_heads_mode(sparse):
    """The strided pattern's two steps as two heads, the second under the strided transpose."""
    mask = SparseMask.from_pattern(
        fg.strided(96, stride=8), heads=2, mode="heads", block=32, permute="auto"
    )
    assert mask.permuted
    rng = np.random.default_rng(5)
    q, k, v, dout = _inputs(rng, (1, 2, 96, 64), torch.bfloat16, 4)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref = sparse_attention_reference(q64, k64, v64, mask, 0.125)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    out, _ = emulated_forward(sparse, q, k, v, mask, 0.125, seed=3)
    assert _rel(out, ref.detach()) < 2e-2
    grads = emulated_backward(sparse, q, k, v, dout, mask, 0.125, seed=3)
    for got, want in zip(grads, ref_grads, strict=True):
        assert _rel(got, want) < 2e-2


# --- the custom ops of gpu._sparse_cuda, their kernels launched on the emulator ------------------
@pytest.fixture
def emulated_ops(sparse, monkeypatch):
    """gpu._sparse_cuda with the emulator in place of CuPy: kernels from the emulator build,
    tensors passed as themselves, launches under a fixed non-trivial schedule."""
    from flowgraph.gpu import _sparse_cuda

    launches = []

    def launch(kern, grid, block, args, shared_mem, device):
        launches.append(grid)
        kern(grid, block, args, shared_mem=shared_mem, seed=11)

    monkeypatch.setattr(
        _sparse_cuda, "_kernel", lambda source, name, device: sparse.get_function(name)
    )
    monkeypatch.setattr(_sparse_cuda, "_ptr", lambda t: t)
    monkeypatch.setattr(_sparse_cuda, "_launch", launch)
    return _sparse_cuda, launches


def _check_op(op, q, k, v, mask, scale, dtype):
    rng = np.random.default_rng(q.numel())
    dout = torch.from_numpy(rng.standard_normal(q.shape)).to(dtype)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref = sparse_attention_reference(q64, k64, v64, mask, scale)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.double())
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = op(*leaves, mask, scale)
    assert out.dtype == dtype and _rel(out.detach(), ref.detach()) < BOUND[dtype]
    out.backward(dout)
    for leaf, want in zip(leaves, ref_grads, strict=True):
        assert leaf.grad.dtype == dtype and _rel(leaf.grad, want) < BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_forward_and_autograd_on_the_emulator(emulated_ops, dtype):
    ops, launches = emulated_ops
    rng = np.random.default_rng(2)
    mask = SparseMask.from_masks(
        rng.random((2, 50, 50)) < 0.3, block=16, permute=rng.permutation(50)
    )
    q, k, v = _inputs(rng, (1, 2, 50, 32), dtype, 3)
    # non-contiguous inputs: the op copies them into the layout the kernels read
    q = q.transpose(2, 3).contiguous().transpose(2, 3)
    assert not q.is_contiguous()
    _check_op(ops._apply, q, k, v, mask, 0.2, dtype)
    assert launches == [(4, 2, 1), (4, 2, 1)]  # one forward, one backward


def test_more_batch_heads_than_a_grid_holds_are_split(emulated_ops, monkeypatch):
    ops, launches = emulated_ops
    monkeypatch.setattr(ops, "MAX_GRID_Y", 5)  # stands for 65535: 3 heads → launches of 3 rows
    assert ops._chunks(8 * 3, 3) == [
        (0, 3),
        (3, 3),
        (6, 3),
        (9, 3),
        (12, 3),
        (15, 3),
        (18, 3),
        (21, 3),
    ]
    monkeypatch.setattr(ops, "MAX_GRID_Y", 7)
    assert ops._chunks(5 * 3, 3) == [(0, 6), (6, 6), (12, 3)]
    rng = np.random.default_rng(4)
    mask = SparseMask.from_masks(rng.random((3, 20, 20)) < 0.4, block=16)
    q, k, v = _inputs(rng, (5, 3, 20, 32), torch.float32, 3)
    _check_op(ops._apply, q, k, v, mask, 0.3, torch.float32)
    assert [grid[1] for grid in launches] == [6, 6, 3] * 2


def test_torch_compile_traces_the_ops_without_a_graph_break(emulated_ops):
    ops, launches = emulated_ops
    rng = np.random.default_rng(6)
    mask = SparseMask.from_masks(rng.random((1, 40, 40)) < 0.3, block=32)

    def layer(q, k, v):
        return ops._apply(q * 2, k, v, mask, 0.25).sum(-1)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # a break raises
    q, k, v = (x.requires_grad_() for x in _inputs(rng, (1, 2, 40, 64), torch.float32, 3))
    compiled(q, k, v).sum().backward()
    want = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    sparse_attention_reference(want[0] * 2, *want[1:], mask, 0.25).sum().backward()
    for got, ref in zip((q, k, v), want, strict=True):
        assert _rel(got.grad, ref.grad.double()) < 1e-5
    assert len(launches) == 2


def test_the_ops_pass_opcheck(emulated_ops):
    """torch.library.opcheck — schema, fake tensors, autograd registration, AOT dispatch — on the
    forward op with a permuted mask and on the backward op, the kernels on the emulator."""
    ops, launches = emulated_ops
    rng = np.random.default_rng(8)
    n = 24
    mask = SparseMask.from_masks(rng.random((2, n, n)) < 0.4, block=16, permute=rng.permutation(n))
    q, k, v = (x.requires_grad_() for x in _inputs(rng, (1, 2, n, 32), torch.float32, 3))
    fwd_csr = (mask.kv_indptr, mask.kv_indices, mask.kv_slots)
    bwd_csr = (mask.q_indptr, mask.q_indices, mask.q_slots)
    torch.library.opcheck(ops._forward_op, (q, k, v, *fwd_csr, *bwd_csr, mask.bits_pbw, 16, 0.3))
    out, lse = ops._forward_op(q, k, v, *fwd_csr, *bwd_csr, mask.bits_pbw, 16, 0.3)
    dout = torch.from_numpy(rng.standard_normal(q.shape)).float()
    torch.library.opcheck(
        ops._backward_op,
        (dout, *(x.detach() for x in (q, k, v, out)), lse, *bwd_csr, mask.bits_pbw, 16, 0.3),
    )
    assert launches


def test_the_op_checks_before_any_launch(emulated_ops):
    ops, launches = emulated_ops
    mask = SparseMask.from_masks(np.ones((1, 8, 8), dtype=bool), block=16)
    q = torch.zeros(1, 1, 8, 32)
    with pytest.raises(
        ValueError, match=r"q_bhnd must be a CUDA tensor for the kernels, got device cpu"
    ):
        ops.sparse_attention(q, q, q, mask, 1.0)
    with pytest.raises(
        TypeError, match=r"float32, float16 or bfloat16 for the kernels, got dtype torch.float64"
    ):
        ops._apply(q.double(), q.double(), q.double(), mask, 1.0)
    with pytest.raises(ValueError, match=r"head dim in \(32, 64, 128\) for the kernels, got d=16"):
        ops._apply(q[..., :16], q[..., :16], q[..., :16], mask, 1.0)
    assert ops.supports(q) and not ops.supports(q.double()) and not ops.supports(q[..., :16])
    assert launches == []


def test_launch_configurations():
    assert sparse_bwd_keys(16) == 16 and sparse_bwd_keys(128) == 64
    assert sparse_attention_bwd_config(128, 128) == (512, 4 * (4 * 64 * 129 + 2 * 64 * 65 + 128))
    for block in (16, 32, 64, 128):
        for d in (32, 64, 128):  # every configuration fits the 227 KiB of an sm_90 block
            for config in (
                sparse_attention_fwd_config,
                sparse_attention_bwd_config,
                sparse_attention_fwd_wmma_config,
                sparse_attention_bwd_wmma_config,
            ):
                threads, shared = config(block, d)
                assert threads <= 1024 and shared <= 232448, (config.__name__, block, d)
    with pytest.raises(ValueError, match=r"need block in .* got block=48, head_dim=64"):
        sparse_attention_bwd_wmma_config(48, 64)


# --- the emulator's WMMA fragments ----------------------------------------------------------------
LAYOUTS = [(a, b) for a in ("row_major", "col_major") for b in ("row_major", "col_major")]
GEMMS = [
    f"wmma_gemm<{t}, nvcuda::wmma::{a}, nvcuda::wmma::{b}>"
    for t in ("__half", "__nv_bfloat16")
    for a, b in LAYOUTS
]


@pytest.fixture(scope="module")
def selftest():
    return load(HERE / "selftest.cu", name_expressions=["fill<3>", "fill<7>", *GEMMS])


@pytest.mark.parametrize("expression", GEMMS)
def test_wmma_fragments_multiply_like_numpy(selftest, expression):
    dtype = torch.float16 if "__half" in expression else torch.bfloat16
    gen = torch.Generator().manual_seed(len(expression))
    # torch allocations are 64-byte aligned, as WMMA's 32-byte rule needs
    a, b = (
        torch.randn(16, 24, generator=gen).to(dtype),
        torch.randn(16, 32, generator=gen).to(dtype),
    )
    c = torch.randn(16, 20, generator=gen)
    want_a, want_b = a.double()[:, :16], b.double()[:, :16]
    if "wmma::col_major, nvcuda" in expression:
        want_a = want_a.T
    if expression.endswith("col_major>"):
        want_b = want_b.T
    want = 2 * (want_a @ want_b + c.double()[:, :16])
    for seed in (0, 3):
        d = torch.full((16, 16), float("nan"))
        selftest.get_function(expression)(
            (1,), (32,), (a, b, c, d, i32(24), i32(32), i32(20)), seed=seed
        )
        torch.testing.assert_close(d.double().T, want, rtol=1e-6, atol=1e-5)


def test_wmma_accumulates_through_shared_memory(selftest):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, generator=gen).half(), torch.randn(512, generator=gen).half()
    d = torch.full((16, 16), float("nan"))
    selftest.get_function("wmma_chain")((1,), (32,), (a, b, d), seed=5)
    a2, b2 = a.double().reshape(2, 16, 16), b.double().reshape(2, 16, 16)
    torch.testing.assert_close(d.double(), a2[0] @ b2[0] + a2[1] @ b2[1], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("what", "threads", "message"),
    [
        (0, 32, r"load_matrix_sync: the pointer must be 256-bit \(32-byte\) aligned"),
        (1, 32, r"ldm must be a multiple of 16 bytes \(8 elements\), got 12"),
        (2, 32, r"lanes of the warp passed different pointers"),
        (3, 16, r"needs all 32 lanes of the warp"),
    ],
)
def test_wmma_misuse_fails_the_launch(selftest, what, threads, message):
    with pytest.raises(EmuError, match=message):
        selftest.get_function("wmma_misuse")(
            (1,), (threads,), (torch.zeros(1024).half(), np.zeros(32, np.float32), i32(what))
        )
