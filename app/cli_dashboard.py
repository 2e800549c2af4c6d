"""``flowgraph dashboard``: serve the Dash dashboard over runs, checkpoints and saved vectors.

It binds 127.0.0.1 unless ``--host`` says otherwise and runs with Dash's debug mode off unless
``--debug`` (debug mode shows tracebacks in the browser and reloads code). Before serving it
loads the first few checkpoints, so the first visit to the Heads page is quick, then prints the
URL.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flowgraph.app.cli_command import add_command

__all__ = ["add_subcommand", "run_dashboard"]

DEFAULT_RUNS, DEFAULT_VECTORS = Path("runs"), Path("vectors")
HELP = "serve the dashboard (patterns, heads, embeddings) in the browser"
DESCRIPTION = (
    "Serve the Dash dashboard. Checkpoints are opened only from --runs and --checkpoint; "
    "word2vec vectors only from --vectors. Everything is served locally (works offline)."
)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Add ``dashboard`` to the ``flowgraph`` command's subparsers."""
    parser = add_command(sub, "dashboard", run_dashboard, HELP, DESCRIPTION)
    parser.add_argument(
        "--runs", type=Path, help="folder of training runs (default: runs/ when it exists)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="a checkpoint (run folder, Hugging Face folder, nanoGPT ckpt.pt); repeatable",
    )
    parser.add_argument(
        "--vectors", type=Path, help="folder of saved word2vec vectors (default: vectors/ if any)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8050, help="port (8050)")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (tracebacks, reload)")
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="serve at once, without loading checkpoints and computing first views",
    )


def run_dashboard(args: argparse.Namespace) -> int:
    """Build the app from ``args``, print its URL and serve until interrupted."""
    from flowgraph.app.dashboard import create_app
    from flowgraph.app.dashboard.app import warm
    from flowgraph.app.dashboard.paths import find_checkpoints
    from flowgraph.app.dashboard.state import STATE_KEY

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got --port {args.port}")
    runs = args.runs
    if runs is None and DEFAULT_RUNS.is_dir():
        runs = DEFAULT_RUNS
    vectors = args.vectors
    if vectors is None and DEFAULT_VECTORS.is_dir():
        vectors = DEFAULT_VECTORS
    app = create_app(runs, args.checkpoint, vectors)
    state = app.server.config[STATE_KEY]
    if not args.no_warm:
        warm(app)
    found = len(state.list_checkpoints())
    for root in state.checkpoint_roots:  # a mistyped root would only show as a shorter list
        if not find_checkpoints([root]):
            print(
                f"flowgraph dashboard: {root.flag} {root.given}: no checkpoint found there "
                "(a run folder, a Hugging Face folder or a nanoGPT .pt)",
                file=sys.stderr,
                flush=True,
            )
    print(f"flowgraph dashboard: {found} checkpoint(s) under the roots", flush=True)
    if not args.debug:  # one line per request drowns the URL; errors are still logged
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Dashboard running on http://{host}:{args.port}/  (Ctrl+C stops it)", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug)
    return 0
