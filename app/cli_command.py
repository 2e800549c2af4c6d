"""How each ``flowgraph`` subcommand joins the parser: its name, one-line help, description
and the function that runs it, in one call (the subcommand modules then add their options)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_command"]


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` to ``sub``; ``flowgraph NAME`` calls ``run(args)`` and exits
    with its return value. Returns the subcommand's parser for its options."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser
