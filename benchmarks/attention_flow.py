"""Exact attention flow: our meeting certificate + compiled Dinic against networkx's maximum_flow
(the paper's route).

Issue 16, "Goal": ≥ 100× faster than the networkx route for a 6-layer, 12-head model at T = 128
(every target position of the last layer, every source token), and a 12-layer model at T = 512 in
under a minute on 2 cores.

All in one process. The attention is synthetic softmax attention, scores N(0, ``--scale``²)
(seed 0, bidirectional, every head), mixed as the paper does (residual 0.5, head mean,
:func:`models.heads.mixed_attention`). Timed:

- ``attention_flow(..., layers=L)``: the T² max flows to the last layer, with every core and with
  one thread (numba compiles beforehand, untimed; ``cache=True`` keeps it between runs);
- ``attention_flow`` of every layer 0..L (layers 1 and 2 are closed forms, 3..5 the search);
- networkx: ``networkx.maximum_flow_value`` (its default preflow-push; the paper's code passes
  Edmonds–Karp, slower still) on the same layered graph, for ``--baseline-pairs`` random
  (source, target) pairs, **extrapolated** to T² pairs (the graph is built once and counted);
  the script fails unless both agree to 1e-9 relative on those pairs;
- the second goal: 12 layers at T = 512 (``--big-tokens``), ``layered_max_flow(..., layers=L)``
  (what ``attention_flow(..., layers=L)`` runs) on every target × every source, measured, not
  extrapolated; beside it the per-pair Dinic alone (``solve_pairs``, no meeting certificate) on
  ``--big-targets`` random targets × every source, **extrapolated** to T² (``--big-targets 0``
  runs every target). The script fails unless the two agree to 1e-9 relative on those pairs
  (networkx on a 3-million-edge graph would take longer than the whole run; it is the peer on
  the first graph);
- causal (``--causal-tokens``, default 128 and 512, 12 layers): the same synthetic scores masked
  to keys ≤ query; the per-pair Dinic (``solve_pairs``) restricted to positions k..q (what
  ``attention_flow`` runs on causal attention) and on the whole graph (``restrict=False``), on
  ``--causal-pairs`` pairs drawn uniformly from the k ≤ q triangle, **extrapolated** to its
  T(T+1)/2 pairs (pairs k > q are 0 without a search). The script fails unless the two agree to
  1e-9 relative, and, at the smallest causal T, unless they agree with networkx on
  ``--baseline-pairs`` of those pairs.

``--quick`` runs a smoke test at tiny sizes; its numbers mean nothing. ``--markdown PATH`` also
writes the report to a file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace

import _report
import networkx as nx
import numba
import numpy as np

from flowgraph.models.heads import attention_flow, mixed_attention, rollout
from flowgraph.models.heads.attention_flow import (
    flow_networkx,
    layered_max_flow,
    meeting_certificate,
    solve_pairs,
)

GOAL_SPEEDUP = 100.0
GOAL_BIG_S = 60.0
AGREE_RTOL = 1e-9


@dataclass(frozen=True)
class Config:
    layers: int = 6
    heads: int = 12
    tokens: int = 128
    baseline_pairs: int = 6
    big_layers: int = 12
    big_tokens: int = 512
    big_targets: int = 8
    causal_tokens: tuple[int, ...] = (128, 512)
    causal_pairs: int = 128
    scale: float = 2.0
    repeats: int = 3
    seed: int = 0


QUICK = Config(
    layers=6,
    heads=2,
    tokens=12,
    baseline_pairs=3,
    big_layers=6,
    big_tokens=24,
    big_targets=4,
    causal_tokens=(12, 24),
    causal_pairs=6,
    repeats=2,
)
QUICK_NOTE = " — a --quick smoke run: tiny sizes, the numbers mean nothing"
COLUMNS = ["step", "pairs timed", "median s", "s, every pair", "goal"]


def synthetic_attention(L: int, H: int, T: int, scale: float, seed: int) -> np.ndarray:
    """(L, H, T, T) softmax of N(0, scale²) scores."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(L, H, T, T)) * scale
    a = np.exp(s - s.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


@dataclass
class Row:
    step: str
    pairs: int
    times_s: list[float]
    full_s: float | None = None  # seconds for every pair, extrapolated when pairs < T²
    extrapolated: bool = False
    goal: str = "—"


def median_s(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def measure(cfg: Config) -> tuple[list[Row], dict[str, float]]:
    L, T = cfg.layers, cfg.tokens
    attn = synthetic_attention(L, cfg.heads, T, cfg.scale, cfg.seed)
    mixed = mixed_attention(attn)
    attention_flow(attn[:, :, :4, :4] / attn[:, :, :4, :4].sum(-1, keepdims=True))  # compile
    rows: list[Row] = []
    checks: dict[str, float] = {}

    t, times, _ = median_s(lambda: rollout(attn), cfg.repeats)
    rows.append(Row("rollout, every layer (numpy)", T * T, times, t))
    t, times, flow = median_s(lambda: attention_flow(attn, layers=L), cfg.repeats)
    ours = t
    rows.append(
        Row(f"attention_flow, last layer, {numba.get_num_threads()} threads", T * T, times, t)
    )
    t, times, _ = median_s(lambda: attention_flow(attn, layers=L, threads=1), cfg.repeats)
    rows.append(Row("attention_flow, last layer, 1 thread", T * T, times, t))
    t, times, _ = median_s(lambda: attention_flow(attn), 1)
    rows.append(Row("attention_flow, every layer 0..L", (L + 1) * T * T, times, t))

    rng = np.random.default_rng(cfg.seed + 1)
    pairs = [(L, int(q), int(k)) for q, k in rng.integers(0, T, (cfg.baseline_pairs, 2))]
    t0 = time.perf_counter()
    ref = flow_networkx(mixed, pairs)
    nx_s = time.perf_counter() - t0
    per_pair = nx_s / len(pairs)
    baseline = Row(
        "baseline: networkx maximum_flow_value per pair",
        len(pairs),
        [nx_s],
        per_pair * T * T,
        extrapolated=True,
    )
    rows.append(baseline)
    worst = max(abs(flow[p] - ref[p]) / max(abs(ref[p]), 1e-300) for p in pairs)
    checks["max relative |Δ| vs networkx"] = worst
    if worst > AGREE_RTOL:
        raise AssertionError(
            f"attention_flow and networkx disagree: max relative |Δ| = {worst:.3g}"
        )
    speedup = baseline.full_s / ours
    checks["speed-up × (T² pairs, last layer)"] = speedup
    rows[1].goal = f"≥ {GOAL_SPEEDUP:g}× networkx"

    big_L, big_T = cfg.big_layers, cfg.big_tokens
    big = mixed_attention(synthetic_attention(big_L, 1, big_T, cfg.scale, cfg.seed + 2))
    targets = (
        np.arange(big_T)
        if cfg.big_targets == 0
        else np.random.default_rng(cfg.seed + 3).choice(big_T, min(cfg.big_targets, big_T), False)
    )
    k_grid, q_grid = np.meshgrid(np.arange(big_T), targets)
    tasks = np.stack([k_grid.ravel(), np.full(k_grid.size, big_L), q_grid.ravel()], axis=1)
    t0 = time.perf_counter()
    searched = solve_pairs(big, tasks)
    search_s = time.perf_counter() - t0
    rows.append(
        Row(
            f"{big_L} layers at T = {big_T}: per-pair Dinic alone (no certificate)",
            len(tasks),
            [search_s],
            search_s * big_T / len(targets),
            extrapolated=len(targets) < big_T,
        )
    )
    t0 = time.perf_counter()
    big_flow = layered_max_flow(big, layers=big_L)[big_L]
    big_s = time.perf_counter() - t0
    rows.append(
        Row(
            f"{big_L} layers at T = {big_T}, last layer, {numba.get_num_threads()} threads",
            big_T * big_T,
            [big_s],
            big_s,
            goal=f"< {GOAL_BIG_S:g} s",
        )
    )
    got = big_flow[tasks[:, 2], tasks[:, 0]]
    worst_big = float(np.max(np.abs(got - searched) / np.maximum(np.abs(searched), 1e-300)))
    checks["max relative |Δ| vs per-pair Dinic (big)"] = worst_big
    if worst_big > AGREE_RTOL:
        raise AssertionError(
            f"the certificate and the per-pair Dinic disagree: max relative |Δ| = {worst_big:.3g}"
        )
    if big_L >= 6:
        checks["share of big pairs settled by the certificate"] = float(
            np.isfinite(meeting_certificate(big, big_L)).mean()
        )
    rows.extend(measure_causal(cfg, checks))
    return rows, checks


def causal_attention(L: int, T: int, scale: float, seed: int) -> np.ndarray:
    """(L, 1, T, T) synthetic attention masked to keys ≤ query and renormalised."""
    a = synthetic_attention(L, 1, T, scale, seed) * np.tril(np.ones((T, T)))
    return a / a.sum(-1, keepdims=True)


def measure_causal(cfg: Config, checks: dict[str, float]) -> list[Row]:
    """The causal rows: the per-pair search on positions k..q and on the whole graph."""
    rows, L = [], cfg.big_layers
    for n, T in enumerate(cfg.causal_tokens):
        mixed = mixed_attention(causal_attention(L, T, cfg.scale, cfg.seed + 4 + n))
        q_all, k_all = np.nonzero(np.tril(np.ones((T, T), dtype=bool)))
        n_pairs = len(q_all)  # T(T+1)/2
        rng = np.random.default_rng(cfg.seed + 5 + n)
        pick = rng.choice(n_pairs, min(cfg.causal_pairs, n_pairs), replace=False)
        tasks = np.stack([k_all[pick], np.full(len(pick), L), q_all[pick]], axis=1)
        values = {}
        for restrict, what in ((True, "positions k..q"), (False, "the whole graph")):
            t0 = time.perf_counter()
            values[restrict] = solve_pairs(mixed, tasks, restrict=restrict)
            dt = time.perf_counter() - t0
            rows.append(
                Row(
                    f"{L} layers at T = {T}, causal, last layer: per-pair Dinic on {what}",
                    len(tasks),
                    [dt],
                    dt * n_pairs / len(tasks),
                    extrapolated=len(tasks) < n_pairs,
                )
            )
        ref = values[False]
        worst = float(np.max(np.abs(values[True] - ref) / np.maximum(np.abs(ref), 1e-300)))
        checks[f"max relative |Δ| restricted vs whole graph (causal, T = {T})"] = worst
        if worst > AGREE_RTOL:
            raise AssertionError(
                f"the causal restricted and whole-graph searches disagree at T = {T}: "
                f"max relative |Δ| = {worst:.3g}"
            )
        if n == 0:
            sub = tasks[: cfg.baseline_pairs]
            nx_ref = flow_networkx(mixed, [(L, int(q), int(k)) for k, _, q in sub])
            got = values[True][: len(sub)]
            want = np.array(list(nx_ref.values()))
            worst_nx = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)))
            checks[f"max relative |Δ| restricted vs networkx (causal, T = {T})"] = worst_nx
            if worst_nx > AGREE_RTOL:
                raise AssertionError(
                    f"the causal restricted search and networkx disagree at T = {T}: "
                    f"max relative |Δ| = {worst_nx:.3g}"
                )
    return rows


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3g}"


