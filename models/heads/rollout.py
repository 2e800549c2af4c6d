"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The variant computed here, which is the paper's and its public code's:

- heads: the mean over a layer's heads (``heads="mean"``), or one head / a subset;
- residual: Â_l = residual·I + (1 − residual)·A_l, with ``residual=0.5`` the paper's (A + I)/2;
- renormalisation: each row of Â_l divided by its sum (a no-op for softmax rows; a query that
  attends nothing under a sparse pattern keeps only its residual, e_q; with ``residual=0`` such a
  row stays 0);
- products layer by layer: R_0 = I, R_l = Â_l · R_{l−1}; R_l[q, k] is how much of input token k
  reaches position q after layer l.

:func:`mixed_attention` gives the Â_l that :func:`rollout` multiplies and that
:func:`~models.heads.attention_flow.attention_flow` uses as edge capacities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flowgraph.models.heads.metrics import check_attention

__all__ = ["attention_array", "mixed_attention", "rollout"]


def _residual(residual: object) -> float:
    if isinstance(residual, bool) or not isinstance(residual, (int, float, np.floating)):
        raise TypeError(f"residual must be a number in [0, 1], got {residual!r}")
    if not 0.0 <= float(residual) <= 1.0:
        raise ValueError(f"residual must be in [0, 1] (the weight of the identity), got {residual}")
    return float(residual)


def _check_attention(attn: object) -> np.ndarray:
    return check_attention(attn, "attention")


def attention_array(source: object, ids: object = None) -> np.ndarray:
    """The (L, H, T, T) float64 attention of ``source``: a
    :class:`~models.heads.Checkpoint` run on ``ids``, or an attention array itself (then
    ``ids`` must be None)."""
    from flowgraph.models.heads.checkpoint import Checkpoint

    if isinstance(source, Checkpoint):
        if ids is None:
            raise ValueError("ids is required with a Checkpoint: the token ids to run it on")
        return _check_attention(source.attention(ids))
    if isinstance(source, (np.ndarray, list, tuple)):
        if ids is not None:
            raise ValueError(
                "ids must be None when ck is an attention array (the array is the attention)"
            )
        return _check_attention(source)
    raise TypeError(
        "ck must be a models.heads.Checkpoint or an (L, H, T, T) attention array, "
        f"got {type(source).__name__}"
    )


def _head_mean(attn_lhqk: np.ndarray, heads: object) -> np.ndarray:
    H = attn_lhqk.shape[1]
    if isinstance(heads, str):
        if heads != "mean":
            raise ValueError(f"heads must be 'mean', a head index or a list of them, got {heads!r}")
        return attn_lhqk.mean(axis=1)
    picked: Sequence[object] = [heads] if not isinstance(heads, (list, tuple)) else heads
    if len(picked) == 0:
        raise ValueError("heads must name at least one head, got an empty list")
    for h in picked:
        if isinstance(h, (bool, np.bool_)) or not isinstance(h, (int, np.integer)):
            raise TypeError(f"heads must be 'mean', an int or a list of ints, got {h!r}")
        if not 0 <= int(h) < H:
            raise ValueError(f"heads holds {h}, but the model has {H} heads (0..{H - 1})")
    return attn_lhqk[:, [int(h) for h in picked]].mean(axis=1)


def mixed_attention(
    ck: object, ids: object = None, *, residual: float = 0.5, heads: object = "mean"
) -> np.ndarray:
    """(L, T, T) float64 Â_l = rownorm(residual·I + (1 − residual)·A_l), A_l the mean of the
    chosen heads of layer l (see the module docstring); ``ck`` and ``ids`` as in :func:`rollout`.
    Rows sum to 1, except a row that is 0 in A_l when ``residual=0``."""
    residual = _residual(residual)
    a_lqk = _head_mean(attention_array(ck, ids), heads)
    T = a_lqk.shape[-1]
    mixed_lqk = residual * np.eye(T) + (1.0 - residual) * a_lqk
    total_lq = mixed_lqk.sum(-1, keepdims=True)
    return mixed_lqk / np.where(total_lq > 0, total_lq, 1.0)


def rollout(
    ck: object, ids: object = None, *, residual: float = 0.5, heads: object = "mean"
) -> np.ndarray:
    """Attention rollout: (L+1, T, T) float64 R with R_0 = I and R_l = Â_l · R_{l−1}.

    Parameters
    ----------
    ck : a :class:`~models.heads.Checkpoint` (with ``ids``, 1-D token ids), or an attention
        array (L, H, T, T) whose rows sum to 1 (or are all 0), with ``ids=None``.
    residual : the identity's weight in Â_l = residual·I + (1 − residual)·A_l, in [0, 1];
        0.5 is the paper's (A + I)/2.
    heads : ``"mean"`` (every head, the paper's), a head index, or a list of head indices.

    Returns
    -------
    (L+1, T, T) float64: R[l, q, k], the share of input token k in position q after layer l
    (rows sum to 1; a causal model's R is lower-triangular).

    Raises
    ------
    TypeError, ValueError naming the argument: a bad residual, heads, ids or attention array.

    Examples
    --------
    >>> import numpy as np
    >>> attn = np.full((2, 1, 2, 2), 0.5)  # two layers, one head, uniform over two tokens
    >>> rollout(attn)[2]  # Â = [[.75, .25], [.25, .75]] each layer, R_2 = Â²
    array([[0.625, 0.375],
           [0.375, 0.625]])
    """
    mixed_lqk = mixed_attention(ck, ids, residual=residual, heads=heads)
    L, T, _ = mixed_lqk.shape
    roll_lqk = np.empty((L + 1, T, T))
    roll_lqk[0] = np.eye(T)
    for layer in range(L):
        roll_lqk[layer + 1] = mixed_lqk[layer] @ roll_lqk[layer]
    return roll_lqk
