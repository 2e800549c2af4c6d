"""Embedding tables for the Embeddings page: a checkpoint's token or position embeddings, or
saved word2vec vectors, all as :class:`models.word2vec.WordVectors` so that neighbours and
similarities come from one implementation; plus the 2-D PCA map and pairwise cosine distances.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

__all__ = [
    "MAX_PCA_VECTORS",
    "SOURCES",
    "cosine_distances",
    "parse_tokens",
    "pca_2d",
    "table_from_checkpoint",
]

SOURCES = ("tok", "pos", "w2v")  # token embeddings, position embeddings, word2vec vectors
MAX_PCA_VECTORS = 5000  # the map shows the first rows (word2vec: the most frequent words)


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct (WordVectors needs that): a repeat gets ``#id`` appended."""
    seen: dict[str, int] = {}
    out = []
    for i, label in enumerate(labels):
        out.append(label if label not in seen else f"{label}#{i}")
        seen.setdefault(label, i)
    return out


def table_from_checkpoint(ckpt: Any, source: str) -> Any:
    """A checkpoint's token (``"tok"``) or position (``"pos"``) embeddings as WordVectors;
    positions are labelled ``p0, p1, …``."""
    from flowgraph.models.word2vec import WordVectors

    if source == "tok":
        return WordVectors(_unique(list(ckpt.tokens)), ckpt.token_embeddings())
    if source == "pos":
        pos_nc = ckpt.position_embeddings()
        if pos_nc is None:
            raise ValueError(f"{ckpt.name} has no learned position embeddings")
        return WordVectors([f"p{t}" for t in range(pos_nc.shape[0])], pos_nc)
    raise ValueError(f"source must be 'tok' or 'pos' for a checkpoint, got {source!r}")


def parse_tokens(text: str, limit: int) -> list[str]:
    """Tokens typed as a list: split at whitespace and commas; at most ``limit`` of them."""
    tokens = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if len(tokens) > limit:
        raise ValueError(f"tokens: {len(tokens)} given; the limit is {limit}")
    return tokens


def pca_2d(vectors_vd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``vectors_vd`` projected on their first two principal components, and the
    fraction of the variance each explains: ((V, 2), (2,)). Computed by an SVD of the centred
    rows; with fewer than two dimensions of variance the missing coordinates are 0."""
    x_vd = np.asarray(vectors_vd, dtype=np.float64)
    if x_vd.ndim != 2 or x_vd.shape[0] < 1:
        raise ValueError(f"vectors_vd must be (V, d) with V ≥ 1, got shape {x_vd.shape}")
    x_vd = x_vd - x_vd.mean(axis=0)
    _, s, vt = np.linalg.svd(x_vd, full_matrices=False)
    k = min(2, vt.shape[0])
    xy_v2 = np.zeros((x_vd.shape[0], 2))
    xy_v2[:, :k] = x_vd @ vt[:k].T
    total = float((s**2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = s[:k] ** 2 / total
    return xy_v2, explained


def cosine_distances(vectors_td: np.ndarray) -> np.ndarray:
    """(T, T) cosine distances 1 − cos between the rows (scipy's ``cdist``)."""
    x_td = np.asarray(vectors_td, dtype=np.float64)
    return cdist(x_td, x_td, metric="cosine")
