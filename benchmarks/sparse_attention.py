"""Masked sparse attention on a CUDA GPU: gpu.sparse_attention (the CuPy kernels of
gpu/kernels/sparse_attention.cu) against ``F.scaled_dot_product_attention`` with a dense boolean
mask and against FlexAttention (``torch.nn.attention.flex_attention``, compiled) with the
equivalent ``BlockMask`` (issue 3, "Measure").

All in one process, on the same inputs: bfloat16 q, k, v of shape (batch, heads, n, d) for n in
``--n`` (4096 16384) and d in ``--d`` (64 128); the patterns strided, fixed, ltr (two steps:
head h uses step h mod 2, the strided transpose where it lowers the tile count) and local (a
causal window of √n·2); mask blocks of ``--block`` (64). SDPA and FlexAttention get the same
masks in token order (FlexAttention's BlockMask at its default 128 × 128 blocks). For each case:
milliseconds (CUDA events around each call, median of ``--repeats`` after ``--warmup`` calls,
rotating over ``--sets`` input sets so that repeated calls do not just hit the L2 cache), TFLOP/s
over the computed blocks (4·block²·d per computed tile of every batch and head forward; ×3.5 with
``--backward``, which times forward and backward together: the same numerator for every method,
so the column compares throughput on the work this kernel does), the peak memory a call
allocates beyond its inputs, and the memory of the mask each method needs.

Before timing, every method's output is compared with the float64 reference on the rows that
see at least one key (SDPA gives NaN on the others) at a small size, with this kernel's outputs
poisoned (NaN) first so that an element it skips shows: ‖out − ref‖/‖ref‖ < 2e-2.
``--check`` does only that, plus one tiny timing round: a quick correctness run for a new
machine. ``--markdown PATH`` also writes the report to a file. Without a CUDA device (or
without CuPy) the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shlex
import statistics
import sys
from dataclasses import dataclass

import _report
import torch
import torch.nn.functional as F

import flowgraph as fg
from flowgraph import gpu
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import sparse_attention_reference

MIB = 2**20
OURS = "gpu.sparse_attention (this kernel)"
SDPA = "SDPA, dense bool mask"
FLEX = "FlexAttention, BlockMask"
PATTERNS = ("strided", "fixed", "ltr", "local")
BACKWARD_FACTOR = 3.5  # forward 2 products per tile, backward 5: (2 + 5) / 2
CHECK_BOUND = 2e-2


def need_cuda() -> str | None:
    """Why the benchmark cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'flowgraph[cuda12]' or '[cuda13]')"
    return None


def pattern(name: str, n: int) -> fg.Pattern:
    if name == "local":
        return fg.local(n, window=2 * math.isqrt(n))
    return {"strided": fg.strided, "fixed": fg.fixed, "ltr": fg.ltr}[name](n)


@dataclass
class Case:
    name: str
    n: int
    d: int
    mask: SparseMask  # heads = the inputs' heads, in the stored order
    dense_hnn: torch.Tensor  # (heads, n, n) bool on the GPU, token order
    block_mask: object  # FlexAttention's BlockMask
    tiles: int  # computed tiles over the mask's heads, counted for every input head


def build_case(name: str, n: int, d: int, heads: int, block: int) -> Case:
    p = pattern(name, n)
    mask = SparseMask.from_pattern(p, heads=heads, mode="heads", block=block, permute="auto")
    mask = mask.to("cuda")
    per_step = SparseMask.from_pattern(p, mode="heads", block=block)  # one head per step
    steps = per_step.heads
    nb = per_step.num_blocks
    dense = per_step.to_dense(max_bytes=steps * (nb * block) ** 2).to("cuda")
    dense_hnn = dense[torch.arange(heads, device="cuda") % steps].contiguous()
    del dense
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return dense_hnn[h, q_idx, kv_idx]

    block_mask = create_block_mask(mask_mod, None, heads, n, n, device="cuda", _compile=True)
    counts = mask.kv_indptr[:, -1] - mask.kv_indptr[:, 0]
    tiles = int(counts.sum()) * (heads // mask.heads)
    return Case(name, n, d, mask, dense_hnn, block_mask, tiles)


def methods(case: Case):
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    sdpa_mask = case.dense_hnn[None]  # (1, heads, n, n), broadcast over the batch
    return {
        OURS: lambda q, k, v: gpu.sparse_attention(q, k, v, case.mask),
        SDPA: lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask),
        FLEX: lambda q, k, v: flex(q, k, v, block_mask=case.block_mask),
    }


def mask_bytes(case: Case, method: str) -> int:
    if method == SDPA:
        return case.dense_hnn.numel()
    if method == FLEX:
        bm = case.block_mask
        parts = [getattr(bm, f, None) for f in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                                                "full_kv_indices", "q_num_blocks", "q_indices",
                                                "full_q_num_blocks", "full_q_indices")]  # fmt: skip
        return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))
    m = case.mask
    parts = [m.kv_indptr, m.kv_indices, m.kv_slots, m.q_indptr, m.q_indices, m.q_slots, m.bits_pbw]
    parts += [t for t in (m.perm_hn, m.inv_perm_hn) if t is not None]
    return sum(t.numel() * t.element_size() for t in parts)


