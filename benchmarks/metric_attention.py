"""Metric tensor attention: time and peak memory of ``gpu.metric_attention`` against named baselines
over n (issue 4, "Measure"), all in one process on the same inputs.

The operation (docs/gpu.md, "Metric attention"): per head a projection p (b, h, n, k) and a
symmetric metric M (k × k, packed), t = softmax(p·M·pᵀ/√k)·p, causal by default.

On a CUDA device (with CuPy, so that the kernels run), n = 1024 … 32768:

- ``gpu.metric_attention (CUDA kernel)``: this project's kernels (gpu/_metric_cuda.py);
- ``SDPA(q = p·M, k = v = p)``: torch's fused ``F.scaled_dot_product_attention`` on q = p·M —
  the baseline the kernel is to match or beat (the kernel loads each p tile once for keys and
  values);
- ``materialised (p·M·pᵀ, softmax, ·p)``: the (b, h, n, n) scores in plain torch; skipped where
  its estimated footprint is above ``--max-materialised-gib``.

Times are CUDA-event medians of ``--repeats`` runs after ``--warmup`` runs, rotating over three
input sets; memory is ``torch.cuda.max_memory_allocated`` above what was allocated before the
call (every buffer of the three methods comes from torch's allocator).

Without CUDA the script measures the CPU path, n = 256 … 4096:

- ``gpu.metric_attention (CPU: SDPA, q = p·M, k = v = p)``: what the op runs on a CPU;
- ``gpu.metric_attention_reference (blockwise)``: the float-exact oracle, 64 queries a step;
- the same materialised baseline.

Times are ``time.perf_counter`` medians. Peak memory on the CPU is the rise of the process's
resident set during one call: freed heap memory is first returned to the OS (``malloc_trim(0)``)
so the call cannot reuse pages without faulting them in, the kernel's high-water mark is reset
(``/proc/self/clear_refs`` ← 5) and read back (``VmHWM``) after the call. It counts everything
the call touches — torch tensors, SDPA's internal buffers, thread scratch — where tracemalloc sees
none of torch's memory and the profiler's memory events miss the allocations inside fused ops.

Before timing, every method's output at every n is checked against the float64 reference
(``gpu.metric_attention_reference`` on float64 inputs, blockwise, so it fits at every n), with the
kernel's output buffers poisoned with NaN. ``--backward`` times and measures forward + backward
(gradients of p and the packed M) instead of the forward alone. ``--quick`` is a smoke run at
tiny sizes; its numbers mean nothing. ``--markdown PATH`` also writes the report to a file.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import _report
import torch
import torch.nn.functional as F

from flowgraph import gpu
from flowgraph.gpu.metric import metric_attention_reference, packed_size, unpack_symmetric

MIB = 2**20
GPU_SIZES = (1024, 2048, 4096, 8192, 16384, 32768)
CPU_SIZES = (256, 512, 1024, 2048, 4096)
LINEAR_SLOPE = 1.2  # log-log slope of peak memory over n: 1 is linear, 2 quadratic
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}  # ‖out − ref‖/‖ref‖

OP_CUDA = "op (CUDA kernel)"
OP_CPU = "op (CPU path)"
SDPA = "SDPA"
REFERENCE = "reference"
MATERIALISED = "materialised"
LEGEND = {
    OP_CUDA: "gpu.metric_attention on CUDA: this project's kernels (gpu/_metric_cuda.py)",
    OP_CPU: "gpu.metric_attention on the CPU: F.scaled_dot_product_attention(p·M, p, p)",
    SDPA: "F.scaled_dot_product_attention(q = p·M, k = v = p), torch's fused attention",
    REFERENCE: "gpu.metric_attention_reference: the float-exact oracle, 64 queries a step",
    MATERIALISED: "the (b, h, n, n) scores p·M·pᵀ in plain torch, softmax, ·p",
}


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = CPU_SIZES
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    dtype: str = "float32"
    causal: bool = True
    backward: bool = False
    repeats: int = 5
    warmup: int = 1
    max_materialised_gib: float = 8.0
    seed: int = 0


QUICK_NOTE = " — a --quick smoke run: tiny sizes, the numbers mean nothing"
QUICK = Config(sizes=(64, 128, 256), heads=2, head_dim=16, repeats=2, warmup=1)
CUDA_DEFAULTS = {"sizes": GPU_SIZES, "heads": 8, "repeats": 20, "warmup": 3,
                 "max_materialised_gib": 60.0}  # fmt: skip


# --- the methods ----------------------------------------------------------------------------------
def sdpa(p_bhnk: torch.Tensor, m_packed_hl: torch.Tensor, causal: bool) -> torch.Tensor:
    q_bhnk = p_bhnk @ unpack_symmetric(m_packed_hl, p_bhnk.shape[-1])  # p·M, M symmetric
    scale = 1 / math.sqrt(p_bhnk.shape[-1])
    return F.scaled_dot_product_attention(q_bhnk, p_bhnk, p_bhnk, is_causal=causal, scale=scale)


def materialised(p_bhnk: torch.Tensor, m_packed_hl: torch.Tensor, causal: bool) -> torch.Tensor:
    """The scores as one (b, h, n, n) tensor: what the CUDA kernel and SDPA never build."""
    n, k = p_bhnk.shape[-2:]
    q_bhnk = p_bhnk @ unpack_symmetric(m_packed_hl, k)
    r_bhnn = (q_bhnk @ p_bhnk.transpose(-1, -2)) / math.sqrt(k)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=p_bhnk.device).triu(1)
        r_bhnn = r_bhnn.masked_fill(future, -math.inf)
    return torch.softmax(r_bhnn, dim=-1) @ p_bhnk


def materialised_bytes(cfg: Config, n: int) -> int:
    """Scores, their masked copy and the softmax: three (b, h, n, n) tensors alive at once at
    worst (twice that with the backward's saved tensors and gradients)."""
    element = torch.finfo(DTYPES[cfg.dtype]).bits // 8
    return (6 if cfg.backward else 3) * cfg.batch * cfg.heads * n * n * element


@dataclass
class Method:
    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]
    ms: dict[int, float] = field(default_factory=dict)  # n → median ms (absent: skipped)
    peak_mib: dict[int, float] = field(default_factory=dict)


