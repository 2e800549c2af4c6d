"""gpu/kernels/metric_attention.cu, the fp32 forward and backward, run on the CPU emulator
(tests/cuda_emu) on small shapes — blocks 16–128, head dims 16–128, causal and not, n not a
multiple of the block, one and several heads with different metrics, random, permuted, strided
and empty SparseMasks — under two fiber schedules: the forward against
gpu.metric_attention_reference (‖out − ref‖/‖ref‖ < 1e-5, the sparse kernel's fp32 bound) and the
logsumexp against a dense float64 one; the backward, finished as the launcher will (dp = dq·M +
dkv, dM = pᵀ·dq packed), against float64 autograd of the reference. Mutations of the metric
index, the token-based causal test, the key path of dS and the barrier before the dq step each
fail them (checked by hand). Also the launch configuration helpers."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
from cuda_emu import KERNELS, load

import flowgraph as fg
from gpu.kernels import (
    NAME_EXPRESSIONS,
    metric_attention_bwd_config,
    metric_attention_fwd_config,
)
from gpu.mask import SparseMask
from gpu.metric import metric_attention_reference, packed_size, unpack_symmetric

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and os.environ.get("CI") != "true",
    reason="no C++ compiler on PATH (with CI=true these tests run and fail instead)",
)
i32 = np.int32


@pytest.fixture(scope="module")
def metric():
    # every instantiation: the same build test_kernels_compile's emulator test makes (cached)
    return load(KERNELS / "metric_attention.cu", NAME_EXPRESSIONS["metric_attention.cu"])


def _per_head(x: torch.Tensor, index_hn: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.gather(2, index_hn.long()[None, :, :, None].expand(b, h, n, d))


def emulated_forward(module, p_bhnk, m_packed_hl, causal, scale, block, mask=None, seed=0):
    """What the CuPy launcher will do, with the emulator in place of the GPU: permute p into the
    mask's stored order, launch on poisoned outputs, un-permute. Returns (out, lse)."""
    b, h, n, k = p_bhnk.shape
    p = p_bhnk if mask is None or mask.perm_hn is None else _per_head(p_bhnk, mask.perm_hn)
    p = p.float().contiguous()
    m = m_packed_hl.float().contiguous()
    out = torch.full_like(p, float("nan"))
    lse = torch.full((b, h, n), float("nan"))
    threads, shared = metric_attention_fwd_config(block, k)
    kernel = module.get_function(f"metric_attention_fwd_f32<{block}, {k}>")
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


def dense_lse(p_bhnk, m_packed_hl, causal, scale, masks_hqk=None):
    p = p_bhnk.double()
    n = p.shape[2]
    r = scale * torch.einsum("bhck,hkj,bhdj->bhcd", p, unpack_symmetric(m_packed_hl.double()), p)
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


def emulated_backward(module, p_bhnk, m_packed_hl, dout, causal, scale, block, mask=None, seed=0):
    """What the launcher's backward will do: the forward for out and lse, delta = rowsum(dout ∘
    out), q = p·M, everything into the stored order, the kernel on poisoned dkv and zeroed dq,
    back to token order, then dp = dq·M + dkv and the packed dM = pᵀ·dq (both halves off the
    diagonal). Returns (dp, dm_packed)."""
    b, h, n, k = p_bhnk.shape
    out, lse = emulated_forward(module, p_bhnk, m_packed_hl, causal, scale, block, mask, seed)
    m_hkk = unpack_symmetric(m_packed_hl.float())
    delta = (dout.float() * out).sum(-1)
    q = p_bhnk.float() @ m_hkk
    xs = [p_bhnk.float(), q, dout.float(), lse[..., None], delta[..., None]]
    if mask is not None and mask.perm_hn is not None:
        xs = [_per_head(x, mask.perm_hn) for x in xs]
    p, q, do, lse_s, delta_s = (x.contiguous() for x in xs)
    dkv = torch.full_like(p, float("nan"))
    dq = torch.zeros_like(p)
    threads, shared = metric_attention_bwd_config(block, k)
    kernel = module.get_function(f"metric_attention_bwd_f32<{block}, {k}>")
    csr = (None,) * 5
    if mask is not None:
        csr = (mask.q_indptr, mask.q_indices, mask.q_slots, mask.bits_pbw, mask.perm_hn)
    mask_heads = 1 if mask is None else mask.heads
    args = (p, q, do, lse_s[..., 0].contiguous(), delta_s[..., 0].contiguous(), *csr, dkv, dq)
    args += (i32(n), i32(h), i32(mask_heads), i32(int(causal)), np.float32(scale))
    kernel((-(-n // block), b * h), (threads,), args, shared_mem=shared, seed=seed)
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


def test_config():
    assert metric_attention_fwd_config(64, 128) == (512, 4 * (2 * 64 * 129 + 64 * 65))
    assert metric_attention_bwd_config(64, 128) == (512, 4 * (3 * 64 * 129 + 2 * 64 * 65 + 128))
    with pytest.raises(ValueError, match="block in"):
        metric_attention_bwd_config(128, 16)
    with pytest.raises(ValueError, match="head_dim in"):
        metric_attention_fwd_config(64, 24)
    with pytest.raises(ValueError, match="block in"):
        metric_attention_fwd_config(48, 64)
