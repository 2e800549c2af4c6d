"""How ``flowgraph.check`` scales with n, beside a networkx-ancestors baseline (also its oracle).

For each pattern (strided and fixed causal, LTR and RTL bidirectional; stride ⌊√n⌋) and each n,
measured in this one process:

- build s: building the pattern (median of ``--repeats``);
- check s: ``flowgraph.check(p)`` (median of ``--repeats``), the packed-bitset engine;
- check peak MiB: the tracemalloc peak of one more ``check(p)`` run, made apart from the timed ones
  because tracing slows allocation down. numpy reports its buffers to tracemalloc, so this is the
  memory the check itself allocates (the pattern, built before, is not counted);
- missing pairs: ``check(p).missing_pairs``;
- networkx s: the baseline, run once — build ``flowgraph.flow_graph(p)`` and, for every query q,
  walk ``nx.ancestors(G, (num_steps, q))`` and count the target keys of layer 0 (k ≤ q when causal,
  all n otherwise) that are not among them. Graph build and walks are timed together (the split is
  logged on stderr). It runs only for n ≤ ``--baseline-max-n``, and for a pattern it stops at
  larger n once one n took more than ``--baseline-budget`` seconds;
- speed-up ×: networkx s / check s.

Wherever the baseline ran, its missing-pair count must equal ``check(p).missing_pairs``, or the
script fails: the baseline is an oracle as well as a yardstick. The process's ru_maxrss (its peak
resident memory, baseline graphs included) is printed under the table.

Run ``python benchmarks/check_scaling.py --help`` for the options; ``--markdown PATH`` also writes
the report to a file (it is what ``docs/benchmarks.md`` shows).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import _report
import networkx as nx
import numpy as np
import scipy

import flowgraph as fg

# Each benchmarked pattern at its default stride ⌊√n⌋ (strided and fixed are causal by default).
PATTERNS: dict[str, Callable[[int], fg.Pattern]] = {
    "strided": fg.strided,
    "fixed": fg.fixed,
    "ltr": fg.ltr,
    "rtl": fg.rtl,
}
DEFAULT_NS = (1024, 4096, 16384, 65536)
MIB = 2**20


@dataclass(frozen=True)
class Row:
    """One line of the table: a pattern at one n."""

    pattern: str
    n: int
    build_s: float
    check_s: float
    check_peak_bytes: int
    missing_pairs: int
    networkx_s: float | None  # None where the baseline was not run


# --- measurements ------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds taken by one call of ``fn`` (after a gc.collect), and its result."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls of ``fn``, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t, out = timed(fn)
        times.append(t)
    return statistics.median(times), out


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (tracemalloc, numpy buffers included) during one call of ``fn``."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def networkx_missing(p: fg.Pattern) -> tuple[int, float]:
    """The baseline: missing target pairs found by walking ancestors in the networkx flow graph.

    Returns (missing pairs, seconds spent building the graph); the caller times the whole call.
    """
    t0 = time.perf_counter()
    g = fg.flow_graph(p)
    graph_s = time.perf_counter() - t0
    n, last = p.n, p.num_steps
    missing = 0
    for q in range(n):
        reached = {k for s, k in nx.ancestors(g, (last, q)) if s == 0}
        targets = range(q + 1) if p.causal else range(n)
        missing += sum(1 for k in targets if k not in reached)
    return missing, graph_s


def measure(name: str, n: int, repeats: int, run_baseline: bool) -> Row:
    """All the numbers of one row; fails if the baseline and ``check`` disagree."""
    make = PATTERNS[name]
    build_s, p = median_time(lambda: make(n), repeats)
    check_s, result = median_time(lambda: fg.check(p), repeats)
    peak = traced_peak(lambda: fg.check(p))
    networkx_s = None
    if run_baseline:
        networkx_s, (nx_missing, graph_s) = timed(lambda: networkx_missing(p))
        _report.log(
            f"  networkx {name} n={n}: graph {graph_s:.3f} s + walks {networkx_s - graph_s:.3f} s"
        )
        if nx_missing != result.missing_pairs:
            raise AssertionError(
                f"{name} n={n}: networkx baseline finds {nx_missing} missing pairs, "
                f"flowgraph.check finds {result.missing_pairs}"
            )
    return Row(name, n, build_s, check_s, peak, result.missing_pairs, networkx_s)


def run(
    patterns: list[str], ns: list[int], repeats: int, baseline_max_n: int, baseline_budget: float
) -> list[Row]:
    """Every pattern at every n (ascending); the baseline within its size limit and time budget."""
    rows = []
    for name in patterns:
        baseline_on = True
        for n in sorted(ns):
            _report.log(f"{name} n={n} ...")
            row = measure(name, n, repeats, baseline_on and n <= baseline_max_n)
            if row.networkx_s is not None and row.networkx_s > baseline_budget:
                baseline_on = False  # the next, larger n would take longer still
            rows.append(row)
    return rows


# --- report ------------------------------------------------------------------------------------
def max_rss_bytes() -> int | None:
    """The process's ru_maxrss in bytes (KiB on Linux, bytes on macOS), None where unsupported."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def fmt_s(seconds: float) -> str:
    """Three significant digits, never an exponent: 0.0000123, 0.219, 4.15, 12.3, 1230."""
    text = np.format_float_positional(
        seconds, precision=3, unique=False, fractional=False, trim="k"
    )
    return text.rstrip(".")


