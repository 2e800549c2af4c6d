"""The CPU training loop of word2vec, compiled with numba: word2vec.c's skip-gram with negative
sampling, one (centre, context) pair at a time, on ``workers`` threads.

Speed: the inner loops are float32 throughout (one float64 temporary stops LLVM from
vectorising the dot product and the two row updates: 2.4× slower), the sigmoid is word2vec.c's
table, and negatives come from Walker's alias table (O(1) per draw, exact).

Determinism with threads: each thread trains its share of a chunk of sentences on its own copy
of the two tables, then the rows some thread updated are merged in a fixed order
(``row += Σ_t (copy_t − row)``) and handed back to every copy. Nothing depends on thread timing,
so a seed and a worker count give the same vectors on every run. The cost: ``2 · workers · V · d``
floats of copies, a merge per chunk over the rows touched (negatives reach most of the context
table, so the caller sizes chunks by the vocabulary: ``train.default_chunk_words``), and threads
see each other's updates once per chunk (hogwild, as in word2vec.c and gensim, has races
instead). One worker trains in place with no copies.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["alias_table", "sigmoid_table", "split_by_words", "train_block"]

EXP_TABLE_SIZE = 1000  # word2vec.c's sigmoid table: 1000 steps over [-6, 6]
MAX_EXP = 6.0


def sigmoid_table() -> np.ndarray:
    """(EXP_TABLE_SIZE,) float32 σ(x) at x = (i / SIZE · 2 − 1) · MAX_EXP, as word2vec.c."""
    x = (np.arange(EXP_TABLE_SIZE, dtype=np.float64) / EXP_TABLE_SIZE * 2 - 1) * MAX_EXP
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def alias_table(probabilities_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table of a distribution (Vose's construction): draw ``i`` uniform in
    ``[0, V)``, keep it with probability ``prob_v[i]``, else take ``alias_v[i]``. Exact up to
    float rounding and O(1) per draw (a bisection of the cumulative table, as gensim's, costs
    log₂ V dependent, unpredictable branches per negative)."""
    p_v = np.asarray(probabilities_v, dtype=np.float64)
    return _alias_table(p_v * (len(p_v) / p_v.sum()))


