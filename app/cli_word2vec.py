"""``flowgraph word2vec``: train skip-gram word vectors on a text file and save them.

    flowgraph word2vec CORPUS.txt --out vectors/NAME [--vector-size 100] [--window 5]
                       [--negative 5] [--min-count 5] [--sample 1e-3] [--epochs 5]
                       [--alpha 0.025] [--seed 0] [--device cpu] [--workers N] [--hogwild]
                       [--quiet]

The corpus is read line by line (one sentence per line, tokens split on whitespace), so it may
be larger than memory. ``OUT`` gets ``vectors.safetensors`` and ``vocab.json`` (what the
dashboard's Embeddings page lists). torch and the models are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flowgraph.app.cli_command import add_command

__all__ = ["add_subcommand", "run_word2vec"]

HELP = "train word2vec (skip-gram, negative sampling) on a text file"
DESCRIPTION = (
    "Train skip-gram word vectors with negative sampling on CORPUS.txt (one sentence "
    "per line) and save them to OUT (vectors.safetensors + vocab.json). "
    "Exit status 2 on bad arguments."
)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Add ``word2vec`` to the ``flowgraph`` parser's subcommands."""
    w2v = add_command(sub, "word2vec", run_word2vec, HELP, DESCRIPTION)
    w2v.add_argument("corpus", type=Path, metavar="CORPUS.txt", help="the text corpus")
    w2v.add_argument("--out", type=Path, required=True, help="output folder, e.g. vectors/NAME")
    w2v.add_argument("--vector-size", type=int, default=100, help="dimension d (100)")
    w2v.add_argument("--window", type=int, default=5, help="largest reduced window (5)")
    w2v.add_argument("--negative", type=int, default=5, help="negatives per pair (5)")
    w2v.add_argument("--min-count", type=int, default=5, help="drop rarer words (5)")
    w2v.add_argument("--sample", type=float, default=1e-3, help="subsampling threshold (1e-3)")
    w2v.add_argument("--epochs", type=int, default=5, help="passes over the corpus (5)")
    w2v.add_argument("--alpha", type=float, default=0.025, help="initial learning rate (0.025)")
    w2v.add_argument("--batch-size", type=int, help="pairs per step of the torch/CUDA path")
    w2v.add_argument("--seed", type=int, default=0, help="random seed (0)")
    w2v.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    w2v.add_argument("--workers", type=int, help="CPU threads (default: the cores available)")
    w2v.add_argument(
        "--hogwild",
        action="store_true",
        help="CPU threads share the tables with races, as gensim (faster with a large "
        "vocabulary; results vary between runs)",
    )
    w2v.add_argument("--quiet", action="store_true", help="no progress bar")


def run_word2vec(args: argparse.Namespace) -> int:
    from flowgraph.models.word2vec import train_word2vec

    if not args.corpus.is_file():
        raise ValueError(f"CORPUS.txt: no such file: {str(args.corpus)!r}")
    wv = train_word2vec(
        args.corpus,
        vector_size=args.vector_size,
        window=args.window,
        negative=args.negative,
        min_count=args.min_count,
        sample=args.sample,
        epochs=args.epochs,
        alpha=args.alpha,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        deterministic=not args.hogwild,
        progress=not args.quiet,
    )
    out = wv.save(args.out)
    print(f"{out}: {len(wv)} words × {wv.vector_size} dimensions")
    return 0
