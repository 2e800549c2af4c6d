"""gpu/kernels/metric_attention.cu, forward and backward in float32, float16 and bfloat16 (the
half forward on WMMA tensor cores), run on the CPU emulator (tests/cuda_emu) on small shapes —
blocks 16–128, head dims 16–128, causal and not, n not a multiple of the block, one and several
heads with different metrics, random, permuted, strided and empty SparseMasks, metrics with only
off-diagonal (c ≠ c') entries — under two fiber schedules: the forward against
gpu.metric_attention_reference (‖out − ref‖/‖ref‖ < 1e-5 in float32, about twice the output's
rounding in half) and the logsumexp against a dense float64 one (in half, of q = p·M rounded as
the tensor cores take it); the backward, finished as the launcher does (dp = dq·M + dkv,
dM = pᵀ·dq packed), against float64 autograd of the reference. Mutations of the metric index, the
token-based causal test, the key path of dS and the barrier before the dq step each fail them
(checked by hand). Then the whole CUDA op of gpu/_metric_cuda.py (custom ops, autograd,
permutation, head-dim padding, dM packing, opcheck, torch.compile) with the emulator as its
launcher, and the launch configuration helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cuda_emu import KERNELS, load
from cuda_emu.testing import SUFFIX, needs_cxx

import flowgraph as fg
from flowgraph.gpu.kernels import (
    NAME_EXPRESSIONS,
    metric_attention_bwd_config,
    metric_attention_bwd_wmma_config,
    metric_attention_fwd_config,
    metric_attention_fwd_wmma_config,
    metric_bwd_keys,
)
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.metric import metric_attention_reference, packed_size, unpack_symmetric
from flowgraph.gpu.reference import _per_head

pytestmark = needs_cxx
i32 = np.int32


@pytest.fixture(scope="module")
def metric():
    # every instantiation: the same build test_kernels_compile's emulator test makes (cached)
    return load(KERNELS / "metric_attention.cu", NAME_EXPRESSIONS["metric_attention.cu"])


def emulated_forward(
    module, p_bhnk, m_packed_hl, causal, scale, block, mask=None, seed=0, dtype=torch.float32
):
    """What the CuPy launcher does, with the emulator in place of the GPU: permute p into the
    mask's stored order, launch the kernel of ``dtype`` on poisoned outputs, un-permute.
    Returns (out in dtype, lse float32)."""
    b, h, n, k = p_bhnk.shape
    p = p_bhnk if mask is None or mask.perm_hn is None else _per_head(p_bhnk, mask.perm_hn)
    p = p.to(dtype).contiguous()
    m = m_packed_hl.to(dtype).contiguous()
    out = torch.full_like(p, float("nan"))
    lse = torch.full((b, h, n), float("nan"))
    config = (
        metric_attention_fwd_config if dtype == torch.float32 else metric_attention_fwd_wmma_config
    )
    threads, shared = config(block, k)
    kernel = module.get_function(f"metric_attention_fwd_{SUFFIX[dtype]}<{block}, {k}>")
    csr = (None,) * 5
    if mask is not None:
        assert mask.block == block
        csr = (mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.bits_pbw, mask.perm_hn)
    mask_heads = 1 if mask is None else mask.heads
    args = (p, m, *csr, out, lse, i32(n), i32(h), i32(mask_heads), i32(int(causal)))
    kernel(
        (-(-n // block), b * h),
        (threads,),
        (*args, np.float32(scale)),
        shared_mem=shared,
        seed=seed,
    )
    if mask is not None and mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
        lse = _per_head(lse[..., None], mask.inv_perm_hn)[..., 0]
    return out, lse


def dense_lse(p_bhnk, m_packed_hl, causal, scale, masks_hqk=None, q_dtype=None):
    """The logsumexp of the scaled allowed scores in float64; with ``q_dtype``, of the scores of
    q = p·M rounded to that dtype, as the tensor-core forward computes them."""
    p = p_bhnk.double()
    n = p.shape[2]
    q = p @ unpack_symmetric(m_packed_hl.double())
    if q_dtype is not None:
        q = q.to(q_dtype).double()
    r = scale * q @ p.mT
    allowed = torch.ones(1, n, n, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    if masks_hqk is not None:
        allowed = allowed & torch.as_tensor(masks_hqk)
    return torch.logsumexp(r.masked_fill(~allowed, -math.inf), -1)


def check(module, p, m, causal, scale, block, mask=None, masks=None, seeds=(0, 7)):
    ref = metric_attention_reference(p.double(), m.double(), causal, mask, scale)
    ref_lse = dense_lse(p, m, causal, scale, masks)
    empty = torch.isneginf(ref_lse)
    for seed in seeds:
        out, lse = emulated_forward(module, p, m, causal, scale, block, mask, seed=seed)
        assert not out.isnan().any() and not lse.isnan().any(), "a row was not written"
        assert torch.equal(torch.isneginf(lse), empty) and (out[empty] == 0).all()
        if ref.norm() > 0:
            assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
        torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("block", "k", "n", "b", "h", "causal"),
    [
        (16, 16, 1, 1, 1, True),
        (16, 16, 37, 2, 3, True),
        (16, 32, 40, 1, 2, False),
        (32, 64, 70, 1, 2, True),
        (32, 16, 45, 2, 1, False),
        (16, 128, 20, 1, 2, True),
        (64, 32, 130, 1, 1, True),
        (128, 16, 130, 1, 1, False),
    ],
)
def test_forward_kernel_matches_the_reference(metric, block, k, n, b, h, causal):
    rng = np.random.default_rng(block * n + k)
    p = torch.from_numpy(rng.standard_normal((b, h, n, k))).float()
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).float()
    check(metric, p, m, causal, 0.7 / math.sqrt(k), block)


@pytest.mark.parametrize(
    ("block", "k", "n", "h", "mask_heads", "kind", "causal"),
    [
        (16, 16, 40, 3, 3, "random", True),
        (16, 32, 40, 2, 1, "random", False),
        (16, 16, 45, 2, 2, "permuted", True),
        (32, 64, 45, 1, 1, "permuted", False),
        (32, 16, 70, 2, 1, "future", True),  # the causal AND empties every row
        (16, 16, 17, 2, 2, "empty", False),
        (64, 32, 100, 1, 1, "permuted", True),
    ],
)
def test_forward_kernel_with_a_sparse_mask(metric, block, k, n, h, mask_heads, kind, causal):
    rng = np.random.default_rng(block + n + k)
    perm = None
    if kind == "random":
        masks = rng.random((mask_heads, n, n)) < 0.3
        masks[:, rng.random(n) < 0.2] = False  # empty rows
    elif kind == "permuted":
        masks, perm = rng.random((mask_heads, n, n)) < 0.3, rng.permutation(n)
    elif kind == "future":
        masks = np.zeros((mask_heads, n, n), dtype=bool)
        masks[:, np.arange(n - 1), np.arange(1, n)] = True
    else:
        masks = np.zeros((mask_heads, n, n), dtype=bool)
    mask = SparseMask.from_masks(masks, block=block, permute=perm)
    p = torch.from_numpy(rng.standard_normal((2, h, n, k))).float()
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).float()
    check(metric, p, m, causal, 0.5, block, mask, masks)


def test_forward_kernel_on_a_permuted_strided_pattern(metric):
    """The strided pattern in heads mode with the strided transpose, causal: the kernel compares
    tokens, not stored positions."""
    pattern = fg.strided(96, stride=8)
    mask = SparseMask.from_pattern(pattern, heads=2, mode="heads", block=32, permute="auto")
    assert mask.permuted
    bidirectional = mask.to_dense().numpy() | mask.to_dense().numpy().transpose(0, 2, 1)
    both = SparseMask.from_masks(bidirectional, block=32, permute=mask.perm_hn.numpy())
    rng = np.random.default_rng(5)
    p = torch.from_numpy(rng.standard_normal((1, 2, 96, 32))).float()
    m = torch.from_numpy(rng.standard_normal((2, packed_size(32))) / 6).float()
    check(metric, p, m, True, 0.2, 32, both, bidirectional, seeds=(3,))


def test_off_diagonal_metric_entries_matter(metric):
    """A metric with only off-diagonal entries: the seed's packed formula would get every score
    wrong by a factor (docs/gpu.md); the kernel matches the reference."""
    rng = np.random.default_rng(1)
    k, n = 16, 33
    p = torch.from_numpy(rng.standard_normal((1, 2, n, k))).float()
    m = torch.from_numpy(rng.standard_normal((2, packed_size(k)))).float()
    i, j = torch.triu_indices(k, k)
    m[:, i == j] = 0.0
    check(metric, p, m, True, 0.1, 16, seeds=(3,))


def emulated_backward(
    module, p_bhnk, m_packed_hl, dout, causal, scale, block, mask=None, seed=0, dtype=torch.float32
):
    """What the launcher's backward does: the forward for out and lse, delta = rowsum(dout ∘
    out), q = p·M (float32, or rounded to ``dtype`` for the tensor-core kernels), everything into
    the stored order, the kernel of ``dtype`` on poisoned dkv and zeroed dq, back to token order,
    then dp = dq·M + dkv and the packed dM = pᵀ·dq (both halves off the diagonal), in float32.
    Returns (dp, dm_packed)."""
    b, h, n, k = p_bhnk.shape
    p_bhnk, m_packed_hl, dout = (x.to(dtype) for x in (p_bhnk, m_packed_hl, dout))
    out, lse = emulated_forward(
        module, p_bhnk, m_packed_hl, causal, scale, block, mask, seed, dtype=dtype
    )
    m_hkk = unpack_symmetric(m_packed_hl.float())
    delta = (dout.float() * out.float()).sum(-1)
    q = p_bhnk.float() @ m_hkk
    if dtype != torch.float32:  # as the tensor-core forward scored, and the backward's operand
        q = q.to(dtype)
    xs = [p_bhnk, q, dout, lse[..., None], delta[..., None]]
    if mask is not None and mask.perm_hn is not None:
        xs = [_per_head(x, mask.perm_hn) for x in xs]
    p, q, do, lse_s, delta_s = (x.contiguous() for x in xs)
    dkv = torch.full_like(p, float("nan"), dtype=torch.float32)
    dq = torch.zeros_like(p, dtype=torch.float32)
    wmma = dtype != torch.float32
    config = metric_attention_bwd_wmma_config if wmma else metric_attention_bwd_config
    threads, shared = config(block, k)
    kernel = module.get_function(f"metric_attention_bwd_{SUFFIX[dtype]}<{block}, {k}>")
    csr = (None,) * 5
    if mask is not None:
        csr = (mask.q_indptr, mask.q_indices, mask.q_slots, mask.bits_pbw, mask.perm_hn)
    mask_heads = 1 if mask is None else mask.heads
    args = (p, q, do, lse_s[..., 0].contiguous(), delta_s[..., 0].contiguous(), *csr, dkv, dq)
    args += (i32(n), i32(h), i32(mask_heads), i32(int(causal)), np.float32(scale))
    grid = (-(-n // block) * (block // metric_bwd_keys(block)), b * h)
    kernel(grid, (threads,), args, shared_mem=shared, seed=seed)
    if mask is not None and mask.inv_perm_hn is not None:
        dkv, dq = _per_head(dkv, mask.inv_perm_hn), _per_head(dq, mask.inv_perm_hn)
    dp = dq @ m_hkk + dkv
    dm = torch.einsum("bhnk,bhnj->hkj", p_bhnk.float(), dq)
    i, j = torch.triu_indices(k, k)
    return dp, torch.where(i == j, dm[:, i, j], dm[:, i, j] + dm[:, j, i])


@pytest.mark.parametrize(
    ("block", "k", "n", "h", "mask_heads", "kind", "causal"),
    [
        (16, 16, 37, 2, 1, None, True),
        (16, 32, 40, 1, 1, None, False),
        (32, 64, 70, 2, 1, None, True),
        (16, 16, 40, 3, 3, "random", True),
        (16, 16, 45, 2, 2, "permuted", True),
        (32, 16, 45, 1, 1, "permuted", False),
        (64, 128, 70, 1, 1, None, True),
        (128, 16, 150, 1, 1, None, True),  # two thread blocks per key block, query chunks of 64
        (128, 32, 140, 2, 1, "permuted", True),
        (128, 16, 130, 1, 1, "random", False),
    ],
)
def test_backward_kernel_matches_autograd(metric, block, k, n, h, mask_heads, kind, causal):
    rng = np.random.default_rng(block * 7 + n + k)
    masks, perm = None, None
    if kind is not None:
        masks = rng.random((mask_heads, n, n)) < 0.3
        masks[:, rng.random(n) < 0.2] = False  # empty rows: no gradient through their queries
        perm = rng.permutation(n) if kind == "permuted" else None
    mask = None if masks is None else SparseMask.from_masks(masks, block=block, permute=perm)
    p = torch.from_numpy(rng.standard_normal((2, h, n, k))).float()
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).float()
    dout = torch.from_numpy(rng.standard_normal((2, h, n, k))).float()
    p64, m64 = p.double().requires_grad_(), m.double().requires_grad_()
    ref = metric_attention_reference(p64, m64, causal, mask, 0.5)
    want_dp, want_dm = torch.autograd.grad(ref, (p64, m64), dout.double())
    for seed in (0, 5):
        dp, dm = emulated_backward(metric, p, m, dout, causal, 0.5, block, mask, seed=seed)
        assert not dp.isnan().any(), "a key row was not written"
        assert ((dp.double() - want_dp).norm() / want_dp.norm()).item() < 1e-5
        assert ((dm.double() - want_dm).norm() / want_dm.norm()).item() < 1e-5


# --- float16 / bfloat16: loads in half, float32 arithmetic -------------------------------------
HALF_OUT_TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}  # ≈ 2× the rounding of the output
HALF_GRAD_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2}  # delta comes from the rounded out
HALF_LSE_TOL = {torch.float16: 2e-3, torch.bfloat16: 6e-3}  # l sums the rounded probabilities


def half_case(seed, b, h, n, k, dtype, kind, mask_heads, block, off_diagonal_only=False):
    """Fresh inputs rounded to ``dtype`` (so the float64 reference sees what the kernel reads),
    and a SparseMask of ``kind`` (None, "random", "permuted")."""
    rng = np.random.default_rng(seed)
    mask = masks = None
    if kind is not None:
        masks = rng.random((mask_heads, n, n)) < 0.3
        masks[:, rng.random(n) < 0.15] = False  # empty rows
        perm = rng.permutation(n) if kind == "permuted" else None
        mask = SparseMask.from_masks(masks, block=block, permute=perm)
    p = torch.from_numpy(rng.standard_normal((b, h, n, k))).to(dtype)
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).to(dtype)
    if off_diagonal_only:  # only c ≠ c' cross terms: the seed's packed formula gets all wrong
        i, j = torch.triu_indices(k, k)
        m[:, i == j] = 0
    dout = torch.from_numpy(rng.standard_normal((b, h, n, k))).to(dtype)
    return p, m, dout, mask, masks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("block", "k", "n", "h", "mask_heads", "kind", "causal", "off_diagonal_only"),
    [
        (16, 16, 37, 2, 1, None, True, False),
        (32, 32, 45, 1, 1, None, False, True),
        (16, 16, 40, 2, 2, "random", True, False),
        (16, 32, 45, 2, 1, "permuted", False, False),
        (32, 16, 70, 2, 2, "permuted", True, True),
        (16, 128, 20, 1, 1, None, True, False),
        (128, 16, 140, 1, 1, "permuted", True, False),
    ],
)
def test_half_kernels_forward_and_backward(
    metric, dtype, block, k, n, h, mask_heads, kind, causal, off_diagonal_only
):
    """fwd/bwd_{f16,bf16} against the float64 reference and its autograd on the same (rounded)
    inputs, under two schedules: the output to the dtype's rounding, dp and the packed dM within
    the bounds above, and lse against the float64 logsumexp of the scores of q = p·M rounded to
    the dtype (the tensor cores' operand), which leaves the rounding of the probabilities that
    the kernel sums (as it multiplies them) and float32 arithmetic."""
    p, m, dout, mask, masks = half_case(
        block * 3 + n + k, 2, h, n, k, dtype, kind, mask_heads, block, off_diagonal_only
    )
    p64, m64 = p.double().requires_grad_(), m.double().requires_grad_()
    ref = metric_attention_reference(p64, m64, causal, mask, 0.5)
    want_dp, want_dm = torch.autograd.grad(ref, (p64, m64), dout.double())
    ref_lse = dense_lse(p, m, causal, 0.5, masks, q_dtype=dtype)
    empty = torch.isneginf(ref_lse)
    for seed in (0, 9):
        out, lse = emulated_forward(metric, p, m, causal, 0.5, block, mask, seed, dtype=dtype)
        assert out.dtype == dtype and not out.isnan().any() and not lse.isnan().any()
        assert torch.equal(torch.isneginf(lse), empty) and (out[empty] == 0).all()
        assert ((out.double() - ref).norm() / ref.norm()).item() < HALF_OUT_TOL[dtype]
        lse_err = (lse[~empty].double() - ref_lse[~empty]).abs().max().item()
        assert lse_err < HALF_LSE_TOL[dtype]
        dp, dm = emulated_backward(metric, p, m, dout, causal, 0.5, block, mask, seed, dtype)
        assert not dp.isnan().any(), "a key row was not written"
        assert ((dp.double() - want_dp).norm() / want_dp.norm()).item() < HALF_GRAD_TOL[dtype]
        assert ((dm.double() - want_dm).norm() / want_dm.norm()).item() < HALF_GRAD_TOL[dtype]


def test_config():
    assert metric_attention_fwd_config(64, 128) == (512, 4 * (2 * 64 * 129 + 64 * 65))
    assert metric_attention_bwd_config(64, 128) == (512, 4 * (3 * 64 * 129 + 2 * 64 * 65 + 128))
    # a key block of 128: two thread blocks of 64 keys, query chunks of 64
    assert metric_bwd_keys(128) == 64 and metric_bwd_keys(32) == 32
    assert metric_attention_bwd_config(128, 16) == metric_attention_bwd_config(64, 16)
    with pytest.raises(ValueError, match="block in"):
        metric_attention_bwd_config(8, 16)
    assert metric_attention_fwd_wmma_config(64, 128) == (512, 4 * 64 * 136 + 4 * 64 * (68 + 132))
    with pytest.raises(ValueError, match="head_dim in"):
        metric_attention_fwd_config(64, 24)
    with pytest.raises(ValueError, match="block in"):
        metric_attention_fwd_config(48, 64)


# --- the whole CUDA op (gpu/_metric_cuda.py) with the emulator as its launcher ------------------
class EmuLauncher:
    """gpu._metric_cuda's launcher interface over the CPU emulator (CPU tensors as pointers)."""

    def __init__(self, module, seed: int = 0) -> None:
        self.module, self.seed, self.launches = module, seed, []

    def kernel(self, name: str, device: torch.device):
        assert device.type == "cpu"
        return self.module.get_function(name)

    def launch(self, kern, grid, block, args, shared_mem, device) -> None:
        assert device.type == "cpu" and len(grid) == 3 and len(block) == 3
        self.launches.append(kern.name)
        kern(grid, block, args, shared_mem=shared_mem, seed=self.seed)

    shared_limit = 227 * 1024  # an H100/H200's opt-in limit

    def max_shared_mem(self, device) -> int:
        return self.shared_limit


@pytest.fixture
def emu_op(metric, monkeypatch):
    import flowgraph.gpu._metric_cuda as metric_cuda

    launcher = EmuLauncher(metric, seed=3)
    monkeypatch.setattr(metric_cuda, "launcher", launcher)
    monkeypatch.setattr(metric_cuda, "poison_outputs", True)  # an unwritten element shows as NaN
    return metric_cuda, launcher


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not x.isnan().any(), "NaN: an output element was not written"
    return ((x.double() - ref).norm() / ref.norm()).item()


OP_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize(
    ("k", "n", "h", "causal", "kind", "dtype"),
    [
        (16, 37, 2, True, None, torch.float32),
        (24, 40, 2, False, None, torch.float32),  # k padded to 32
        (16, 45, 2, True, "permuted", torch.float32),
        (32, 40, 3, False, "random", torch.float32),
        (16, 33, 1, True, None, torch.float16),
        (16, 40, 2, True, "permuted", torch.bfloat16),
    ],
)
def test_the_cuda_op_forward_and_backward(emu_op, k, n, h, causal, kind, dtype):
    """gpu._metric_cuda.metric_attention_cuda — custom ops, permutation, padding, dM packing —
    against the float64 reference and its autograd, with fresh inputs and c ≠ c' metric entries."""
    metric_cuda, launcher = emu_op
    rng = np.random.default_rng(k * n + h)
    mask = None
    if kind is not None:
        masks = rng.random((h, n, n)) < 0.35
        masks[:, rng.random(n) < 0.15] = False  # empty rows
        perm = rng.permutation(n) if kind == "permuted" else None
        mask = SparseMask.from_masks(masks, block=16, permute=perm)
    p = torch.from_numpy(rng.standard_normal((2, h, n, k))).to(dtype)
    m = torch.from_numpy(rng.standard_normal((h, packed_size(k))) / math.sqrt(k)).to(dtype)
    dout = torch.from_numpy(rng.standard_normal((2, h, n, k))).to(dtype)
    p64, m64 = p.double().requires_grad_(), m.double().requires_grad_()
    ref = metric_attention_reference(p64, m64, causal, mask, 0.4)
    want_dp, want_dm = torch.autograd.grad(ref, (p64, m64), dout.double())

    pg, mg = p.clone().requires_grad_(), m.clone().requires_grad_()
    out = metric_cuda.metric_attention_cuda(pg, mg, causal, mask, 0.4)
    assert out.dtype == dtype and out.shape == p.shape
    out.backward(dout)
    block, d = 64 if mask is None else 16, 32 if k == 24 else k
    assert launcher.launches[-2:] == [
        f"metric_attention_fwd_{SUFFIX[dtype]}<{block}, {d}>",
        f"metric_attention_bwd_{SUFFIX[dtype]}<{block}, {d}>",
    ]
    tol = OP_TOL[dtype]
    assert _rel(out, ref.detach()) < tol
    assert pg.grad.dtype == dtype and _rel(pg.grad, want_dp) < tol
    assert mg.grad.dtype == dtype and _rel(mg.grad, want_dm) < tol


def test_the_cuda_op_with_a_block_128_mask(emu_op):
    """A mask of block 128: the forward at B = 128, the backward as two thread blocks of 64 keys
    per key block, through the op's autograd."""
    metric_cuda, launcher = emu_op
    rng = np.random.default_rng(128)
    n, k = 150, 16
    masks = rng.random((1, n, n)) < 0.4
    mask = SparseMask.from_masks(masks, block=128, permute=rng.permutation(n))
    p = torch.from_numpy(rng.standard_normal((1, 2, n, k))).float()
    m = torch.from_numpy(rng.standard_normal((2, packed_size(k))) / 4).float()
    dout = torch.from_numpy(rng.standard_normal((1, 2, n, k))).float()
    p64, m64 = p.double().requires_grad_(), m.double().requires_grad_()
    ref = metric_attention_reference(p64, m64, True, mask, 0.3)
    want_dp, want_dm = torch.autograd.grad(ref, (p64, m64), dout.double())
    pg, mg = p.clone().requires_grad_(), m.clone().requires_grad_()
    out = metric_cuda.metric_attention_cuda(pg, mg, True, mask, 0.3)
    out.backward(dout)
    assert launcher.launches[-2:] == [
        "metric_attention_fwd_f32<128, 16>",
        "metric_attention_bwd_f32<128, 16>",
    ]
    assert _rel(out, ref.detach()) < 1e-5
    assert _rel(pg.grad, want_dp) < 1e-5 and _rel(mg.grad, want_dm) < 1e-5


def test_the_cuda_op_takes_non_contiguous_inputs(emu_op):
    metric_cuda, _ = emu_op
    rng = np.random.default_rng(11)
    p_bnhk = torch.from_numpy(rng.standard_normal((2, 30, 2, 16))).float()
    p = p_bnhk.transpose(1, 2)  # (b, h, n, k) view, not contiguous
    m = torch.from_numpy(rng.standard_normal((packed_size(16), 2))).float().T  # (h, L) view
    assert not p.is_contiguous() and not m.is_contiguous()
    ref = metric_attention_reference(p.double(), m.double(), True, None, 0.25)
    assert _rel(metric_cuda.metric_attention_cuda(p, m, True, None, 0.25), ref) < 1e-5


def test_the_cuda_ops_pass_opcheck_and_compile_without_graph_breaks(emu_op):
    """torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch) on the
    forward op with a mask, and torch.compile(fullgraph=True) of forward + backward."""
    metric_cuda, launcher = emu_op
    rng = np.random.default_rng(2)
    n, k = 20, 16
    mask = SparseMask.from_masks(rng.random((1, n, n)) < 0.5, block=16, permute=rng.permutation(n))
    p = torch.from_numpy(rng.standard_normal((1, 2, n, k))).float().requires_grad_()
    m = torch.from_numpy(rng.standard_normal((2, packed_size(k))) / 4).float().requires_grad_()
    csr = (mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.bits_pbw, mask.perm_hn,
           mask.q_indptr, mask.q_indices, mask.q_slots)  # fmt: skip
    monkey_poison = metric_cuda.poison_outputs
    metric_cuda.poison_outputs = False  # opcheck compares runs; NaN in the unused lse of
    try:  # empty rows would be −inf either way, never NaN, but keep the runs identical
        torch.library.opcheck(metric_cuda._fwd, (p, m, *csr, True, 0.3, 16))
    finally:
        metric_cuda.poison_outputs = monkey_poison

    def step(p, m):  # what gpu.metric_attention does after its checks, on a CUDA tensor
        if metric_cuda.unsupported_reason(p, mask, needs_grad=True) is None:
            return (metric_cuda.metric_attention_cuda(p, m, True, mask, 0.3) ** 2).sum()
        return (metric_attention_reference(p, m, True, mask, 0.3) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(p, m)
    got_dp, got_dm = torch.autograd.grad(got, (p, m))
    want = step(p, m)
    want_dp, want_dm = torch.autograd.grad(want, (p, m))
    assert "metric_attention_bwd_f32<16, 16>" in launcher.launches
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_dp, want_dp)
    torch.testing.assert_close(got_dm, want_dm)


def test_unsupported_calls_are_named(emu_op):
    metric_cuda, launcher = emu_op
    p = torch.zeros(1, 1, 4, 16)
    assert metric_cuda.unsupported_reason(p, None, True) is None
    assert "float64" in metric_cuda.unsupported_reason(p.double(), None, False)
    assert "k=130" in metric_cuda.unsupported_reason(torch.zeros(1, 1, 4, 130), None, False)
    mask = SparseMask.from_masks(np.ones((1, 4, 4), dtype=bool), block=128)
    assert metric_cuda.unsupported_reason(p, mask, True) is None
    big = torch.zeros(1, 1, 4, 128, dtype=torch.float16)
    assert metric_cuda.unsupported_reason(big, mask, False) is None  # 200 KB: fits an H100/H200
    launcher.shared_limit = 163 * 1024  # an A100's opt-in limit
    assert "needs 204800 bytes of shared memory" in metric_cuda.unsupported_reason(big, mask, False)
    with pytest.raises(ValueError, match="must be contiguous"):
        metric_cuda._fwd(p.mT.contiguous().mT, torch.zeros(1, 136), *(None,) * 8, True, 1.0, 16)
    with pytest.raises(ValueError, match="m_packed must have shape"):
        metric_cuda._fwd(p, torch.zeros(1, 10), *(None,) * 8, True, 1.0, 16)
