"""``flowgraph flow`` and ``flowgraph fit``: a trained model read as a flow network.

    flowgraph flow PATH (--text "..." | --ids 1,2,3) --out FILE.html|FILE.png
                   [--residual 0.5] [--position Q] [--layer L] [--threads N]
    flowgraph fit PATH --texts FILE [--budget 0.1] [--mode merged] [--json]

``flow`` writes the attention rollout and the exact attention flow of the sequence (a heatmap per
layer with a slider) and, for one position (default the last), each input token's share under
raw attention, rollout and flow, into one file (HTML embeds plotly.js and opens offline; written
atomically). ``fit`` ranks the sparse patterns by the attention mass they keep on the texts of
FILE (one per line), with their density and whether they are full-information stacked over the
model's layers (:func:`models.heads.fit_pattern`). torch, numba and plotly load only when a
command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from flowgraph.app.cli_command import add_command
from flowgraph.app.cli_heads import _token_ids, write_figures

__all__ = ["add_subcommand", "flow_figures", "read_texts", "run_fit", "run_flow"]

MODES = ("interleave", "merged", "heads")
FLOW_HELP = "draw the attention rollout and exact attention flow of a sequence"
FLOW_DESCRIPTION = (
    "Write the attention rollout and the exact attention flow (Abnar & Zuidema 2020) of one "
    "sequence through a checkpoint into one HTML or PNG file. Exit status 2 on bad arguments."
)
FIT_HELP = "rank sparse patterns by the attention mass of a checkpoint they keep"
FIT_DESCRIPTION = (
    "Rank the library's sparse patterns by the share of a checkpoint's attention on the texts "
    "of FILE (one per line) they keep, with their edge density and whether they are "
    "full-information over the model's layers. Exit status 2 on bad arguments."
)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Add ``flow`` and ``fit`` to the ``flowgraph`` parser's subcommands."""
    flow = add_command(sub, "flow", run_flow, FLOW_HELP, FLOW_DESCRIPTION)
    flow.add_argument("path", type=Path, metavar="PATH", help="the checkpoint")
    tokens = flow.add_mutually_exclusive_group(required=True)
    tokens.add_argument("--text", help="text to tokenize with the checkpoint's tokenizer")
    tokens.add_argument("--ids", help="token ids, comma-separated (e.g. 1,2,3)")
    flow.add_argument("--residual", type=float, default=0.5, help="identity weight (default 0.5)")
    flow.add_argument(
        "--position", type=int, help="position whose sources are drawn (default last)"
    )
    flow.add_argument("--layer", type=int, help="layer of that picture (default the last)")
    flow.add_argument("--threads", type=int, help="threads of the flow solver (default all cores)")
    flow.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="FILE.html or FILE.png"
    )

    fit = add_command(sub, "fit", run_fit, FIT_HELP, FIT_DESCRIPTION)
    fit.add_argument("path", type=Path, metavar="PATH", help="the checkpoint")
    fit.add_argument("--texts", type=Path, required=True, metavar="FILE", help="one text a line")
    fit.add_argument("--budget", type=float, default=0.1, help="largest density (default 0.1)")
    fit.add_argument("--mode", choices=MODES, default="merged", help="how steps map to heads")
    fit.add_argument("--json", action="store_true", help="print the report as JSON")


def flow_figures(ckpt: object, args: argparse.Namespace) -> list[tuple[str, object]]:
    """(name, figure) of the rollout, the flow and one position's sources."""
    from flowgraph.models.heads import attention_flow, rollout
    from flowgraph.models.heads.flow_plots import make_layers_figure, make_sources_figure

    ids = _token_ids(ckpt, args)
    T, L = int(ids.size), ckpt.num_layers
    position = T - 1 if args.position is None else args.position
    layer = L if args.layer is None else args.layer
    if not 0 <= position < T:
        raise ValueError(
            f"--position must be in 0..{T - 1} (the sequence has {T} tokens), got {position}"
        )
    if not 1 <= layer <= L:
        raise ValueError(f"--layer must be in 1..{L} ({ckpt.name} has {L} layers), got {layer}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    if not 0 <= args.residual <= 1:
        raise ValueError(f"--residual must be in [0, 1], got {args.residual}")
    labels = [ckpt.tokens[i] for i in ids]
    roll_lqk = rollout(ckpt, ids, residual=args.residual)
    flow_lqk = attention_flow(ckpt, ids, residual=args.residual, threads=args.threads)
    attn_qk = ckpt.attention(ids)[layer - 1].mean(axis=0)
    where = f"{ckpt.name}, residual {args.residual:g}"
    return [
        (
            "rollout",
            make_layers_figure(roll_lqk, labels, what="rollout", title=f"{where}: rollout"),
        ),
        (
            "flow",
            make_layers_figure(flow_lqk, labels, what="flow", title=f"{where}: attention flow"),
        ),
        (
            "sources",
            make_sources_figure(
                attn_qk,
                roll_lqk[layer],
                flow_lqk[layer],
                position,
                labels,
                title=f"{where}: sources of position {position} after layer {layer}",
            ),
        ),
    ]


def run_flow(args: argparse.Namespace) -> int:
    """The ``flow`` subcommand: load, compute, draw, write; returns the exit status (0)."""
    from flowgraph.models.heads import load_checkpoint

    if args.out.suffix.lower() not in (".html", ".png"):
        raise ValueError(f"--out must end in .html or .png, got --out {str(args.out)!r}")
    if not args.out.parent.is_dir():
        raise ValueError(f"--out's folder does not exist: {str(args.out.parent)!r}")
    ckpt = load_checkpoint(args.path)
    named = flow_figures(ckpt, args)
    path = write_figures(
        [fig for _, fig in named], args.out, f"{ckpt.name}: attention flow", cols=1
    )
    print(f"{path}: {', '.join(name for name, _ in named)}")
    return 0


def read_texts(path: Path) -> list[str]:
    """The non-blank lines of ``path`` (UTF-8), stripped; a ValueError naming ``--texts``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--texts: cannot read {str(path)!r} ({exc})") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"--texts: {str(path)!r} holds no text (one text a line)")
    return texts


def run_fit(args: argparse.Namespace) -> int:
    """The ``fit`` subcommand: print the ranked table (or JSON); returns the exit status (0)."""
    from flowgraph.models.heads import fit_pattern, load_checkpoint

    if not 0 < args.budget <= 1:
        raise ValueError(f"--budget must be a density in (0, 1], got {args.budget}")
    texts = read_texts(args.texts)
    ckpt = load_checkpoint(args.path)
    for i, text in enumerate(texts):
        n = int(np.asarray(ckpt.tokenize(text)).size)
        if not 2 <= n <= ckpt.n_ctx:
            raise ValueError(
                f"--texts: text {i + 1} ({text[:30]!r}) gives {n} tokens; need 2 to "
                f"{ckpt.n_ctx} (the model's n_ctx)"
            )
    report = fit_pattern(ckpt, texts, budget=args.budget, mode=args.mode)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.table())
    return 0