def build_methods(cuda: bool) -> list[Method]:
    if cuda:
        return [Method(OP_CUDA, gpu.metric_attention), Method(SDPA, sdpa),
                Method(MATERIALISED, materialised)]  # fmt: skip
    return [Method(OP_CPU, gpu.metric_attention), Method(REFERENCE, metric_attention_reference),
            Method(MATERIALISED, materialised)]  # fmt: skip


def make_inputs(cfg: Config, n: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Fresh random p, packed M (off-diagonal entries present) and an upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    dtype, k = DTYPES[cfg.dtype], cfg.head_dim
    p = torch.randn(cfg.batch, cfg.heads, n, k, generator=gen)
    m = torch.randn(cfg.heads, packed_size(k), generator=gen) / math.sqrt(k)
    dout = torch.randn(cfg.batch, cfg.heads, n, k, generator=gen)
    return tuple(x.to(device=device, dtype=dtype) for x in (p, m, dout))


def call(method: Method, cfg: Config, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One forward (or forward + backward) of the method; returns the output."""
    p, m, dout = inputs
    if not cfg.backward:
        with torch.no_grad():
            return method.fn(p, m, cfg.causal)
    p, m = p.detach().requires_grad_(), m.detach().requires_grad_()
    out = method.fn(p, m, cfg.causal)
    torch.autograd.grad(out, (p, m), dout)
    return out.detach()


# --- correctness first ----------------------------------------------------------------------------
def check_outputs(methods: list[Method], cfg: Config, n: int, device: torch.device) -> None:
    """Every method against the float64 reference on fresh inputs; the kernel's buffers are
    poisoned so an unwritten element shows as NaN. Raises AssertionError naming the method."""
    import flowgraph.gpu._metric_cuda as metric_cuda

    p, m, _ = make_inputs(cfg, n, device, cfg.seed + 10_000 + n)
    ref = metric_attention_reference(p.double(), m.double(), cfg.causal)
    before, metric_cuda.poison_outputs = metric_cuda.poison_outputs, True
    try:
        for method in methods:
            if method.name == MATERIALISED and materialised_bytes(cfg, n) > budget(cfg):
                continue
            with torch.no_grad():
                out = method.fn(p, m, cfg.causal).double()
            err = ((out - ref).norm() / ref.norm()).item()
            if not err < TOL[DTYPES[cfg.dtype]]:  # also NaN
                raise AssertionError(
                    f"{method.name} is off the float64 reference at n={n}: relative error {err:.3g}"
                )
    finally:
        metric_cuda.poison_outputs = before


def budget(cfg: Config) -> float:
    return cfg.max_materialised_gib * 2**30


# --- measurement ----------------------------------------------------------------------------------
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Rise of the resident set during ``fn()``: free heap pages are handed back first so that
    reusing them shows, then the high-water mark is reset to the current RSS and read after."""
    gc.collect()
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    before = _proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)
    result = fn()
    peak = _proc_status("VmHWM") - before
    del result
    return max(peak, 0)


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak


def time_ms(fn: Callable[[int], object], cfg: Config, device: torch.device) -> float:
    """Median ms of ``cfg.repeats`` calls after ``cfg.warmup``; ``fn(i)`` uses input set i mod 3."""
    for i in range(cfg.warmup):
        fn(i)
    times = []
    for i in range(cfg.repeats):
        if device.type == "cuda":
            times.append(_report.cuda_ms(lambda: fn(i)))  # noqa: B023  # called right here
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(methods: list[Method], cfg: Config, device: torch.device) -> None:
    for n in cfg.sizes:
        _report.log(f"n = {n}: checking against the float64 reference ...")
        check_outputs(methods, cfg, n, device)
        sets = [make_inputs(cfg, n, device, cfg.seed + 3 * n + i) for i in range(3)]
        for method in methods:
            if method.name == MATERIALISED and materialised_bytes(cfg, n) > budget(cfg):
                _report.log(
                    f"  {method.name}: skipped, ~{materialised_bytes(cfg, n) / 2**30:.1f} GiB"
                )
                continue
            _report.log(f"  {method.name} ...")
            once = functools.partial(call, method, cfg, sets[0])
            if device.type == "cuda":
                peak = cuda_peak_bytes(once, device)
            else:
                peak = cpu_peak_bytes(once)
            method.peak_mib[n] = peak / MIB
            method.ms[n] = time_ms(lambda i, m=method, s=sets: call(m, cfg, s[i % 3]), cfg, device)


# --- report ---------------------------------------------------------------------------------------
def slope(values: dict[int, float]) -> float | None:
    """Log-log slope of a curve between its smallest and largest n: 1 linear, 2 quadratic."""
    ns = sorted(n for n, v in values.items() if v > 0)
    if len(ns) < 2:
        return None
    lo, hi = ns[0], ns[-1]
    return math.log(values[hi] / values[lo]) / math.log(hi / lo)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 100 else f"{value:.{digits}f}"


def report(
    methods: list[Method], cfg: Config, device: str, command: str, load: str, quick: bool
) -> str:
    op, baselines = methods[0], methods[1:]
    time_rows = [
        "| n | " + " | ".join(f"{m.name} ms" for m in methods) + " | "
        + " | ".join(f"{m.name} ÷ op" for m in baselines) + " |",
        "|---:|" + "---:|" * (len(methods) + len(baselines)),
    ]  # fmt: skip
    for n in cfg.sizes:
        ratios = [m.ms[n] / op.ms[n] if n in m.ms and n in op.ms else None for m in baselines]
        time_rows.append(
            f"| {n} | " + " | ".join(fmt(m.ms.get(n)) for m in methods) + " | "
            + " | ".join(fmt(r) for r in ratios) + " |"
        )  # fmt: skip
    mem_rows = [
        "| n | " + " | ".join(f"{m.name} peak MiB" for m in methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    for n in cfg.sizes:
        mem_rows.append(f"| {n} | " + " | ".join(fmt(m.peak_mib.get(n)) for m in methods) + " |")
    mem_rows.append(
        "| log-log slope | " + " | ".join(fmt(slope(m.peak_mib)) for m in methods) + " |"
    )
    how = (
        "torch.cuda.max_memory_allocated above the allocation before the call"
        if device != "cpu"
        else "the rise of the resident set during the call: VmHWM after clear_refs"
    )
    op_slope = slope(op.peak_mib)
    linear = op_slope is not None and op_slope <= LINEAR_SLOPE
    libraries = (
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
        f"device: {device}"
    )
    lines = [
        _report.machine_line(libraries),
        "",
        f"Command: `{command}`",
        "",
        f"b = {cfg.batch}, h = {cfg.heads}, k = {cfg.head_dim}, {cfg.dtype}, "
        f"{'causal' if cfg.causal else 'not causal'}, "
        f"{'forward + backward' if cfg.backward else 'forward'}; median of {cfg.repeats} runs "
        f"after {cfg.warmup} warm-up run(s); every output checked against the float64 reference "
        f"first. {load}",
        "",
        *(f"- {m.name}: {LEGEND[m.name]}" for m in methods),
        "",
        *time_rows,
        "",
        f"Peak memory of one call ({how}); the last row is the log-log slope of peak memory over "
        "n (1 linear, 2 quadratic):",
        "",
        *mem_rows,
        "",
        "Goals (issue 4)" + (QUICK_NOTE if quick else "") + ":",
        f"- peak memory of {op.name} linear in n (log-log slope ≤ {LINEAR_SLOPE}): "
        f"{fmt(op_slope)} — {'met' if linear else 'NOT met'}",
    ]
    if device == "cpu":
        lines.append(f"- at least SDPA's speed: measured on a GPU only (the {op.name} is SDPA)")
    else:
        worst = min(methods[1].ms[n] / op.ms[n] for n in cfg.sizes if n in op.ms)
        lines.append(
            f"- at least SDPA's speed at every n (SDPA ms ÷ op ms ≥ 1): worst {fmt(worst)} — "
            f"{'met' if worst >= 1 else 'NOT met'}"
        )
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a smoke run at tiny sizes")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--sizes", type=int, nargs="+", help="the n to measure")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--dtype", choices=sorted(DTYPES))
    ap.add_argument("--not-causal", action="store_true", help="attend every key")
    ap.add_argument("--backward", action="store_true", help="forward + backward")
    ap.add_argument("--repeats", type=int, help="timed runs per method and n")
    ap.add_argument("--warmup", type=int, help="untimed runs first")
    ap.add_argument("--max-materialised-gib", type=float, help="skip the materialised baseline "
                    "where it would need more")  # fmt: skip
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    minimums = {"batch": 1, "heads": 1, "head_dim": 1, "repeats": 1, "warmup": 0,
                "max_materialised_gib": 0}  # fmt: skip
    _report.check_minimums(ap, args, minimums)
    if args.sizes is not None and min(args.sizes) < 1:
        ap.error(f"--sizes must be ≥ 1, got {args.sizes}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    cfg = QUICK if args.quick else Config()
    if cuda and not args.quick:
        cfg = replace(cfg, **CUDA_DEFAULTS)
    overrides = {
        "sizes": None if args.sizes is None else tuple(args.sizes),
        "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim,
        "dtype": args.dtype, "repeats": args.repeats, "warmup": args.warmup,
        "max_materialised_gib": args.max_materialised_gib,
    }  # fmt: skip
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    cfg = replace(cfg, causal=not args.not_causal, backward=args.backward)
    if cuda and gpu.backend_for(torch.empty(0, device=device)) != "cupy":
        _report.log(
            "warning: CuPy or the kernels are missing; gpu.metric_attention runs the torch path"
        )
    command = _report.command_line()
    load_start = _report.load_average()
    methods = build_methods(cuda)
    measure(methods, cfg, device)
    load = _report.load_span(load_start)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    _report.emit(report(methods, cfg, name, command, load, args.quick), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
