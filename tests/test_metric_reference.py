"""gpu.metric: metric tensor attention and quadratic attention against a dense float64 oracle
written plainly (the full scores p·M·pᵀ by einsum, a dense causal AND SparseMask mask, softmax,
autograd), with off-diagonal metric entries present; gradcheck; the packing order and its round
trip; the seed's packed formula shown wrong off the diagonal; the dM = pᵀ·dq accumulation the
kernel backward will use; empty rows; every input check."""

from __future__ import annotations

import doctest
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.metric import (
    metric_attention,
    metric_attention_reference,
    pack_index,
    pack_symmetric,
    packed_size,
    quadratic_attention_reference,
    unpack_symmetric,
)


# --- oracles ------------------------------------------------------------------------------------
def plain_unpack(m_packed_hl: torch.Tensor, k: int) -> torch.Tensor:
    """The packing order written out with loops: (0,0), (0,1), …, (0,k−1), (1,1), …."""
    rows = []
    for i in range(k):
        row = []
        for j in range(k):
            a, c = min(i, j), max(i, j)
            row.append(m_packed_hl[..., a * k - a * (a - 1) // 2 + (c - a)])
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)


def dense_allowed(n: int, causal: bool, masks_hqk: np.ndarray | None) -> torch.Tensor:
    allowed = torch.ones(1, n, n, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    if masks_hqk is not None:
        allowed = allowed & torch.as_tensor(masks_hqk)
    return allowed  # (H, n, n), H = 1 broadcasts over heads


def oracle(p_bhnk, m_packed_hl, causal=True, masks_hqk=None, scale=None):
    """Materialised scores r = scale·p·M·pᵀ (einsum), masked softmax, t = s·p; float64."""
    p = p_bhnk.double()
    k, n = p.shape[-1], p.shape[-2]
    m_hkk = plain_unpack(m_packed_hl.double(), k)
    scale = 1 / math.sqrt(k) if scale is None else scale
    r = scale * torch.einsum("bhck,hkj,bhdj->bhcd", p, m_hkk, p)
    allowed = dense_allowed(n, causal, masks_hqk)[None]
    empty = ~allowed.any(-1, keepdim=True)
    r = r.masked_fill(~allowed, -math.inf).masked_fill(empty, 0.0)  # finite rows: no NaN grads
    return torch.softmax(r, -1).masked_fill(empty, 0.0) @ p


def inputs(b, h, n, k, dtype=torch.float64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, h, n, k, generator=g, dtype=torch.float64)
    m = torch.randn(h, packed_size(k), generator=g, dtype=torch.float64)  # off-diagonals ≠ 0
    return p.to(dtype).requires_grad_(requires_grad), m.to(dtype).requires_grad_(requires_grad)


def grads(out, leaves, seed=1):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, leaves, upstream)


# --- packing ------------------------------------------------------------------------------------
def test_packing_order_is_row_major_upper_triangle():
    m = torch.arange(16.0).reshape(4, 4)
    m = m.triu() + m.triu(1).mT  # M[i, j] = M[j, i] = 4·min + max
    assert pack_symmetric(m).tolist() == [0, 1, 2, 3, 5, 6, 7, 10, 11, 15]
    assert pack_index(3).tolist() == [[0, 1, 2], [1, 3, 4], [2, 4, 5]]
    packed = torch.randn(2, 3, 10, dtype=torch.float64)
    assert torch.equal(unpack_symmetric(packed), plain_unpack(packed, 4))


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 9),
    batch=st.lists(st.integers(1, 3), max_size=2),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_pack_unpack_round_trip(k, batch, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    packed = torch.randn(*batch, packed_size(k), generator=g).to(dtype)
    m = unpack_symmetric(packed)
    assert m.shape == (*batch, k, k) and torch.equal(m, m.mT)
    assert torch.equal(pack_symmetric(m), packed)
    assert torch.equal(unpack_symmetric(packed, k), m)
    a = torch.randn(*batch, k, k, generator=g).to(dtype)
    sym = (a + a.mT) / 2
    assert torch.equal(unpack_symmetric(pack_symmetric(sym)), sym)


def test_unpack_gradient_gives_each_off_diagonal_entry_both_halves():
    k = 4
    packed = torch.randn(2, packed_size(k), dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, k, k, dtype=torch.float64)  # not symmetric
    (got,) = torch.autograd.grad(unpack_symmetric(packed), packed, upstream)
    i, j = torch.triu_indices(k, k)
    want = torch.where(i == j, upstream[:, i, j], upstream[:, i, j] + upstream[:, j, i])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(unpack_symmetric, (packed,))


def test_pack_errors():
    with pytest.raises(ValueError, match=r"m_hkk must be symmetric, got max\|m_hkk − m_hkkᵀ\| = 1"):
        pack_symmetric(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"m_hkk must be symmetric.*nan"):
        pack_symmetric(torch.tensor([[1.0, math.nan], [math.nan, 4.0]]))
    pack_symmetric(torch.tensor([[1.0, 2.0], [2.0 + 1e-7, 4.0]]), atol=1e-6)  # within atol
    with pytest.raises(ValueError, match=r"m_hkk must be \(\.\.\., k, k\).*\(2, 3\)"):
        pack_symmetric(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"m_hkk must be \(\.\.\., k, k\).*\(3,\)"):
        pack_symmetric(torch.zeros(3))
    with pytest.raises(TypeError, match=r"m_hkk must be a torch.Tensor, got list"):
        pack_symmetric([[1.0]])
    with pytest.raises(TypeError, match=r"m_hkk must be a floating point tensor, got dtype"):
        pack_symmetric(torch.eye(2, dtype=torch.int64))


def test_unpack_errors():
    with pytest.raises(ValueError, match=r"L=4 entries.*not k\(k\+1\)/2"):
        unpack_symmetric(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"L=0 entries"):
        unpack_symmetric(torch.zeros(2, 0))
    with pytest.raises(ValueError, match=r"L=6 entries, expected k\(k\+1\)/2=10 for k=4"):
        unpack_symmetric(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=r"k must be None or an int ≥ 1, got k=0"):
        unpack_symmetric(torch.zeros(6), 0)
    with pytest.raises(ValueError, match=r"k must be None or an int ≥ 1, got k=2.0"):
        unpack_symmetric(torch.zeros(3), 2.0)
    with pytest.raises(ValueError, match=r"at least one dimension"):
        unpack_symmetric(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"m_packed_hl must be a torch.Tensor, got ndarray"):
        unpack_symmetric(np.zeros(3))


# --- the seed's packed formula ------------------------------------------------------------------
def seed_packed_scores(p_nk: np.ndarray, m_packed_l: np.ndarray) -> np.ndarray:
    """The seed's kernel (q_bnul, then summed over l), literally: for u = (c, c') with c ≤ c' and
    l = (k, k') with k ≤ k', the term M_l·p[c,k] times p[c,k] (k = k', c = c'), 2·p[c',k] (k = k',
    c ≠ c'), 2·p[c,k'] (k ≠ k', c = c') or 4·p[c',k'] (k ≠ k', c ≠ c'); r[c', c] = r[c, c']."""
    n, k = p_nk.shape
    ls, us = np.triu_indices(k), np.triu_indices(n)
    r = np.zeros((n, n))
    for c, c1 in zip(*us, strict=True):
        total = 0.0
        for l_, (kk, k1) in enumerate(zip(*ls, strict=True)):
            term = m_packed_l[l_] * p_nk[c, kk]
            if kk == k1 and c == c1:
                term *= p_nk[c, kk]
            elif kk == k1:
                term *= 2 * p_nk[c1, kk]
            elif c == c1:
                term *= 2 * p_nk[c, k1]
            else:
                term *= 4 * p_nk[c1, k1]
            total += term
        r[c, c1] = r[c1, c] = total
    return r


def test_seed_packed_formula_is_wrong_off_the_diagonal():
    rng = np.random.default_rng(0)
    n, k = 5, 4
    p = rng.standard_normal((n, k))
    m_packed = rng.standard_normal(packed_size(k))
    m = unpack_symmetric(torch.from_numpy(m_packed)).numpy()
    right = p @ m @ p.T
    # the correct packed cross terms: Σₖ M_kk p_ck p_c'k + Σ_{k<k'} M_kk'(p_ck p_c'k' + p_ck' p_c'k)
    cross = np.zeros((n, n))
    for l_, (i, j) in enumerate(zip(*np.triu_indices(k), strict=True)):
        both = np.outer(p[:, i], p[:, j]) + (np.outer(p[:, j], p[:, i]) if i != j else 0)
        cross += m_packed[l_] * both
    np.testing.assert_allclose(cross, right, rtol=1e-12, atol=1e-12)

    seed = seed_packed_scores(p, m_packed)
    diagonal = np.eye(n, dtype=bool)
    np.testing.assert_allclose(seed[diagonal], right[diagonal], rtol=1e-12)  # c = c' is right
    off = np.abs(seed - right)[~diagonal]
    assert off.min() > 1e-3, off  # every c ≠ c' score is wrong
    # and our reference reproduces the right scores: one key, M = the packed metric
    p_t = torch.from_numpy(p)[None, None]
    assert torch.allclose(plain_unpack(torch.from_numpy(m_packed), k), torch.from_numpy(m))
    t = metric_attention_reference(p_t, torch.from_numpy(m_packed)[None], causal=False, scale=1.0)
    w = np.exp(right - right.max(-1, keepdims=True))
    np.testing.assert_allclose(t[0, 0].numpy(), (w / w.sum(-1, keepdims=True)) @ p, rtol=1e-10)


# --- metric attention against the oracle ---------------------------------------------------------
@st.composite
def cases(draw):
    n = draw(st.integers(1, 150))  # > 2 query blocks of the dense path
    b, h, k = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 8))
    causal = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = None
    if draw(st.booleans()) and n <= 80:
        heads = draw(st.sampled_from([1, h]))
        masks = rng.random((heads, n, n)) < draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
        masks[:, rng.random(n) < 0.15] = False  # empty rows
    permute = rng.permutation(n) if masks is not None and draw(st.booleans()) else None
    scale = draw(st.sampled_from([None, 0.3, -1.1]))
    block = draw(st.sampled_from([16, 32]))
    return (b, h, n, k), causal, masks, permute, block, scale, int(rng.integers(2**31))


