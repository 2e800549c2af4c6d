"""The torch training path of word2vec (CUDA, or CPU when asked): large batches of
(centre, context) pairs, built per chunk without a Python loop per pair, and batched SGD.

Per batch of B pairs: the centre rows ``v_bd`` and the context-plus-negatives rows ``u_bkd``
(k = 1 + negative) are gathered, scored with one ``einsum``, and the word2vec gradients are
scattered back with ``index_add_`` (rows repeated in a batch get the sum, as hogwild would).
Negatives are drawn per pair from a unigram^0.75 table. Pairs are shuffled within a chunk, so a
batch does not pile one frequent centre word's updates together.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NOISE_TABLE_SIZE", "TorchState", "noise_table", "train_chunk"]

NOISE_TABLE_SIZE = 10_000_000  # word2vec.c uses 1e8; 1e7 resolves p ≥ 1e-7 and is 80 MB int64


def noise_table(cum_v: np.ndarray, device: torch.device) -> torch.Tensor:
    """(NOISE_TABLE_SIZE,) int64 word ids: entry j is the word whose cumulative noise interval
    holds j/SIZE, so a uniform index draws a word ∝ count^0.75."""
    points = (np.arange(NOISE_TABLE_SIZE, dtype=np.float64) + 0.5) / NOISE_TABLE_SIZE
    ids = np.searchsorted(cum_v / float(cum_v[-1]), points, side="right")
    return torch.from_numpy(np.minimum(ids, len(cum_v) - 1)).to(device)


class TorchState:
    """The tables and constant tensors of one training run on one device."""

    def __init__(
        self,
        v_vd: torch.Tensor,
        u_vd: torch.Tensor,
        keep_v: torch.Tensor,
        table_n: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.v_vd, self.u_vd, self.keep_v, self.table_n = v_vd, u_vd, keep_v, table_n
        self.generator = generator


def _pairs(
    state: TorchState, ids_n: torch.Tensor, sentence_n: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample, draw each centre's reduced window, and list the (centre, context) pairs."""
    gen = state.generator
    device = ids_n.device
    kept = torch.rand(ids_n.shape, generator=gen, device=device) < state.keep_v[ids_n]
    ids_n, sentence_n = ids_n[kept], sentence_n[kept]
    win_n = torch.randint(1, window + 1, ids_n.shape, generator=gen, device=device)
    centres, contexts = [], []
    for offset in range(1, window + 1):  # a loop over offsets, never over pairs
        same = sentence_n[offset:] == sentence_n[:-offset]
        left, right = ids_n[:-offset], ids_n[offset:]
        forward = same & (win_n[:-offset] >= offset)  # centre left, context right
        backward = same & (win_n[offset:] >= offset)  # centre right, context left
        centres += [left[forward], right[backward]]
        contexts += [right[forward], left[backward]]
    centre_p, context_p = torch.cat(centres), torch.cat(contexts)
    order = torch.randperm(centre_p.numel(), generator=gen, device=device)
    return centre_p[order], context_p[order]


def train_chunk(
    state: TorchState,
    ids_n: np.ndarray,
    bounds_s1: np.ndarray,
    *,
    window: int,
    negative: int,
    alpha: float,
    words_before: int,
    total_words: int,
    batch_size: int,
) -> None:
    """Train one chunk of sentences (ids and sentence bounds as from ``encode_chunks``)."""
    device = state.v_vd.device
    lengths = np.diff(bounds_s1)
    ids = torch.from_numpy(ids_n.astype(np.int64)).to(device)
    sentence = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)).to(device)
    centre_p, context_p = _pairs(state, ids, sentence, window)
    num_pairs = centre_p.numel()
    chunk_words = len(ids_n)
    label_k = torch.zeros(negative + 1, device=device)
    label_k[0] = 1.0
    v_vd, u_vd = state.v_vd, state.u_vd
    for start in range(0, num_pairs, batch_size):
        stop = min(start + batch_size, num_pairs)
        progress = (words_before + chunk_words * start / num_pairs) / (total_words + 1.0)
        lr = max(alpha * (1.0 - progress), alpha * 1e-4)
        centre_b, context_b = centre_p[start:stop], context_p[start:stop]
        draw_bk = torch.randint(
            state.table_n.numel(), (stop - start, negative), generator=state.generator,
            device=device,
        )  # fmt: skip
        target_bk = torch.cat([context_b[:, None], state.table_n[draw_bk]], dim=1)
        v_bd = v_vd[centre_b]
        u_bkd = u_vd[target_bk]
        score_bk = torch.einsum("bd,bkd->bk", v_bd, u_bkd)
        g_bk = (label_k - torch.sigmoid(score_bk)) * lr
        g_bk[:, 1:] *= target_bk[:, 1:] != context_b[:, None]  # word2vec skips a negative = context
        v_vd.index_add_(0, centre_b, torch.einsum("bk,bkd->bd", g_bk, u_bkd))
        u_vd.index_add_(
            0, target_bk.reshape(-1), (g_bk[:, :, None] * v_bd[:, None, :]).flatten(0, 1)
        )