@nb.njit(cache=True)
def _alias_table(scaled_v):
    n = len(scaled_v)
    prob_v = np.ones(n, dtype=np.float32)
    alias_v = np.arange(n).astype(np.int32)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    ns = nl = 0
    for i in range(n):
        if scaled_v[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        g = large[nl - 1]
        prob_v[s] = scaled_v[s]
        alias_v[s] = g
        scaled_v[g] = (scaled_v[g] + scaled_v[s]) - 1.0
        if scaled_v[g] < 1.0:
            nl -= 1
            small[ns] = g
            ns += 1
    return prob_v, alias_v  # entries left in either list keep probability 1


@nb.njit(nogil=True, fastmath=True, cache=True)
def _next(state: np.uint64) -> np.uint64:
    return state * np.uint64(25214903917) + np.uint64(11)  # word2vec.c's generator


@nb.njit(nogil=True, fastmath=True, cache=True)
def _train_sentences(
    v_vd, u_vd, ids_n, bounds_s1, s_begin, s_end, keep_v, alias_prob_v, alias_v, sig_e,
    window, negative, alpha0, words_before, progress_scale, total_words, state, touched_v2,
):  # fmt: skip
    """Train sentences ``s_begin:s_end`` of a chunk in place; returns the words read. Rows
    updated are flagged in ``touched_v2`` (column 0: centre table, 1: context table)."""
    d = v_vd.shape[1]
    neu1e_d = np.zeros(d, dtype=np.float32)
    longest = 0
    for s in range(s_begin, s_end):
        longest = max(longest, bounds_s1[s + 1] - bounds_s1[s])
    sent_n = np.empty(longest, dtype=np.int32)
    num_words = np.uint64(len(alias_v))
    min_alpha = alpha0 * 1e-4
    scale = EXP_TABLE_SIZE / MAX_EXP / 2
    words_done = 0
    for s in range(s_begin, s_end):
        a, b = bounds_s1[s], bounds_s1[s + 1]
        progress = (words_before + words_done * progress_scale) / (total_words + 1.0)
        alpha = max(alpha0 * (1.0 - progress), min_alpha)
        words_done += b - a
        n = 0
        for k in range(a, b):  # frequent-word subsampling
            w = ids_n[k]
            state = _next(state)
            if keep_v[w] < 1.0 and (state >> np.uint64(40)) * (1.0 / 16777216.0) >= keep_v[w]:
                continue
            sent_n[n] = w
            n += 1
        for i in range(n):
            state = _next(state)
            win = window - np.int64((state >> np.uint64(33)) % np.uint64(window))  # 1..window
            centre = sent_n[i]
            touched_v2[centre, 0] = 1
            vc_d = v_vd[centre]
            for j in range(max(0, i - win), min(n, i + win + 1)):
                if j == i:
                    continue
                context = sent_n[j]
                neu1e_d[:] = 0.0
                for k in range(negative + 1):
                    if k == 0:
                        target, label = context, 1.0
                    else:
                        state = _next(state)  # Walker's alias method: O(1), exact
                        # multiply-shift maps the top 32 bits onto [0, V) without a division
                        target = np.int64(((state >> np.uint64(32)) * num_words) >> np.uint64(32))
                        state = _next(state)
                        if (state >> np.uint64(40)) * (1.0 / 16777216.0) >= alias_prob_v[target]:
                            target = alias_v[target]
                        if target == context:
                            continue
                        label = 0.0
                    touched_v2[target, 1] = 1
                    ut_d = u_vd[target]
                    f = np.float32(0.0)  # float32 throughout: float64 would stop vectorisation
                    for x in range(d):
                        f += vc_d[x] * ut_d[x]
                    if f > MAX_EXP:
                        g = np.float32((label - 1.0) * alpha)
                    elif f < -MAX_EXP:
                        g = np.float32(label * alpha)
                    else:
                        g = np.float32((label - sig_e[int((f + MAX_EXP) * scale)]) * alpha)
                    for x in range(d):
                        neu1e_d[x] += g * ut_d[x]
                        ut_d[x] += g * vc_d[x]
                for x in range(d):
                    vc_d[x] += neu1e_d[x]
    return words_done


@nb.njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _train_block_threads(
    v_vd, u_vd, v_tvd, u_tvd, touched_tv2, ids_n, bounds_s1, split_t1, keep_v, alias_prob_v,
    alias_v, sig_e, window, negative, alpha0, words_before, total_words, seeds_t, words_t,
):  # fmt: skip
    workers = split_t1.shape[0] - 1
    for t in nb.prange(workers):
        words_t[t] = _train_sentences(
            v_tvd[t], u_tvd[t], ids_n, bounds_s1, split_t1[t], split_t1[t + 1], keep_v,
            alias_prob_v, alias_v, sig_e, window, negative, alpha0, words_before, workers,
            total_words, seeds_t[t], touched_tv2[t],
        )  # fmt: skip
    # Merge in a fixed order, then hand the result back to every copy. Only rows some worker
    # updated are visited, so the cost follows the block, not the vocabulary; rows are
    # independent, so the merge runs on every thread.
    for r in nb.prange(v_vd.shape[0]):
        _merge_row(v_vd, v_tvd, touched_tv2, 0, r)
        _merge_row(u_vd, u_tvd, touched_tv2, 1, r)


@nb.njit(nogil=True, fastmath=True, cache=True)
def _merge_row(g_vd, c_tvd, touched_tv2, table, r):
    """``g[r] += Σ_t (c_t[r] − g[r])`` in thread order over the copies that touched row ``r``
    (the others still hold ``g[r]``), then ``c_t[r] = g[r]`` for every copy and the flags are
    cleared. Loops run over the vector (contiguous, vectorised), the threads outside."""
    workers, _, d = c_tvd.shape
    first = -1
    for t in range(workers):
        if touched_tv2[t, r, table] == 0:
            continue
        touched_tv2[t, r, table] = 0
        if first < 0:  # the first toucher's copy accumulates the sum
            first = t
            continue
        acc_d, src_d = c_tvd[first, r], c_tvd[t, r]
        for x in range(d):
            acc_d[x] += src_d[x] - g_vd[r, x]
    if first < 0:
        return
    g_vd[r, :] = c_tvd[first, r]
    for t in range(workers):
        if t != first:
            c_tvd[t, r, :] = g_vd[r]


@nb.njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _train_block_hogwild(
    v_vd, u_vd, touched_tv2, ids_n, bounds_s1, split_t1, keep_v, alias_prob_v, alias_v, sig_e,
    window, negative, alpha0, words_before, total_words, seeds_t, words_t,
):  # fmt: skip
    # every worker updates the shared tables with no locks: their races decide the result
    workers = split_t1.shape[0] - 1
    for t in nb.prange(workers):
        words_t[t] = _train_sentences(
            v_vd, u_vd, ids_n, bounds_s1, split_t1[t], split_t1[t + 1], keep_v, alias_prob_v,
            alias_v, sig_e, window, negative, alpha0, words_before, workers, total_words,
            seeds_t[t], touched_tv2[t],
        )  # fmt: skip


def split_by_words(bounds_s1: np.ndarray, workers: int) -> np.ndarray:
    """(workers + 1,) int64 sentence indices splitting a chunk into ``workers`` runs of about
    equal word counts: worker ``t`` trains sentences ``split[t]:split[t + 1]``."""
    targets = np.linspace(0, bounds_s1[-1], workers + 1)
    split_t1 = np.searchsorted(bounds_s1, targets).astype(np.int64)
    split_t1[0], split_t1[-1] = 0, len(bounds_s1) - 1
    return np.maximum.accumulate(split_t1)


def train_block(
    v_vd: np.ndarray,
    u_vd: np.ndarray,
    copies: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ids_n: np.ndarray,
    bounds_s1: np.ndarray,
    *,
    keep_v: np.ndarray,
    alias_prob_v: np.ndarray,
    alias_v: np.ndarray,
    sig_e: np.ndarray,
    window: int,
    negative: int,
    alpha: float,
    words_before: int,
    total_words: int,
    seeds_t: np.ndarray,
    hogwild_scratch_tv2: np.ndarray | None = None,
) -> None:
    """Train one chunk of sentences into ``v_vd`` / ``u_vd`` (in place). ``copies`` are the
    per-worker tables ``(v_tvd, u_tvd)`` holding the same values as ``v_vd`` / ``u_vd`` and
    zeroed flags ``touched_tv2`` (uint8), or ``None`` for one worker; ``seeds_t`` gives each
    worker's random state (uint64). With ``hogwild_scratch_tv2`` (a (workers, V, 2) uint8
    scratch array) the workers share ``v_vd`` / ``u_vd`` instead, with races (not
    deterministic), and ``copies`` is ignored."""
    workers = len(seeds_t)
    if copies is None and hogwild_scratch_tv2 is None:
        _train_sentences(
            v_vd, u_vd, ids_n, bounds_s1, 0, len(bounds_s1) - 1, keep_v, alias_prob_v, alias_v,
            sig_e, window, negative, alpha, words_before, 1, total_words, seeds_t[0],
            np.zeros((len(v_vd), 2), dtype=np.uint8),
        )  # fmt: skip
        return
    split_t1 = split_by_words(bounds_s1, workers)
    words_t = np.zeros(workers, dtype=np.int64)
    if hogwild_scratch_tv2 is not None:
        _train_block_hogwild(
            v_vd, u_vd, hogwild_scratch_tv2, ids_n, bounds_s1, split_t1, keep_v, alias_prob_v,
            alias_v, sig_e, window, negative, alpha, words_before, total_words, seeds_t, words_t,
        )  # fmt: skip
        return
    _train_block_threads(
        v_vd, u_vd, *copies, ids_n, bounds_s1, split_t1, keep_v, alias_prob_v, alias_v, sig_e,
        window, negative, alpha, words_before, total_words, seeds_t, words_t,
    )  # fmt: skip
