"""The ``flowgraph`` command line.

``flowgraph check`` exits 0 when the pattern has full information, 1 when it does not and 2 on bad
arguments, so it can gate a script or CI job. ``flowgraph demo`` is what ``make demo`` runs.
``flowgraph train`` trains a small GPT on a task (torch and the models are imported only then).
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
from flowgraph.app.cli_command import add_command
from flowgraph.app.cli_dashboard import add_subcommand as add_dashboard
from flowgraph.app.cli_flow import add_subcommand as add_flow
from flowgraph.app.cli_heads import add_subcommand as add_heads
from flowgraph.app.cli_mask_mod import MaskModUsageError
from flowgraph.app.cli_mask_mod import add_arguments as add_mask_mod_arguments
from flowgraph.app.cli_mask_mod import pattern_from_args as mask_mod_pattern
from flowgraph.app.cli_word2vec import add_subcommand as add_word2vec

__all__ = ["build_parser", "main"]

EXIT_FULL, EXIT_MISSING, EXIT_USAGE = 0, 1, 2
PATTERNS = tuple(fg.LIBRARY)  # every named pattern of flowgraph.library.LIBRARY
TRAIN_PATTERNS = ("dense", "local", "strided", "fixed", "ltr", "rtl", "star")  # models.gpt's
BIDIRECTIONAL_ONLY = tuple(n for n, s in fg.LIBRARY.items() if s.directions == ("bidirectional",))
CAUSAL_ONLY = tuple(n for n, s in fg.LIBRARY.items() if s.directions == ("causal",))


def _pattern_options() -> dict[str, list[str]]:
    """Every parameter of a named pattern, in registry order, and the patterns that take it."""
    out: dict[str, list[str]] = {}
    for spec in fg.LIBRARY.values():
        for param in spec.params:
            out.setdefault(param.name, []).append(spec.name)
    return out


PATTERN_OPTIONS = _pattern_options()  # each one an option of `flowgraph check`
MASKS_CHECKED = ("stride", "summary", "window", "hub")  # the options _run_check refuses itself
RENAMED = {"heads": "pattern_heads"}  # fixed_heads' heads: --heads is the stack's heads a layer


class UsageError(Exception):
    """Bad arguments: printed as ``flowgraph: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowgraph",
        description="Attention-pattern analysis: information-flow graphs and their checks.",
    )
    parser.add_argument("--version", action="version", version=f"flowgraph {fg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = add_command(
        sub,
        "check",
        _run_check_command,
        "check a pattern for full information, edges, in-degree, causality and flow",
        "Check a sparse attention pattern. Exit status: 0 full information, "
        "1 information is missing, 2 bad arguments.",
    )
    check.formatter_class = argparse.RawDescriptionHelpFormatter
    check.epilog = pattern_table()
    check.add_argument(
        "pattern", nargs="?", choices=PATTERNS, metavar="PATTERN", help="a named pattern (below)"
    )
    check.add_argument("--masks", type=Path, metavar="FILE.npz", help="check masks from a file")
    check.add_argument(
        "--n", type=int, help="sequence length (named patterns; document: the sum of --lengths)"
    )
    for option, users in PATTERN_OPTIONS.items():
        kind = next(fg.LIBRARY[u].param(option).kind for u in users)
        check.add_argument(
            _flag(option),
            dest=RENAMED.get(option, option),
            type=_int_list if kind == "ints" else int,
            metavar="A,B,..." if kind == "ints" else option.split("_")[-1][0].upper(),
            help=f"{fg.LIBRARY[users[0]].param(option).help} ({', '.join(users)})",
        )
    direction = check.add_mutually_exclusive_group()
    direction.add_argument(
        "--causal",
        dest="causal",
        action="store_true",
        default=None,
        help="keys k ≤ q only (the default where a pattern has both directions, except "
        "longformer and bigbird)",
    )
    direction.add_argument(
        "--bidirectional",
        dest="causal",
        action="store_false",
        help=f"every key ({', '.join(BIDIRECTIONAL_ONLY)} are always bidirectional; "
        f"{', '.join(CAUSAL_ONLY)} always causal)",
    )
    check.add_argument("--layers", type=int, help="stack the pattern over K layers")
    check.add_argument("--mode", choices=("interleave", "merged", "heads"), help="stack mode")
    check.add_argument("--heads", type=int, help="heads per layer (with --mode heads)")
    check.add_argument("--flow", action="store_true", help="also compute the flow constraint")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    add_mask_mod_arguments(check)
    check.add_argument(
        "--quiet", action="store_true", help="no progress bar (shown on stderr past 2 s)"
    )

    demo = add_command(sub, "demo", _run_demo, "check the published patterns and draw them")
    demo.add_argument("--n", type=int, default=1024, help="sequence length of the comparison")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for pictures")
    _add_train(sub)
    add_dashboard(sub)
    add_heads(sub)
    add_flow(sub)
    add_word2vec(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = add_command(
        sub,
        "train",
        _run_train,
        "train a small GPT (sdpa, quadratic or metric attention, optionally sparse)",
        "Train a small GPT on a task; metrics go to OUT/metrics.jsonl and the latest "
        "checkpoint to OUT/checkpoint/. --demo trains the three demo sorters into runs/.",
    )
    train.add_argument("--demo", action="store_true", help="train the demo sorters into runs/")
    train.add_argument("--task", choices=("sort", "chars"), default="sort")
    train.add_argument("--text", type=Path, metavar="FILE", help="text file (--task chars)")
    train.add_argument("--length", type=int, help="sequence length of the sort task (11)")
    train.add_argument("--vocab", type=int, help="symbols of the sort task (3)")
    train.add_argument("--n-ctx", type=int, help="context length of the chars task (64)")
    train.add_argument("--attention", choices=("sdpa", "quadratic", "metric"), default="sdpa")
    train.add_argument("--metric", choices=("symmetric", "psd"), default="symmetric")
    train.add_argument("--pattern", choices=TRAIN_PATTERNS, help="restrict attention to a pattern")
    train.add_argument("--mode", choices=("interleave", "merged", "heads"), default="interleave")
    train.add_argument("--stride", type=int, help="stride of the pattern (default ⌊√n_ctx⌋)")
    train.add_argument("--bidirectional", action="store_true", help="an encoder (not causal)")
    train.add_argument("--n-layer", type=int, default=2)
    train.add_argument("--n-head", type=int, default=4)
    train.add_argument("--d-model", type=int, default=64)
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--steps", type=int, help="training steps (default 1000; --demo: 300)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--min-lr", type=float, help="learning rate at the end (default lr/10)")
    train.add_argument("--warmup", type=int, help="warmup steps (default min(50, steps))")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--eval-every", type=int, default=250)
    train.add_argument("--ckpt-every", type=int, default=250)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--out", type=Path, help="run folder, e.g. runs/NAME")
    train.add_argument("--resume", action="store_true", help="continue OUT/checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's; --demo uses 1: small models on a busy "
        "CPU run many times slower with more)",
    )


def _run_train(args: argparse.Namespace) -> int:
    import torch  # imported here, not at start-up

    from flowgraph.models.checkpoint import CheckpointError
    from flowgraph.models.train import TrainConfig, run_from_args, train_demo

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    elif args.demo:
        torch.set_num_threads(1)
    if args.demo:
        results = train_demo(Path("runs"), steps=args.steps, progress=not args.quiet)
        print("demo sorters: held-out token accuracy, sequences sorted exactly (greedy)")
        for name, result in results.items():
            print(
                f"  {name:<18} {result['test_accuracy']:.4f}  {result['sorted_exactly']:.4f}"
                f"  ({result['out']})"
            )
        worst = min(r["test_accuracy"] for r in results.values())
        return 0 if worst >= 0.95 else 1
    if args.out is None:
        raise UsageError("--out DIR is required (e.g. --out runs/NAME), or use --demo")
    task_options: dict[str, object] = {}
    if args.task == "chars":
        if args.text is None:
            raise UsageError("--task chars needs --text FILE")
        task_options["text"] = str(args.text)
        if args.n_ctx is not None:
            task_options["n_ctx"] = args.n_ctx
    else:
        for option in ("text", "n_ctx"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option.replace('_', '-')} applies to --task chars only")
        for option in ("length", "vocab"):
            if getattr(args, option) is not None:
                task_options[option] = getattr(args, option)
    if args.task == "chars" and (args.length is not None or args.vocab is not None):
        raise UsageError("--length and --vocab apply to --task sort only")
    model_options: dict[str, object] = dict(
        attention=args.attention,
        metric=args.metric,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        dropout=args.dropout,
        causal=not args.bidirectional,
    )
    if args.pattern is not None:
        model_options.update(pattern=args.pattern, pattern_mode=args.mode)
        if args.stride is not None:
            model_options["pattern_args"] = {"stride": args.stride}
    elif args.stride is not None:
        raise UsageError("--stride needs --pattern")
    steps = 1000 if args.steps is None else args.steps
    config = TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 10 if args.min_lr is None else args.min_lr,
        warmup=min(50, steps) if args.warmup is None else args.warmup,
        seed=args.seed,
        log_every=args.log_every,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
    )
    try:
        result = run_from_args(
            task=args.task,
            task_options=task_options,
            model_options=model_options,
            train_config=config,
            out=args.out,
            resume=args.resume,
            device=args.device,
            progress=not args.quiet,
        )
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{args.out}: step {result['step']}, held-out loss {result['test_loss']:.4f}, "
            f"token accuracy {result['test_accuracy']:.4f}"
        )
    return 0