def row_cells(row: Row) -> list[str]:
    if row.networkx_s is None:
        baseline, speedup = "—", "—"
    else:
        baseline = fmt_s(row.networkx_s)
        ratio = row.networkx_s / row.check_s
        speedup = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
    return [
        row.pattern, str(row.n), fmt_s(row.build_s), fmt_s(row.check_s),
        f"{row.check_peak_bytes / MIB:.1f}", f"{row.missing_pairs:,}", baseline, speedup,
    ]  # fmt: skip


def report(rows: list[Row], command: str, repeats: int, load: str) -> str:
    """The markdown report: machine, command, table and how to read it."""
    header = ["pattern", "n", "build s", "check s", "check peak MiB", "missing pairs",
              "networkx s", "speed-up ×"]  # fmt: skip
    rss = max_rss_bytes()
    rss_text = "unavailable" if rss is None else f"{rss / MIB:.0f} MiB"
    lines = [
        _report.machine_line(
            f"numpy {np.__version__}, scipy {scipy.__version__}, networkx {nx.__version__}"
        ),
        "",
        f"Command: `{command}`",
        "",
        *_report.markdown_table(header, "l" + "r" * (len(header) - 1), map(row_cells, rows)),
        "",
        f"build s and check s: median of {repeats} run(s); check peak MiB: tracemalloc peak of one "
        "more check; networkx s: flow_graph build plus one nx.ancestors walk per query, run once, "
        "its missing pairs asserted equal to check's; speed-up ×: networkx s / check s; "
        "—: baseline not run. strided and fixed are causal, ltr and rtl bidirectional, "
        "stride ⌊√n⌋.",
        "",
        f"Process peak resident memory (ru_maxrss, whole run): {rss_text}. {load}",
    ]
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def pattern_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in PATTERNS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PATTERNS)}, got {text!r}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__)
    ap.add_argument("--ns", type=int_list, default=list(DEFAULT_NS), help="sizes, e.g. 1024,4096")
    ap.add_argument(
        "--patterns", type=pattern_list, default=list(PATTERNS), help="e.g. strided,ltr"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median taken)")
    ap.add_argument(
        "--baseline-max-n", type=int, default=4096, help="largest n the networkx baseline runs at"
    )
    ap.add_argument(
        "--baseline-budget",
        type=float,
        default=60.0,
        help="seconds: once the baseline takes longer at some n, skip it at larger n",
    )
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"repeats": 1})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = _report.command_line()
    load_start = _report.load_average()
    rows = run(args.patterns, args.ns, args.repeats, args.baseline_max_n, args.baseline_budget)
    _report.emit(report(rows, command, args.repeats, _report.load_span(load_start)), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