@settings(max_examples=40, deadline=None)
@given(cases())
def test_reference_matches_the_einsum_oracle(case):
    shape, causal, masks, permute, block, scale, seed = case
    mask = None if masks is None else SparseMask.from_masks(masks, block=block, permute=permute)
    p, m = inputs(*shape, seed=seed)
    out = metric_attention(p, m, causal=causal, mask=mask, scale=scale)
    want = oracle(p, m, causal, masks, scale)
    torch.testing.assert_close(out, want, rtol=1e-11, atol=1e-12)
    for got, exp in zip(grads(out, (p, m)), grads(want, (p, m)), strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-11)
    assert not out.isnan().any()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_in_float64(causal, with_mask):
    n = 7
    rng = np.random.default_rng(5)
    masks = rng.random((2, n, n)) < 0.5
    masks[:, 3] = False  # an empty row
    mask = SparseMask.from_masks(masks, block=16, permute=rng.permutation(n)) if with_mask else None
    p, m = inputs(1, 2, n, 3)
    assert torch.autograd.gradcheck(
        lambda p, m: metric_attention_reference(p, m, causal, mask, 0.8), (p, m), fast_mode=True
    )


def test_causal_and_sparse_mask_combine_as_and():
    n = 50
    pattern = fg.strided(n, stride=7)
    mask = SparseMask.from_pattern(pattern, heads=2, mode="heads", block=16, permute="auto")
    assert mask.permuted
    bidirectional = np.ones((2, n, n), dtype=bool)
    bidirectional[:, ::3] = np.triu(np.ones((n, n), dtype=bool))[::3]  # non-causal rows
    both = SparseMask.from_masks(bidirectional, block=16)
    p, m = inputs(2, 2, n, 5, seed=4)
    for masks, sm in ((mask.to_dense().numpy(), mask), (bidirectional, both)):
        for causal in (True, False):
            out = metric_attention(p, m, causal=causal, mask=sm)
            torch.testing.assert_close(out, oracle(p, m, causal, masks), rtol=1e-11, atol=1e-12)
    # the causal AND empties query rows whose only keys lie in the future
    future = np.zeros((1, n, n), dtype=bool)
    future[0, np.arange(n - 1), np.arange(1, n)] = True  # q attends q + 1 only
    out = metric_attention(p, m, causal=True, mask=SparseMask.from_masks(future, block=32))
    assert (out == 0).all()
    assert all((g == 0).all() for g in grads(out, (p, m)))


