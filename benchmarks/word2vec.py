"""word2vec speed and quality against gensim (issue 10, "Measure"): words per second and the
Spearman correlation on a word-similarity set, ours and gensim's, in one process.

Corpus and pairs (no network): gensim's own test data, found through ``gensim.__file__`` —
``head500.noblanks.cor`` (the first 500 Wikipedia articles, stemmed, 331k tokens) and
``wordsim353.tsv``. Both models train skip-gram with negative sampling on the same in-memory
list of sentences with the same options (``--vector-size 100 --window 5 --negative 5
--min-count 5 --sample 1e-3 --epochs 5 --alpha 0.025``); gensim is
``Word2Vec(sg=1, hs=0, workers=<cores>)``, ours ``train_word2vec(workers=<cores>)``.

Ours runs twice: with the default ``deterministic=True`` (workers train private copies, merged
after every chunk: the vocabulary size in words per worker, clipped to 10,000–25,000) and with
``deterministic=False`` (hogwild, as gensim); the goals are judged on the default. Each timed
run is end to end: vocabulary pass plus training (gensim's constructor does both). words/s =
corpus tokens × epochs ÷ seconds. Runs take turns (ours, ours hogwild, gensim) for ``--repeats``
rounds with seeds 0, 1, …; the table gives the median words/s and the mean Spearman over the
rounds (one seed's Spearman on ~100 in-vocabulary pairs moves by a few hundredths). Before
timing, one untimed run of each of ours on a few sentences loads numba's compiled loops.

The machine is shared; the 1-minute load average at start and end is printed beside the table.
``--synthetic TOKENS`` times a meaningless Zipf(1.1) corpus instead (a larger vocabulary:
about 25,000 words at 3 million tokens), with no Spearman. ``--quick`` is a smoke run on a few
sentences; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _report
import numpy as np
import torch

from flowgraph.models.word2vec import WordVectors, train_word2vec

GOAL_SPEED_CPU = 1.0  # ours ≥ gensim's words/s on the CPU
GOAL_SPEED_CUDA = 10.0  # ≥ 10 × gensim's on a GPU
GOAL_SPEARMAN_GAP = 0.03  # Spearman ≥ gensim's − 0.03
OURS, GENSIM = "flowgraph train_word2vec", "gensim Word2Vec (sg=1, hs=0)"
HOGWILD = "flowgraph train_word2vec, deterministic=False (hogwild)"
QUICK_NOTE = " — a --quick smoke run: a few sentences, the numbers mean nothing"


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)
    spearman: list[float] = field(default_factory=list)
    pairs: int = 0
    vocab: int = 0


def gensim_data(name: str) -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / name


def read_corpus(path: Path, max_sentences: int | None) -> list[list[str]]:
    with path.open(encoding="utf-8") as f:
        sentences = [line.split() for line in f]
    return sentences[:max_sentences] if max_sentences else sentences


def run_ours(sentences, opts: dict, seed: int, args) -> WordVectors:
    return train_word2vec(
        sentences, **opts, seed=seed, device=args.device, workers=args.workers, progress=False
    )


def run_hogwild(sentences, opts: dict, seed: int, args) -> WordVectors:
    return train_word2vec(
        sentences, **opts, seed=seed, device=args.device, workers=args.workers,
        deterministic=False, progress=False,
    )  # fmt: skip


def run_gensim(sentences, opts: dict, seed: int, args) -> WordVectors:
    """gensim's model, its vectors wrapped as ours so both are scored by the same code."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        sentences, **opts, seed=seed, sg=1, hs=0, workers=args.workers, compute_loss=False
    )
    kv = model.wv
    counts = [kv.get_vecattr(w, "count") for w in kv.index_to_key]
    return WordVectors(kv.index_to_key, kv.vectors, counts=counts)


