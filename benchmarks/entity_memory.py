"""models.EntityMemory against the seed's two entity memories: forward + backward time and memory.

Three variants, built in this one process on the same random data and the same weights:

- loop (seed v1): the seed's first version — a Python loop over mentions, each finding its end
  with a while loop, two matrix-vector products with E, ``y[b, start] = W_b(...)`` and
  ``loss += ...``. Bugs that would make its outputs meaningless are fixed (each in a comment marked
  ``seed:``); its structure and cost are the seed's.
- seed v2: the seed's published version — a Python loop only to find each span's end
  (``_get_last_mention``, verbatim), then batched products that materialise the mentions × N
  logits and softmax. Its span ends are off by one when a mention runs to the last token; the
  data here keep every row's last token O, so its spans are right and its outputs comparable
  (``tests/test_benchmark_entity_memory.py`` shows the off-by-one on a row that ends inside a
  mention).
- module: ``models.EntityMemory`` in training mode (full softmax, streamed over entity blocks).

Before timing, the script checks that the three agree — y, loss and the gradients of x, W_f, W_b
and E — and fails otherwise. Each timed call is one forward and one backward of
``loss + (y · g).sum()`` with a fixed random g, so both of the module's outputs are
backpropagated. Peak memory is measured in a child process per variant: Linux's VmHWM (peak
resident memory) is reset through /proc/self/clear_refs after the inputs and parameters exist,
one forward + backward runs, and the extra is VmHWM − VmRSS before − the bytes of the parameter
gradients the backward creates (glibc's mmap threshold fixed at 64 KiB in the child, so that
freed blocks leave the resident set at once instead of staying cached in the heap).
``--memory-n`` repeats the measurement at a larger N (the paper's 1,000,000) for the module and
seed v2, beside the size of one mentions × N float32 matrix.

Run ``python benchmarks/entity_memory.py --help`` for the options; ``--quick`` is a small smoke
run; ``--markdown PATH`` also writes the report to a file (it is what ``docs/entity_memory.md``
shows).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module, NLLLoss

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import _report  # noqa: E402

from flowgraph.models.entity_memory import DEFAULT_BLOCK_SIZE, EntityMemory  # noqa: E402

MIB = 2**20
VARIANTS = ("loop", "seed_v2", "module")
LABELS = {"loop": "loop (seed v1)", "seed_v2": "seed v2 (published)", "module": "EntityMemory"}
RTOL = 2e-4  # float32 sums over 100,000 entities in different orders


@dataclass(frozen=True)
class Config:
    batch: int = 8
    tokens: int = 512
    d_model: int = 768
    d_entity: int = 256
    n_entities: int = 100_000
    mentions: int = 300
    block_size: int = DEFAULT_BLOCK_SIZE
    seed: int = 0


QUICK = Config(batch=2, tokens=64, d_model=32, d_entity=16, n_entities=2000, mentions=12,
               block_size=256)  # fmt: skip


# --- data ----------------------------------------------------------------------------------------
def make_data(cfg: Config) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x_bnc, bio_bn, entity_ids_bn and an upstream gradient g_bnc, from ``cfg.seed``.

    ``cfg.mentions`` mentions of 1-4 tokens, placed at random without touching each other, and
    never at a row's last token: seed v2 finds wrong ends there (see the module docstring).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    per_row = [cfg.mentions // cfg.batch + (b < cfg.mentions % cfg.batch) for b in range(cfg.batch)]
    bio_bn = torch.zeros(cfg.batch, cfg.tokens, dtype=torch.long)
    for b, count in enumerate(per_row):
        lengths = torch.randint(1, 5, (count,), generator=gen).tolist()
        # Each mention takes its tokens and one O after it (so that the next B cannot be read as
        # its continuation, and the last mention ends at n − 2 at the latest); the free O tokens
        # go in the count + 1 gaps: stars and bars, gap picks distinct and sorted.
        free = cfg.tokens - sum(lengths) - count
        if free < 0:
            raise ValueError(f"{count} mentions do not fit in {cfg.tokens} tokens")
        picks = torch.randperm(free + count, generator=gen)[:count].sort().values.tolist()
        used = 0
        for i, length in enumerate(lengths):
            start = picks[i] - i + used
            bio_bn[b, start] = 1
            bio_bn[b, start + 1 : start + length] = 2
            used += length + 1
    x_bnc = torch.randn(cfg.batch, cfg.tokens, cfg.d_model, generator=gen)
    ids_bn = torch.randint(0, cfg.n_entities, (cfg.batch, cfg.tokens), generator=gen)
    g_bnc = torch.randn(cfg.batch, cfg.tokens, cfg.d_model, generator=gen)
    return x_bnc, bio_bn, ids_bn, g_bnc


def make_module(cfg: Config) -> EntityMemory:
    torch.manual_seed(cfg.seed + 1)
    return EntityMemory(cfg.d_model, cfg.n_entities, cfg.d_entity, block_size=cfg.block_size)


# --- the seed's versions -------------------------------------------------------------------------
class SeedLoopMemory(Module):
    """The seed's first version: one Python iteration per mention.

    Parameters in the seed's layout (``E = Linear(N, d_ent)``, so ``E.weight`` is (d_ent, N)),
    copied from an :class:`EntityMemory`. Training path only (the seed's ``self.train`` is a bound
    method, always true).
    """

    def __init__(self, em: EntityMemory) -> None:
        super().__init__()
        self.N, self.d_emb, self.d_ent = em.n_entities, em.d_model, em.d_entity
        self.W_f = Linear(2 * self.d_emb, self.d_ent)
        self.W_b = Linear(self.d_ent, self.d_emb)
        self.E = Linear(self.N, self.d_ent, bias=False)  # seed: has a bias; the E has none
        copy_weights(em, self)
        self.begin, self.inner, self.out = 1, 2, 0

    def forward(
        self, X: Tensor, bio_output: Tensor, entities_output: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        calculate_loss = bio_output is not None and entities_output is not None
        begin_positions = torch.nonzero(bio_output == self.begin)
        y = torch.zeros_like(X)
        loss = torch.zeros((1,)) if calculate_loss else None
        for pos in begin_positions:
            # seed: `end_mention = pos[1]` then `end_mention -= 1` edits begin_positions in place,
            # and the while loop starts on the B itself, so it never runs and every span ends at
            # start − 1; it also stops at d_emb instead of the sequence length. Fixed here:
            b, start = int(pos[0]), int(pos[1])
            end_mention = start + 1
            while end_mention < bio_output.size(1) and bio_output[b, end_mention] == self.inner:
                end_mention += 1
            end_mention -= 1

            first = X[b, start]
            second = X[b, end_mention]

            mention_span = torch.cat([first, second], 0)
            pseudo_entity_embedding = self.W_f(mention_span)  # d_ent

            alpha = F.softmax(self.E.weight.T.matmul(pseudo_entity_embedding), dim=0)
            picked_entity = self.E.weight.matmul(alpha)  # seed: + self.E.bias

            y[b, start] = self.W_b(picked_entity)

            if calculate_loss:
                # seed: `loss += alpha[gold]` adds a probability; the cross-entropy is −log α.
                loss += -torch.log(alpha[entities_output[b, start]])
        if calculate_loss:
            loss = loss[0] / max(len(begin_positions), 1)  # seed: a sum; the issue asks a mean
        return loss, y


class SeedBatchedMemory(Module):
    """The seed's published version: a Python loop for span ends, batched products after it."""

    def __init__(self, em: EntityMemory) -> None:
        super().__init__()
        self.N, self.d_emb, self.d_ent = em.n_entities, em.d_model, em.d_entity
        self.W_f = Linear(2 * self.d_emb, self.d_ent)
        self.W_b = Linear(self.d_ent, self.d_emb)
        self.E = Linear(self.N, self.d_ent, bias=False)
        copy_weights(em, self)
        self.begin, self.inner, self.out = 1, 2, 0
        self.loss = NLLLoss()

    def _get_last_mention(self, bio_output: Tensor, pos: Tensor) -> int:
        # Verbatim. When the span runs to the last token the loop ends without a break and the
        # `-= 1` makes the end n − 2; a B at the last token gives start − 1 (and, pos[1] being a
        # view, moves the start too).
        end_mention = pos[1]

        for end_mention in range(pos[1] + 1, bio_output.size(1)):
            if bio_output[pos[0], end_mention] != self.inner:
                break
        end_mention -= 1

        return end_mention

    def forward(
        self, X: Tensor, bio_output: Tensor, entities_output: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        y = torch.zeros_like(X)

        with torch.no_grad():
            calculate_loss = bio_output is not None and entities_output is not None
            loss = torch.zeros((1,)) if calculate_loss else None

            begin_positions = torch.nonzero(bio_output == self.begin)

            if len(begin_positions) == 0:
                return loss, y

            end_positions = torch.tensor(
                [self._get_last_mention(bio_output, pos) for pos in begin_positions]
            ).unsqueeze(1)

        positions = torch.cat([begin_positions, end_positions], 1).T

        first = X[positions[0], positions[1]]
        second = X[positions[0], positions[2]]

        mention_span = torch.cat([first, second], 1)
        pseudo_entity_embedding = self.W_f(mention_span)  # num_of_mentions x d_ent

        alpha = F.softmax(pseudo_entity_embedding.matmul(self.E.weight), dim=1)
        picked_entity = self.E(alpha)

        y[positions[0], positions[1]] = self.W_b(picked_entity)

        if calculate_loss:
            # seed: `self.loss(alpha, ...)` hands NLLLoss probabilities, not log-probabilities.
            loss = self.loss(torch.log(alpha), entities_output[positions[0], positions[1]])
        else:
            loss = None
        return loss, y


@torch.no_grad()
def copy_weights(em: EntityMemory, seed: Module) -> None:
    """The module's weights into a seed-layout module (the seed's E.weight is Eᵀ)."""
    seed.W_f.load_state_dict(em.W_f.state_dict())
    seed.W_b.load_state_dict(em.W_b.state_dict())
    seed.E.weight.copy_(em.E.T)


def build(variant: str, em: EntityMemory) -> Module:
    if variant == "loop":
        return SeedLoopMemory(em)
    if variant == "seed_v2":
        return SeedBatchedMemory(em)
    return em


# --- measurements --------------------------------------------------------------------------------
def step(
    model: Module, x_bnc: Tensor, bio_bn: Tensor, ids_bn: Tensor, g_bnc: Tensor
) -> tuple[Tensor, Tensor]:
    """One forward and backward of loss + (y·g).sum(); returns loss and y, detached."""
    for p in model.parameters():
        p.grad = None
    x_bnc.grad = None
    loss, y_bnc = model(x_bnc, bio_bn, ids_bn)
    (loss + (y_bnc * g_bnc).sum()).backward()
    return loss.detach(), y_bnc.detach()


def outputs(model: Module, x_bnc: Tensor, bio_bn: Tensor, ids_bn: Tensor, g_bnc: Tensor) -> dict:
    """y, loss and every gradient, named alike for all variants (E's in the module's layout)."""
    loss, y_bnc = step(model, x_bnc, bio_bn, ids_bn, g_bnc)
    e_grad = model.E.weight.grad.T if isinstance(model.E, Linear) else model.E.grad
    return {
        "y": y_bnc,
        "loss": loss,
        "dx": x_bnc.grad.clone(),
        "dW_f": model.W_f.weight.grad,
        "dW_b": model.W_b.weight.grad,
        "dE": e_grad,
    }


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest of max|a − b| / max|b| over the named tensors."""
    worst = 0.0
    for name, ref in b.items():
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((a[name] - ref).abs().max()) / scale)
    return worst


def check_agreement(results: dict[str, dict], rtol: float = RTOL) -> dict[str, float]:
    """Each variant's largest relative difference from the module; AssertionError above rtol."""
    diffs = {}
    for variant, res in results.items():
        diff = max_rel_diff(res, results["module"])
        if diff > rtol:
            names = [k for k in res if max_rel_diff({k: res[k]}, {k: results["module"][k]}) > rtol]
            raise AssertionError(
                f"{variant} disagrees with the module: max relative difference {diff:.2e} "
                f"> {rtol:.0e} in {', '.join(names)}"
            )
        diffs[variant] = diff
    return diffs


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def child_memory(variant: str, cfg: Config) -> dict:
    """In this (child) process: peak resident bytes one forward + backward adds, beyond the
    parameter gradients it creates. Linux only (VmHWM reset through /proc/self/clear_refs)."""
    x_bnc, bio_bn, ids_bn, g_bnc = make_data(cfg)
    x_bnc.requires_grad_(True)
    warm = dataclasses.replace(cfg, batch=1, tokens=16, n_entities=128, mentions=2, block_size=16)
    step(build(variant, make_module(warm)), *make_data(warm))  # loads kernels, starts threads
    model = build(variant, make_module(cfg))  # the module itself, or a seed copy of its weights
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    step(model, x_bnc, bio_bn, ids_bn, g_bnc)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"extra_bytes": (peak - before) * 1024 - grad_bytes, "seconds": seconds}