def _flag(option: str) -> str:
    """The ``flowgraph check`` option of a pattern parameter (``top_k`` → ``--top-k``)."""
    return "--" + RENAMED.get(option, option).replace("_", "-")


def _option(args: argparse.Namespace, param: str) -> object:
    return getattr(args, RENAMED.get(param, param))


def _int_list(text: str) -> list[int]:
    """``"100,200, 50"`` → [100, 200, 50] (``--lengths``); argparse reports anything else."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 512,1024,256, got {text!r}"
        ) from None
    return values


def pattern_table() -> str:
    """The named patterns with their options, defaults and directions (``check --help``)."""
    lines = ["named patterns (the first direction is the default; option=default given n):"]
    for name, spec in fg.LIBRARY.items():
        options = " ".join(
            f"{_flag(p.name)}" + ("" if p.required else f"={p.default_text}") for p in spec.params
        )
        direction = "causal|bidirectional" if spec.choice else f"{spec.directions[0]} only"
        if spec.choice and spec.directions[0] == "bidirectional":
            direction = "bidirectional|causal"
        lines.append(f"  {name:<15} {direction:<21} {options}".rstrip())
    lines.append("a default larger than n allows is lowered to the largest allowed value")
    return "\n".join(lines)


def _named_pattern(args: argparse.Namespace) -> fg.Pattern:
    """The pattern ``flowgraph check NAME`` names, built through flowgraph.library.LIBRARY: an
    option the pattern does not take, a missing required one or a direction it lacks is an
    error, never ignored."""
    name = args.pattern
    spec = fg.LIBRARY[name]
    if args.n is None and spec.n_from is None:
        raise UsageError(f"--n is required with a named pattern ({name})")
    for option in PATTERN_OPTIONS:
        if _option(args, option) is not None and option not in spec.names:
            raise UsageError(f"{_flag(option)} does not apply to the {name} pattern")
    for param in spec.params:
        if param.required and _option(args, param.name) is None:
            raise UsageError(f"{_flag(param.name)} is required with the {name} pattern")
    if not spec.choice and args.causal is not None:
        only = spec.directions[0]
        if args.causal != (only == "causal"):
            drop = "--causal" if args.causal else "--bidirectional"
            raise UsageError(f"{name} is {only} by definition; drop {drop}")
    values = {option: _option(args, option) for option in spec.names}
    return spec.build(args.n, values, args.causal if spec.choice else None)


def _run_check_command(args: argparse.Namespace) -> int:
    """``flowgraph check``: refuses the library's options with ``--masks`` (the file gives the
    pattern), then runs the check."""
    if args.masks is not None:
        for option in PATTERN_OPTIONS:
            if option not in MASKS_CHECKED and _option(args, option) is not None:
                raise UsageError(
                    f"{_flag(option)} does not apply to --masks (the file gives the pattern)"
                )
    return _run_check(args)


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


def _mask_mod_check(args: argparse.Namespace) -> fg.Pattern:
    """The pattern of ``--mask-mod``: the library's options do not apply to it."""
    if args.pattern is not None or args.masks is not None:
        raise UsageError(
            "give either a PATTERN name, --masks FILE.npz or --mask-mod FILE.py:NAME (one of them)"
        )
    for option in PATTERN_OPTIONS:
        if option != "n" and getattr(args, RENAMED.get(option, option), None) is not None:
            raise UsageError(f"{_flag(option)} does not apply to --mask-mod (it gives the mask)")
    try:
        return mask_mod_pattern(args)
    except MaskModUsageError as exc:
        raise UsageError(str(exc)) from None


