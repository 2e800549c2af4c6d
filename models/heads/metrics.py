"""What a head learned, from its weights and its attention: pure numpy functions.

- :func:`qk_form`: the head's bilinear form U (scores r = x_a U x_bᵀ), its symmetric and
  antisymmetric parts, the symmetry score, the spectrum of the symmetric part and the singular
  values;
- :func:`token_distances`: the signed squared distances d²(a, b) = (e_a − e_b) S (e_a − e_b)ᵀ a
  symmetric form S induces between embeddings;
- :func:`coverage`: how much of each head's attention mass a :class:`flowgraph.Pattern` keeps.

Conventions: row vectors (x @ W), as the weights of :class:`~models.heads.weights.HeadWeights`.
The form is returned **without** the model's score factor: ``QKForm.scale`` holds it, and the
pre-softmax scores are ``scale · x_a U x_bᵀ`` (biases, which the form leaves out, aside). The
:class:`~models.heads.Checkpoint` methods of the same names call these functions.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from flowgraph import Pattern
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["MODES", "SPACES", "QKForm", "coverage", "qk_form", "token_distances"]

SPACES = ("head", "model")
MODES = ("interleave", "merged", "heads")
ROW_SUM_ATOL = 1e-3  # softmax rows from a float32 model sum to 1 within ~1e-6; 1e-3 is generous


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_users = [0, None]  # [callers inside, the limiter to undo when the last one leaves]


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run numpy's LAPACK calls on one thread. These matrices are small (c ≤ a few thousand),
    where a second OpenBLAS thread gains little on an idle machine and, on a busy 2-core one,
    makes a 384-wide QR several hundred times slower (measured: 1.5 ms → 0.7 s). Counted, so
    concurrent callers (dashboard threads) restore the setting once, when the last one leaves."""
    with _blas_lock:
        if _blas_users[0] == 0:
            _blas_users[1] = _blas_controller().limit(limits=1, user_api="blas")
        _blas_users[0] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users[0] -= 1
            if _blas_users[0] == 0:
                _blas_users[1].restore_original_limits()
                _blas_users[1] = None


