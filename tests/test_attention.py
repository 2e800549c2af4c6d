"""The attention modules against a plain dense float64 oracle written from the formulas (numpy,
masks built from the pattern's steps by hand), on every path: fast (sdpa / gpu.metric_attention),
pattern (gpu.sparse_attention / gpu.metric_attention with a SparseMask) and attn_mask (dense)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.gpu import metric as gpu_metric
from flowgraph.models.attention import (
    DotProductAttention,
    MetricAttention,
    QuadraticAttention,
    masked_attention,
)

N, C, H = 20, 24, 3  # n_ctx, d_model, heads


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def oracle_mask(pattern, *, layer, mode, causal, T) -> np.ndarray:
    """(H, T, T) bool, from the definition of the modes (not from models.attention)."""
    heads = []
    for h in range(H):
        if pattern is None:
            m = np.ones((N, N), dtype=bool)
        elif mode == "interleave":
            m = pattern.dense(layer % pattern.num_steps)
        elif mode == "merged":
            m = np.any([pattern.dense(s) for s in range(pattern.num_steps)], axis=0)
        else:
            m = pattern.dense(h % pattern.num_steps)
        if causal:
            m = m & np.tri(N, dtype=bool)
        heads.append(m[:T, :T])
    return np.stack(heads)


def _softmax_apply(s_hqk, mask_hqk, v_hkd):
    out = np.zeros((s_hqk.shape[0], s_hqk.shape[1], v_hkd.shape[-1]))
    for h in range(s_hqk.shape[0]):
        for q in range(s_hqk.shape[1]):
            keys = np.flatnonzero(mask_hqk[h, q])
            if keys.size == 0:
                continue  # a query with no key outputs zeros
            w = np.exp(s_hqk[h, q, keys] - s_hqk[h, q, keys].max())
            out[h, q] = (w / w.sum()) @ v_hkd[h, keys]
    return out


def oracle(module, x_nc: np.ndarray, mask_hqk: np.ndarray) -> np.ndarray:
    """One sequence through ``module`` computed from its parameters in float64 numpy."""
    T, d = x_nc.shape[0], C // H
    heads = []
    if isinstance(module, DotProductAttention):
        w, b = _np(module.c_attn.weight), _np(module.c_attn.bias)
        q, k, v = np.split(x_nc @ w.T + b, 3, axis=1)
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            heads.append((q[:, sl] @ k[:, sl].T / np.sqrt(d), v[:, sl]))
    elif isinstance(module, QuadraticAttention):
        v = x_nc @ _np(module.c_value.weight).T + _np(module.c_value.bias)
        for h in range(H):
            u = _np(module.u_hcc[h])
            heads.append((x_nc @ u @ x_nc.T / np.sqrt(C), v[:, h * d : (h + 1) * d]))
    else:
        p = x_nc @ _np(module.c_p.weight).T
        if module.parameterisation == "symmetric":
            packed = _np(module.m_packed_hl)
            iu = np.triu_indices(d)
            metrics = []
            for h in range(H):
                m = np.zeros((d, d))
                m[iu] = packed[h]
                metrics.append(m + np.triu(m, 1).T)
        else:
            metrics = [_np(s) @ _np(s).T for s in module.s_hkk]
        for h in range(H):
            ph = p[:, h * d : (h + 1) * d]
            heads.append((ph @ metrics[h] @ ph.T / np.sqrt(d), ph))
    s_hqk = np.stack([s for s, _ in heads])
    v_hkd = np.stack([v for _, v in heads])
    t_hqd = _softmax_apply(s_hqk, mask_hqk, v_hkd)
    t_nc = t_hqd.transpose(1, 0, 2).reshape(T, C)
    return t_nc @ _np(module.c_proj.weight).T + _np(module.c_proj.bias)


def _perturb(module: torch.nn.Module) -> None:
    """Random parameters everywhere (the metric starts at I; biases start at 0)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        if isinstance(module, MetricAttention) and module.parameterisation == "symmetric":
            pass  # the packed entries are free: any values are a symmetric M


KINDS = {
    "sdpa": lambda **kw: DotProductAttention(C, H, **kw),
    "quadratic": lambda **kw: QuadraticAttention(C, H, **kw),
    "metric": lambda **kw: MetricAttention(C, H, **kw),
    "metric-psd": lambda **kw: MetricAttention(C, H, parameterisation="psd", **kw),
}