def _run_check(args: argparse.Namespace) -> int:
    if args.mask_mod is None:
        for option in ("kv_len", "key_span", "batch"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option.replace('_', '-')} needs --mask-mod FILE.py:NAME")
    if args.mask_mod is not None:
        pattern = _mask_mod_check(args)
    elif (args.pattern is None) == (args.masks is None):
        raise UsageError("give either a PATTERN name or --masks FILE.npz (one of them)")
    elif args.masks is not None:
        if args.causal is None:
            raise UsageError("--masks needs --causal or --bidirectional")
        for option in ("n", "stride", "summary", "window", "hub"):
            if getattr(args, option) is not None:
                raise UsageError(f"--{option} does not apply to --masks (the file gives n)")
        pattern = load_masks(args.masks, args.causal)
    else:
        pattern = _named_pattern(args)
    if args.mask_mod is not None:
        pass  # --heads and --layers were read with the mask_mod
    elif args.layers is not None:
        pattern = fg.stack(pattern, args.layers, args.mode or "interleave", heads=args.heads)
    elif args.mode is not None or args.heads is not None:
        raise UsageError("--mode and --heads need --layers K")
    report = fg.check(pattern, flow=args.flow, progress=not args.quiet)
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
    from flowgraph.app.demo import run_demo  # plotly is only needed here

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
