"""``flowgraph check --mask-mod FILE.py:NAME``: check a FlexAttention mask_mod from the user's code.

The file is imported as a module (it is the user's own code, run as ``python`` would run it; its
folder is on ``sys.path`` meanwhile so it can import its neighbours) and ``NAME`` is looked up in
it. The mask_mod is read with :func:`flowgraph.from_mask_mod`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flowgraph as fg

__all__ = ["add_arguments", "load_mask_mod", "pattern_from_args"]


class MaskModUsageError(Exception):
    """A --mask-mod argument that cannot be used (the CLI prints it as a usage error)."""


def add_arguments(check: argparse.ArgumentParser) -> None:
    """The --mask-mod options of ``flowgraph check``."""
    group = check.add_argument_group("FlexAttention mask_mod")
    group.add_argument(
        "--mask-mod", metavar="FILE.py:NAME", help="check the mask_mod NAME defined in FILE.py"
    )
    group.add_argument("--kv-len", type=int, help="keys of the mask_mod (compressed keys)")
    group.add_argument(
        "--key-span", metavar="B[,STRIDE]",
        help="tokens each compressed key stands for: key j = tokens [j·STRIDE, j·STRIDE+B−1] "
        "(STRIDE defaults to B)",
    )  # fmt: skip
    group.add_argument("--batch", type=int, help="the b passed to the mask_mod (default 0)")


def load_mask_mod(spec: str) -> Callable[..., Any]:
    """The function ``NAME`` of ``FILE.py:NAME``."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise MaskModUsageError(f"--mask-mod must be FILE.py:NAME, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise MaskModUsageError(f"--mask-mod: no such file: {path}")
    module_name = f"_flowgraph_mask_mod_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise MaskModUsageError(f"--mask-mod: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed to import: say where
        raise MaskModUsageError(
            f"--mask-mod: importing {path} raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        sys.path.pop(0)
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise MaskModUsageError(
            f"--mask-mod: {path} defines no {name!r}; its functions: {', '.join(found) or 'none'}"
        )
    if not callable(fn):
        raise MaskModUsageError(f"--mask-mod: {path}:{name} is not a function")
    return fn


def _key_span(text: str | None) -> int | tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise MaskModUsageError(f"--key-span must be B or B,STRIDE (integers), got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def pattern_from_args(args: argparse.Namespace) -> fg.Pattern:
    """The pattern ``flowgraph check --mask-mod`` checks: the mask_mod read at --n (one step per
    head with --heads, laid over --layers; without --layers one layer)."""
    if args.n is None:
        raise MaskModUsageError("--mask-mod needs --n (the sequence length)")
    mask_mod = load_mask_mod(args.mask_mod)
    causal = True if args.causal is None else args.causal
    try:
        p = fg.from_mask_mod(
            mask_mod, args.n, kv_len=args.kv_len, key_span=_key_span(args.key_span),
            heads=args.heads, batch=args.batch, causal=causal,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise MaskModUsageError(str(exc)) from exc
    if args.heads is not None:  # the heads of one layer carry information together
        return fg.stack(p, args.layers or 1, mode="heads")
    if args.layers is not None:
        return fg.stack(p, args.layers, args.mode or "interleave")
    return p
