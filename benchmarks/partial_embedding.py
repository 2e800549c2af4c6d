"""Training-step time of PartiallyFrozenEmbedding against the forum thread's workarounds, and the
vectorised ``remap`` against the thread's dict ``.apply_`` (issue 9, "Measure").

All in one process, on the same data: a (V, D) = (75,000, 300) float32 table, 20% of its rows
trainable (chosen at random), batches of 256 × 75 ids, Adam (lr 1e-3, torch's defaults). One
training step is forward, the loss ``out.square().mean()`` (the same cheap loss for all),
backward, ``optimizer.step()`` and ``optimizer.zero_grad()``. After ``--warmup`` steps each,
the methods take turns, one step at a time, for ``--steps`` rounds (so a burst of load from
elsewhere hits them all alike), and the median step time is reported:

- this module: ``PartiallyFrozenEmbedding(weight_vd, rows)``; only the trainable rows are a
  parameter;
- ``nn.Embedding``, fully trainable: ``nn.Embedding.from_pretrained(weight_vd, freeze=False)``;
- the seed's ``PartiallyFixedEmbedding``: the thread's copy-into-buffer module, as posted. It
  needs the vocabulary sorted (frozen rows first), so its ids are remapped once, before timing,
  with ``order = argsort(mask)``;
- gradient-hook masking: the thread's second module, a full trainable table whose gradient a
  hook multiplies by a (V, 1) 0/1 mask. The hook is registered once, in ``__init__``. The
  thread registers it in every ``forward``, which stacks one more hook per step.

Before timing, the script checks that the four modules return the same rows for the same
words (the seed's trainable rows aside, which it initialises itself).

Remap: 7.5 million ids (100,000 × 75) renumbered into the sorted vocabulary, by
``models.embedding.remap`` (median of ``--remap-repeats`` runs; it returns a new tensor, as the
thread's clone does, and the goal is measured on it), by ``remap(..., out=buffer)`` into a
reused buffer (the same gather without first touching 60 MB of fresh memory), and by the
thread's ``ids.clone().apply_(original_to_sorted.get)`` (run once: it calls Python per id).
The results must be equal, or the script fails.

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
import torch
from torch import nn

from flowgraph.models.embedding import PartiallyFrozenEmbedding, remap

MIB = 2**20
GOAL_VS_SEED = 0.6  # this module's step ≤ 0.6 × the seed's
GOAL_VS_FULL = 0.5  # and ≤ 0.5 × a fully trainable nn.Embedding's
GOAL_REMAP = 50.0  # remap ≥ 50 × faster than .apply_
OURS = "PartiallyFrozenEmbedding (this module)"
FULL = "nn.Embedding, fully trainable"
SEED = "seed: PartiallyFixedEmbedding (copy into buffer)"
HOOK = "seed: gradient-hook masking"


@dataclass(frozen=True)
class Config:
    vocab: int = 75_000
    dim: int = 300
    trainable_fraction: float = 0.2
    batch: int = 256
    seq: int = 75
    steps: int = 30
    warmup: int = 3
    remap_rows: int = 100_000  # × seq ids = 7.5 million
    remap_repeats: int = 5
    seed: int = 0


QUICK_NOTE = " — a --quick smoke run: tiny sizes, the numbers mean nothing"
QUICK = Config(vocab=3_000, dim=16, batch=8, seq=12, steps=3, warmup=1, remap_rows=500)


# --- the thread's modules, as posted (formatting aside) ------------------------------------------
class PartiallyFixedEmbedding(torch.nn.Module):
    """The seed's copy-into-buffer module: frozen rows first, ``num_to_learn`` trainable last."""

    def __init__(self, fixed_weights, num_to_learn):
        super().__init__()
        self.num_fixed = fixed_weights.size(0)
        self.num_to_learn = num_to_learn
        weight = torch.empty(self.num_fixed + num_to_learn, fixed_weights.size(1))
        weight[: self.num_fixed] = fixed_weights
        self.trainable_weight = torch.nn.Parameter(torch.empty(num_to_learn, fixed_weights.size(1)))
        torch.nn.init.kaiming_uniform_(self.trainable_weight)
        weight[self.num_fixed :] = self.trainable_weight
        self.register_buffer("weight", weight)

    def forward(self, inp):
        self.weight.detach_()
        self.weight[self.num_fixed :] = self.trainable_weight
        return torch.nn.functional.embedding(inp, self.weight, None, None, 2.0, False, False)


class GradientHookMasking(torch.nn.Module):
    """The seed's second module (``PartiallyFixedEmbedding2``) for an arbitrary row mask: a full
    trainable table whose gradient a hook multiplies by a 0/1 mask. The hook is registered once
    here; the thread registers one more in every forward."""

    def __init__(self, weight, trainable_mask):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())
        self.register_buffer("learnable_mask", trainable_mask.float().unsqueeze(1))
        self.weight.register_hook(lambda gr: gr * self.learnable_mask)

    def forward(self, inp):
        return torch.nn.functional.embedding(inp, self.weight, None, None, 2.0, False, False)