def inputs(batch, heads, n, d, sets, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [
        [torch.randn(batch, heads, n, d, generator=gen, device="cuda").bfloat16() for _ in "qkvo"]
        for _ in range(sets)
    ]


def check_case(case: Case, batch: int, heads: int) -> dict[str, float]:
    """‖out − ref‖/‖ref‖ of every method on rows that see a key, this kernel's output poisoned."""
    import flowgraph.gpu._sparse_cuda as sparse_cuda

    q, k, v, _ = inputs(batch, heads, case.n, case.d, 1, 1234)[0]
    ref = sparse_attention_reference(q.double(), k.double(), v.double(), case.mask)
    seen = case.dense_hnn.any(-1)[None, :, :, None].expand_as(ref)
    errors = {}
    sparse_cuda.poison_outputs = True
    try:
        for name, run in methods(case).items():
            out = run(q, k, v).double()
            if name == OURS and out.isnan().any():
                raise SystemExit(f"{name} left elements unwritten (NaN) for {case.name}")
            diff = torch.where(seen, out - ref, 0.0)
            errors[name] = (diff.norm() / torch.where(seen, ref, 0.0).norm()).item()
            if not errors[name] < CHECK_BOUND:
                raise SystemExit(
                    f"{name} differs from the float64 reference on {case.name} n={case.n} "
                    f"d={case.d}: {errors[name]:.2e} ≥ {CHECK_BOUND}"
                )
    finally:
        sparse_cuda.poison_outputs = False
    return errors


def time_method(run, sets, warmup: int, repeats: int, backward: bool) -> tuple[float, int]:
    """(median ms, peak bytes allocated beyond the inputs) of ``run`` over the input sets."""

    def once(i):
        q, k, v, dout = sets[i % len(sets)]
        if backward:
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            run(*leaves).backward(dout)
        else:
            run(q, k, v)

    for i in range(warmup):
        once(i)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(repeats):
        times.append(_report.cuda_ms(lambda: once(i)))  # noqa: B023  # called right here
    peak = torch.cuda.max_memory_allocated() - base
    return statistics.median(times), peak


def report(args) -> str:
    lines = [
        "# Sparse attention: this kernel vs SDPA (dense mask) vs FlexAttention",
        "",
        f"Command: `python benchmarks/sparse_attention.py {shlex.join(sys.argv[1:])}`",
        "",
        _report.machine_line(f"torch {torch.__version__}"),
        f"GPU: {torch.cuda.get_device_name()}; load average {_report.load_average()}",
        "",
    ]
    pass_name = "forward + backward" if args.backward else "forward"
    header = ["pattern", "n", "d", "method", f"{pass_name} ms", "TFLOP/s (computed blocks)",
              "peak MiB", "mask MiB", "block density", "this kernel ÷ method"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in args.n:
        batch = max(1, args.tokens // n)
        for d in args.d:
            for name in args.patterns:
                case = build_case(name, n, d, args.heads, args.block)
                if n <= 4096:  # the float64 reference is slow beyond
                    check_case(case, 1, args.heads)
                sets = inputs(batch, args.heads, n, d, args.sets, seed=n + d)
                flops = 4 * args.block**2 * d * case.tiles * batch
                flops *= BACKWARD_FACTOR if args.backward else 1
                results = {}
                for method, run in methods(case).items():
                    results[method] = time_method(
                        run, sets, args.warmup, args.repeats, args.backward
                    )
                ours = results[OURS][0]
                density = case.mask.density().block
                for method, (ms, peak) in results.items():
                    row = [name, str(n), str(d), method, f"{ms:.3f}",
                           f"{flops / ms / 1e9:.1f}", f"{peak / MIB:.1f}",
                           f"{mask_bytes(case, method) / MIB:.2f}", f"{density:.4f}",
                           f"{ms / ours:.2f}×" if method != OURS else "1"]  # fmt: skip
                    lines.append("| " + " | ".join(row) + " |")
                del case, sets
                torch.cuda.empty_cache()
    return "\n".join(lines) + "\n"


def check_only(args) -> str:
    lines = [
        _report.machine_line(f"torch {torch.__version__}"),
        f"GPU: {torch.cuda.get_device_name()}",
    ]
    for name in PATTERNS:
        for d in (64, 128):
            case = build_case(name, 256, d, 2, 32)
            errors = check_case(case, 2, 2)
            sets = inputs(2, 2, 256, d, 2, seed=d)
            ms, _ = time_method(methods(case)[OURS], sets, 1, 3, backward=True)
            lines.append(
                f"{name:8s} d={d:3d}: "
                + ", ".join(f"{m}: {e:.1e}" for m, e in errors.items())
                + f"; forward+backward {ms:.3f} ms (tiny, the number means nothing)"
            )
    lines.append(f"--check: every method within {CHECK_BOUND} of the float64 reference")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--d", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16384, help="batch = tokens // n")
    parser.add_argument("--block", type=int, default=64, choices=(16, 32, 64, 128))
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sets", type=int, default=3, help="input sets to rotate over")
    parser.add_argument("--check", action="store_true", help="correctness, tiny sizes, then exit")
    _report.add_markdown_flag(parser)
    args = parser.parse_args(argv)
    why = need_cuda()
    if why is not None:
        print(f"benchmarks/sparse_attention.py needs a CUDA GPU with CuPy: {why}", file=sys.stderr)
        return 2
    text = check_only(args) if args.check else report(args)
    _report.emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
