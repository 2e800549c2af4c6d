"""gpu.sparse_attention and its torch reference against a dense float64 oracle written plainly
(masked softmax over a dense boolean mask), for outputs, logsumexp and gradients; torch's
gradcheck; empty rows; heads mode; the permutation applied and undone; every input check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import flowgraph as fg
from flowgraph import gpu
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import sparse_attention_reference


def oracle(q, k, v, allowed_hqk, scale=None):
    """Dense masked softmax in float64; a query with no allowed key gets zeros."""
    q, k, v = (x.double() for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = torch.as_tensor(allowed_hqk)[None]  # (1, H, n, n); H = 1 broadcasts over heads
    empty = ~allowed.any(-1, keepdim=True)
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(~allowed, -math.inf).masked_fill(empty, 0.0)  # finite rows: no NaN grads
    w = torch.softmax(s, dim=-1).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty[..., 0], -math.inf)
    return w @ v, lse


def qkv(b, h, n, d, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
        .to(dtype)
        .requires_grad_(requires_grad)
        for _ in range(3)
    ]


def grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, upstream)


@st.composite
def cases(draw):
    block = draw(st.sampled_from([16, 32, 64]))
    n = draw(st.integers(1, 2 * block + 5))
    b, h, d = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 8))
    mask_heads = draw(st.sampled_from([1, h]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    masks = rng.random((mask_heads, n, n)) < density
    masks[:, rng.random(n) < 0.15] = False  # empty query rows
    if draw(st.booleans()):
        masks |= np.tril(np.ones((n, n), dtype=bool)) & (rng.random((n, n)) < 0.5)
    permute = rng.permutation(n) if draw(st.booleans()) else None
    scale = draw(st.sampled_from([None, 0.3, -1.7]))
    return (b, h, n, d), masks, block, permute, scale, int(rng.integers(2**31))


@settings(max_examples=40, deadline=None)
@given(cases())
def test_reference_matches_the_dense_oracle(case):
    shape, masks, block, permute, scale, seed = case
    mask = SparseMask.from_masks(masks, block=block, permute=permute)
    q, k, v = qkv(*shape, seed=seed, requires_grad=True)
    out, lse = sparse_attention_reference(q, k, v, mask, scale, return_lse=True)
    want, want_lse = oracle(q, k, v, masks, scale)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    for got, exp in zip(grads(out, (q, k, v)), grads(want, (q, k, v)), strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    assert not out.isnan().any()


def test_gradcheck_in_float64():
    n = 19  # two query blocks of 16, the second mostly past n
    rng = np.random.default_rng(3)
    masks = rng.random((2, n, n)) < 0.4
    masks[:, 5] = False  # an empty row
    masks[0, :16, :16] = True  # a full tile beside partial ones
    mask = SparseMask.from_masks(masks, block=16, permute=rng.permutation(n))
    q, k, v = qkv(1, 2, n, 3, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: sparse_attention_reference(q, k, v, mask, 0.7), (q, k, v), fast_mode=True
    )
    full_rows = SparseMask.from_masks(masks | np.eye(n, dtype=bool), block=16)
    assert torch.autograd.gradcheck(
        lambda q, k, v: sparse_attention_reference(q, k, v, full_rows, return_lse=True)[1],
        (q, k, v),
        fast_mode=True,
    )


def test_empty_rows_give_zeros_and_zero_gradients():
    n = 40
    masks = np.tril(np.ones((1, n, n), dtype=bool))
    empty = [0, 7, 33]
    masks[:, empty] = False
    mask = SparseMask.from_masks(masks, block=16)
    q, k, v = qkv(2, 3, n, 4, requires_grad=True)
    out, lse = sparse_attention_reference(q, k, v, mask, return_lse=True)
    assert (out[:, :, empty] == 0).all() and torch.isneginf(lse[:, :, empty]).all()
    dq, dk, dv = grads(out, (q, k, v))
    assert (dq[:, :, empty] == 0).all()
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    # keys only the empty queries could see (none here beyond k ≤ q) get no gradient from them
    nothing = SparseMask.from_masks(np.zeros((1, n, n), dtype=bool), block=32)
    out = sparse_attention_reference(q, k, v, nothing)
    assert (out == 0).all()
    assert all((g == 0).all() for g in grads(out, (q, k, v)))


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]
)
def test_lower_precision_dtypes(dtype, tol):
    p = fg.strided(70, stride=8)
    mask = SparseMask.from_pattern(p, 1, block=32, permute="auto")
    q, k, v = qkv(2, 2, 70, 16, dtype=dtype)
    out = gpu.sparse_attention(q, k, v, mask)
    assert out.dtype == dtype
    want, _ = oracle(q, k, v, p.dense(1)[None])  # the oracle sees the same rounded inputs
    assert ((out.double() - want).norm() / want.norm()).item() < tol


def test_heads_mode_and_auto_permutation_against_the_oracle():
    p = fg.strided(96, stride=8)
    masks = np.stack([p.dense(h % 2) for h in range(4)])
    q, k, v = qkv(2, 4, 96, 8, requires_grad=True)
    plain = SparseMask.from_pattern(p, heads=4, mode="heads", block=16)
    moved = SparseMask.from_pattern(p, heads=4, mode="heads", block=16, permute="auto")
    assert moved.permuted and moved.density().block < plain.density().block
    want, _ = oracle(q, k, v, masks)
    want_grads = grads(want, (q, k, v))
    for mask in (plain, moved):
        out = gpu.sparse_attention(q, k, v, mask)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
        for got, exp in zip(grads(out, (q, k, v)), want_grads, strict=True):
            torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)


def test_permutation_is_applied_and_undone():
    """The kernel order differs from the token order; results come back in token order."""
    n = 64
    p = fg.strided(n, stride=8)
    mask = SparseMask.from_pattern(p, 1, block=16, permute="auto")
    perm = mask.perm_hn[0].long()
    q, k, v = qkv(1, 1, n, 8)
    out = gpu.sparse_attention(q, k, v, mask)
    # the same attention computed in the stored order, with the stored-order mask, un-permuted
    stored = SparseMask.from_masks(mask.to_dense(stored_order=True), block=16)
    inner = gpu.sparse_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], stored)
    back = torch.empty_like(inner)
    back[:, :, perm] = inner
    torch.testing.assert_close(out, back, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, inner)  # the permutation matters


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_follows_the_tiles_not_n_squared():
    b, h, n, d = 1, 2, 384, 4
    mask = SparseMask.from_pattern(fg.local(n, window=16), block=16)
    q, k, v = qkv(b, h, n, d, dtype=torch.float32, requires_grad=True)
    with _LargestTensor() as seen:
        out = sparse_attention_reference(q, k, v, mask)
        out.sum().backward()
    assert seen.largest <= b * h * n * d * 4  # (b, h, n, n) would hold 24× this


def test_sparse_attention_runs_the_reference_on_cpu():
    mask = SparseMask.from_pattern(fg.fixed(50, stride=5), mode="merged", block=16)
    q, k, v = qkv(1, 2, 50, 8)
    assert gpu.backend_for(q) == "torch"
    assert gpu.sparse_attention(q, k, v, mask, 0.5).equal(
        sparse_attention_reference(q, k, v, mask, 0.5)
    )


class _FakeCuda(torch.Tensor):
    @property
    def is_cuda(self):
        return True


def test_backend_for_needs_cuda_cupy_and_the_kernels(monkeypatch):
    import importlib.util

    cpu = torch.zeros(1, 1, 1, 1)
    cuda = cpu.as_subclass(_FakeCuda)
    real_find_spec = importlib.util.find_spec
    present = {"flowgraph.gpu._cupy": False, "cupy": False}

    def find_spec(name, *args):
        if name in present:
            return object() if present[name] else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert gpu.backend_for(cuda) == "torch"  # no kernels yet
    present["flowgraph.gpu._cupy"] = True
    assert gpu.backend_for(cuda) == "torch"  # no cupy
    present["cupy"] = True
    assert gpu.backend_for(cuda) == "cupy"
    assert gpu.backend_for(cpu) == "torch"
    with pytest.raises(TypeError, match=r"q_bhnd must be a torch\.Tensor, got ndarray"):
        gpu.backend_for(np.zeros((1, 1, 1, 1)))


def test_nothing_imports_cupy():
    import sys

    mask = SparseMask.from_masks(np.ones((1, 4, 4), dtype=bool), block=16)
    gpu.sparse_attention(*qkv(1, 1, 4, 2), mask)
    assert "cupy" not in sys.modules


# --- input checks -------------------------------------------------------------------------------
MASK = SparseMask.from_masks(np.ones((2, 8, 8), dtype=bool), block=16)
Q = torch.zeros(1, 2, 8, 4)


def _call(q=Q, k=Q, v=Q, mask=MASK, scale=None):
    return lambda: gpu.sparse_attention(q, k, v, mask, scale)


ERRORS = [
    (_call(q=Q.numpy()), TypeError, r"q_bhnd must be a torch\.Tensor, got ndarray"),
    (_call(q=Q[0]), ValueError, r"q_bhnd must be 4-D \(b, h, n, d\), got shape \(2, 8, 4\)"),
    (_call(q=Q.int()), TypeError, r"q_bhnd must be float16, bfloat16, float32 or float64.*int32"),
    (_call(q=Q[:, :, :, :0]), ValueError, r"no empty dimension.*\(1, 2, 8, 0\)"),
    (_call(k=Q[:, :, :7]), ValueError, r"k_bhnd must have the shape of q_bhnd.*\(1, 2, 7, 4\)"),
    (_call(v=torch.zeros(1, 2, 8, 5)), ValueError, r"v_bhnd.*\(1, 2, 8, 4\).*\(1, 2, 8, 5\)"),
    (_call(v=Q.double()), TypeError, r"v_bhnd must have the dtype of q_bhnd.*float64"),
    (_call(k=Q.long()), TypeError, r"k_bhnd must be float16.*int64"),
    (_call(k=Q.to("meta")), ValueError, r"q_bhnd and k_bhnd on one device, got cpu and meta"),
    (_call(mask=np.ones((2, 8, 8), bool)), TypeError, r"mask must be a gpu\.SparseMask.*ndarray"),
    (_call(q=torch.zeros(1, 3, 8, 4), k=torch.zeros(1, 3, 8, 4), v=torch.zeros(1, 3, 8, 4)),
     ValueError, r"mask has heads=2, expected 1 or the heads of q_bhnd, h=3"),
    (_call(mask=SparseMask.from_masks(np.ones((1, 9, 9), bool), block=16)),
     ValueError, r"mask has n=9, expected the n of q_bhnd, n=8"),
    (_call(mask=MASK.to("meta")), ValueError, r"q_bhnd and mask on one device.*mask\.to"),
    (_call(scale="1"), TypeError, r"scale must be a real number or None, got '1'"),
    (_call(scale=True), TypeError, r"scale.*True"),
    (_call(scale=math.inf), ValueError, r"scale must be finite, got scale=inf"),
    (_call(scale=math.nan), ValueError, r"scale=nan"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_input_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_reference_checks_its_inputs_too():
    with pytest.raises(ValueError, match=r"mask has n=8, expected the n of q_bhnd, n=5"):
        sparse_attention_reference(*(torch.zeros(1, 2, 5, 2) for _ in range(3)), MASK)


def test_non_contiguous_inputs():
    """The promise: a non-contiguous input is computed as its contiguous copy (one path, so bit
    for bit), and both agree with the float64 oracle."""
    mask = SparseMask.from_pattern(fg.local(48, window=5), block=16)  # n a multiple of the block
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(2, 3, 48, 4))
    assert not q.is_contiguous()
    want = gpu.sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), mask)
    assert gpu.sparse_attention(q, k, v, mask).equal(want)
    strided = [x[..., ::2] for x in (q, k, v)]
    got = gpu.sparse_attention(*strided, mask)
    assert got.equal(gpu.sparse_attention(*(x.contiguous() for x in strided), mask))
    want_oracle, _ = oracle(*strided, fg.local(48, window=5).dense()[None])
    torch.testing.assert_close(got, want_oracle.to(got.dtype), rtol=1e-9, atol=1e-12)