def seed_apply_remap(ids: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The thread's remap: a dict from original to sorted id, applied per element."""
    original_to_sorted = {orig: new for new, orig in enumerate(order.tolist())}
    return ids.clone().apply_(original_to_sorted.get)


# --- set-up ---------------------------------------------------------------------------------------
@dataclass
class Method:
    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[torch.Tensor]  # the shared batches, in this method's vocabulary numbering
    times_s: list[float]


def build_methods(cfg: Config) -> tuple[list[Method], torch.Tensor, torch.Tensor]:
    """The four methods over one table and one list of batches; also the mask and the order."""
    gen = torch.Generator().manual_seed(cfg.seed)
    weight_vd = torch.randn(cfg.vocab, cfg.dim, generator=gen)
    num_trainable = round(cfg.trainable_fraction * cfg.vocab)
    rows_t = torch.randperm(cfg.vocab, generator=gen)[:num_trainable]
    mask_v = torch.zeros(cfg.vocab, dtype=torch.bool)
    mask_v[rows_t] = True
    batches = [torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), generator=gen) for _ in range(4)]
    order_v = torch.argsort(mask_v.to(torch.int8), stable=True)  # frozen rows first
    sorted_batches = [remap(ids_bt, order_v) for ids_bt in batches]

    seed_module = PartiallyFixedEmbedding(
        weight_vd[order_v[: cfg.vocab - num_trainable]], num_to_learn=num_trainable
    )
    modules: list[tuple[str, nn.Module, list[torch.Tensor]]] = [
        (OURS, PartiallyFrozenEmbedding(weight_vd, rows_t), batches),
        (FULL, nn.Embedding.from_pretrained(weight_vd.clone(), freeze=False), batches),
        (SEED, seed_module, sorted_batches),
        (HOOK, GradientHookMasking(weight_vd, mask_v), batches),
    ]
    check_same_rows(modules, mask_v)
    methods = [
        Method(name, module, torch.optim.Adam(module.parameters(), lr=1e-3), bs, [])
        for name, module, bs in modules
    ]
    return methods, mask_v, order_v


def check_same_rows(modules: list[tuple[str, nn.Module, list[torch.Tensor]]], mask_v) -> None:
    """Every method looks up the same vectors for the same words (the seed's own trainable
    initialisation aside): a benchmark of modules that disagree would compare nothing."""
    with torch.no_grad():
        outs = [module(batches[0]) for _, module, batches in modules]
    frozen_bt = ~mask_v[modules[0][2][0]]
    for (name, _, _), out in zip(modules[1:], outs[1:], strict=True):
        same = out[frozen_bt] if name == SEED else out
        expected = outs[0][frozen_bt] if name == SEED else outs[0]
        if not torch.equal(same, expected):
            raise AssertionError(f"{name} does not return this module's rows for the same ids")


# --- measurements ---------------------------------------------------------------------------------
def train_step(method: Method, step: int) -> float:
    """Seconds for one step: forward, loss, backward, optimizer step, zero_grad."""
    ids_bt = method.batches[step % len(method.batches)]
    t0 = time.perf_counter()
    out_btd = method.module(ids_bt)
    loss = out_btd.square().mean()
    loss.backward()
    method.optimizer.step()
    method.optimizer.zero_grad()
    return time.perf_counter() - t0


def measure_steps(methods: list[Method], cfg: Config) -> None:
    for method in methods:
        for step in range(cfg.warmup):
            train_step(method, step)
    for step in range(cfg.steps):  # take turns: a burst of load hits every method alike
        for method in methods:
            method.times_s.append(train_step(method, step))
        _report.log(f"  round {step + 1}/{cfg.steps}")


def state_bytes(method: Method) -> int:
    """Parameters, buffers and optimizer state held once training has begun."""
    tensors = [*method.module.parameters(), *method.module.buffers()]
    for state in method.optimizer.state.values():
        tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class RemapResult:
    num_ids: int
    vectorised_s: float  # remap(ids, order): a new tensor, as .apply_ on a clone gives
    into_out_s: float  # remap(ids, order, out=buffer): the same into a reused buffer
    apply_s: float


def measure_remap(cfg: Config, order_v: torch.Tensor) -> RemapResult:
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ids_nt = torch.randint(0, cfg.vocab, (cfg.remap_rows, cfg.seq), generator=gen)
    vectorised_s, new_nt = _report.median_s(lambda: remap(ids_nt, order_v), cfg.remap_repeats)
    buffer_nt = torch.empty_like(ids_nt)
    into_out_s, _ = _report.median_s(
        lambda: remap(ids_nt, order_v, out=buffer_nt), cfg.remap_repeats
    )
    _report.log(f"  remap {ids_nt.numel():,} ids with the dict .apply_ (slow) ...")
    apply_s, applied_nt = _report.median_s(lambda: seed_apply_remap(ids_nt, order_v), 1)
    if not (torch.equal(new_nt, applied_nt) and torch.equal(buffer_nt, applied_nt)):
        raise AssertionError("remap and the dict .apply_ disagree")
    return RemapResult(ids_nt.numel(), vectorised_s, into_out_s, apply_s)


