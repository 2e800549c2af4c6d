"""How ``flowgraph.check`` scales with n, beside its old bitset engine and a networkx baseline.

For each pattern — strided and fixed (causal, their defaults), ltr and rtl (bidirectional), local
(a causal window of ⌊√n⌋ keys); every stride ⌊√n⌋ — and each n, the timings are measured in this
one process (so their ratios are fair), after a warm-up check of every pattern at n = 16 that
loads the numba kernels:

- build s: building the pattern (median of ``--repeats``);
- check s: ``flowgraph.check(p)`` (median of ``--repeats``). The default engine, "auto", takes the
  interval engine for every library constructor: it reads the pattern's rules, no n×n memory;
- check peak MiB: the resident memory one ``check(p)`` adds, measured in a fresh child process
  per (pattern, n, engine) — ``sys.executable -c`` with a small snippet that imports this script,
  runs a warm-up check at n = 16 (the numba kernels load or compile there, and their threads
  start), builds the pattern, hands freed heap back (``malloc_trim(0)``), reads VmRSS, resets the
  high-water mark (``/proc/self/clear_refs`` ← 5), runs one check and reads VmHWM: peak = VmHWM −
  VmRSS before. It counts numba's allocations, which tracemalloc does not see. (ru_maxrss is not
  used: a child's ru_maxrss starts at its parent's peak, inherited through exec, and this parent
  holds the bitsets engine's n×n matrices.) Linux only; ``--no-memory`` skips the children;
- missing pairs: ``check(p).missing_pairs``;
- bitsets s: ``check(p, engine="bitsets")``, the old packed n×n bitset engine (median of
  ``--repeats``), on a pattern whose CSR steps were built first, untimed, as the old constructors
  did — so this is the old check s, and the speed-up against it is conservative. It runs for
  n ≤ ``--bitsets-max-n``; its Report must equal the interval engine's Report, field by field, or
  the script fails: the old engine is the oracle;
- bitsets peak MiB: the same child-process measure for the bitsets engine (CSR steps built before
  the measured check);
- speed-up vs bitsets ×: bitsets s / check s;
- networkx s: the baseline, run once — build ``flowgraph.flow_graph(p)`` and, for every query q,
  walk ``nx.ancestors(G, (num_steps, q))`` and count the target keys of layer 0 (k ≤ q when causal,
  all n otherwise) that are not among them. Graph build and walks are timed together (the split is
  logged on stderr). It runs only for n ≤ ``--baseline-max-n``, and for a pattern it stops at
  larger n once one n took more than ``--baseline-budget`` seconds. Its missing-pair count must
  equal ``check(p).missing_pairs``, or the script fails: it is an oracle as well as a yardstick;
- speed-up vs networkx ×: networkx s / check s.

"—" marks a cell not run. Under the table: the goal lines of issue 15 (n = 65,536: every pattern
≥ 5× faster than bitsets and ≤ 256 MiB; n = 262,144: < 10 s and ≤ 1 GiB; n = 1,048,576: < 60 s and
≤ 4 GiB), each for the ns that were run and judged on unrounded values, then this process's
ru_maxrss and the load averages at start and end.

Run ``python benchmarks/check_scaling.py --help`` for the options; ``--markdown PATH`` also writes
the report to a file (it is what ``docs/benchmarks.md`` shows).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import _report
import networkx as nx
import numba
import numpy as np
import scipy

import flowgraph as fg

# Each benchmarked pattern at its default stride ⌊√n⌋ (strided, fixed and local are causal).
PATTERNS: dict[str, Callable[[int], fg.Pattern]] = {
    "strided": fg.strided,
    "fixed": fg.fixed,
    "ltr": fg.ltr,
    "rtl": fg.rtl,
    "local": lambda n: fg.local(n, window=math.isqrt(n)),
}
DEFAULT_NS = (1024, 4096, 16384, 65536, 262144, 1048576)
WARMUP_N = 16  # the warm-up check: loads (or compiles) the numba kernels
MIB = 2**20
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Goal:
    """One line of issue 15's goal table: at n, check under a time and a memory limit."""

    n: int
    max_check_s: float | None  # strictly below
    max_peak_mib: float
    min_speedup: float | None = None  # against the bitsets engine


GOALS = (
    Goal(65536, None, 256, min_speedup=5),
    Goal(262144, 10, 1024),
    Goal(1048576, 60, 4096),
)


@dataclass(frozen=True)
class Row:
    """One line of the table: a pattern at one n; None where a measure was not run."""

    pattern: str
    n: int
    build_s: float
    check_s: float
    check_peak_bytes: int | None
    missing_pairs: int
    bitsets_s: float | None
    bitsets_peak_bytes: int | None
    networkx_s: float | None


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


