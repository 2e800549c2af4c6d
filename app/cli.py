"""The ``flowgraph`` command line.

``flowgraph check`` exits 0 when the pattern has full information, 1 when it does not and 2 on bad
arguments, so it can gate a script or CI job. ``flowgraph demo`` is what ``make demo`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import flowgraph as fg

__all__ = ["build_parser", "main"]

EXIT_FULL, EXIT_MISSING, EXIT_USAGE = 0, 1, 2
PATTERNS = ("dense", "local", "strided", "fixed", "ltr", "rtl", "star")
BIDIRECTIONAL_ONLY = ("ltr", "rtl", "star")  # defined without a causal variant


class UsageError(Exception):
    """Bad arguments: printed as ``flowgraph: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowgraph",
        description="Attention-pattern analysis: information-flow graphs and their checks.",
    )
    parser.add_argument("--version", action="version", version=f"flowgraph {fg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check",
        help="check a pattern for full information, edges, in-degree, causality and flow",
        description=(
            "Check a sparse attention pattern. Exit status: 0 full information, "
            "1 information is missing, 2 bad arguments."
        ),
    )
    check.add_argument("pattern", nargs="?", choices=PATTERNS, help="a named pattern")
    check.add_argument("--masks", type=Path, metavar="FILE.npz", help="check masks from a file")
    check.add_argument("--n", type=int, help="sequence length (named patterns)")
    check.add_argument("--stride", type=int, help="stride l (default ⌊√n⌋)")
    check.add_argument("--summary", type=int, help="summary columns c of the fixed pattern")
    check.add_argument("--window", type=int, help="window of the local pattern")
    check.add_argument("--hub", type=int, help="hub position of the star pattern")
    direction = check.add_mutually_exclusive_group()
    direction.add_argument(
        "--causal",
        dest="causal",
        action="store_true",
        default=None,
        help="keys k ≤ q only (default for dense, local, strided, fixed)",
    )
    direction.add_argument(
        "--bidirectional",
        dest="causal",
        action="store_false",
        help="every key (ltr, rtl and star are always bidirectional)",
    )
    check.add_argument("--layers", type=int, help="stack the pattern over K layers")
    check.add_argument("--mode", choices=("interleave", "merged", "heads"), help="stack mode")
    check.add_argument("--heads", type=int, help="heads per layer (with --mode heads)")
    check.add_argument("--flow", action="store_true", help="also compute the flow constraint")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_run_check)

    demo = sub.add_parser("demo", help="check the published patterns and draw them")
    demo.add_argument("--n", type=int, default=1024, help="sequence length of the comparison")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for pictures")
    demo.set_defaults(run=_run_demo)
    return parser


def _named_pattern(args: argparse.Namespace) -> fg.Pattern:
    name = args.pattern
    if args.n is None:
        raise UsageError(f"--n is required with a named pattern ({name})")
    allowed = {
        "dense": set(),
        "local": {"window"},
        "strided": {"stride"},
        "fixed": {"stride", "summary"},
        "ltr": {"stride"},
        "rtl": {"stride"},
        "star": {"hub"},
    }[name]
    for option in ("stride", "summary", "window", "hub"):
        if getattr(args, option) is not None and option not in allowed:
            raise UsageError(f"--{option} does not apply to the {name} pattern")
    if name in BIDIRECTIONAL_ONLY:
        if args.causal:
            raise UsageError(f"{name} is bidirectional by definition; drop --causal")
        kwargs = {k: getattr(args, k) for k in allowed if getattr(args, k) is not None}
        return getattr(fg, name)(args.n, **kwargs)
    causal = True if args.causal is None else args.causal
    if name == "local":
        if args.window is None:
            raise UsageError("--window is required with the local pattern")
        return fg.local(args.n, args.window, causal=causal)
    kwargs = {k: getattr(args, k) for k in allowed if getattr(args, k) is not None}
    return getattr(fg, name)(args.n, causal=causal, **kwargs)


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_masks(path: Path, causal: bool) -> fg.Pattern:
    """A pattern from an ``.npz``: the array ``masks`` ((n, n) or (steps, n, n)), or else every
    array in the file as one step each, in natural name order (``arr_0, arr_1, …, arr_10``)."""
    if not path.is_file():
        raise UsageError(f"--masks: no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files, key=_natural_key)
            if not names:
                raise UsageError(f"--masks: {path} holds no arrays")
            masks = data["masks"] if "masks" in names else [data[k] for k in names]
    except (OSError, ValueError) as exc:
        raise UsageError(f"--masks: cannot read {path} as .npz ({exc})") from exc
    return fg.from_masks(masks, causal=causal, name=path.stem)


def _run_check(args: argparse.Namespace) -> int:
    if (args.pattern is None) == (args.masks is None):
        raise UsageError("give either a PATTERN name or --masks FILE.npz (one of them)")
    if args.masks is not None:
        if args.causal is None:
            raise UsageError("--masks needs --causal or --bidirectional")
        for option in ("n", "stride", "summary", "window", "hub"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option} does not apply to --masks (the file gives n)")
        pattern = load_masks(args.masks, args.causal)
    else:
        pattern = _named_pattern(args)
    if args.layers is not None:
        pattern = fg.stack(pattern, args.layers, args.mode or "interleave", heads=args.heads)
    elif args.mode is not None or args.heads is not None:
        raise UsageError("--mode and --heads need --layers K")
    report = fg.check(pattern, flow=args.flow)
    code = EXIT_FULL if report.full_information else EXIT_MISSING
    if args.json:
        text = json.dumps(
            {**report.to_dict(), "params": pattern.params}, indent=2, ensure_ascii=False
        )
    else:
        text = report.summary()
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `flowgraph check ... | head`: the reader left, the verdict stands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _run_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo  # plotly is only needed here

    return run_demo(args.n, args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowgraph`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 itself on malformed arguments
    try:
        return int(args.run(args))
    except (UsageError, ValueError, TypeError) as exc:
        print(f"flowgraph {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