def test_empty_rows_give_zeros_and_zero_gradients():
    n = 40
    masks = np.tril(np.ones((1, n, n), dtype=bool))
    empty = [0, 7, 33]
    masks[:, empty] = False
    p, m = inputs(2, 3, n, 4)
    out = metric_attention(p, m, mask=SparseMask.from_masks(masks, block=16))
    assert (out[:, :, empty] == 0).all() and torch.isfinite(out).all()
    dp, dm = torch.autograd.grad(out, (p, m), torch.randn_like(out), retain_graph=True)
    assert torch.isfinite(dp).all() and torch.isfinite(dm).all()
    # an empty row passes no gradient back through its query: only key/value paths reach p[empty]
    only_empty = torch.zeros_like(out)
    only_empty[:, :, empty] = 1.0
    dp, dm = torch.autograd.grad(out, (p, m), only_empty)
    assert (dp == 0).all() and (dm == 0).all()
    nothing = SparseMask.from_masks(np.zeros((1, n, n), dtype=bool), block=32)
    out = metric_attention(p, m, causal=False, mask=nothing)
    assert (out == 0).all() and all((g == 0).all() for g in grads(out, (p, m)))


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]
)
@pytest.mark.parametrize("with_mask", [False, True])
def test_lower_precision_dtypes(dtype, tol, with_mask):
    n = 70
    pattern = fg.strided(n, stride=8)
    mask = SparseMask.from_pattern(pattern, 1, block=32, permute="auto") if with_mask else None
    p, m = inputs(2, 2, n, 16, dtype=dtype, requires_grad=False)
    m = m / 4  # moderate scores, so the rounding of p is what the tolerance measures
    out = metric_attention(p, m, mask=mask)
    assert out.dtype == dtype
    want = oracle(p, m, True, pattern.dense(1)[None] if with_mask else None)
    assert ((out.double() - want).norm() / want.norm()).item() < tol