def run_check(p: fg.Pattern, engine: str) -> fg.Report:
    """The one place the script calls ``check`` (a test makes the engines disagree here)."""
    return fg.check(p, engine=engine)


def warm_up(names: list[str]) -> None:
    """One check of each pattern at a tiny n with both engines: numba loads its kernels here."""
    for name in names:
        p = PATTERNS[name](WARMUP_N)
        run_check(p, "auto")
        run_check(p, "bitsets")


def report_diff(a: fg.Report, b: fg.Report) -> list[str]:
    """The names of the Report fields on which ``a`` and ``b`` differ."""
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]


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


# --- memory, in a child process ----------------------------------------------------------------
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def child_peak(name: str, n: int, engine: str) -> int:
    """In this (fresh, child) process: the resident bytes one check of ``name`` at n adds."""
    make = PATTERNS[name]
    run_check(make(WARMUP_N), engine)  # numba kernels loaded, threads started
    p = make(n)
    if engine == "bitsets":
        _ = p.steps  # the CSR steps, which the bitsets engine needs and the old build made
    gc.collect()
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)  # freed heap back to the OS: the check cannot reuse it unseen
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)
    run_check(p, engine)
    return max(_status_bytes("VmHWM") - before, 0)


CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import check_scaling as s; "
    "print(s.child_peak(sys.argv[2], int(sys.argv[3]), sys.argv[4]))"
)


def memory_supported() -> bool:
    return Path("/proc/self/clear_refs").exists()


def measure_peak(name: str, n: int, engine: str) -> int:
    """:func:`child_peak` in a fresh ``sys.executable -c`` process."""
    _report.log(f"  memory: {name} n={n} engine={engine} (child process) ...")
    args = [sys.executable, "-c", CHILD, str(HERE), name, str(n), engine]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {name} n={n} engine={engine} failed:\n{done.stderr}")
    return int(done.stdout.strip().splitlines()[-1])


# --- one row, all rows -------------------------------------------------------------------------
def measure(
    name: str, n: int, repeats: int, *, run_bitsets: bool, run_baseline: bool, memory: bool
) -> Row:
    """All the numbers of one row; fails if the bitsets engine or the baseline disagrees."""
    make = PATTERNS[name]
    build_s, p = median_time(lambda: make(n), repeats)
    assert p.rules is not None, f"{name}: expected a pattern given by rules"  # auto = intervals
    check_s, result = median_time(lambda: run_check(p, "auto"), repeats)
    peak = measure_peak(name, n, "auto") if memory else None
    bitsets_s = bitsets_peak = None
    if run_bitsets:
        old = make(n)
        steps_s, _ = timed(lambda: old.steps)  # logged, not in bitsets s: the old build made them
        bitsets_s, old_result = median_time(lambda: run_check(old, "bitsets"), repeats)
        _report.log(f"  bitsets {name} n={n}: CSR steps {steps_s:.3f} s (untimed) + check")
        del old
        if old_result != result:
            raise AssertionError(
                f"{name} n={n}: the bitsets engine's Report differs from the interval engine's "
                f"in {', '.join(report_diff(old_result, result))}"
            )
        bitsets_peak = measure_peak(name, n, "bitsets") if memory else None
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
    return Row(
        name, n, build_s, check_s, peak, result.missing_pairs, bitsets_s, bitsets_peak, networkx_s
    )


def run(
    patterns: list[str],
    ns: list[int],
    repeats: int,
    *,
    bitsets_max_n: int,
    baseline_max_n: int,
    baseline_budget: float,
    memory: bool,
) -> list[Row]:
    """Every pattern at every n (ascending); bitsets and the baseline within their limits."""
    warm_up(patterns)
    rows = []
    for name in patterns:
        baseline_on = True
        for n in sorted(ns):
            _report.log(f"{name} n={n} ...")
            row = measure(
                name,
                n,
                repeats,
                run_bitsets=n <= bitsets_max_n,
                run_baseline=baseline_on and n <= baseline_max_n,
                memory=memory,
            )
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


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"


def fmt_mib(nbytes: float | None) -> str:
    return "—" if nbytes is None else f"{nbytes / MIB:.1f}"


def row_cells(row: Row) -> list[str]:
    def against(other_s: float | None) -> list[str]:
        if other_s is None:
            return ["—", "—"]
        return [fmt_s(other_s), fmt_ratio(other_s / row.check_s)]

    bitsets_s, bitsets_x = against(row.bitsets_s)
    networkx_s, networkx_x = against(row.networkx_s)
    return [
        row.pattern, str(row.n), fmt_s(row.build_s), fmt_s(row.check_s),
        fmt_mib(row.check_peak_bytes), f"{row.missing_pairs:,}",
        bitsets_s, fmt_mib(row.bitsets_peak_bytes), bitsets_x, networkx_s, networkx_x,
    ]  # fmt: skip


