"""``flowgraph heads``: the pictures of one attention head of a checkpoint, in one file.

    flowgraph heads PATH [--text "..." | --ids 1,2,3] [--layer L] [--head H] [--positions]
                         [--pattern NAME [--stride S] [--window W] [--mode merged]]
                         [--compare OTHER] --out FILE.html|FILE.png

Always: the head's bilinear form (model space; a metric head also gets its metric M in head
space) and its spectra. With tokens (``--text`` through the checkpoint's tokenizer, or
``--ids``): the head's attention and the token distances its symmetric form induces. With
``--pattern``: the coverage grid (layers × heads) of that pattern, built at the sequence's length.
``--compare OTHER`` puts the same pictures of a second checkpoint beside each one (e.g. a metric
model beside a dot-product model). ``.html`` embeds plotly.js (it opens offline); ``.png`` is one
image of every picture (kaleido and a Chromium, see :func:`flowgraph.plot.write_png`).
torch, plotly and the models are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import html
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import flowgraph as fg
from flowgraph.app.cli_command import add_command

__all__ = ["add_subcommand", "head_figures", "parse_ids", "run_heads", "write_figures"]

PATTERNS = ("dense", "local", "strided", "fixed", "ltr", "rtl", "star")
BIDIRECTIONAL_ONLY = ("ltr", "rtl", "star")
MODES = ("interleave", "merged", "heads")
HELP = "draw one attention head of a checkpoint (form, spectra, attention, distances)"
DESCRIPTION = (
    "Write the pictures of one attention head of a checkpoint (a flowgraph run, a "
    "Hugging Face BERT-family or GPT-2 directory, a nanoGPT ckpt.pt) into one HTML or "
    "PNG file. Exit status 2 on bad arguments."
)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Add ``heads`` to the ``flowgraph`` parser's subcommands."""
    heads = add_command(sub, "heads", run_heads, HELP, DESCRIPTION)
    heads.add_argument("path", type=Path, metavar="PATH", help="the checkpoint")
    tokens = heads.add_mutually_exclusive_group()
    tokens.add_argument("--text", help="text to tokenize with the checkpoint's tokenizer")
    tokens.add_argument("--ids", help="token ids, comma-separated (e.g. 1,2,3)")
    heads.add_argument(
        "--meta", type=Path, metavar="META.pkl",
        help="a nanoGPT checkpoint's vocabulary, when not beside it or in data/<dataset>/",
    )  # fmt: skip
    heads.add_argument("--layer", type=int, default=0, help="layer index (default 0)")
    heads.add_argument("--head", type=int, default=0, help="head index (default 0)")
    heads.add_argument(
        "--positions",
        action="store_true",
        help="token distances of token + position embeddings (default: token embeddings only)",
    )
    heads.add_argument("--pattern", choices=PATTERNS, help="coverage grid of this pattern")
    heads.add_argument("--mode", choices=MODES, default="merged", help="how steps map to heads")
    heads.add_argument("--stride", type=int, help="stride of the pattern (default ⌊√T⌋)")
    heads.add_argument("--window", type=int, help="window of the local pattern (default ⌊√T⌋)")
    heads.add_argument("--compare", type=Path, metavar="OTHER", help="a second checkpoint beside")
    heads.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="FILE.html or FILE.png"
    )


def _usage_error(message: str) -> ValueError:
    """Bad arguments: ``flowgraph.main`` prints ValueErrors as ``flowgraph heads: error: ...``
    and exits 2 (a ValueError, not app.cli.UsageError, so this module never imports app.cli,
    which imports it)."""
    return ValueError(message)


