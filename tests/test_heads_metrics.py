"""models.heads.weights and models.heads.metrics: HeadWeights validation, qk_form against its
definitions, token_distances against a brute-force loop, coverage against hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph.models.heads.metrics import QKForm, coverage, qk_form, token_distances
from flowgraph.models.heads.weights import HeadWeights

SETTINGS = settings(max_examples=40, deadline=None)


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def metric_weights(seed: int, H: int = 2, c: int = 6, k: int = 3) -> HeadWeights:
    rng = rng_for(seed)
    a_hkk = rng.normal(size=(H, k, k))
    return HeadWeights(
        "metric", k**-0.5, p_hck=rng.normal(size=(H, c, k)), m_hkk=a_hkk + a_hkk.transpose(0, 2, 1)
    )


def dot_weights(seed: int, H: int = 2, c: int = 6, d: int = 3) -> HeadWeights:
    rng = rng_for(seed)
    return HeadWeights(
        "dot", d**-0.5, w_q_hcd=rng.normal(size=(H, c, d)), w_k_hcd=rng.normal(size=(H, c, d))
    )


def quadratic_weights(seed: int, H: int = 2, c: int = 6) -> HeadWeights:
    return HeadWeights("quadratic", c**-0.5, u_hcc=rng_for(seed).normal(size=(H, c, c)))


MAKERS = {"metric": metric_weights, "dot": dot_weights, "quadratic": quadratic_weights}
seeds = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(sorted(MAKERS))


# --- HeadWeights ----------------------------------------------------------------------------------
def model_forms(w: HeadWeights, seed: int) -> tuple[np.ndarray, list[QKForm]]:
    """Random inputs x (5, c) and every head's model-space form of ``w``."""
    x_tc = rng_for(seed + 1).normal(size=(5, w.d_model))
    return x_tc, [qk_form(w, head, "model") for head in range(w.num_heads)]


