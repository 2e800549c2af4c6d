"""Exact attention flow (Abnar & Zuidema 2020): max flow through the layered attention graph.

The graph, as the paper's public code builds it (``get_adjmat`` + ``compute_flows``): one node
per position at each layer 0..L; an edge from (l−1, k) to (l, q) for every key k and query q of
layer l, with capacity Â_l[q, k], the residual-mixed, row-renormalised head-mean attention of
:func:`~models.heads.rollout.mixed_attention`; no node capacities (the code sets edge
capacities only; a node's throughput is bounded by its in-edges, which sum to 1). The value at
(l, q) for source token k is the maximum flow from input node (0, k) to node (l, q); layer 0 is
the identity (a node is its own source), as in :func:`~models.heads.rollout.rollout`. The public
code runs networkx's Edmonds–Karp once per pair, minutes for a 6-layer model at 128 tokens.

Layers 1 and 2 have closed forms (one edge; Σ_i min(Â_1[i, k], Â_2[q, i]), since two-layer paths
share no edge). Deeper, most pairs are settled by a *meeting certificate* that shares the work of
one source across every target and of one target across every source; the rest are solved one
by one by Dinic's algorithm.

Meeting certificate. Two cuts bound the flow of a pair: the source's out-edges (capacity c_k =
Σ_i Â_1[i, k]) and the target's in-edges (d_q = Σ_i Â_l[q, i]), so flow ≤ v = min(c_k, d_q). For
l ≥ 6 pick the middle layer m = ⌊l/2⌋ (≥ 3 layers a side: with two, a spread rarely meets π) and
a distribution π over its positions (uniform). *Spread* k: a max
flow from (0, k) through layers 1..m into a sink fed by each (m, i) with capacity c_k·π_i; if it
saturates (value c_k), a flow S_k leaves (0, k) with c_k and arrives at (m, i) with exactly
c_k·π_i. *Gather* q: the same on the reversed layers m..l, a flow G_q entering each (m, i) with
d_q·π_i and reaching (l, q) with d_q. For a pair whose spread and gather both saturate,
(v/c_k)·S_k + (v/d_q)·G_q uses disjoint edges (layers ≤ m, > m), scales each flow by ≤ 1, and
balances at every (m, i) (in v·π_i, out v·π_i): a feasible flow of value v, which meets a cut, so
it is the max flow, F = min(c_k, d_q). So T spreads and T gathers (2T max flows) settle up to T²
pairs. A flow that does not saturate (or not within ``MEET_PHASES`` Dinic phases, which bounds
the time a hopeless one wastes) proves nothing; its pairs go to the search. On dense
attention nearly every spread and gather saturates (all at 12 layers and T = 512: 1,024 max
flows instead of 262,144); on a causal model S_k cannot reach positions < k, so no uniform π is
met and the pairs are searched (pairs with k > q are 0 without a search).

The search, per (source, target), is Dinic's algorithm on arrays, compiled with numba and run in
parallel over the problems (``prange``); spreads and gathers run on the same solver, with the
sink (or source) of capacities c_k·π as one extra layer. It exploits the layered structure: arcs
are implicit in dense (T, T) blocks per layer (one residual array), a target at layer l needs
layers 1..l only, the only live nodes of layers 0 and l are the source and the target, the first
phase needs no search (with no flow yet, a node's BFS level is its layer), its DFS reads each
node's arcs by descending capacity, except that the last two layers are read through a
union-find over their live nodes (ranked by the target's in-edges) so that their dead nodes are
skipped rather than scanned, zero-capacity arcs are not read, and a pair that no positive path
joins (a causal model's k > q) is 0 without a search.

Causal attention (every capacity above the diagonal zero, :func:`is_causal`; detected from the
capacities): the search of a pair k ≤ q reads positions k..q only, in every layer. This is
exact. Every edge (l−1, j) → (l, i) of positive capacity has j ≤ i (a key never follows its
query), so along any path of positive edges from (0, k) to (l, q) the position never decreases
and goes from k to q: a node (l', i) with i < k cannot be reached from (0, k), and one with i > q
cannot reach (l, q), so neither lies on any k→q path. The layered graph is acyclic, so every flow
decomposes into k→q paths (no cycles), none through those nodes: removing them, and their
edges, keeps every flow, hence the max flow. At 12 layers and T = 512 this makes a pair 4–6×
faster (~26 ms to ~6.5 ms, averaged over random pairs k ≤ q; docs/benchmarks.md).

Exactness: the search stops when the flow reaches the capacity of a cut — the source's out-edges
or the target's in-edges, within ``CERTIFIED`` (1e-13) of it — or when no augmenting path has
every residual above ``EPS`` (1e-15; capacities are ≤ 1). In the second case the nodes reachable
from the source through such arcs form a cut whose every crossing arc has residual ≤ EPS, so the
flow is below the min cut by at most EPS × (arcs crossing it) ≤ EPS·l·T² (3e-9 for 12 layers at
T = 512, in practice ~1e-15). In both cases the flow value is a max flow to that precision. A
spread or gather counts as saturating when it is within ``MEET_SLACK`` (1e-12) of its value; its
arrivals then fall short of c_k·π_i by at most 1e-12·c_k in all, so trimming the two flows to
what both carry at each (m, i) (a path decomposition) leaves a feasible flow of value ≥
v·(1 − 2·10⁻¹²): the reported min(c_k, d_q) is a max flow to 2e-12 relative.
:func:`flow_networkx` is the peer-library path the tests compare against (1e-9 relative).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
import numba
import numpy as np

from flowgraph.models.heads.rollout import mixed_attention

__all__ = [
    "CERTIFIED",
    "EPS",
    "MEET_SLACK",
    "attention_flow",
    "flow_networkx",
    "is_causal",
    "layered_max_flow",
    "meeting_certificate",
    "solve_pairs",
]

CERTIFIED = 1e-13  # a flow within this share of a cut's capacity is taken as the max
UF_LAYERS = 2  # the last layers whose nodes the first phase reads through a union-find
EPS = 1e-15  # residual capacities at or below this are treated as saturated (see module doc)
MEET_SLACK = 1e-12  # a spread or gather within this share of its value saturates (module doc)
MEET_PHASES = 3  # a spread or gather not saturated after this many phases is given up on
MEET_MIN_SIDE = 3  # layers on each side of layer m (two rarely mix enough to meet π; measured)


@numba.njit(cache=True, nogil=True)
def _residual(capT, res, la, ia, lb, ib):
    """Residual capacity of the arc (la, ia) → (lb, ib), lb = la ± 1."""
    if lb == la + 1:
        return res[la, ia, ib]
    return capT[lb, ib, ia] - res[lb, ib, ia]  # back along (lb, ib) → (la, ia): its flow


@numba.njit(cache=True, nogil=True)
def _max_flow(capT, order, n_pos, res, w_int, w_arcs, k, q, lt, T, lo, hi, upper, max_phases):
    """Dinic from (0, k) to (lt, q) on the nodes of positions lo..hi; returns the flow value.

    capT[l, j, i]: capacity of (l, j) → (l+1, i); res[l, j, i] its residual capacity (its flow
    is capT − res; one array, so an arc costs one memory read); order[l, j]: the i by
    descending capacity, n_pos[l, j] how many of them are > 0 (the rest never carry flow). Only
    positions lo..hi are read (a causal pair's k..q, module docstring; 0..T−1 otherwise): the
    others are skipped as if removed. Node (l, i) has index l·T + i in the per-node arrays;
    layers and positions are carried side by side (no division in the inner loops). ``w_int``
    holds the int work arrays, ``w_arcs`` the arcs to reset: res equals capT again on return. After
    ``max_phases`` phases it gives up and returns the flow so far (a lower bound; the solver
    passes more phases than a phase count can reach, the spreads and gathers a few)."""
    n_nodes = (lt + 1) * T
    level, ptr = w_int[0], w_int[1]
    queue_l, queue_i = w_int[2], w_int[3]
    path_l, path_i = w_int[4], w_int[5]
    by_sink, sink_rank, alive = w_int[6], w_int[7], w_int[8 : 8 + UF_LAYERS]
    touched_l, touched_j, touched_i = w_arcs[0], w_arcs[1], w_arcs[2]
    total = 0.0
    if lo > hi or not (lo <= k <= hi and lo <= q <= hi):
        return total  # the window holds no path (a causal k > q)
    n_touched = 0
    for phase in range(min(n_nodes + 1, max_phases)):
        if upper - total <= CERTIFIED * upper:
            break  # the flow meets a cut's capacity: it is a max flow
        if phase == 0:
            # no flow yet: every arc has its full capacity, a node's BFS level is its layer
            for lay in range(lt + 1):
                for i in range(lo, hi + 1):
                    level[lay * T + i] = lay
            # the last UF_LAYERS layers are read by descending sink capacity, skipping dead
            # nodes through ``alive`` (a union-find "next alive" over the ranks, a row a layer)
            by_sink[:T] = np.argsort(-capT[lt - 1, :, q])
            for r in range(T):
                sink_rank[by_sink[r]] = r
            for row in range(UF_LAYERS):
                for r in range(T + 1):
                    alive[row, r] = r
                for r in range(T):  # a node outside the window is dead from the start
                    if by_sink[r] < lo or by_sink[r] > hi:
                        alive[row, r] = r + 1
        else:
            # BFS levels from the source over arcs with residual > EPS
            for lay in range(lt + 1):
                for i in range(lo, hi + 1):
                    level[lay * T + i] = -1
            level[k] = 0
            head, tail = 0, 1
            queue_l[0], queue_i[0] = 0, k
            while head < tail and level[lt * T + q] < 0:
                lu, iu = queue_l[head], queue_i[head]
                head += 1
                lev = level[lu * T + iu] + 1
                if lu < lt:
                    i_lo, i_hi = (q, q + 1) if lu + 1 == lt else (lo, hi + 1)
                    base = (lu + 1) * T
                    for i2 in range(i_lo, i_hi):
                        if level[base + i2] < 0 and res[lu, iu, i2] > EPS:
                            level[base + i2] = lev
                            queue_l[tail], queue_i[tail] = lu + 1, i2
                            tail += 1
                if lu > 0:
                    base = (lu - 1) * T
                    for j in range(lo, hi + 1):
                        if level[base + j] < 0 and capT[lu - 1, j, iu] - res[lu - 1, j, iu] > EPS:
                            level[base + j] = lev
                            queue_l[tail], queue_i[tail] = lu - 1, j
                            tail += 1
            if level[lt * T + q] < 0:
                break
        for lay in range(lt + 1):
            for i in range(lo, hi + 1):
                ptr[lay * T + i] = 0
        # blocking flow: iterative DFS with current-arc pointers; the path's d-th node is
        # (path_l[d], path_i[d])
        depth = 0
        path_l[0], path_i[0] = 0, k
        while True:
            lu, iu = path_l[depth], path_i[depth]
            if lu == lt:  # at the target: augment by the bottleneck
                push = np.inf
                for d in range(depth):
                    r = _residual(capT, res, path_l[d], path_i[d], path_l[d + 1], path_i[d + 1])
                    push = min(push, r)
                back = -1
                for d in range(depth):
                    la, ia, lb, ib = path_l[d], path_i[d], path_l[d + 1], path_i[d + 1]
                    if lb == la + 1:
                        if res[la, ia, ib] == capT[la, ia, ib]:  # first flow on it: to reset
                            if n_touched < touched_l.size:
                                touched_l[n_touched] = la
                                touched_j[n_touched] = ia
                                touched_i[n_touched] = ib
                            n_touched += 1
                        res[la, ia, ib] = max(0.0, res[la, ia, ib] - push)
                    else:
                        res[lb, ib, ia] = min(capT[lb, ib, ia], res[lb, ib, ia] + push)
                    if back < 0 and _residual(capT, res, la, ia, lb, ib) <= EPS:
                        back = d
                total += push
                if upper - total <= CERTIFIED * upper:
                    break
                depth = max(back, 0)
                continue
            u = lu * T + iu
            want = level[u] + 1
            advanced = False
            lv, iv = 0, 0
            row = lt - 2 - lu  # the successors' union-find row (0: the last layer before t)
            if phase == 0 and 0 <= row < UF_LAYERS and lu + 1 < lt:
                # arc 0: the diagonal; arc a ≥ 1: the live node of rank ≥ a − 1
                while True:
                    a = ptr[u]
                    if a == 0:
                        i2 = iu
                    else:
                        root = a - 1
                        while alive[row, root] != root:
                            root = alive[row, root]
                        r = a - 1
                        while alive[row, r] != root:  # path compression
                            r_next = alive[row, r]
                            alive[row, r] = root
                            r = r_next
                        if root >= T:
                            break
                        a = root + 1
                        ptr[u] = a
                        i2 = by_sink[root]
                    if level[(lu + 1) * T + i2] == want and res[lu, iu, i2] > EPS:
                        advanced, lv, iv = True, lu + 1, i2
                        break
                    ptr[u] = a + 1
            else:
                # the target is the last layer's only node; zero-capacity arcs are not read
                n_up = 1 if lu + 1 == lt else (n_pos[lu, iu] if lu < lt else 0)
                # phase 0 has no flow to send back
                n_arcs = n_up if phase == 0 else n_up + hi + 1 - lo
                while ptr[u] < n_arcs:
                    a = ptr[u]
                    if a < n_up:
                        # descending capacity: the big arcs carry the flow, few are read
                        i2 = q if lu + 1 == lt else order[lu, iu, a]
                        if (
                            lo <= i2 <= hi
                            and level[(lu + 1) * T + i2] == want
                            and res[lu, iu, i2] > EPS
                        ):
                            advanced, lv, iv = True, lu + 1, i2
                            break
                    elif lu > 0:
                        j = lo + a - n_up
                        flow = capT[lu - 1, j, iu] - res[lu - 1, j, iu]
                        if level[(lu - 1) * T + j] == want and flow > EPS:
                            advanced, lv, iv = True, lu - 1, j
                            break
                    ptr[u] += 1
            if advanced:
                depth += 1
                path_l[depth], path_i[depth] = lv, iv
            else:
                level[u] = -1  # dead end for the rest of this phase
                if phase == 0 and 0 <= lt - 1 - lu < UF_LAYERS and lu > 0:
                    alive[lt - 1 - lu, sink_rank[iu]] = sink_rank[iu] + 1
                if depth == 0:
                    break
                depth -= 1
                ptr[path_l[depth] * T + path_i[depth]] += 1
    if n_touched > touched_l.size:  # an arc emptied and refilled often: reset every layer
        res[:lt] = capT[:lt]
    else:
        for t in range(n_touched):
            la, ja, ia = touched_l[t], touched_j[t], touched_i[t]
            res[la, ja, ia] = capT[la, ja, ia]
    return total


@numba.njit(cache=True, parallel=True)
def _solve(capT, order, n_pos, tasks, window, upper, n_chunks, T, max_phases):
    """Max flow for every task (k, layer, q) in ``tasks`` on the positions window[p, 0]..
    window[p, 1]; task p runs in chunk p mod n_chunks, each chunk with its own work arrays."""
    n_tasks = tasks.shape[0]
    out = np.zeros(n_tasks)
    L = capT.shape[0]
    for c in numba.prange(n_chunks):
        res = capT.copy()
        # per node: level, ptr, queue (2), path (2); per position: 3; per arc: what to reset
        w_int = np.zeros((8 + UF_LAYERS, (L + 1) * T + 1), dtype=np.int64)
        w_arcs = np.zeros((3, L * T * T), dtype=np.int32)
        for p in range(c, n_tasks, n_chunks):
            out[p] = _max_flow(
                capT,
                order,
                n_pos,
                res,
                w_int,
                w_arcs,
                tasks[p, 0],
                tasks[p, 2],
                tasks[p, 1],
                T,
                window[p, 0],
                window[p, 1],
                upper[p],
                max_phases,
            )
    return out


def _check_mixed(mixed_lqk: object) -> np.ndarray:
    arr = np.asarray(mixed_lqk, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or 0 in arr.shape:
        raise ValueError(f"mixed_lqk must have shape (L, T, T) with L, T ≥ 1, got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("mixed_lqk must hold finite capacities ≥ 0")
    return np.ascontiguousarray(arr)


def _layers(layers: Iterable[int] | None, L: int) -> list[int]:
    if layers is None:
        return list(range(L + 1))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [int(layers)]
    out = []
    for layer in layers:
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layers must hold ints, got {layer!r}")
        if not 0 <= int(layer) <= L:
            raise ValueError(f"layers holds {layer}: expected 0 ≤ layer ≤ L = {L}")
        out.append(int(layer))
    if not out:
        raise ValueError("layers must name at least one layer, got none")
    return sorted(set(out))


def _threads(threads: object) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int ≥ 1 or None, got {threads!r}")
    return min(threads, numba.config.NUMBA_NUM_THREADS)


def is_causal(mixed_lqk: np.ndarray) -> bool:
    """Whether every capacity above the diagonal is zero (no key after its query, any layer):
    then a pair's search may keep positions k..q only (module docstring)."""
    return not np.triu(np.asarray(mixed_lqk), 1).any()


def solve_pairs(
    mixed_lqk: np.ndarray,
    tasks_n3: np.ndarray,
    *,
    threads: int | None = None,
    restrict: bool | None = None,
) -> np.ndarray:
    """Max flow for each row (k, layer, q) of ``tasks_n3`` (layer ≥ 1) by the compiled Dinic,
    without the closed forms and the meeting certificate of :func:`layered_max_flow` (the
    benchmark times it on a subset; the tests use it as the search-only reference).
    ``restrict``: search positions k..q only (exact on causal capacities, module docstring;
    refused on others); default: when :func:`is_causal`. False: the whole graph."""
    cap_lqk = _check_mixed(mixed_lqk)
    L, T, _ = cap_lqk.shape
    tasks = np.ascontiguousarray(np.asarray(tasks_n3, dtype=np.int64).reshape(-1, 3))
    k_t, l_t, q_t = tasks[:, 0], tasks[:, 1], tasks[:, 2]
    if len(tasks) and (
        k_t.min() < 0 or q_t.min() < 0 or max(k_t.max(), q_t.max()) >= T
        or l_t.min() < 1 or l_t.max() > L
    ):  # fmt: skip
        raise ValueError(
            f"tasks_n3 rows must be (k, layer, q) with 0 ≤ k, q < {T}, 1 ≤ layer ≤ {L}"
        )
    chosen = _threads(threads)
    if restrict is None:
        restrict = is_causal(cap_lqk)
    elif not isinstance(restrict, bool):
        raise TypeError(f"restrict must be True, False or None, got {restrict!r}")
    elif restrict and not is_causal(cap_lqk):
        raise ValueError("restrict=True needs causal capacities (zero above the diagonal)")
    return _dinic(cap_lqk, tasks, chosen, restrict=restrict)


def _dinic(
    cap_lqk: np.ndarray,
    tasks: np.ndarray,
    chosen: int | None,
    max_phases: int = 2**62,
    *,
    restrict: bool = False,
) -> np.ndarray:
    """The compiled Dinic on checked capacities and tasks (see :func:`solve_pairs`); with a
    small ``max_phases``, a lower bound on each flow; ``restrict``: positions k..q only (the
    caller has checked the capacities are causal)."""
    if not len(tasks):
        return np.zeros(0)
    T = cap_lqk.shape[1]
    k_t, l_t, q_t = tasks[:, 0], tasks[:, 1], tasks[:, 2]
    capT = np.ascontiguousarray(cap_lqk.transpose(0, 2, 1))  # capT[l, k, q]: (l, k) → (l+1, q)
    order = np.ascontiguousarray(np.argsort(-capT, axis=-1, kind="stable").astype(np.int32))
    n_pos = np.ascontiguousarray((capT > 0).sum(axis=-1).astype(np.int32))
    if restrict:
        window = np.ascontiguousarray(np.stack([k_t, q_t], axis=1))
    else:
        window = np.zeros((len(tasks), 2), dtype=np.int64)
        window[:, 1] = T - 1
    # two cuts bound every flow: the source's out-arcs and the target's in-arcs
    upper = np.minimum(cap_lqk[0].sum(axis=0)[k_t], cap_lqk[l_t - 1, q_t].sum(axis=1))
    previous = numba.get_num_threads()
    if chosen is not None:
        numba.set_num_threads(chosen)
    try:
        return _solve(
            capT, order, n_pos, tasks, window, upper, numba.get_num_threads(), T, max_phases
        )
    finally:
        numba.set_num_threads(previous)


def _two_layers(cap_lqk: np.ndarray) -> np.ndarray:
    """F[2, q, k] = Σ_i min(Â_1[i, k], Â_2[q, i]): through two layers every path is
    (0, k) → (1, i) → (2, q), one per middle node i, so paths share no edge."""
    T = cap_lqk.shape[1]
    out_qk = np.empty((T, T))
    rows = max(1, 2**22 // (T * T))  # bound the (rows, T, T) temporary to 32 MiB
    for start in range(0, T, rows):
        stop = min(T, start + rows)
        out_qk[start:stop] = np.minimum(
            cap_lqk[0][None, :, :], cap_lqk[1][start:stop, :, None]
        ).sum(axis=1)
    return out_qk


def _positive_reach(cap_lqk: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(T, T) bool R[q, i]: a path of positive capacities joins (lo, i) to (hi, q)."""
    reach_qi = np.eye(cap_lqk.shape[1])
    for layer in range(lo + 1, hi + 1):  # BLAS on 0/1 floats, re-binarised each layer
        reach_qi = ((cap_lqk[layer - 1] > 0).astype(np.float64) @ reach_qi > 0).astype(np.float64)
    return reach_qi > 0


def _spread(cap_lqk: np.ndarray, m: int, chosen: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ok_k, c_k): whether a flow from (0, k) arrives at every (m, i) with exactly c_k / T,
    c_k = Σ_i Â_1[i, k] (the source's cut); one max flow per source into an extra layer."""
    T = cap_lqk.shape[1]
    c_k = cap_lqk[0].sum(axis=0)
    ok_k = (c_k > 0) & _positive_reach(cap_lqk, 0, m).all(axis=0)  # else it cannot saturate
    (idx,) = np.nonzero(ok_k)
    if len(idx):
        sink_ki = c_k[:, None] * np.full((1, T), 1.0 / T)  # (m, i) → sink k: c_k·π_i
        aux = np.concatenate([cap_lqk[:m], sink_ki[None]])
        tasks = np.stack([idx, np.full_like(idx, m + 1), idx], axis=1)
        value = _dinic(aux, tasks, chosen, MEET_PHASES)
        ok_k[idx] = c_k[idx] - value <= MEET_SLACK * c_k[idx]
    return ok_k, c_k


def _gather(
    cap_lqk: np.ndarray, layer: int, m: int, chosen: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(ok_q, d_q): whether a flow entering every (m, i) with exactly d_q / T reaches
    (layer, q) with d_q = Σ_i Â_layer[q, i] (the target's cut): a spread on reversed layers."""
    T = cap_lqk.shape[1]
    d_q = cap_lqk[layer - 1].sum(axis=1)
    ok_q = (d_q > 0) & _positive_reach(cap_lqk, m, layer).all(axis=1)
    (idx,) = np.nonzero(ok_q)
    if len(idx):
        # reversed layer r runs from original layer `layer − r` down to `layer − r − 1`
        rev = [cap_lqk[layer - 1 - r].T for r in range(layer - m)]
        aux = np.stack([*rev, d_q[:, None] * np.full((1, T), 1.0 / T)])
        tasks = np.stack([idx, np.full_like(idx, layer - m + 1), idx], axis=1)
        value = _dinic(aux, tasks, chosen, MEET_PHASES)
        ok_q[idx] = d_q[idx] - value <= MEET_SLACK * d_q[idx]
    return ok_q, d_q


def _meet(
    cap_lqk: np.ndarray, layer: int, spreads: dict, chosen: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(met_qk, value_qk) of the meeting certificate at ``layer`` (module docstring); the
    spreads of a middle layer are kept in ``spreads`` for the other target layers."""
    m = layer // 2
    if m not in spreads:
        spreads[m] = _spread(cap_lqk, m, chosen)
    ok_k, c_k = spreads[m]
    ok_q, d_q = _gather(cap_lqk, layer, m, chosen)
    return ok_q[:, None] & ok_k[None, :], np.minimum(d_q[:, None], c_k[None, :])


def meeting_certificate(
    mixed_lqk: np.ndarray, layer: int, *, threads: int | None = None
) -> np.ndarray:
    """(T, T) float64: F[q, k] = max flow from (0, k) to (layer, q) where the meeting
    certificate settles the pair (then F = min(c_k, d_q), module docstring), NaN where it does
    not. Needs ``2·MEET_MIN_SIDE ≤ layer ≤ L`` (a spread and a gather of ≥ 3 layers each).

    >>> rng = np.random.default_rng(0)
    >>> cap = rng.random((6, 5, 5)) + np.eye(5)
    >>> met = meeting_certificate(cap / cap.sum(-1, keepdims=True), 6)
    >>> bool(np.isfinite(met).all())
    True
    """
    cap_lqk = _check_mixed(mixed_lqk)
    L = cap_lqk.shape[0]
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an int, got {layer!r}")
    if not 2 * MEET_MIN_SIDE <= layer <= L:
        raise ValueError(
            f"layer must be in [{2 * MEET_MIN_SIDE}, L = {L}] for a meeting certificate, "
            f"got {layer}"
        )
    chosen = _threads(threads)
    met_qk, value_qk = _meet(cap_lqk, int(layer), {}, chosen)
    return np.where(met_qk, value_qk, np.nan)


def layered_max_flow(
    mixed_lqk: np.ndarray, *, layers: Sequence[int] | int | None = None, threads: int | None = None
) -> np.ndarray:
    """(L+1, T, T) float64: F[l, q, k] = max flow from (0, k) to (l, q) in the layered graph
    whose edge (l−1, k) → (l, q) has capacity ``mixed_lqk[l−1, q, k]`` (any capacities ≥ 0).

    Layer 0 is the identity; layer 1 is the edge itself; layer 2 the closed form
    Σ_i min(Â_1[i, k], Â_2[q, i]) (edge-disjoint paths); deeper layers the meeting certificate
    (layers ≥ 6) and, for the pairs it does not settle, the compiled Dinic.
    ``layers``: the target layers to compute (default all 0..L); the others are NaN.
    ``threads``: numba threads for the parallel loop (default numba's, i.e. every core)."""
    cap_lqk = _check_mixed(mixed_lqk)
    L, T, _ = cap_lqk.shape
    wanted = _layers(layers, L)
    chosen = _threads(threads)
    out = np.full((L + 1, T, T), np.nan)
    if 0 in wanted:
        out[0] = np.eye(T)
    if 1 in wanted:
        out[1] = cap_lqk[0]
    if 2 in wanted and L >= 2:
        out[2] = _two_layers(cap_lqk)
    spreads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    tasks = []
    reach_qk = np.eye(T, dtype=bool)
    for layer in range(1, max(wanted) + 1):
        # a pair joined by no positive path has flow 0 (no search needed)
        reach_qk = (cap_lqk[layer - 1] > 0).astype(np.float64) @ reach_qk.astype(np.float64) > 0
        if layer not in wanted or layer < 3:
            continue
        out[layer] = 0.0
        todo_qk = reach_qk.copy()
        if layer >= 2 * MEET_MIN_SIDE:
            met_qk, value_qk = _meet(cap_lqk, layer, spreads, chosen)
            out[layer][met_qk] = value_qk[met_qk]
            todo_qk &= ~met_qk
        q_idx, k_idx = np.nonzero(todo_qk)
        tasks.append(np.stack([k_idx, np.full_like(k_idx, layer), q_idx], axis=1))
    if tasks:
        task_arr = np.concatenate(tasks)
        values = _dinic(cap_lqk, task_arr, chosen, restrict=is_causal(cap_lqk))
        out[task_arr[:, 1], task_arr[:, 2], task_arr[:, 0]] = values
    return out


def attention_flow(
    ck: object,
    ids: object = None,
    *,
    residual: float = 0.5,
    heads: object = "mean",
    layers: Sequence[int] | int | None = None,
    normalize: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """Exact attention flow: (L+1, T, T) float64, F[l, q, k] the max flow from input token k to
    position q after layer l through the layered attention graph (module docstring).

    Parameters
    ----------
    ck, ids, residual, heads : as in :func:`~models.heads.rollout.rollout` (a Checkpoint with
        token ids, or an (L, H, T, T) attention array).
    layers : target layers to compute (default all; the last alone is ``layers=L``); the
        others are NaN. Layer 0 is the identity.
    normalize : divide each row F[l, q, :] by its sum, as the paper's public code does before
        plotting (default False: the max-flow values themselves, each in [0, 1]).
    threads : numba threads (default every core).

    Returns
    -------
    (L+1, T, T) float64; a causal model's flow is lower-triangular.
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    mixed_lqk = mixed_attention(ck, ids, residual=residual, heads=heads)
    flow_lqk = layered_max_flow(mixed_lqk, layers=layers, threads=threads)
    if normalize:
        total = flow_lqk.sum(-1, keepdims=True)
        flow_lqk = flow_lqk / np.where(total > 0, total, 1.0)
    return flow_lqk


def flow_networkx(
    mixed_lqk: np.ndarray, pairs: Iterable[tuple[int, int, int]]
) -> dict[tuple[int, int, int], float]:
    """The reference path: ``networkx.maximum_flow_value`` on the same layered graph, one call
    per (layer, q, k) in ``pairs`` (a graph per target layer holding layers 0..layer)."""
    cap_lqk = _check_mixed(mixed_lqk)
    graphs: dict[int, nx.DiGraph] = {}
    out = {}
    for layer, q, k in pairs:
        if layer == 0:
            out[(layer, q, k)] = float(q == k)
            continue
        if layer not in graphs:
            g = nx.DiGraph()
            for lay in range(1, layer + 1):
                qs, ks = np.nonzero(cap_lqk[lay - 1])
                g.add_edges_from(
                    (
                        (lay - 1, int(kk)),
                        (lay, int(qq)),
                        {"capacity": float(cap_lqk[lay - 1, qq, kk])},
                    )
                    for qq, kk in zip(qs, ks, strict=True)
                )
            graphs[layer] = g
        g = graphs[layer]
        s, t = (0, k), (layer, q)
        if s not in g or t not in g or not nx.has_path(g, s, t):
            out[(layer, q, k)] = 0.0
            continue
        out[(layer, q, k)] = float(nx.maximum_flow_value(g, s, t))
    return out