def zipf_corpus(tokens: int, seed: int = 0) -> list[list[str]]:
    """A synthetic corpus for speed at a larger vocabulary: word ids drawn from Zipf(1.1), capped
    at 200,000, in sentences of 1,000 tokens. It has no meaning, so no Spearman."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.1, tokens), 200_000)
    words = np.array([f"w{i}" for i in range(200_001)])[ids].tolist()
    return [words[i : i + 1000] for i in range(0, tokens, 1000)]


def measure(args: argparse.Namespace) -> tuple[list[Result], int]:
    if args.synthetic:
        sentences = zipf_corpus(args.synthetic)
    else:
        sentences = read_corpus(args.corpus, args.max_sentences)
    tokens = sum(map(len, sentences))
    opts = dict(
        vector_size=args.vector_size, window=args.window, negative=args.negative,
        min_count=args.min_count, sample=args.sample, epochs=args.epochs, alpha=args.alpha,
    )  # fmt: skip
    for warm_up in (run_ours, run_hogwild):  # numba compiles or loads its cache
        warm_up(sentences[:20], {**opts, "epochs": 1, "min_count": 1}, 0, args)
    results = [Result(OURS), Result(HOGWILD), Result(GENSIM)]
    for seed in range(args.repeats):
        for result, fn in zip(results, (run_ours, run_hogwild, run_gensim), strict=True):
            _report.log(f"{result.name}, seed {seed} ...")
            start = time.perf_counter()
            wv = fn(sentences, opts, seed, args)
            result.seconds.append(time.perf_counter() - start)
            result.vocab = len(wv)
            if not args.synthetic:
                scores = wv.evaluate_pairs(args.pairs)
                result.spearman.append(scores["spearman"])
                result.pairs = scores["pairs"]
    if len({r.vocab for r in results}) != 1:
        raise AssertionError(f"vocabularies differ: {[r.vocab for r in results]}")
    return results, tokens * args.epochs


def report(results: list[Result], words: int, args, command: str, load: str) -> str:
    speed = {r.name: words / statistics.median(r.seconds) for r in results}
    mean_rho = {r.name: float(np.mean(r.spearman)) if r.spearman else None for r in results}
    rows = _report.markdown_table(
        ["method", "words/s (median)", "seconds (median)", "Spearman (mean)",
         "Spearman per seed", "pairs in vocabulary"],
        "lrrrlr",
        [
            [r.name, f"{speed[r.name]:,.0f}", f"{statistics.median(r.seconds):.2f}",
             _fmt_rho(mean_rho[r.name]), ", ".join(f"{x:.3f}" for x in r.spearman) or "n/a",
             r.pairs if r.spearman else "n/a"]
            for r in results
        ],
    )  # fmt: skip
    ratio = speed[OURS] / speed[GENSIM]
    gap = None if args.synthetic else mean_rho[OURS] - mean_rho[GENSIM]
    cuda = args.device is not None and str(args.device).startswith("cuda")
    goal_speed = GOAL_SPEED_CUDA if cuda else GOAL_SPEED_CPU
    import gensim

    lines = [
        _report.machine_line(
            f"torch {torch.__version__}, gensim {gensim.__version__}, numba "
            f"{_version('numba')}, workers = {args.workers}, device = {args.device or 'cpu'}"
        ),
        "",
        f"Command: `{command}`",
        "",
        f"Corpus {_corpus_name(args)} ({words // args.epochs:,} tokens × {args.epochs} epochs), "
        f"pairs {'none' if args.synthetic else args.pairs.name}, V = {results[0].vocab:,}; "
        f"vector_size {args.vector_size}, "
        f"window {args.window}, negative {args.negative}, min_count {args.min_count}, "
        f"sample {args.sample:g}, alpha {args.alpha:g}; {args.repeats} round(s), seeds 0…"
        f"{args.repeats - 1}, taking turns. {load}",
        "",
        *rows,
        "",
        f"Goals (issue 10){QUICK_NOTE if args.quick else ''}:",
        f"- words/s ≥ {goal_speed:g}× gensim's: {ratio:.2f}× — "
        f"{'met' if ratio >= goal_speed else 'NOT met'}",
        f"- Spearman ≥ gensim's − {GOAL_SPEARMAN_GAP}: "
        + (
            "not measured (a synthetic corpus has no meaning)"
            if gap is None
            else f"{gap:+.3f} — {'met' if gap >= -GOAL_SPEARMAN_GAP else 'NOT met'}"
        ),
    ]
    return "\n".join(lines) + "\n"


def _corpus_name(args: argparse.Namespace) -> str:
    return "synthetic Zipf(1.1), seed 0" if args.synthetic else args.corpus.name


def _fmt_rho(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:.3f}"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _report.new_parser(__doc__, quick="a smoke run on a few sentences")
    ap.add_argument("--corpus", type=Path, help="text corpus (default gensim's head500)")
    ap.add_argument("--pairs", type=Path, help="word pairs (default gensim's wordsim353.tsv)")
    ap.add_argument("--max-sentences", type=int, help="use only the first N lines")
    ap.add_argument(
        "--synthetic", type=int, metavar="TOKENS", help="a Zipf corpus of TOKENS tokens instead"
    )
    ap.add_argument("--repeats", type=int, default=3, help="rounds, seeds 0… (default 3)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="threads, both models")
    ap.add_argument("--device", help="device of ours (cpu, cuda)")
    ap.add_argument("--vector-size", type=int, default=100)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--negative", type=int, default=5)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--sample", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.025)
    _report.add_markdown_flag(ap)
    args = ap.parse_args(argv)
    _report.check_minimums(ap, args, dict.fromkeys(("repeats", "workers", "epochs", "max_sentences",
                                            "synthetic"), 1))  # fmt: skip
    if args.quick:
        args.max_sentences = args.max_sentences or 10
        args.repeats, args.epochs, args.min_count = 1, 1, 1
    args.corpus = args.corpus or gensim_data("head500.noblanks.cor")
    args.pairs = args.pairs or gensim_data("wordsim353.tsv")
    for flag in ("corpus", "pairs"):
        if not getattr(args, flag).is_file():
            ap.error(f"--{flag}: no such file: {getattr(args, flag)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = _report.command_line()
    load_start = _report.load_average()
    results, words = measure(args)
    _report.emit(
        report(results, words, args, command, _report.load_span(load_start)), args.markdown
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