@pytest.mark.parametrize("causal", [True, False])
def test_the_unmasked_fast_path_matches_the_oracle(causal, monkeypatch):
    """Below float64 and without a mask, metric_attention calls SDPA with q = p·M, k = v = p."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda *a, **kw: calls.append(kw) or sdpa(*a, **kw),
    )
    p, m = inputs(2, 3, 100, 8, dtype=torch.float32, seed=6)
    out = metric_attention(p, m, causal=causal, scale=0.3)
    assert calls == [{"is_causal": causal, "scale": 0.3}]
    want = oracle(p, m, causal, scale=0.3)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    for got, exp in zip(grads(out, (p, m)), grads(want, (p, m)), strict=True):
        torch.testing.assert_close(got.double(), exp.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("function", "masked"),
    [(metric_attention_reference, False), (metric_attention, False), (metric_attention, True)],
)
def test_memory_stays_below_the_scores(function, masked):
    """No tensor of the computation reaches (b, h, n, n): in the reference without a mask the
    scores of one query block of 64 at a time, (b, h, 64, n); with a causal strided mask one block
    row of tiles; the SDPA path of the entry point none either."""
    n = 1024
    p, m = inputs(1, 1, n, 4, dtype=torch.float32, requires_grad=False)
    mask = None
    if masked:
        pattern = fg.strided(n, stride=32)
        mask = SparseMask.from_pattern(pattern, mode="merged", block=64, permute="auto")
    biggest = 0

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal biggest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    biggest = max(biggest, t.numel())
            return out

    with Watch():
        out = function(p, m, causal=True, mask=mask)
    assert biggest <= 64 * n < n * n
    if masked:  # and it is still right
        want = oracle(p, m, True, pattern.merged().dense(0)[None])
        assert ((out.double() - want).norm() / want.norm()).item() < 1e-5


# --- the backward the kernel will implement ----------------------------------------------------
def test_three_gradient_paths_and_the_packed_dm_accumulation():
    """dp = dq·M + dk + dv (query through M, key, value), dM = Σ pᵀ·dq symmetrised and packed so
    each off-diagonal entry gets both halves — the recipe docs/gpu.md gives the kernel backward."""
    b, h, n, k = 2, 2, 30, 5
    p, m = inputs(b, h, n, k, seed=9)
    scale = 1 / math.sqrt(k)
    out = metric_attention(p, m, causal=True)
    upstream = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    dp, dm = torch.autograd.grad(out, (p, m), upstream)

    m_hkk = plain_unpack(m.detach(), k)
    pd = p.detach()
    q = torch.einsum("bhnk,hkj->bhnj", pd, m_hkk).requires_grad_()
    key, value = pd.clone().requires_grad_(), pd.clone().requires_grad_()
    s = scale * q @ key.mT
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    dq, dk, dv = torch.autograd.grad(torch.softmax(s, -1) @ value, (q, key, value), upstream)
    torch.testing.assert_close(dp, dq @ m_hkk + dk + dv, rtol=1e-11, atol=1e-12)

    dm_hkk = torch.einsum("bhnk,bhnj->hkj", pd, dq)  # pᵀ·dq, not symmetric
    i, j = torch.triu_indices(k, k)
    packed = torch.where(i == j, dm_hkk[:, i, j], dm_hkk[:, i, j] + dm_hkk[:, j, i])
    torch.testing.assert_close(dm, packed, rtol=1e-11, atol=1e-12)


# --- quadratic attention -----------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_quadratic_attention_against_einsum(causal):
    g = torch.Generator().manual_seed(0)
    b, h, n, c, d = 2, 3, 90, 6, 4
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(h, c, c, generator=g, dtype=torch.float64, requires_grad=True)  # not symmetric
    v = torch.randn(b, h, n, d, generator=g, dtype=torch.float64, requires_grad=True)
    out = quadratic_attention_reference(x, u, v, causal=causal, scale=0.5)
    r = 0.5 * torch.einsum("bqc,hce,bke->bhqk", x, u, x)
    if causal:
        r = r.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    want = torch.softmax(r, -1) @ v
    torch.testing.assert_close(out, want, rtol=1e-11, atol=1e-12)
    for got, exp in zip(grads(out, (x, u, v)), grads(want, (x, u, v)), strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-11)
    small = [t.detach()[..., :5, :].clone().requires_grad_() for t in (x, v)]
    assert torch.autograd.gradcheck(
        lambda x, u, v: quadratic_attention_reference(x, u, v, causal),
        (small[0], u, small[1]),
        fast_mode=True,
    )
    # with U = P·Pᵀ·... symmetric and v = p the quadratic form is metric attention of p = x
    sym = (u + u.mT).detach() / 2
    xs = x.detach()[:, None].expand(b, h, n, c)
    torch.testing.assert_close(
        quadratic_attention_reference(x.detach(), sym, xs, causal),
        metric_attention(xs.contiguous(), pack_symmetric(sym), causal, scale=1 / math.sqrt(c)),
        rtol=1e-11,
        atol=1e-12,
    )


def test_quadratic_attention_errors():
    x, u, v = torch.zeros(2, 5, 3), torch.zeros(4, 3, 3), torch.zeros(2, 4, 5, 7)
    quadratic_attention_reference(x, u, v)
    bad = [
        (dict(x_bnc=[1]), TypeError, "x_bnc must be a torch.Tensor, got list"),
        (dict(x_bnc=torch.zeros(2, 5)), ValueError, r"x_bnc must be 3-D, got shape \(2, 5\)"),
        (dict(u_hcc=torch.zeros(4, 3, 2)), ValueError, r"u_hcc must be \(h, c, c\) with c=3"),
        (dict(v_bhnd=torch.zeros(2, 3, 5, 7)), ValueError, r"v_bhnd must be \(b, h, n, d\)"),
        (dict(v_bhnd=torch.zeros(2, 4, 5, 7, dtype=torch.int32)), TypeError, "v_bhnd must be"),
        (dict(x_bnc=torch.zeros(2, 0, 3)), ValueError, "no empty dimension"),
        (dict(causal=1), TypeError, "causal must be True or False, got 1"),
        (dict(scale=math.inf), ValueError, "scale must be finite, got scale=inf"),
        (dict(u_hcc=torch.zeros(4, 3, 3, device="meta")), ValueError, "on one device"),
    ]
    for change, error, message in bad:
        args = dict(x_bnc=x, u_hcc=u, v_bhnd=v) | change
        with pytest.raises(error, match=message):
            quadratic_attention_reference(**args)


# --- input checks ------------------------------------------------------------------------------
def test_every_input_check():
    p, m = inputs(2, 3, 10, 4, dtype=torch.float32, requires_grad=False)
    mask = SparseMask.from_masks(np.ones((3, 10, 10), dtype=bool), block=16)
    metric_attention(p, m, mask=mask)
    bad = [
        (dict(p_bhnk=p.numpy()), TypeError, "p_bhnk must be a torch.Tensor, got ndarray"),
        (dict(p_bhnk=p[0]), ValueError, r"p_bhnk must be 4-D \(b, h, n, k\), got shape"),
        (dict(p_bhnk=p[:, :, :0]), ValueError, "p_bhnk must have no empty dimension"),
        (dict(p_bhnk=p.int()), TypeError, "p_bhnk must be float16.*got dtype torch.int32"),
        (dict(m_packed_hl=m.tolist()), TypeError, "m_packed_hl must be a torch.Tensor"),
        (
            dict(m_packed_hl=m[:, :6]),
            ValueError,
            r"m_packed_hl must be \(h, k\(k\+1\)/2\)=\(3, 10\) .*got shape \(3, 6\)",
        ),
        (dict(m_packed_hl=m[:2]), ValueError, r"=\(3, 10\).*got shape \(2, 10\)"),
        (dict(m_packed_hl=m.double()), TypeError, "m_packed_hl must have the dtype of p_bhnk"),
        (dict(m_packed_hl=m.to("meta")), ValueError, "expected p_bhnk and m_packed_hl on one"),
        (dict(causal=None), TypeError, "causal must be True or False, got None"),
        (dict(mask=np.ones((10, 10))), TypeError, "mask must be None or a gpu.SparseMask"),
        (
            dict(mask=SparseMask.from_masks(np.ones((2, 10, 10), dtype=bool), block=16)),
            ValueError,
            "mask has heads=2, expected 1 or the heads of p_bhnk, h=3",
        ),
        (
            dict(mask=SparseMask.from_masks(np.ones((1, 11, 11), dtype=bool), block=16)),
            ValueError,
            "mask has n=11, expected the n of p_bhnk, n=10",
        ),
        (dict(mask=mask.to("meta")), ValueError, "expected p_bhnk and mask on one device"),
        (dict(scale="1"), TypeError, "scale must be a real number or None, got '1'"),
        (dict(scale=True), TypeError, "scale must be a real number or None, got True"),
        (dict(scale=math.nan), ValueError, "scale must be finite, got scale=nan"),
    ]
    for change, error, message in bad:
        args = dict(p_bhnk=p, m_packed_hl=m, causal=True, mask=None, scale=None) | change
        with pytest.raises(error, match=message):
            metric_attention(**args)


def test_exported_from_gpu():
    """In a fresh interpreter, so the package is imported as users import it."""
    names = "metric_attention metric_attention_reference pack_symmetric unpack_symmetric"
    code = (
        "from flowgraph import gpu; import flowgraph.gpu.metric as gm, torch\n"
        f"for name in '{names} quadratic_attention_reference'.split():\n"
        "    assert name in gpu.__all__ and getattr(gpu, name) is getattr(gm, name), name\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_docs_examples_run():
    """The ```pycon blocks of docs/gpu.md's "Metric attention" section, as doctests."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text(encoding="utf-8")
    section = text[text.index("## Metric attention") :]
    blocks = re.findall(r"^```pycon\n(.*?)^```", section, flags=re.M | re.S)
    assert blocks
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(verbose=False)
    for i, body in enumerate(blocks):
        runner.run(parser.get_doctest(body, {}, f"gpu.md metric {i}", "docs/gpu.md", 0))
    assert runner.summarize(verbose=False).failed == 0