def report(
    rows: list[Row], checks: dict[str, float], cfg: Config, command: str, load: str, quick: bool
) -> str:
    table = _report.markdown_table(
        COLUMNS,
        "lrrrl",
        [
            [
                r.step,
                f"{r.pairs:,}",
                fmt_s(statistics.median(r.times_s)),
                (
                    "—"
                    if r.full_s is None
                    else fmt_s(r.full_s) + (" (extrapolated)" if r.extrapolated else "")
                ),
                r.goal,
            ]
            for r in rows
        ],
    )
    ours = rows[1].full_s
    big = next(r for r in rows if r.goal.startswith("<"))
    speedup = checks["speed-up × (T² pairs, last layer)"]
    lines = [
        _report.machine_line(
            f"numpy {np.__version__}, numba {numba.__version__} "
            f"(numba.get_num_threads() = {numba.get_num_threads()}), networkx {nx.__version__}"
        ),
        "",
        f"Command: `{command}`",
        "",
        f"Synthetic softmax attention, scores N(0, {cfg.scale:g}²), {cfg.layers} layers × "
        f"{cfg.heads} heads at T = {cfg.tokens} (bidirectional), residual 0.5, head mean; the "
        f"networkx baseline on {cfg.baseline_pairs} random last-layer pairs, extrapolated to "
        f"T² = {cfg.tokens**2:,}; median of {cfg.repeats} repeats (one for every layer and the "
        f"baselines). Causal rows: {cfg.big_layers} layers, one head, keys ≤ query, "
        f"{cfg.causal_pairs} random pairs k ≤ q per T, extrapolated to T(T+1)/2. {load}",
        "",
        *table,
        "",
        "Checks: " + "; ".join(f"{k} = {v:.3g}" for k, v in checks.items()) + ".",
        "",
        "Goals (issue 16)" + (QUICK_NOTE if quick else "") + ":",
        f"- ≥ {GOAL_SPEEDUP:g}× networkx at {cfg.layers} layers, T = {cfg.tokens}: "
        f"{speedup:.3g}× ({fmt_s(ours)} s) — {'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}",
        f"- {cfg.big_layers} layers at T = {cfg.big_tokens} < {GOAL_BIG_S:g} s: "
        f"{fmt_s(big.full_s)} s{' (extrapolated)' if big.extrapolated else ''} — "
        f"{'met' if big.full_s < GOAL_BIG_S else 'NOT met'}",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a smoke run at tiny sizes")
    ap.add_argument("--tokens", type=int, help="T of the first goal (default 128)")
    ap.add_argument("--baseline-pairs", type=int, help="networkx pairs timed (default 6)")
    ap.add_argument("--big-tokens", type=int, help="T of the second goal (default 512)")
    ap.add_argument(
        "--big-targets", type=int, help="targets of the per-pair Dinic row there (0: all; 8)"
    )
    ap.add_argument(
        "--causal-tokens", type=int, nargs="+", help="T of the causal rows (default 128 512)"
    )
    ap.add_argument("--causal-pairs", type=int, help="causal pairs timed per T (default 128)")
    ap.add_argument("--repeats", type=int, help="timed repeats (default 3)")
    ap.add_argument("--threads", type=int, help="numba threads (default every core)")
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(
        ap,
        args,
        {
            "tokens": 2,
            "baseline_pairs": 1,
            "big_tokens": 2,
            "big_targets": 0,
            "causal_pairs": 1,
            "repeats": 1,
            "threads": 1,
        },
    )
    if args.causal_tokens is not None and min(args.causal_tokens) < 2:
        ap.error(f"--causal-tokens must be ≥ 2, got {min(args.causal_tokens)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else Config()
    overrides = {
        k: v
        for k, v in (
            ("tokens", args.tokens),
            ("baseline_pairs", args.baseline_pairs),
            ("big_tokens", args.big_tokens),
            ("big_targets", args.big_targets),
            ("repeats", args.repeats),
            ("causal_pairs", args.causal_pairs),
            ("causal_tokens", None if args.causal_tokens is None else tuple(args.causal_tokens)),
        )
        if v is not None
    }
    cfg = replace(cfg, **overrides)
    if args.threads is not None:
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    command = _report.command_line()
    load_start = _report.load_average()
    _report.log("timing ...")
    rows, checks = measure(cfg)
    text = report(rows, checks, cfg, command, _report.load_span(load_start), args.quick)
    _report.emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