HEADER = ["pattern", "n", "build s", "check s", "check peak MiB", "missing pairs",
          "bitsets s", "bitsets peak MiB", "speed-up vs bitsets ×",
          "networkx s", "speed-up vs networkx ×"]  # fmt: skip


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def goal_lines(rows: list[Row]) -> list[str]:
    """One line per goal and measure, for the goal ns that were run; verdicts from unrounded
    values, the printed value being the worst pattern's."""
    lines = []
    for goal in GOALS:
        at_n = [r for r in rows if r.n == goal.n]
        if not at_n:
            continue
        where = f"n = {goal.n:,}"
        if goal.min_speedup is not None:
            timed_rows = [r for r in at_n if r.bitsets_s is not None]
            text = f"- {where}: check ≥ {goal.min_speedup:g}× faster than bitsets, every pattern: "
            if len(timed_rows) < len(at_n):
                lines.append(text + "not measured (bitsets not run) — NOT met")
            else:
                worst = min(timed_rows, key=lambda r: r.bitsets_s / r.check_s)
                ratio = worst.bitsets_s / worst.check_s
                lines.append(
                    text + f"worst {fmt_ratio(ratio)}× ({worst.pattern}) — "
                    f"{verdict(ratio >= goal.min_speedup)}"
                )
        if goal.max_check_s is not None:
            worst = max(at_n, key=lambda r: r.check_s)
            lines.append(
                f"- {where}: check < {goal.max_check_s:g} s, every pattern: worst "
                f"{fmt_s(worst.check_s)} s ({worst.pattern}) — "
                f"{verdict(worst.check_s < goal.max_check_s)}"
            )
        text = f"- {where}: check peak ≤ {goal.max_peak_mib:g} MiB, every pattern: "
        if any(r.check_peak_bytes is None for r in at_n):
            lines.append(text + "not measured (--no-memory or no /proc) — NOT met")
        else:
            worst = max(at_n, key=lambda r: r.check_peak_bytes)
            lines.append(
                text + f"worst {fmt_mib(worst.check_peak_bytes)} MiB ({worst.pattern}) — "
                f"{verdict(worst.check_peak_bytes <= goal.max_peak_mib * MIB)}"
            )
    return lines


def report(rows: list[Row], command: str, repeats: int, load: str) -> str:
    """The markdown report: machine, command, table, goals and how to read them."""
    rss = max_rss_bytes()
    rss_text = "unavailable" if rss is None else f"{rss / MIB:.0f} MiB"
    goals = goal_lines(rows)
    lines = [
        _report.machine_line(
            f"numpy {np.__version__}, scipy {scipy.__version__}, numba {numba.__version__}, "
            f"networkx {nx.__version__}"
        ),
        "",
        f"Command: `{command}`",
        "",
        *_report.markdown_table(HEADER, "l" + "r" * (len(HEADER) - 1), map(row_cells, rows)),
        "",
        f"build s, check s and bitsets s: median of {repeats} run(s) in this process; check s: "
        "check(p), the interval engine; bitsets s: check(p, engine='bitsets'), the old engine, "
        "CSR steps built beforehand, its Report asserted equal to the interval engine's; peak "
        "MiB: VmHWM − VmRSS around one check in a fresh child process; networkx s: flow_graph "
        "build plus one nx.ancestors walk per query, run once, its missing pairs asserted equal "
        "to check's; speed-up ×: that column's seconds / check s; —: not run. strided, fixed and "
        "local (window ⌊√n⌋) are causal, ltr and rtl bidirectional, stride ⌊√n⌋.",
        "",
        *(["Goals (issue 15):", *goals, ""] if goals else []),
        f"Process peak resident memory (ru_maxrss, this process, bitsets and networkx included): "
        f"{rss_text}. {load}",
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
        "--bitsets-max-n",
        type=int,
        default=65536,
        help="largest n the old bitsets engine (the oracle) runs at",
    )
    ap.add_argument(
        "--baseline-max-n", type=int, default=4096, help="largest n the networkx baseline runs at"
    )
    ap.add_argument(
        "--baseline-budget",
        type=float,
        default=60.0,
        help="seconds: once the baseline takes longer at some n, skip it at larger n",
    )
    ap.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the child processes that measure peak memory",
    )
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"repeats": 1})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = _report.command_line()
    load_start = _report.load_average()
    memory = not args.no_memory and memory_supported()
    if not args.no_memory and not memory:
        _report.log("no /proc/self/clear_refs here: peak memory is not measured")
    rows = run(
        args.patterns,
        args.ns,
        args.repeats,
        bitsets_max_n=args.bitsets_max_n,
        baseline_max_n=args.baseline_max_n,
        baseline_budget=args.baseline_budget,
        memory=memory,
    )
    _report.emit(report(rows, command, args.repeats, _report.load_span(load_start)), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