@dataclass(frozen=True)
class QKForm:
    """A head's bilinear form U and what is read off it.

    matrix: U — M (k×k) in head space of a metric head; P·M·Pᵀ (c×c) for a metric head,
    W_q·W_kᵀ (c×c) for a dot head, U (c×c) for a quadratic head in model space. Scores are
    ``scale · x_a U x_bᵀ``.
    symmetric: (U + Uᵀ)/2. antisymmetric: (U − Uᵀ)/2.
    symmetry: ‖sym‖_F / ‖U‖_F in [0, 1]; 1 iff U = Uᵀ, 0 iff U = −Uᵀ (and 1 for U = 0, which
    equals its transpose). Since ‖sym‖² + ‖antisym‖² = ‖U‖², the antisymmetric share is
    √(1 − symmetry²).
    eigenvalues: of the symmetric part, descending. singular_values: of U, descending.
    scale: the model's factor on the scores (not folded into the matrix).
    """

    matrix: np.ndarray
    space: str
    symmetric: np.ndarray
    antisymmetric: np.ndarray
    symmetry: float
    eigenvalues: np.ndarray
    singular_values: np.ndarray
    scale: float

    def __repr__(self) -> str:
        return (
            f"QKForm(space={self.space!r}, shape={self.matrix.shape}, "
            f"symmetry={self.symmetry:.4f}, scale={self.scale:.4g}, "
            f"eigenvalues∈[{self.eigenvalues[-1]:.4g}, {self.eigenvalues[0]:.4g}])"
        )


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` and ``size − len(values)`` zeros, sorted descending."""
    out = np.zeros(size)
    out[: values.size] = values
    return np.sort(out)[::-1].copy()


def _low_rank_spectra(left_cr: np.ndarray, right_cr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of sym(U) and singular values of U = L·Rᵀ (L, R: c×r, 2r < c) from r-sized
    problems: with [L R] = Q·F, sym(U) = Q·(F·B·Fᵀ)·Qᵀ, B = [[0, I], [I, 0]]/2; with L = Q₁F₁ and
    R = Q₂F₂, U = Q₁·(F₁F₂ᵀ)·Q₂ᵀ. The other eigen/singular values are exactly 0."""
    c, r = left_cr.shape
    _, f_ab = np.linalg.qr(np.hstack([left_cr, right_cr]))
    half = np.eye(r) / 2
    b_aa = np.block([[np.zeros((r, r)), half], [half, np.zeros((r, r))]])
    core_aa = f_ab @ b_aa @ f_ab.T
    eigenvalues = np.linalg.eigvalsh((core_aa + core_aa.T) / 2)
    _, f1_rr = np.linalg.qr(left_cr)
    _, f2_rr = np.linalg.qr(right_cr)
    singular = np.linalg.svd(f1_rr @ f2_rr.T, compute_uv=False)
    return _padded(eigenvalues, c), _padded(singular, c)


def _form_of(
    matrix: np.ndarray,
    space: str,
    scale: float,
    symmetric: bool,
    spectra: tuple[np.ndarray, np.ndarray] | None = None,
) -> QKForm:
    """The QKForm of ``matrix``; ``spectra`` (eigenvalues of sym, singular values), when given,
    come from a low-rank factorisation instead of c×c decompositions."""
    if symmetric:  # symmetric by construction: rounding in the products is not antisymmetry
        matrix = (matrix + matrix.T) / 2
    sym = (matrix + matrix.T) / 2
    anti = (matrix - matrix.T) / 2
    norm = float(np.linalg.norm(matrix))
    symmetry = 1.0 if norm == 0.0 else min(1.0, float(np.linalg.norm(sym)) / norm)
    if spectra is None:
        eigenvalues = np.linalg.eigvalsh(sym)[::-1].copy()
        singular_values = np.linalg.svd(matrix, compute_uv=False)  # descending already
    else:
        eigenvalues, singular_values = spectra
    for arr in (matrix, sym, anti, eigenvalues, singular_values):
        arr.flags.writeable = False
    return QKForm(matrix, space, sym, anti, symmetry, eigenvalues, singular_values, scale)


def qk_form(weights: HeadWeights, head: int, space: str = "model") -> QKForm:
    """The bilinear form of head ``head`` of one layer (see :class:`QKForm`).

    ``space="model"`` (every kind): the c×c form on the attention's input x — P·M·Pᵀ for a metric
    head (p = x P, so r = p M pᵀ = x (P M Pᵀ) xᵀ), W_q·W_kᵀ for a dot head, U for a quadratic
    head. ``space="head"`` (metric heads only): M itself, k×k. A metric head's form is symmetric
    by construction and is returned exactly symmetric (antisymmetric part 0, symmetry 1).
    The spectra of a low-rank form (P·M·Pᵀ with k < c, W_q·W_kᵀ with 2d < c) come from k- or
    d-sized problems on its factors (QR), the remaining c − rank values being exactly 0: on a
    384-wide model this is many times faster than decomposing the c×c matrix.

    Raises TypeError for a ``weights`` that is not a HeadWeights, ValueError for a head out of
    range, an unknown space, or ``space="head"`` on a dot or quadratic head.

    Examples
    --------
    >>> import numpy as np
    >>> w = HeadWeights("metric", 0.5, p_hck=np.eye(3)[None, :, :2], m_hkk=np.diag([2.0, -1])[None])
    >>> qk_form(w, 0).eigenvalues.tolist()
    [2.0, 0.0, -1.0]
    """
    if not isinstance(weights, HeadWeights):
        raise TypeError(f"weights must be a HeadWeights, got {type(weights).__name__}")
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise TypeError(f"head must be an int, got {head!r} ({type(head).__name__})")
    if not 0 <= head < weights.num_heads:
        raise ValueError(
            f"head must be in 0..{weights.num_heads - 1} (the layer has {weights.num_heads} "
            f"heads), got head={head}"
        )
    if space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got space={space!r}")
    with _one_blas_thread():
        return _form_for(weights, head, space)


def _form_for(weights: HeadWeights, head: int, space: str) -> QKForm:
    if weights.kind == "metric":
        assert weights.p_hck is not None and weights.m_hkk is not None
        m_kk = weights.m_hkk[head]
        if space == "head":
            return _form_of(m_kk.copy(), space, weights.scale, symmetric=True)
        p_ck = weights.p_hck[head]
        c, k = p_ck.shape
        spectra = None
        if k < c:  # P·M·Pᵀ = Q·(F·M·Fᵀ)·Qᵀ with P = Q·F: a k×k eigenproblem, the rest is 0
            _, f_kk = np.linalg.qr(p_ck)
            core_kk = f_kk @ m_kk @ f_kk.T
            lam_k = np.linalg.eigvalsh((core_kk + core_kk.T) / 2)
            spectra = (_padded(lam_k, c), _padded(np.abs(lam_k), c))
        matrix = p_ck @ m_kk @ p_ck.T
        return _form_of(matrix, space, weights.scale, symmetric=True, spectra=spectra)
    if space == "head":
        raise ValueError(
            f"space='head' exists for metric heads only (their metric M); this layer has "
            f"{weights.kind} heads: use space='model' for the c×c form"
        )
    if weights.kind == "dot":
        assert weights.w_q_hcd is not None and weights.w_k_hcd is not None
        q_cd, k_cd = weights.w_q_hcd[head], weights.w_k_hcd[head]
        spectra = _low_rank_spectra(q_cd, k_cd) if 2 * q_cd.shape[1] < q_cd.shape[0] else None
        return _form_of(q_cd @ k_cd.T, space, weights.scale, symmetric=False, spectra=spectra)
    assert weights.u_hcc is not None
    return _form_of(weights.u_hcc[head].copy(), space, weights.scale, symmetric=False)


def token_distances(s_cc: np.ndarray, e_tc: np.ndarray) -> np.ndarray:
    """Signed squared distances d²(a, b) = (e_a − e_b) S (e_a − e_b)ᵀ between the rows of e_tc.

    S need not be positive (semi-)definite: where it is indefinite some d² are negative, and they
    are returned as such. Only the symmetric part of ``s_cc`` matters (a non-symmetric matrix is
    symmetrised, which changes no d²). Computed stably: the rows are shifted by e_0 (distances do
    not change) and, when T − 1 < c, expressed in an orthonormal basis of their span (QR), where
    S = V₊Λ₊V₊ᵀ − V₋|Λ₋|V₋ᵀ; each part is then a squared Euclidean distance between projected
    rows taken from their differences (scipy's cdist), so nothing cancels catastrophically when
    e_a ≈ e_b far from the origin, as the expansion q_a + q_b − 2·e_a S e_bᵀ does. The result is
    exactly symmetric, exactly 0 between equal rows (a repeated token) and finite (never NaN)
    for finite input.

    Returns a (T, T) float64 array. Raises ValueError/TypeError for non-square S, a width that does
    not match, or non-finite values.

    Examples
    --------
    >>> import numpy as np
    >>> token_distances(np.diag([1.0, -1.0]), np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    array([[ 0.,  1., -4.],
           [ 1.,  0., -3.],
           [-4., -3.,  0.]])
    """
    s_cc = _real_matrix("s_cc", s_cc)
    e_tc = _real_matrix("e_tc", e_tc)
    if s_cc.shape[0] != s_cc.shape[1]:
        raise ValueError(f"s_cc must be square (c, c), got shape {s_cc.shape}")
    if e_tc.shape[1] != s_cc.shape[0]:
        raise ValueError(
            f"e_tc must have c={s_cc.shape[0]} columns to match s_cc {s_cc.shape}, "
            f"got shape {e_tc.shape}"
        )
    with _one_blas_thread():
        return _distances(s_cc, e_tc)


def _distances(s_cc: np.ndarray, e_tc: np.ndarray) -> np.ndarray:
    # A repeated token must be exactly 0 from itself: the basis change below gives two equal
    # rows coordinates that differ by rounding, so compute on the distinct rows (compared
    # bytewise: fast, and a -0.0/0.0 pair left undeduplicated only costs exactness) and expand.
    e_tc = np.ascontiguousarray(e_tc)
    bytes_t = e_tc.view(np.dtype((np.void, e_tc.itemsize * e_tc.shape[1]))).ravel()
    _, first_u, row_of_t = np.unique(bytes_t, return_index=True, return_inverse=True)
    if len(first_u) < len(e_tc):
        d2_uu = _distinct_distances(s_cc, e_tc[first_u])
        row_of_t = row_of_t.reshape(-1)
        return d2_uu[row_of_t[:, None], row_of_t[None, :]]
    return _distinct_distances(s_cc, e_tc)


def _distinct_distances(s_cc: np.ndarray, e_tc: np.ndarray) -> np.ndarray:
    sym_cc = (s_cc + s_cc.T) / 2
    # Every difference e_a − e_b is a difference of rows of x = e − e_0, which span at most
    # T − 1 dimensions: with x[1:]ᵀ = Q·F, x = [0; Fᵀ]·Qᵀ exactly, and d² only needs S on span Q.
    x_tc = e_tc - e_tc[0]
    T, c = e_tc.shape
    if T - 1 < c:
        q_cm, f_mm = np.linalg.qr(x_tc[1:].T)
        z_tm = np.vstack([np.zeros((1, f_mm.shape[0])), f_mm.T])
        core_mm = q_cm.T @ sym_cc @ q_cm
        core_mm = (core_mm + core_mm.T) / 2
    else:
        z_tm, core_mm = x_tc, sym_cc
    lam_m, v_mm = np.linalg.eigh(core_mm)
    y_tm = z_tm @ v_mm  # coordinates in the eigenbasis
    d2_tt = np.zeros((T, T))
    for sign, part in ((1.0, lam_m > 0), (-1.0, lam_m < 0)):
        if part.any():
            w_tr = y_tm[:, part] * np.sqrt(np.abs(lam_m[part]))
            d2_tt += sign * cdist(w_tr, w_tr, "sqeuclidean")
    np.fill_diagonal(d2_tt, 0.0)  # already 0: cdist of a row with itself; kept for the contract
    return d2_tt


def check_attention(attn: object, name: str) -> np.ndarray:
    """``attn`` as float64 (L, H, T, T) softmax attention — real, finite, ≥ 0, every row summing
    to 1 or all 0 — else a TypeError/ValueError naming ``name``."""
    arr = np.asarray(attn)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3] or 0 in arr.shape:
        raise ValueError(f"{name} must have shape (L, H, T, T) with L, H, T ≥ 1, got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"{name} must be ≥ 0 (softmax weights), got min {arr.min():.3g}")
    total_lht = arr.sum(-1)
    bad = (total_lht != 0) & (np.abs(total_lht - 1) > ROW_SUM_ATOL)
    if bad.any():
        layer, h, q = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} rows must sum to 1 (or be all 0), but layer {layer}, head {h}, query {q} "
            f"sums to {total_lht[layer, h, q]:.6g}"
        )
    return arr


def coverage(attn_lhtt: np.ndarray, pattern: Pattern, mode: str = "merged") -> np.ndarray:
    """The fraction of each head's attention mass inside ``pattern``'s mask, (L, H) in [0, 1].

    For head h of layer l the mask is the one :func:`flowgraph.stack` gives that head:
    ``"merged"`` the union of the pattern's steps (every head, every layer), ``"interleave"``
    step l mod p (layer l), ``"heads"`` step h mod p (head h). The coverage is the mean over
    query rows of Σ_k A[q, k]·mask[q, k]; rows must sum to 1 (softmax attention) or be all zero
    (a query that attends nothing, as in a model trained with a pattern that leaves a row empty);
    zero rows carry no mass and are left out of the mean.

    Sequence length: ``pattern.n == T``, or ``pattern.n > T`` for a **causal** pattern, whose
    top-left T×T block is the mask (a causal pattern's prefix is what a model restricted by it
    applies to a shorter sequence; for the causal constructors — dense, local, strided, fixed —
    it is also the pattern built at n = T with the same stride/window). A bidirectional pattern with
    n ≠ T is refused: build it at n = T (its structure, e.g. LTR's blocks, depends on n).

    Raises TypeError/ValueError naming the argument for a bad shape, non-finite or negative
    attention, rows not summing to 1, an unknown mode, or a pattern of the wrong length.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got mode={mode!r}")
    attn = check_attention(attn_lhtt, "attn_lhtt")
    L, H, T, _ = attn.shape
    total_lht = attn.sum(-1)
    empty_lht = total_lht == 0
    if empty_lht.all(axis=-1).any():
        layer, h = (int(i) for i in np.argwhere(empty_lht.all(axis=-1))[0])
        raise ValueError(f"attn_lhtt layer {layer}, head {h} has no attention mass in any row")
    if pattern.n < T or (pattern.n > T and not pattern.causal):
        need = "n ≥ T (a causal pattern)" if pattern.causal else "n == T (a bidirectional pattern)"
        raise ValueError(
            f"pattern {pattern.name!r} has n={pattern.n} but the attention has T={T} tokens; "
            f"need {need}: build the pattern with n={T}"
        )
    p = pattern.num_steps
    step_masks = [pattern.steps[s][:T, :T].toarray() for s in range(p)]
    if mode == "merged":
        union = np.logical_or.reduce(step_masks)
        mask_lhtt = np.broadcast_to(union, (L, H, T, T))
    elif mode == "interleave":
        mask_lhtt = np.stack([step_masks[layer % p] for layer in range(L)])[:, None]
    else:
        mask_lhtt = np.stack([step_masks[h % p] for h in range(H)])[None]
    inside_lht = (attn * mask_lhtt).sum(-1)
    fraction_lht = np.where(empty_lht, 0.0, inside_lht / np.where(empty_lht, 1.0, total_lht))
    rows_lh = (~empty_lht).sum(-1)
    return fraction_lht.sum(-1) / rows_lh  # ≤ 1: a sum over a subset of non-negative weights


def _real_matrix(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr.astype(np.float64, copy=False)
