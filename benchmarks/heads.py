"""Head metrics on a BERT-sized checkpoint: loading, every head's attention and every metric of
one head (issue 6, "Measure": attention for all heads < 1 s, every metric for one head < 0.5 s
on a 2-core CPU).

All in one process. A BERT-style model — 6 layers, 12 heads, width 384 (head dim 32),
intermediate 1536, BERT's 30,522-token vocabulary, random init (``transformers.BertConfig`` /
``BertModel``, seed 0) — is saved with ``save_pretrained`` (safetensors) into a temporary
Hugging Face directory; ``models.heads.load_checkpoint`` reads it back without transformers.
Sequences are 128 random token ids (a new sequence each repeat: ``Checkpoint.attention`` caches
by sequence). Timed, median and min of ``--repeats`` runs:

- ``load_checkpoint(dir)``: open the directory (config, tokenizer, tensors as they are read);
- ``Checkpoint.attention(ids)``: the (6, 12, 128, 128) probabilities from our forward pass, with
  torch's threads (the goal's row) and with one torch thread (on a machine other work keeps
  busy, two threads that wait on each other can be many times slower than one); the baseline
  is transformers' own ``BertModel(..., output_attentions=True)`` (eager) on the same weights,
  and the script fails unless the two agree (max |Δ| ≤ 1e-5);
- one head's metrics through the Checkpoint (layer 3, head 5): ``qk_form(space="model")`` (a dot
  head has no head space), ``token_distances`` of the 128 tokens, and ``coverage`` of every head
  against the strided pattern (merged) — "cold" on a freshly loaded checkpoint (this includes
  reading the layer's weights and converting the embedding table to float64; the attention is
  computed beforehand, untimed), and "warm" once the caches hold them;
- the pure numpy functions of ``models.heads.metrics`` alone, and as a baseline for the distances
  the direct formula on the (T, T, c) array of differences (one matrix product), checked equal.

``--quick`` runs a smoke test at tiny sizes; its numbers mean nothing. ``--markdown PATH`` also
writes the report to a file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import _report
import numpy as np
import torch

import flowgraph as fg
from flowgraph.models.heads import load_checkpoint
from flowgraph.models.heads.metrics import coverage, qk_form, token_distances

GOAL_ATTENTION_S = 1.0
GOAL_METRICS_S = 0.5
AGREE_ATOL = 1e-5  # float32 forward passes, compared in float64


@dataclass(frozen=True)
class Config:
    layers: int = 6
    heads: int = 12
    width: int = 384
    intermediate: int = 1536
    vocab: int = 30_522
    tokens: int = 128
    layer: int = 3
    head: int = 5
    repeats: int = 7
    seed: int = 0


ROWS = (  # the table's rows, in order
    "load_checkpoint (HF directory, safetensors)",
    "Checkpoint.attention: all heads",
    "Checkpoint.attention: all heads, 1 torch thread",
    "baseline: transformers BertModel, output_attentions=True",
    "one head's metrics, cold caches",
    "one head's metrics, warm caches",
    "numpy alone: qk_form (model space)",
    "numpy alone: token_distances (T tokens)",
    "numpy alone: coverage (every head, strided, merged)",
    "baseline: token distances by pairwise differences",
)
QUICK_NOTE = " — a --quick smoke run: tiny sizes, the numbers mean nothing"
QUICK = Config(
    layers=2, heads=2, width=16, intermediate=32, vocab=50, tokens=8, layer=1, head=1, repeats=2
)


@dataclass
class Row:
    name: str
    times_s: list[float]
    goal: str = "—"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def save_bert(cfg: Config, directory: Path):
    """A random BertModel of ``cfg``'s size saved as a Hugging Face directory; returns it."""
    import transformers  # the benchmark's baseline and model builder, not a runtime dependency

    config = transformers.BertConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=max(512, cfg.tokens),
        attn_implementation="eager",
    )
    torch.manual_seed(cfg.seed)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(directory)
    return model


