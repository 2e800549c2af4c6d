"""Training throughput (tokens/s) of the GPT for each attention kind (issue 5, "Measure").

All in one process: for each size and each variant, a model is built, ``--warmup`` training
steps run untimed, then the variants take turns, one step at a time, for ``--steps`` rounds (so a
burst of load from elsewhere hits them all alike); the median step time gives tokens/s =
batch·n_ctx / step. A step is what ``models.train`` does: forward, cross-entropy over every
position, backward, gradient clipping, AdamW. The baseline is ``sdpa`` (torch's
``F.scaled_dot_product_attention``) of the same size, measured in the same rounds.

Sizes: ``demo`` is the demo sorter (n_ctx 21, d_model 64, 2 layers, 4 heads, batch 64);
``large`` is d_model 384, 6 layers, 6 heads, n_ctx 256 (batch ``--large-batch``, default 8).
Variants: sdpa, quadratic, metric (symmetric), metric (psd), and sdpa and metric restricted to
the fixed pattern (interleave). With a pattern on a CPU the modules run the dense masked
reference; on CUDA they call the gpu functions (CuPy kernels when present).

``--quick`` runs a smoke test at tiny sizes; its numbers mean nothing.

    python benchmarks/training.py                  # CPU, both sizes
    python benchmarks/training.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import _report
import torch
import torch.nn.functional as F

from flowgraph.models.gpt import GPT, GPTConfig

VARIANTS = {
    "sdpa": dict(attention="sdpa"),
    "quadratic": dict(attention="quadratic"),
    "metric": dict(attention="metric"),
    "metric psd": dict(attention="metric", metric="psd"),
    "sdpa + fixed": dict(attention="sdpa", pattern="fixed"),
    "metric + fixed": dict(attention="metric", pattern="fixed"),
}
SIZES = {
    "demo": dict(n_ctx=21, d_model=64, n_layer=2, n_head=4, vocab_size=3, batch=64),
    "large": dict(n_ctx=256, d_model=384, n_layer=6, n_head=6, vocab_size=65, batch=8),
    "quick": dict(n_ctx=16, d_model=16, n_layer=1, n_head=2, vocab_size=5, batch=4),
}


class _Runner:
    def __init__(self, size: dict, variant: dict, device: str, seed: int) -> None:
        torch.manual_seed(seed)
        fields = {k: v for k, v in size.items() if k != "batch"}
        self.model = GPT(GPTConfig(**fields, **variant)).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        shape = (size["batch"], size["n_ctx"] + 1)
        data = torch.randint(0, size["vocab_size"], shape, generator=g).to(device)
        self.x, self.y = data[:, :-1], data[:, 1:]
        self.device = device

    def step(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = self.model(self.x)
        loss = F.cross_entropy(logits.flatten(0, 1), self.y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


def measure(size_name: str, device: str, steps: int, warmup: int, batch: int | None) -> list:
    size = dict(SIZES[size_name])
    if batch is not None:
        size["batch"] = batch
    runners = {name: _Runner(size, v, device, seed=0) for name, v in VARIANTS.items()}
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(steps):
        for name, runner in runners.items():
            times[name].append(runner.step())
    tokens = size["batch"] * size["n_ctx"]
    base = statistics.median(times["sdpa"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append((size_name, name, size["batch"], med * 1e3, tokens / med, base / med))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="demo,large", help="comma-separated: demo, large")
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--large-batch", type=int, default=8)
    _report.add_threads_flag(ap)
    ap.add_argument("--quick", action="store_true", help="tiny smoke test")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = ["quick"] if args.quick else args.sizes.split(",")
    for s in sizes:
        if s not in SIZES:
            print(f"--sizes: unknown size {s!r}; expected demo, large", file=sys.stderr)
            return 2
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    load_start = _report.load_average()
    rows = []
    for s in sizes:
        batch = args.large_batch if s == "large" else None
        rows += measure(s, args.device, steps, warmup, batch)
    device = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} torch threads"
    )
    command = shlex.join(["python", "benchmarks/training.py", *(argv or sys.argv[1:])])
    print(_report.machine_line(f"torch {torch.__version__}; device {args.device} ({device})"))
    print(f"\nCommand: `{command}`")
    print(f"\n{_report.load_span(load_start)}\n")
    table = _report.markdown_table(
        ["size", "attention", "batch", "step ms", "tokens/s", "speed vs sdpa"],
        "llrrrr",
        [
            [size, name, batch, f"{ms:.1f}", f"{tps:,.0f}", f"{rel:.2f}×"]
            for size, name, batch, ms, tps, rel in rows
        ],
    )
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