# --- report ---------------------------------------------------------------------------------------
def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def fmt_s(seconds: float) -> str:
    """Three significant digits: 0.0312, 0.312, 3.12, 31.2."""
    return f"{seconds:.3g}" if seconds >= 1e-3 else f"{seconds:.6f}"


def fmt_x(ratio: float) -> str:
    return f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2f}"


def goal_line(text: str, value: float, unit: str, ok: bool) -> str:
    return f"- {text}: {fmt_x(value)}{unit} — {'met' if ok else 'NOT met'}"


def report(
    methods: list[Method], remapped: RemapResult, cfg: Config, command: str, load: str, quick: bool
) -> str:
    medians = {m.name: statistics.median(m.times_s) for m in methods}
    ours = medians[OURS]
    rows = _report.markdown_table(
        ["method", "median ms / step", "min ms / step", "this module ÷ method",
         "parameters, buffers, Adam state MiB"],
        "lrrrr",
        [
            [m.name, fmt_ms(medians[m.name]), fmt_ms(min(m.times_s)),
             f"{ours / medians[m.name]:.2f}", f"{state_bytes(m) / MIB:.1f}"]
            for m in methods
        ],
    )  # fmt: skip
    speedup = remapped.apply_s / remapped.vectorised_s
    remap_rows = _report.markdown_table(
        [f"remap of {remapped.num_ids:,} ids", "seconds", "speed-up ×"],
        "lrr",
        [
            ["models.embedding.remap (vectorised)", fmt_s(remapped.vectorised_s), fmt_x(speedup)],
            ["models.embedding.remap, out= a reused buffer", fmt_s(remapped.into_out_s),
             fmt_x(remapped.apply_s / remapped.into_out_s)],
            ["seed: dict + .apply_ (run once)", fmt_s(remapped.apply_s), "1"],
        ],
    )  # fmt: skip
    vs_seed = ours / medians[SEED]
    vs_full = ours / medians[FULL]
    num_trainable = round(cfg.trainable_fraction * cfg.vocab)
    lines = [
        _report.machine_line(
            f"torch {torch.__version__}, "
            f"torch.get_num_threads() = {torch.get_num_threads()}"
        ),
        "",
        f"Command: `{command}`",
        "",
        f"V = {cfg.vocab:,}, D = {cfg.dim}, {num_trainable:,} trainable rows "
        f"({cfg.trainable_fraction:.0%}, random), batch {cfg.batch} × {cfg.seq} ids, float32, "
        f"Adam (lr 1e-3); loss out.square().mean(); median of {cfg.steps} steps per method "
        f"(taking turns) after {cfg.warmup} warm-up step(s). {load}",
        "",
        *rows,
        "",
        *remap_rows,
        "",
        "Goals (issue 9)" + (QUICK_NOTE if quick else "") + ":",
        goal_line(f"step ≤ {GOAL_VS_SEED}× the seed's PartiallyFixedEmbedding's", vs_seed, "×",
                  vs_seed <= GOAL_VS_SEED),
        goal_line(f"step ≤ {GOAL_VS_FULL}× the fully trainable nn.Embedding's", vs_full, "×",
                  vs_full <= GOAL_VS_FULL),
        goal_line(f"remap ≥ {GOAL_REMAP:.0f}× faster than the dict .apply_", speedup, "× faster",
                  speedup >= GOAL_REMAP),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a smoke run at tiny sizes")
    ap.add_argument("--steps", type=int, help="timed steps per method (default 30; quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed steps per method first (default 3)")
    ap.add_argument("--remap-repeats", type=int, help="timed runs of remap (default 5)")
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"steps": 1, "warmup": 0, "remap_repeats": 1})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else Config()
    overrides = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("warmup", args.warmup),
            ("remap_repeats", args.remap_repeats),
        )
        if v is not None
    }
    cfg = replace(cfg, **overrides)
    command = _report.command_line()
    load_start = _report.load_average()
    torch.manual_seed(cfg.seed)  # the seed's module initialises its trainable rows from it
    _report.log("building the modules ...")
    methods, _, order_v = build_methods(cfg)
    _report.log("timing training steps ...")
    measure_steps(methods, cfg)
    _report.log("timing remap ...")
    remapped = measure_remap(cfg, order_v)
    text = report(methods, remapped, cfg, command, _report.load_span(load_start), args.quick)
    _report.emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