def parse_ids(text: str) -> np.ndarray:
    """``"1,2, 3"`` → int64 ids; a ValueError naming ``--ids`` for anything else."""
    parts = [p.strip() for p in text.split(",")]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise _usage_error(
            f"--ids must be comma-separated non-negative integers, got --ids {text!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise _usage_error(f"--ids must be comma-separated non-negative integers, got {text!r}")
    return np.asarray(ids, dtype=np.int64)


def _pattern(args: argparse.Namespace, T: int, causal: bool) -> fg.Pattern:
    name = args.pattern
    if name == "local":
        window = args.window if args.window is not None else max(1, int(np.sqrt(T)))
        if not 1 <= window <= T:
            raise _usage_error(f"--window must be in 1..{T} (the sequence length), got {window}")
        return fg.local(T, window, causal=causal)
    if args.window is not None:
        raise _usage_error(f"--window applies to --pattern local only, not {name}")
    if name in BIDIRECTIONAL_ONLY:
        if causal:
            raise _usage_error(
                f"--pattern {name} is bidirectional, but the checkpoint is causal: "
                "use dense, local, strided or fixed"
            )
        if name == "star":
            if args.stride is not None:
                raise _usage_error("--stride does not apply to --pattern star")
            return fg.star(T)
    kwargs: dict[str, Any] = {} if args.stride is None else {"stride": args.stride}
    if args.stride is not None and not 1 <= args.stride <= T:
        raise _usage_error(f"--stride must be in 1..{T} (the sequence length), got {args.stride}")
    if name in BIDIRECTIONAL_ONLY:
        return getattr(fg, name)(T, **kwargs)
    if name == "dense":
        if args.stride is not None:
            raise _usage_error("--stride does not apply to --pattern dense")
        return fg.dense(T, causal=causal)
    return getattr(fg, name)(T, causal=causal, **kwargs)


def _token_ids(ckpt: Any, args: argparse.Namespace) -> np.ndarray | None:
    if args.ids is not None:
        ids = parse_ids(args.ids)
    elif args.text is not None:
        ids = np.asarray(ckpt.tokenize(args.text), dtype=np.int64)
        if ids.size == 0:
            raise _usage_error(f"--text {args.text!r} gives no tokens with {ckpt.name}'s tokenizer")
    else:
        return None
    if ids.max() >= ckpt.vocab_size:
        given = "--ids holds" if args.ids is not None else "--text gives the token id"
        raise _usage_error(
            f"{given} {int(ids.max())}, but {ckpt.name} has {ckpt.vocab_size} tokens "
            f"(ids 0..{ckpt.vocab_size - 1})"
        )
    if ids.size > ckpt.n_ctx:
        raise _usage_error(
            f"the sequence has {ids.size} tokens, more than {ckpt.name}'s context of "
            f"{ckpt.n_ctx}: give a shorter --text or --ids"
        )
    return ids


def head_figures(ckpt: Any, args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(name, figure) for each picture of head ``args.head`` of layer ``args.layer``."""
    from flowgraph.models import plots

    for flag, value, size, what in (
        ("--layer", args.layer, ckpt.num_layers, "layers"),
        ("--head", args.head, ckpt.num_heads, "heads per layer"),
    ):
        if not 0 <= value < size:
            raise _usage_error(
                f"{flag} must be in 0..{size - 1} ({ckpt.name} has {size} {what}), got {value}"
            )
    layer, head = args.layer, args.head
    where = f"{ckpt.name}: layer {layer}, head {head} ({ckpt.attention_kind})"
    form = ckpt.qk_form(layer, head, "model")
    figures = [
        ("form", plots.make_form_figure(form, title=f"{where}: bilinear form in model space"))
    ]
    if ckpt.attention_kind == "metric":
        metric = ckpt.qk_form(layer, head, "head")
        figures.append(
            ("metric", plots.make_form_figure(metric, parts="matrix", title=f"{where}: metric M"))
        )
    figures.append(("spectrum", plots.make_spectrum_figure(form, title=f"{where}: spectra")))
    ids = _token_ids(ckpt, args)
    if ids is None:
        if args.pattern is not None or args.positions:
            flag = "--pattern" if args.pattern is not None else "--positions"
            raise _usage_error(f"{flag} needs tokens: give --text or --ids")
        return figures
    labels = [ckpt.tokens[i] for i in ids]
    attn_lhtt = ckpt.attention(ids)
    figures.append(
        (
            "attention",
            plots.make_attention_figure(
                attn_lhtt[layer, head], labels, title=f"{where}: attention"
            ),
        )
    )
    if args.positions and ckpt.position_embeddings() is None:
        raise _usage_error(f"--positions: {ckpt.name} has no learned position embeddings")
    d2_tt = ckpt.token_distances(layer, head, ids, positions=args.positions)
    which = "token + position embeddings" if args.positions else "token embeddings"
    figures.append(
        (
            "distances",
            plots.make_token_distance_figure(
                d2_tt, labels, title=f"{where}: squared distances of {which}"
            ),
        )
    )
    if args.pattern is not None:
        pattern = _pattern(args, int(ids.size), bool(ckpt.causal))
        cov_lh = ckpt.coverage(ids, pattern, args.mode)
        label = f"{pattern.name} ({args.mode})"
        figures.append(
            (
                "coverage",
                plots.make_coverage_figure(
                    cov_lh, pattern=label, title=f"{ckpt.name}: attention mass inside {label}"
                ),
            )
        )
    elif args.stride is not None or args.window is not None:
        raise _usage_error("--stride and --window need --pattern")
    return figures


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_figures(figures: list[Any], out: Path, title: str, *, cols: int = 2) -> Path:
    """Every figure into one ``.html`` (plotly.js embedded once) or one ``.png`` (a grid of
    ``cols`` figures per row)."""
    from flowgraph.models.plots import combine_figures
    from flowgraph.plot import write_png

    suffix = out.suffix.lower()
    if suffix not in (".html", ".png"):
        raise _usage_error(f"--out must end in .html or .png, got --out {str(out)!r}")
    if not out.parent.is_dir():
        raise _usage_error(f"--out's folder does not exist: {str(out.parent)!r}")
    if suffix == ".png":
        return write_png(combine_figures(figures, cols=cols), out)
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        for i, fig in enumerate(figures)
    ]
    body = "\n".join(f"<section>{part}</section>" for part in parts)
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n"
        f"<body style='font-family: sans-serif'>\n<h1>{html.escape(title)}</h1>\n{body}\n"
        "</body></html>\n"
    )
    _atomic_write_text(out, page)
    return out


def run_heads(args: argparse.Namespace) -> int:
    """The ``heads`` subcommand: load, draw, write; returns the exit status (0)."""
    from flowgraph.models.heads import load_checkpoint
    from flowgraph.models.plots import side_by_side

    if args.out.suffix.lower() not in (".html", ".png"):
        raise _usage_error(f"--out must end in .html or .png, got --out {str(args.out)!r}")
    if args.mode != "merged" and args.pattern is None:
        raise _usage_error("--mode needs --pattern")
    if (args.stride is not None or args.window is not None) and args.pattern is None:
        raise _usage_error("--stride and --window need --pattern")
    ckpt = load_checkpoint(args.path, meta=args.meta)
    named = head_figures(ckpt, args)
    title = f"{ckpt.name}: layer {args.layer}, head {args.head}"
    if args.compare is not None:
        other = load_checkpoint(args.compare)
        theirs = dict(head_figures(other, args))
        named = [
            (name, side_by_side(fig, theirs[name]) if name in theirs else fig)
            for name, fig in named
        ]
        title += f" beside {other.name}"
    cols = 1 if args.compare is not None else 2  # a side-by-side pair is already two wide
    path = write_figures([fig for _, fig in named], args.out, title, cols=cols)
    print(f"{path}: {', '.join(name for name, _ in named)}")
    return 0