def test_head_weights_sizes_and_copies() -> None:
    q = np.ones((2, 8, 4), dtype=np.float32)
    w = HeadWeights("dot", np.float32(0.5), w_q_hcd=q, w_k_hcd=q)
    assert (w.num_heads, w.d_model, w.head_dim) == (2, 8, 4)
    assert w.w_q_hcd.dtype == np.float64 and not w.w_q_hcd.flags.writeable
    assert q.flags.writeable  # the caller's array is untouched
    assert isinstance(w.scale, float)
    assert "w_q_hcd=(2, 8, 4)" in repr(w)
    m = metric_weights(0, H=3, c=5, k=2)
    assert (m.num_heads, m.d_model, m.head_dim) == (3, 5, 2)
    assert quadratic_weights(0, c=7).head_dim == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(kind="sdpa", scale=1.0), ValueError, "kind must be one of dot, metric, quadratic"),
        (dict(kind="dot", scale=0.0), ValueError, "scale must be a finite number > 0"),
        (dict(kind="dot", scale=float("nan")), ValueError, "scale must be a finite number > 0"),
        (dict(kind="dot", scale=True), TypeError, "scale must be a real number"),
        (dict(kind="dot", scale=1.0, w_q_hcd=np.ones((1, 2, 2))), ValueError, "needs w_k_hcd"),
        (
            dict(kind="dot", scale=1.0, w_q_hcd=np.ones((1, 2, 2)), w_k_hcd=np.ones((1, 2, 3))),
            ValueError,
            "must have one shape",
        ),
        (
            dict(kind="quadratic", scale=1.0, u_hcc=np.ones((1, 2, 2)), p_hck=np.ones((1, 2, 2))),
            ValueError,
            "p_hck must be None",
        ),
        (dict(kind="quadratic", scale=1.0, u_hcc=np.ones((2, 2))), ValueError, "must be 3-D"),
        (dict(kind="quadratic", scale=1.0, u_hcc=np.ones((1, 2, 3))), ValueError, "(H, c, c)"),
        (dict(kind="quadratic", scale=1.0, u_hcc=np.ones((0, 2, 2))), ValueError, "no empty"),
        (
            dict(kind="quadratic", scale=1.0, u_hcc=np.full((1, 2, 2), np.inf)),
            ValueError,
            "NaN or infinite",
        ),
        (
            dict(kind="quadratic", scale=1.0, u_hcc=np.ones((1, 2, 2), dtype=bool)),
            TypeError,
            "real numeric array",
        ),
        (
            dict(kind="metric", scale=1.0, p_hck=np.ones((2, 4, 3)), m_hkk=np.ones((2, 2, 2))),
            ValueError,
            "m_hkk must have shape (H, k, k) = (2, 3, 3)",
        ),
        (
            dict(kind="metric", scale=1.0, p_hck=np.ones((1, 4, 2)), m_hkk=[[[1.0, 2], [0, 1]]]),
            ValueError,
            "m_hkk must be symmetric (metric heads), but head 0",
        ),
    ],
)
def test_head_weights_rejects(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        HeadWeights(**kwargs)


def test_metric_accepts_rounding_asymmetry() -> None:
    m = np.array([[[1.0, 0.5], [0.5 + 1e-9, 2.0]]])
    HeadWeights("metric", 1.0, p_hck=np.ones((1, 3, 2)), m_hkk=m)


# --- qk_form --------------------------------------------------------------------------------------
@SETTINGS
@given(kind=kinds, seed=seeds)
def test_form_invariants(kind: str, seed: int) -> None:
    w = MAKERS[kind](seed)
    for head in range(w.num_heads):
        f = qk_form(w, head, "model")
        u = f.matrix
        assert u.shape == (w.d_model, w.d_model) and f.space == "model" and f.scale == w.scale
        np.testing.assert_allclose(f.symmetric + f.antisymmetric, u, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(f.symmetric, f.symmetric.T)
        np.testing.assert_array_equal(f.antisymmetric, -f.antisymmetric.T)
        norm2 = np.linalg.norm(u) ** 2
        np.testing.assert_allclose((f.singular_values**2).sum(), norm2, rtol=1e-9)
        np.testing.assert_allclose(
            np.linalg.norm(f.symmetric) ** 2 + np.linalg.norm(f.antisymmetric) ** 2, norm2
        )
        assert 0.0 <= f.symmetry <= 1.0
        assert np.all(np.diff(f.eigenvalues) <= 0) and np.all(np.diff(f.singular_values) <= 0)
        np.testing.assert_allclose(f.eigenvalues.sum(), np.trace(u), atol=1e-9 * (1 + norm2))
        # the eigenvalues really are the symmetric part's: S v = λ v for numpy's eigenvectors
        lam, _ = np.linalg.eigh(f.symmetric)
        np.testing.assert_allclose(f.eigenvalues, lam[::-1], atol=1e-9 * (1 + norm2))
        assert not f.matrix.flags.writeable


@SETTINGS
@given(seed=seeds)
def test_dot_form_is_wq_wkT_and_reproduces_scores(seed: int) -> None:
    w = dot_weights(seed)
    x_tc, forms = model_forms(w, seed)
    for head, f in enumerate(forms):
        q_td, k_td = x_tc @ w.w_q_hcd[head], x_tc @ w.w_k_hcd[head]
        np.testing.assert_allclose(x_tc @ f.matrix @ x_tc.T, q_td @ k_td.T, atol=1e-10)
        # the antisymmetric part is what makes r(a, b) ≠ r(b, a)
        r = x_tc @ f.matrix @ x_tc.T
        np.testing.assert_allclose((r - r.T) / 2, x_tc @ f.antisymmetric @ x_tc.T, atol=1e-10)


@SETTINGS
@given(seed=seeds)
def test_metric_form_model_space(seed: int) -> None:
    w = metric_weights(seed)
    x_tc, forms = model_forms(w, seed)
    for head, f in enumerate(forms):
        m_kk, p_ck = w.m_hkk[head], w.p_hck[head]
        p_tk = x_tc @ p_ck
        np.testing.assert_allclose(x_tc @ f.matrix @ x_tc.T, p_tk @ m_kk @ p_tk.T, atol=1e-9)
        assert f.symmetry == 1.0 and not f.antisymmetric.any()
        # nonzero eigenvalues of P M Pᵀ are those of M·PᵀP (similar to G^½ M G^½, G = PᵀP)
        expected = np.sort(np.linalg.eigvals(m_kk @ (p_ck.T @ p_ck)).real)[::-1]
        top, bottom = f.eigenvalues[f.eigenvalues > 1e-9], f.eigenvalues[f.eigenvalues < -1e-9]
        np.testing.assert_allclose(np.concatenate([top, bottom]), expected, rtol=1e-7, atol=1e-7)
        h = qk_form(w, head, "head")
        assert h.space == "head" and h.matrix.shape == (3, 3) and h.symmetry == 1.0
        np.testing.assert_allclose(h.matrix, m_kk)
        np.testing.assert_allclose(h.eigenvalues, np.linalg.eigvalsh(m_kk)[::-1])


@SETTINGS
@given(seed=seeds, kind=st.sampled_from(["dot", "metric"]), rank=st.integers(1, 5))
def test_low_rank_spectra_match_full_decompositions(seed: int, kind: str, rank: int) -> None:
    """Narrow heads (2d < c, k < c) get their spectra from the factors: the same values as
    decomposing the c×c form, with exact zeros for the rest."""
    c = 12
    w = dot_weights(seed, c=c, d=rank) if kind == "dot" else metric_weights(seed, c=c, k=rank)
    f = qk_form(w, 1)
    size = np.abs(f.matrix).max() + 1
    np.testing.assert_allclose(
        f.eigenvalues, np.linalg.eigvalsh(f.symmetric)[::-1], atol=1e-10 * size
    )
    np.testing.assert_allclose(
        f.singular_values, np.linalg.svd(f.matrix, compute_uv=False), atol=1e-10 * size
    )
    nonzero = 2 * rank if kind == "dot" else rank
    assert (f.eigenvalues != 0).sum() <= nonzero and f.eigenvalues.shape == (c,)
    assert (f.singular_values[rank:] == 0).all()


def test_metric_with_orthonormal_projection_keeps_the_metric_spectrum() -> None:
    rng = rng_for(3)
    p_ck, _ = np.linalg.qr(rng.normal(size=(7, 3)))  # orthonormal columns
    m = np.diag([3.0, -2.0, 0.5])
    w = HeadWeights("metric", 1.0, p_hck=p_ck[None], m_hkk=m[None])
    f = qk_form(w, 0)
    np.testing.assert_allclose(f.eigenvalues, [3.0, 0.5, 0, 0, 0, 0, -2.0], atol=1e-12)
    np.testing.assert_allclose(f.singular_values, [3.0, 2.0, 0.5, 0, 0, 0, 0], atol=1e-12)


def test_symmetry_score_extremes() -> None:
    a = np.array([[0.0, 1.0], [-1.0, 0.0]])
    anti = qk_form(HeadWeights("quadratic", 1.0, u_hcc=a[None]), 0)
    assert anti.symmetry == 0.0 and not anti.symmetric.any()
    zero = qk_form(HeadWeights("quadratic", 1.0, u_hcc=np.zeros((1, 2, 2))), 0)
    assert zero.symmetry == 1.0  # 0 equals its transpose
    half = qk_form(HeadWeights("quadratic", 1.0, u_hcc=(np.eye(2) + a)[None]), 0)
    assert half.symmetry == pytest.approx(np.sqrt(0.5))
    assert isinstance(half, QKForm) and "symmetry=0.7071" in repr(half)


def test_qk_form_rejects() -> None:
    w = dot_weights(0)
    with pytest.raises(
        ValueError, match=r"space='head' exists for metric heads only.*space='model'"
    ):
        qk_form(w, 0, "head")
    with pytest.raises(ValueError, match="space must be one of head, model"):
        qk_form(w, 0, "input")
    with pytest.raises(ValueError, match=r"head must be in 0\.\.1 .* got head=2"):
        qk_form(w, 2)
    with pytest.raises(ValueError, match="got head=-1"):
        qk_form(w, -1)
    with pytest.raises(TypeError, match="head must be an int"):
        qk_form(w, 0.0)
    with pytest.raises(TypeError, match="weights must be a HeadWeights"):
        qk_form({"kind": "dot"}, 0)


# --- token_distances ------------------------------------------------------------------------------
def brute_force_distances(s_cc: np.ndarray, e_tc: np.ndarray) -> np.ndarray:
    T = e_tc.shape[0]
    out = np.empty((T, T))
    for a in range(T):
        for b in range(T):
            diff = e_tc[a] - e_tc[b]
            out[a, b] = diff @ s_cc @ diff
    return out


@SETTINGS
@given(
    seed=seeds,
    c=st.integers(1, 6),
    t=st.integers(1, 7),
    definite=st.sampled_from(["indefinite", "psd", "nsd", "low-rank"]),
)
def test_token_distances_match_brute_force(seed: int, c: int, t: int, definite: str) -> None:
    rng = rng_for(seed)
    a_cc = rng.normal(size=(c, c))
    s_cc = {
        "indefinite": a_cc + a_cc.T,
        "psd": a_cc @ a_cc.T,
        "nsd": -(a_cc @ a_cc.T),
        "low-rank": np.outer(a_cc[0], a_cc[0]) - np.outer(a_cc[-1], a_cc[-1]),
    }[definite]
    e_tc = rng.normal(size=(t, c))
    e_tc[t // 2] = e_tc[0]  # a repeated token: distance exactly 0
    got = token_distances(s_cc, e_tc)
    expected = brute_force_distances(s_cc, e_tc)
    scale = np.abs(s_cc).max() * max(1.0, np.abs(e_tc).max()) ** 2
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * c * scale + 1e-300)
    assert got.dtype == np.float64 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_array_equal(np.diag(got), 0.0)
    assert got[0, t // 2] == 0.0
    if definite == "psd":
        assert (got >= -1e-12 * scale).all()
    if definite == "nsd":
        assert (got <= 1e-12 * scale).all()


@SETTINGS
@given(seed=seeds, c=st.integers(1, 12), t=st.integers(2, 14))
def test_repeated_tokens_are_exactly_zero_apart(seed: int, c: int, t: int) -> None:
    """The same embedding twice (a repeated token anywhere in the sequence) is at distance
    exactly 0, not a rounding residue of either sign that the distance picture would mark as
    negative; every distinct pair still matches the brute force."""
    rng = rng_for(seed)
    a_cc = rng.normal(size=(c, c))
    s_cc = a_cc + a_cc.T  # indefinite: a residue can be negative
    rows = rng.normal(size=(max(2, t // 2), c)) * 3 + 5
    pick_t = rng.integers(0, len(rows), size=t)
    e_tc = rows[pick_t]
    got = token_distances(s_cc, e_tc)
    same_tt = pick_t[:, None] == pick_t[None, :]
    assert (got[same_tt] == 0.0).all()
    scale = np.abs(s_cc).max() * np.abs(e_tc).max() ** 2
    expected = brute_force_distances(s_cc, e_tc)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * c * scale)
    np.testing.assert_array_equal(got, got.T)


def test_token_distances_uses_the_symmetric_part_only() -> None:
    rng = rng_for(1)
    u = rng.normal(size=(4, 4))
    e = rng.normal(size=(5, 4))
    np.testing.assert_allclose(token_distances(u, e), token_distances((u + u.T) / 2, e))
    np.testing.assert_allclose(token_distances(u, e), brute_force_distances(u, e), atol=1e-12)


def test_token_distances_stable_for_close_embeddings() -> None:
    """Far from the origin and close to each other: the naive expansion qa + qb − 2·eₐSe_b loses
    every digit, the eigenbasis differences do not."""
    s = np.diag([1.0, -1.0, 0.5])
    base = np.array([1e8, -3e7, 2e7])
    e = np.stack([base, base + np.array([1e-3, 0, 0]), base + np.array([0, 2e-3, 0])])
    got = token_distances(s, e)
    expected = brute_force_distances(s, e)  # from the (exact) differences of the rows
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert got[0, 1] == pytest.approx(1e-6, rel=1e-4) and got[0, 2] == pytest.approx(
        -4e-6, rel=1e-4
    )
    g = e @ s @ e.T
    naive = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
    assert abs(naive[0, 1] - expected[0, 1]) > 0.5 * abs(expected[0, 1])  # naive: no digit left


def test_token_distances_rejects() -> None:
    with pytest.raises(ValueError, match="s_cc must be square"):
        token_distances(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="e_tc must have c=2 columns"):
        token_distances(np.eye(2), np.ones((4, 3)))
    with pytest.raises(ValueError, match="e_tc holds NaN"):
        token_distances(np.eye(2), np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="e_tc must be a non-empty 2-D"):
        token_distances(np.eye(2), np.ones(2))
    with pytest.raises(TypeError, match="s_cc must be a real numeric array"):
        token_distances(np.eye(2, dtype=complex), np.ones((4, 2)))


# --- coverage -------------------------------------------------------------------------------------
def softmax_attention(seed: int, L: int, H: int, T: int, mask_tt: np.ndarray) -> np.ndarray:
    """Random softmax attention (L, H, T, T) restricted to ``mask_tt`` (every row non-empty)."""
    r = rng_for(seed).normal(size=(L, H, T, T)) * 3
    r = np.where(mask_tt, r, -np.inf)
    w = np.exp(r - r.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


@SETTINGS
@given(seed=seeds, T=st.integers(1, 12), L=st.integers(1, 3), H=st.integers(1, 4))
def test_dense_pattern_covers_causal_attention(seed: int, T: int, L: int, H: int) -> None:
    attn = softmax_attention(seed, L, H, T, np.tril(np.ones((T, T), bool)))
    for mode in ("merged", "interleave", "heads"):
        got = coverage(attn, fg.dense(T), mode)
        assert got.shape == (L, H)
        np.testing.assert_allclose(got, 1.0, atol=1e-12)
    assert coverage(attn, fg.dense(T + 5), "merged") == pytest.approx(1.0)  # causal prefix


@SETTINGS
@given(seed=seeds, n=st.integers(4, 24), mode=st.sampled_from(["merged", "interleave", "heads"]))
def test_attention_inside_the_pattern_is_covered(seed: int, n: int, mode: str) -> None:
    pattern = fg.strided(n)
    L = H = 3
    p = pattern.num_steps
    attn = np.empty((L, H, n, n))
    for layer in range(L):
        for h in range(H):
            if mode == "merged":
                mask = pattern.merged().dense(0)
            elif mode == "interleave":
                mask = pattern.dense(layer % p)
            else:
                mask = pattern.dense(h % p)
            attn[layer, h] = softmax_attention(seed + layer * H + h, 1, 1, n, mask)[0, 0]
    np.testing.assert_allclose(coverage(attn, pattern, mode), 1.0, atol=1e-12)
    # uniform causal attention against the same masks: the mean over rows of |mask row| / (q+1)
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    got = coverage(np.broadcast_to(uniform, (L, H, n, n)), pattern, mode)
    for layer in range(L):
        for h in range(H):
            step = {"interleave": layer % p, "heads": h % p}.get(mode)
            mask = pattern.merged().dense(0) if step is None else pattern.dense(step)
            expected = np.mean(mask.sum(1) / np.arange(1, n + 1))
            assert got[layer, h] == pytest.approx(expected)


def test_coverage_hand_computed() -> None:
    # T = 3, local window 2 (k ∈ {q−1, q}); one layer, one head
    attn = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.0],
            [0.6, 0.3, 0.1],  # key 0 is outside the window of query 2
        ]
    )[None, None]
    got = coverage(attn, fg.local(3, 2), "merged")
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx((1 + 1 + 0.4) / 3)
    # modes differ: two layers, a two-step pattern (step 1: keys 0, step 2: the diagonal)
    step_a = np.zeros((3, 3), bool)
    step_a[:, 0] = True
    step_b = np.eye(3, dtype=bool)
    pattern = fg.from_masks([step_a, step_b], causal=True)
    attn2 = np.broadcast_to(attn, (2, 2, 3, 3))
    inter = coverage(attn2, pattern, "interleave")
    heads = coverage(attn2, pattern, "heads")
    merged = coverage(attn2, pattern, "merged")
    on_a, on_b = (1 + 0.5 + 0.6) / 3, (1 + 0.5 + 0.1) / 3
    np.testing.assert_allclose(inter, [[on_a, on_a], [on_b, on_b]])
    np.testing.assert_allclose(heads, [[on_a, on_b], [on_a, on_b]])
    np.testing.assert_allclose(merged, (1 + 1 + 0.7) / 3)


def test_coverage_skips_rows_that_attend_nothing() -> None:
    attn = np.array([[0.0, 0.0], [0.25, 0.75]])[None, None]
    assert coverage(attn, fg.local(2, 1), "merged")[0, 0] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("attn", "pattern", "mode", "error", "message"),
    [
        (np.ones((2, 2, 2)), fg.dense(2), "merged", ValueError, "shape \\(L, H, T, T\\)"),
        (np.ones((1, 1, 2, 3)), fg.dense(2), "merged", ValueError, "shape \\(L, H, T, T\\)"),
        (np.full((1, 1, 2, 2), 0.5), fg.dense(2), "stacked", ValueError, "mode must be one of"),
        (np.full((1, 1, 2, 2), 0.5), "dense", "merged", TypeError, "flowgraph.Pattern"),
        (np.full((1, 1, 2, 2), 0.7), fg.dense(2), "merged", ValueError, "sums to 1.4"),
        (
            np.array([[[[1.5, -0.5], [0.5, 0.5]]]]),
            fg.dense(2),
            "merged",
            ValueError,
            "must be ≥ 0",
        ),
        (np.full((1, 1, 2, 2), np.nan), fg.dense(2), "merged", ValueError, "NaN"),
        (np.zeros((1, 1, 2, 2)), fg.dense(2), "merged", ValueError, "no attention mass"),
        (np.full((1, 1, 4, 4), 0.25), fg.dense(3), "merged", ValueError, "n=3 .* T=4"),
        (
            np.full((1, 1, 4, 4), 0.25),
            fg.ltr(8),
            "merged",
            ValueError,
            "need n == T \\(a bidirectional pattern\\): build the pattern with n=4",
        ),
        (np.full((1, 1, 2, 2), 0.5, dtype=complex), fg.dense(2), "merged", TypeError, "real"),
    ],
)
def test_coverage_rejects(attn, pattern, mode, error, message) -> None:
    with pytest.raises(error, match=message):
        coverage(attn, pattern, mode)


def test_coverage_bidirectional_pattern_at_T() -> None:
    attn = np.full((1, 2, 4, 4), 0.25)
    expected = fg.ltr(4).merged().dense(0).sum() / 16
    np.testing.assert_allclose(coverage(attn, fg.ltr(4)), expected)


# --- BLAS threads ---------------------------------------------------------------------------------
def test_blas_thread_limit_is_restored_even_from_threads() -> None:
    """The metrics run LAPACK on one thread and give the setting back, also when several
    threads (dashboard callbacks) compute at once."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    before = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]

    def inside(_: int) -> None:
        w = dot_weights(0, c=40, d=4)
        qk_form(w, 0)
        token_distances(qk_form(w, 1).symmetric, rng_for(1).normal(size=(9, 40)))

    import flowgraph.models.heads.metrics as metrics

    with metrics._one_blas_thread():
        seen = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(inside, range(16)))
    after = [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers]
    assert seen and all(n == 1 for n in seen)
    assert after == before
    with pytest.raises(ValueError, match="space='head'"):
        qk_form(dot_weights(0), 0, "head")  # an error inside restores it too
    assert [lib.num_threads for lib in controller.select(user_api="blas").lib_controllers] == before


@pytest.mark.parametrize(
    "make",
    [
        fg.dense,
        lambda n: fg.local(n, 3),
        lambda n: fg.strided(n, stride=4),
        lambda n: fg.fixed(n, 4),
    ],
)
def test_a_longer_causal_pattern_equals_the_pattern_built_at_T(make) -> None:
    """The documented rule: a causal pattern's top-left T×T block is the pattern at n = T."""
    T = 12
    attn = softmax_attention(5, 2, 3, T, np.tril(np.ones((T, T), bool)))
    for mode in ("merged", "interleave", "heads"):
        np.testing.assert_array_equal(coverage(attn, make(20), mode), coverage(attn, make(T), mode))
