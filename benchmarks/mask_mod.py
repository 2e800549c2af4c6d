"""Reading and checking FlexAttention mask_mods: flowgraph beside FlexAttention's create_mask.

For each mask — a causal sliding window of 1024 keys, document masking (causal, document lengths
drawn from 256..4095 with a fixed seed) and NSA's compression branch (keys of 64 tokens, a key
attended once its block is complete: ``q ≥ 64(j + 1) − 1``) — and each n, in this one process:

- read s: ``flowgraph.from_mask_mod(mask_mod, n, ...)`` (median of ``--repeats``), the interval
  reader of :mod:`flowgraph._mask_eval`;
- check s: ``flowgraph.check(p)`` on what was read (median of ``--repeats``);
- ours peak MiB: the resident memory read + check add, in a fresh child process per (mask, n):
  VmHWM − VmRSS before, after a warm-up at n = 256 (``/proc/self/clear_refs`` ← 5 resets the
  high-water mark; Linux only, ``--no-memory`` skips it);
- dense s: the baseline, FlexAttention's ``create_mask`` (the full (n, kv_len) bool mask) and a
  dense numpy check of it — missing pairs and causality violations, through the key spans for the
  compressed keys — for n ≤ ``--dense-max-n``; its missing pairs and violations must equal
  flowgraph's or the script fails (it is the oracle);
- dense peak MiB: the same child-process measure for the dense route; beyond ``--dense-max-n`` the
  cell gives the memory the dense route would need, extrapolated from the bytes per pair measured
  at the largest n it ran (marked "≈ … needed");
- speed-up ×: dense s / (read s + check s).

Under the table, the goal lines of issue 21 — reading costs no more than checking (read s ≤ check s
for every row), and n = 65,536 read + check in under 15 s and 2 GiB for every mask — judged on
unrounded values; then the load averages.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import time
from pathlib import Path

import _report
import numpy as np
import torch

import flowgraph as fg

WINDOW, BLOCK, WARMUP_N = 1024, 64, 256
GOAL_N, GOAL_S, GOAL_BYTES = 65_536, 15.0, 2 * 2**30


def documents(n: int, seed: int = 0) -> torch.Tensor:
    """(n,) document id of each token, lengths drawn from 256..4095 (the last one cut to n)."""
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < n:
        length = min(int(rng.integers(256, 4096)), n - total)
        lengths.append(length)
        total += length
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def mask_for(name: str, n: int) -> tuple[object, dict]:
    """The mask_mod and the from_mask_mod keywords of mask ``name`` at n."""
    if name == "sliding_window":

        def sliding_window(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)

        return sliding_window, {}
    if name == "document":
        doc_n = documents(n)

        def document(b, h, q_idx, kv_idx):
            return (doc_n[q_idx] == doc_n[kv_idx]) & (q_idx >= kv_idx)

        return document, {}
    if name == "nsa_compression":

        def nsa_compression(b, h, q_idx, kv_idx):
            return q_idx >= (kv_idx + 1) * BLOCK - 1

        return nsa_compression, {"kv_len": n // BLOCK, "key_span": BLOCK}
    raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {name!r}")


MASKS = ("sliding_window", "document", "nsa_compression")


def ours(name: str, n: int) -> tuple[fg.Pattern, fg.Report]:
    mask_mod, kw = mask_for(name, n)
    p = fg.from_mask_mod(mask_mod, n, **kw)
    return p, fg.check(p)


def dense(name: str, n: int) -> tuple[int, int]:
    """FlexAttention's create_mask and a dense numpy check: (missing pairs, violations)."""
    from torch.nn.attention.flex_attention import create_mask

    mask_mod, kw = mask_for(name, n)
    m = kw.get("kv_len", n)
    mask_nm = create_mask(mask_mod, 1, 1, n, m, device="cpu")[0, 0].numpy()
    q_n = np.arange(n)
    if m != n:  # key j holds tokens BLOCK·j .. BLOCK·j + BLOCK − 1: spans that tile, so the
        # tokens ≤ q a query reaches are the sum over its keys of their spans' tokens ≤ q
        first_m = np.arange(m) * BLOCK
        last_m = np.minimum(first_m + BLOCK - 1, n - 1)
        violations = int((mask_nm & (last_m[None, :] > q_n[:, None])).sum())
        seen_nm = np.clip(np.minimum(last_m[None, :], q_n[:, None]) - first_m[None, :] + 1, 0, None)
        reached = int((seen_nm * mask_nm).sum())
        return n * (n + 1) // 2 - reached, violations
    violations = int(np.triu(mask_nm, 1).sum())
    return n * (n + 1) // 2 - int(np.tril(mask_nm).sum()), violations


# --- memory in a child process -----------------------------------------------------------------
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def child_peak(name: str, n: int, route: str) -> int:
    """In this (fresh, child) process: the resident bytes one run of ``route`` at n adds."""
    run = ours if route == "ours" else dense
    run(name, WARMUP_N)
    gc.collect()
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run(name, n)
    return max(_status_bytes("VmHWM") - before, 0)


CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import mask_mod as s; "
    "print(s.child_peak(sys.argv[2], int(sys.argv[3]), sys.argv[4]))"
)


def measure_peak(name: str, n: int, route: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), name, str(n), route],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {name} n={n} {route} failed:\n{proc.stderr}")
    return int(proc.stdout.strip().splitlines()[-1])


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = _report.new_parser(__doc__, quick="a smoke run: n = 512 and 1024, one repeat")
    ap.add_argument("--ns", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    ap.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dense-max-n", type=int, default=32768)
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process peaks")
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"repeats": 1, "dense_max_n": 1})
    if any(n < BLOCK for n in args.ns):
        ap.error(f"--ns must be ≥ {BLOCK} (one compressed key), got {args.ns}")
    if args.quick:
        args.ns, args.repeats, args.dense_max_n = [512, 1024], 1, 1024
    memory = not args.no_memory and Path("/proc/self/clear_refs").exists()
    load_start = _report.load_average()
    for name in args.masks:  # warm-up: numba kernels loaded, torch's first-call costs paid
        ours(name, WARMUP_N)
        dense(name, WARMUP_N)
    rows, goals_read, goal_big = [], [], []
    for name in args.masks:
        per_pair = None
        for n in args.ns:
            _report.log(f"{name} n={n}")
            mask_mod, kw = mask_for(name, n)
            read_s, p = _report.median_s(
                lambda f=mask_mod, n=n, kw=kw: fg.from_mask_mod(f, n, **kw), args.repeats
            )
            check_s, r = _report.median_s(lambda p=p: fg.check(p), args.repeats)
            peak = measure_peak(name, n, "ours") if memory else None
            dense_s = dense_peak = None
            dense_cell = "—"
            if n <= args.dense_max_n:
                t0 = time.perf_counter()
                missing, violations = dense(name, n)
                dense_s = time.perf_counter() - t0
                if (missing, violations) != (r.missing_pairs, r.causality_violations):
                    raise AssertionError(
                        f"{name} n={n}: dense check says missing={missing}, violations="
                        f"{violations}; flowgraph says {r.missing_pairs}, {r.causality_violations}"
                    )
                if memory:
                    dense_peak = measure_peak(name, n, "dense")
                    per_pair = dense_peak / (n * kw.get("kv_len", n))
                    dense_cell = mib(dense_peak)
            elif per_pair is not None:
                dense_cell = f"≈ {mib(per_pair * n * kw.get('kv_len', n))} needed"
            rows.append([
                name, f"{n:,}", f"{read_s:.3f}", f"{check_s:.3f}",
                "—" if peak is None else mib(peak),
                "—" if dense_s is None else f"{dense_s:.2f}", dense_cell,
                "—" if dense_s is None else f"{dense_s / (read_s + check_s):,.0f}",
                f"{r.missing_pairs:,}", f"{r.causality_violations:,}",
            ])  # fmt: skip
            goals_read.append((name, n, read_s, check_s))
            if n == GOAL_N:
                goal_big.append((name, read_s + check_s, peak))
    header = ["mask", "n", "read s", "check s", "ours peak MiB", "dense s", "dense peak MiB",
              "speed-up ×", "missing pairs", "violations"]  # fmt: skip
    lines = [
        _report.machine_line(f"torch {torch.__version__}, numpy {np.__version__}"),
        "",
        f"Command: `{_report.command_line()}`",
        "",
        *_report.markdown_table(header, "llrrrrrrrr", rows),
        "",
        "Goals (issue 21):",
    ]
    slow = [f"{name} n={n:,} ({rd:.3f} s vs {ck:.3f} s)" for name, n, rd, ck in goals_read
            if rd > ck]  # fmt: skip
    lines.append(
        "- reading costs no more than checking (read s ≤ check s): "
        + ("met" if not slow else f"NOT met for {len(slow)} of {len(goals_read)} rows: "
           + "; ".join(slow))
    )  # fmt: skip
    if goal_big:
        ok = all(s < GOAL_S and (pk is None or pk < GOAL_BYTES) for _, s, pk in goal_big)
        worst = max(goal_big, key=lambda g: g[1])
        peaks = [pk for _, _, pk in goal_big if pk is not None]
        lines.append(
            f"- n = {GOAL_N:,}: read + check < {GOAL_S:.0f} s and < 2 GiB for every mask: "
            f"{'met' if ok else 'NOT met'} (slowest {worst[0]} {worst[1]:.2f} s"
            + (f", largest peak {mib(max(peaks))} MiB" if peaks else ", memory not measured")
            + ")"
        )
    else:
        lines.append(f"- n = {GOAL_N:,}: not run (pass it in --ns)")
    if args.quick:
        lines += ["", "This is a --quick smoke run: its numbers mean nothing."]
    lines += ["", _report.load_span(load_start), ""]
    _report.emit("\n".join(lines), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