def measure_memory(variant: str, cfg: Config) -> dict | None:
    """Runs :func:`child_memory` in a fresh process; None where VmHWM cannot be reset."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    args = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
            "--config", json.dumps(dataclasses.asdict(cfg))]  # fmt: skip
    _report.log(f"  memory: {variant} at N={cfg.n_entities:,} (child process) ...")
    # A fixed mmap threshold makes glibc return every freed block over 64 KiB to the system at
    # once; with its default, adaptive threshold, freed blocks stay resident in the heap and
    # VmHWM would count allocator caching rather than what the variant holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {variant} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report --------------------------------------------------------------------------------------
def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.0f}" if nbytes >= 10 * MIB else f"{nbytes / MIB:.1f}"


def fmt_ms(ms: float) -> str:
    """91,074 and 740 as they are; three significant digits below 100 (the --quick run)."""
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.1f}" if ratio >= 1 else f"{ratio:.2g}"


def report(
    cfg: Config,
    mentions: int,
    times_ms: dict[str, float],
    diffs: dict[str, float],
    memory: list[tuple[str, int, dict | None]],
    runs: dict[str, int],
    command: str,
    load: str,
) -> str:
    base = times_ms["loop"]
    speed = _report.markdown_table(
        ["variant", "forward + backward ms", "runs", "speed-up × vs loop",
         "max rel. diff vs module"],
        "lrrrr",
        [
            [LABELS[v], fmt_ms(times_ms[v]), runs[v], fmt_ratio(base / times_ms[v]),
             "—" if v == "module" else f"{diffs[v]:.1e}"]
            for v in VARIANTS
        ],
    )  # fmt: skip
    mem_rows = []
    for v, n, res in memory:
        bound = mentions * n * 4
        if res is None:
            mem_rows.append([LABELS[v], f"{n:,}", "unavailable", mib(bound), "—"])
            continue
        ratio = res["extra_bytes"] / bound
        mem_rows.append([LABELS[v], f"{n:,}", mib(res["extra_bytes"]), mib(bound), f"{ratio:.2f}"])
    mem = _report.markdown_table(
        ["variant", "N", "peak extra MiB (VmHWM, child process)",
         "one mentions × N float32 matrix MiB", "extra / matrix"],
        "lrrrr",
        mem_rows,
    )  # fmt: skip
    lines = [
        _report.machine_line(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"),
        "",
        f"Command: `{command}`",
        "",
        f"batch {cfg.batch}, {cfg.tokens} tokens, d_model {cfg.d_model}, d_entity "
        f"{cfg.d_entity}, N = {cfg.n_entities:,} entities, {mentions} mentions, float32, "
        f"block_size {cfg.block_size}; training mode (full softmax), loss and y both "
        "backpropagated.",
        "",
        *speed,
        "",
        "forward + backward ms: median of the runs, in one process, after the agreement check "
        "(which also warms up); max rel. diff: the largest max|a − b| / max|b| over y, loss "
        "and the gradients of x, W_f, W_b and E, asserted ≤ "
        f"{RTOL:.0e} before timing.",
        "",
        *mem,
        "",
        "peak extra: VmHWM (peak resident memory, reset through /proc/self/clear_refs once inputs "
        "and parameters exist) − VmRSS before − the parameter gradients the backward creates, for "
        "one forward + backward in a fresh child process per row, run with "
        "MALLOC_MMAP_THRESHOLD_=65536 so that freed blocks leave the resident set. The yardstick "
        "is one mentions × N float32 matrix (the size of the logits a dense softmax materialises).",
        "",
        load,
    ]
    return "\n".join(lines) + "\n"


# --- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a small smoke run (seconds)")
    ap.add_argument("--n-entities", type=int, help=f"N, timed (default {Config.n_entities:,})")
    ap.add_argument("--mentions", type=int, help=f"mentions (default {Config.mentions})")
    ap.add_argument("--block-size", type=int, help=f"default {DEFAULT_BLOCK_SIZE}")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of seed v2 and the module")
    ap.add_argument(
        "--loop-repeats", type=int, default=1, help="timed runs of the loop (minutes each at N=1e5)"
    )
    ap.add_argument(
        "--memory-n",
        type=int,
        default=1_000_000,
        help="also measure peak memory of the module and seed v2 at this N (0: skip)",
    )
    _report.add_markdown_flag(ap)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    minimums = dict.fromkeys(("n_entities", "mentions", "block_size", "repeats", "loop_repeats"), 1)
    _report.check_minimums(ap, args, {**minimums, "memory_n": 0})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(args.child, Config(**json.loads(args.config)))))
        return 0
    cfg = QUICK if args.quick else Config()
    overrides = {k: getattr(args, k) for k in ("n_entities", "mentions", "block_size")}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    memory_n = min(args.memory_n, 20_000) if args.quick else args.memory_n
    command = _report.command_line()
    load_start = _report.load_average()

    x_bnc, bio_bn, ids_bn, g_bnc = make_data(cfg)
    x_bnc.requires_grad_(True)
    mentions = int((bio_bn == 1).sum())
    em = make_module(cfg)
    modules = {v: build(v, em) for v in VARIANTS}
    _report.log("agreement check ...")
    results = {v: outputs(modules[v], x_bnc, bio_bn, ids_bn, g_bnc) for v in VARIANTS}
    diffs = check_agreement(results)
    del results
    times_ms = {}
    runs = {v: args.loop_repeats if v == "loop" else args.repeats for v in VARIANTS}
    for v in VARIANTS:
        _report.log(f"timing {v} ...")
        seconds, _ = _report.median_s(
            lambda v=v: step(modules[v], x_bnc, bio_bn, ids_bn, g_bnc), runs[v]
        )
        times_ms[v] = seconds * 1e3
    modules.clear()  # frees the parameters before the memory children start
    del em
    memory = [(v, cfg.n_entities, measure_memory(v, cfg)) for v in VARIANTS]
    if memory_n:
        big = dataclasses.replace(cfg, n_entities=memory_n)
        memory += [(v, memory_n, measure_memory(v, big)) for v in ("module", "seed_v2")]
    text = report(
        cfg, mentions, times_ms, diffs, memory, runs, command, _report.load_span(load_start)
    )
    _report.emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