SETUPS = {  # name: (pattern, mode, layer, causal)
    "causal": (None, "interleave", 0, True),
    "encoder": (None, "interleave", 0, False),
    "fixed-interleave-0": (fg.fixed(N, stride=4), "interleave", 0, True),
    "fixed-interleave-1": (fg.fixed(N, stride=4), "interleave", 1, True),
    "strided-interleave-3": (fg.strided(N, stride=5), "interleave", 3, True),
    "fixed-merged": (fg.fixed(N, stride=4), "merged", 2, True),
    "strided-heads": (fg.strided(N, stride=5), "heads", 0, True),
    "ltr-heads-encoder": (fg.ltr(N, stride=4), "heads", 0, False),
    "rtl-interleave-encoder": (fg.rtl(N, stride=4), "interleave", 1, False),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("path", ["auto", "gpu-ops", "attn_mask"])
def test_matches_dense_float64_oracle(kind, setup, path):
    """auto: the CPU choice (dense masked); gpu-ops: gpu.sparse_attention/metric_attention with
    a SparseMask forced; attn_mask: an extra mask through the dense reference path."""
    pattern, mode, layer, causal = SETUPS[setup]
    module = KINDS[kind](n_ctx=N, causal=causal, pattern=pattern, pattern_mode=mode, layer=layer)
    module.double()
    module.use_gpu_ops = True if path == "gpu-ops" else None
    with_attn_mask = path == "attn_mask"
    _perturb(module)
    T = N if not with_attn_mask else N - 3  # shorter sequences use the top-left of the mask
    x_bnc = torch.randn(2, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = oracle_mask(pattern, layer=layer, mode=mode, causal=causal, T=T)
    attn_mask = None
    if with_attn_mask:  # a random extra restriction, ANDed with the module's own mask
        extra = np.random.default_rng(3).random((T, T)) < 0.7
        attn_mask = torch.from_numpy(extra)
        mask = mask & extra
    y_bnc = module(x_bnc, attn_mask)
    for b in range(2):
        expected = oracle(module, x_bnc[b].numpy(), mask)
        np.testing.assert_allclose(y_bnc[b].detach().numpy(), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_float32_paths_agree_and_differentiate(kind):
    """The gpu path (pattern, SparseMask) and the dense path (same mask given as attn_mask to an
    unrestricted bidirectional module) compute the same outputs and gradients."""
    pattern = fg.fixed(N, stride=4)
    torch.manual_seed(0)
    sparse = KINDS[kind](n_ctx=N, pattern=pattern, pattern_mode="heads")
    sparse.use_gpu_ops = True
    dense = KINDS[kind](n_ctx=N, causal=False)
    _perturb(sparse)
    dense.load_state_dict(sparse.state_dict())
    x1 = torch.randn(3, N, C, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    mask = torch.from_numpy(oracle_mask(pattern, layer=0, mode="heads", causal=True, T=N))
    y1, y2 = sparse(x1), dense(x2, mask[None])
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for (name, p1), p2 in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_module_evaluated_under_inference_mode_still_trains(kind):
    """Masks and metric indices cached during torch.inference_mode() evaluation are normal
    tensors: the training step after it can save them for backward."""
    gpu_metric._pack_index.cache_clear()  # so the first use below is under inference_mode
    module = KINDS[kind](n_ctx=N, pattern=fg.fixed(N, stride=4), pattern_mode="heads")
    module.use_gpu_ops = True  # the SparseMask path, whose mask the module caches
    x_bnc = torch.randn(2, N, C)
    with torch.inference_mode():
        module(x_bnc)
    module(x_bnc.clone().requires_grad_(True)).square().sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_metric_starts_as_identity():
    for param in ("symmetric", "psd"):
        module = MetricAttention(C, H, n_ctx=N, parameterisation=param)
        torch.testing.assert_close(module.metric_hkk(), torch.eye(C // H).expand(H, 8, 8))


def test_masked_attention_empty_row_is_zero():
    q = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    out = masked_attention(q, q, q, mask, 0.5)
    assert torch.equal(out[0, 0, 0], torch.zeros(4))
    assert torch.isfinite(out).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="bidirectional"):
        DotProductAttention(C, H, n_ctx=N, pattern=fg.ltr(N))
    with pytest.raises(ValueError, match="n_ctx=21"):
        DotProductAttention(C, H, n_ctx=21, pattern=fg.fixed(N))
    with pytest.raises(ValueError, match="pattern_mode"):
        DotProductAttention(C, H, n_ctx=N, pattern=fg.fixed(N), pattern_mode="layers")
    with pytest.raises(ValueError, match="multiple of n_head"):
        MetricAttention(25, H, n_ctx=N)
    with pytest.raises(ValueError, match="parameterisation"):
        MetricAttention(C, H, n_ctx=N, parameterisation="spd")
    module = DotProductAttention(C, H, n_ctx=N)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        module(torch.randn(1, N + 1, C))
    with pytest.raises(TypeError, match="bool"):
        module(torch.randn(1, N, C), torch.ones(N, N))
    with pytest.raises(ValueError, match="attn_mask must be"):
        module(torch.randn(1, N, C), torch.ones(N, N - 1, dtype=torch.bool))