def sequences(cfg: Config, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    return [rng.integers(0, cfg.vocab, cfg.tokens) for _ in range(count)]


def pairwise_distances(s_cc: np.ndarray, e_tc: np.ndarray) -> np.ndarray:
    """The baseline: (e_a − e_b) S (e_a − e_b)ᵀ from a (T, T, c) array of differences (one
    (T²×c)·(c×c) matrix product)."""
    diff_ttc = e_tc[:, None, :] - e_tc[None, :, :]
    return ((diff_ttc @ s_cc) * diff_ttc).sum(-1)


def measure(cfg: Config, directory: Path, model) -> tuple[list[Row], dict[str, float]]:
    seqs = sequences(cfg, 2 * cfg.repeats + 1)
    pattern = fg.strided(cfg.tokens)
    layer, head = cfg.layer, cfg.head
    rows = {name: Row(name, []) for name in ROWS}
    checks: dict[str, float] = {}
    ckpt = load_checkpoint(directory)  # warm the file cache and imports once, untimed
    ckpt.attention(seqs[-1])
    for rep in range(cfg.repeats):
        ids = seqs[rep]
        t, ckpt = timed(lambda: load_checkpoint(directory))
        rows["load_checkpoint (HF directory, safetensors)"].times_s.append(t)
        t, attn_lhtt = timed(lambda: ckpt.attention(ids))  # noqa: B023  # called right here
        rows["Checkpoint.attention: all heads"].times_s.append(t)
        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # on a busy machine one thread can beat two that wait on each other
        try:
            t, _ = timed(lambda: ckpt.attention(seqs[cfg.repeats + rep]))  # noqa: B023
        finally:
            torch.set_num_threads(threads)
        rows["Checkpoint.attention: all heads, 1 torch thread"].times_s.append(t)
        with torch.no_grad():
            t, ref = timed(
                lambda: model(torch.from_numpy(ids)[None], output_attentions=True)  # noqa: B023
            )
        rows["baseline: transformers BertModel, output_attentions=True"].times_s.append(t)
        ref_lhtt = torch.stack([a[0] for a in ref.attentions]).double().numpy()
        checks["attention max |Δ| vs transformers"] = max(
            checks.get("attention max |Δ| vs transformers", 0.0),
            float(np.abs(ref_lhtt - attn_lhtt).max()),
        )

        def one_head() -> None:
            ckpt.qk_form(layer, head, "model")  # noqa: B023
            ckpt.token_distances(layer, head, ids)  # noqa: B023
            ckpt.coverage(ids, pattern, "merged")  # noqa: B023

        t, _ = timed(one_head)
        rows["one head's metrics, cold caches"].times_s.append(t)
        t, _ = timed(one_head)
        rows["one head's metrics, warm caches"].times_s.append(t)

        weights = ckpt.head_weights(layer)
        t, form = timed(lambda: qk_form(weights, head, "model"))  # noqa: B023
        rows["numpy alone: qk_form (model space)"].times_s.append(t)
        e_tc = ckpt.token_embeddings()[ids]
        t, d2 = timed(lambda: token_distances(form.symmetric, e_tc))  # noqa: B023
        rows["numpy alone: token_distances (T tokens)"].times_s.append(t)
        t, _ = timed(lambda: coverage(attn_lhtt, pattern, "merged"))  # noqa: B023
        rows["numpy alone: coverage (every head, strided, merged)"].times_s.append(t)
        t, d2_ref = timed(lambda: pairwise_distances(form.symmetric, e_tc))  # noqa: B023
        rows["baseline: token distances by pairwise differences"].times_s.append(t)
        scale = float(np.abs(d2_ref).max()) or 1.0
        checks["distances max |Δ| / max|d²| vs pairwise"] = max(
            checks.get("distances max |Δ| / max|d²| vs pairwise", 0.0),
            float(np.abs(d2 - d2_ref).max()) / scale,
        )
        _report.log(f"  repeat {rep + 1}/{cfg.repeats}")
    if checks["attention max |Δ| vs transformers"] > AGREE_ATOL:
        raise AssertionError(
            "Checkpoint.attention and transformers disagree: max |Δ| = "
            f"{checks['attention max |Δ| vs transformers']:.3g}"
        )
    if checks["distances max |Δ| / max|d²| vs pairwise"] > 1e-9:
        raise AssertionError("token_distances and the pairwise-difference baseline disagree")
    rows["Checkpoint.attention: all heads"].goal = f"< {GOAL_ATTENTION_S:g} s"
    rows["one head's metrics, cold caches"].goal = f"< {GOAL_METRICS_S:g} s"
    return list(rows.values()), checks


# --- report ---------------------------------------------------------------------------------------
def fmt_ms(seconds: float) -> str:
    """Milliseconds, three significant digits: 0.0312, 3.12, 312."""
    return f"{seconds * 1e3:.3g}" if seconds * 1e3 < 1000 else f"{seconds * 1e3:.0f}"


def fmt_s(seconds: float) -> str:
    """Three significant digits: 0.000312, 0.0312, 0.312, 3.12."""
    return f"{seconds:.3g}"


def goal_line(text: str, value: float, limit: float) -> str:
    return f"- {text}: {fmt_s(value)} s — {'met' if value < limit else 'NOT met'}"


def report(
    rows: list[Row], checks: dict[str, float], cfg: Config, command: str, load: str, quick: bool
) -> str:
    table = _report.markdown_table(
        ["step", "median ms", "min ms", "goal"],
        "lrrl",
        [
            [row.name, fmt_ms(statistics.median(row.times_s)), fmt_ms(min(row.times_s)), row.goal]
            for row in rows
        ],
    )
    by_name = {row.name: statistics.median(row.times_s) for row in rows}
    attention = by_name["Checkpoint.attention: all heads"]
    metrics = by_name["one head's metrics, cold caches"]
    lines = [
        _report.machine_line(
            f"torch {torch.__version__}, numpy {np.__version__}, "
            f"torch.get_num_threads() = {torch.get_num_threads()}"
        ),
        "",
        f"Command: `{command}`",
        "",
        f"BERT-style model, random init: {cfg.layers} layers × {cfg.heads} heads, width "
        f"{cfg.width} (head dim {cfg.width // cfg.heads}), vocabulary {cfg.vocab:,}; "
        f"{cfg.tokens} tokens; head {cfg.head} of layer {cfg.layer}; median of {cfg.repeats} "
        f"repeats. {load}",
        "",
        *table,
        "",
        "Checks: " + "; ".join(f"{k} = {v:.2g}" for k, v in checks.items()) + ".",
        "",
        "Goals (issue 6)" + (QUICK_NOTE if quick else "") + ":",
        goal_line(f"attention for all heads < {GOAL_ATTENTION_S:g} s", attention, GOAL_ATTENTION_S),
        goal_line(f"every metric for one head < {GOAL_METRICS_S:g} s", metrics, GOAL_METRICS_S),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a smoke run at tiny sizes")
    ap.add_argument("--repeats", type=int, help="timed repeats (default 7; quick 2)")
    ap.add_argument("--tokens", type=int, help="sequence length (default 128; quick 8)")
    _report.add_threads_flag(ap)
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, {"repeats": 1, "tokens": 1, "threads": 1})
    if args.tokens is not None and args.tokens > 512:
        ap.error(f"--tokens must be ≤ 512 (the model's positions), got {args.tokens}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else Config()
    overrides = {k: v for k, v in (("repeats", args.repeats), ("tokens", args.tokens)) if v}
    cfg = replace(cfg, **overrides)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = _report.command_line()
    load_start = _report.load_average()
    with tempfile.TemporaryDirectory(prefix="heads-bench-") as tmp:
        _report.log("saving a random BERT ...")
        model = save_bert(cfg, Path(tmp) / "bert")
        _report.log("timing ...")
        rows, checks = measure(cfg, Path(tmp) / "bert", model)
    text = report(rows, checks, cfg, command, _report.load_span(load_start), args.quick)
    _report.emit(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
