"""Regenerate every picture the docs and the README use, with flowgraph.plot.

    .venv/bin/python docs/pictures.py [--out docs/img]

Each entry of PICTURES is a file name and the figure drawn into it; the files in docs/img are
committed, and tests/test_docs.py checks that this script writes exactly that set of names.
Needs kaleido and a Chromium/Chrome (see flowgraph.plot.write_png).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

import flowgraph as fg
from flowgraph import plot

sys.path.insert(0, str(Path(__file__).resolve().parent))  # heads_pictures beside this file
import heads_pictures  # the head-metric pictures (two trained demo sorters)

N = 64  # the pattern reference's size: stride ⌊√64⌋ = 8 divides it
SMALL = 16  # flow graphs draw every edge; 16 positions with stride 4 stay readable


def window_without_self(n: int = N) -> fg.Pattern:
    """The from_masks example: step 1 attends the 8 previous keys but not itself."""
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    step1 = (q - k > 0) & (q - k <= 8)
    step2 = ((q - k) % 8 == 0) & (k <= q)
    return fg.from_masks([step1, step2], causal=True, name="window-without-self")


def block_local_global(n: int = N, block: int = 8) -> fg.Pattern:
    """The from_block_layout example: local + global blocks and one block above the diagonal."""
    nb = n // block
    layout = np.zeros((nb, nb), dtype=bool)
    for i in range(nb):
        layout[i, [0, max(0, i - 1), i]] = True  # global first block, previous block, own block
    layout[2, 5] = True  # a mistake: queries of block 2 would see keys of block 5
    return fg.from_block_layout(layout, block, causal=True, name="block-local+global")


# The library section of docs/patterns.md: each pattern at n = 64 as its section builds it.
LIBRARY = [
    fg.sliding_window(N, window=8),
    fg.dilated_window(N, window=4, dilation=3),
    fg.sinks_window(N, window=8, sinks=4),
    fg.longformer(N, window=4, global_tokens=2),
    fg.bigbird(N, block=4, random_blocks=2, seed=0),
    fg.document([20, 12, 32]),
    fg.prefix_lm(N, prefix=16),
    fg.block_causal(N, block=16),
    fg.moba(N, block=8, top_k=3, seed=0),
    fg.nsa(N, cmp_block=8, cmp_stride=4, sel_block=16, sel_blocks=2, window=8, seed=0),
]


def compressed_then_window(n: int = SMALL) -> fg.Pattern:
    """The compressed-keys example of docs/concepts.md: keys of four tokens, each attended once
    its block is complete, then a causal window of two."""
    spans = fg.KeySpans.blocks(n, size=4)
    q = np.arange(n)
    cmp = fg.StepRule(n, 0, (q + 1) // 4, 1, keys=spans.m)
    window = fg.local(n, 2).rules[0]
    return fg.Pattern.from_rules("cmp+window", n, True, [cmp, window], key_spans=[spans, None])


def _flow(*patterns: fg.Pattern) -> go.Figure:
    return plot.make_flow_figure([fg.check(p, flow=True) for p in patterns])


def _stack_modes() -> go.Figure:
    modes = ("interleave", "merged", "heads")
    fig = plot.make_reachability_grid([fg.stack(fg.fixed(N), layers=2, mode=m) for m in modes])
    return fig


# file name → (figure maker, write_png keyword arguments)
PICTURES: dict[str, tuple[Callable[[], go.Figure], dict]] = {
    "overview.png": (
        lambda: plot.make_reachability_grid([fg.fixed(N), fg.ltr(N)]),
        {"width": 900},
    ),
    "flow_graph_strided.png": (
        lambda: plot.make_flow_graph_figure(fg.strided(SMALL, stride=4), key=0),
        {},
    ),
    "flow_graph_fixed_witness.png": (
        lambda: plot.make_flow_graph_figure(
            fg.fixed(SMALL, stride=4), fg.check(fg.fixed(SMALL, stride=4))
        ),
        {},
    ),
    "flow_graph_compressed.png": (
        lambda: plot.make_flow_graph_figure(compressed_then_window(), key=0),
        {},
    ),
    "flow_graph_ltr.png": (
        lambda: plot.make_flow_graph_figure(fg.ltr(SMALL, stride=4), key=0),
        {},
    ),
    "reachability_fixed.png": (lambda: plot.make_reachability_figure(fg.fixed(N)), {}),
    "reachability_ltr_10_4.png": (
        lambda: plot.make_reachability_figure(fg.ltr(10, stride=4)),
        {},
    ),
    "edges.png": (lambda: plot.make_edges_figure([16, 64, 256, 1024, 4096]), {}),
    "flow.png": (lambda: _flow(fg.star(N), fg.strided(N), fg.ltr(N)), {}),
    "stack_modes.png": (_stack_modes, {}),
    "mask_dense.png": (lambda: plot.make_mask_figure(fg.dense(N)), {}),
    "mask_local.png": (lambda: plot.make_mask_figure(fg.local(N, window=8)), {}),
    "mask_strided.png": (lambda: plot.make_mask_figure(fg.strided(N)), {}),
    "mask_strided_bidirectional.png": (
        lambda: plot.make_mask_figure(fg.strided(N, causal=False)),
        {},
    ),
    "mask_fixed.png": (lambda: plot.make_mask_figure(fg.fixed(N)), {}),
    "mask_fixed_bidirectional.png": (
        lambda: plot.make_mask_figure(fg.fixed(N, causal=False)),
        {},
    ),
    "mask_ltr.png": (lambda: plot.make_mask_figure(fg.ltr(N)), {}),
    "mask_rtl.png": (lambda: plot.make_mask_figure(fg.rtl(N)), {}),
    "mask_star.png": (lambda: plot.make_mask_figure(fg.star(N)), {}),
    "mask_from_masks.png": (lambda: plot.make_mask_figure(window_without_self()), {}),
    "mask_from_block_layout.png": (lambda: plot.make_mask_figure(block_local_global()), {}),
    "mask_fixed_heads.png": (
        lambda: plot.make_mask_figure(fg.fixed_heads(N, stride=8, summary=2, heads=2)),
        {},
    ),
    "mask_grid_ltr.png": (lambda: plot.make_mask_figure(fg.grid_ltr(8, 8)), {}),
    **{f"mask_{p.name}.png": (lambda p=p: plot.make_mask_figure(p), {}) for p in LIBRARY},
}
PICTURES.update(heads_pictures.PICTURES)


@contextlib.contextmanager
def _one_browser() -> Iterator[None]:
    """Keep one Chromium open for every picture (kaleido's sync server) when kaleido has one.

    Only a speed-up (about 3× here): without it each write_png starts its own browser, and a
    missing browser still surfaces as write_png's RuntimeError.
    """
    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
    except Exception:  # no kaleido, an old one, or no browser: let write_png report it
        yield
        return
    try:
        with warnings.catch_warnings():
            # plotly passes an (empty) kopts that a running server ignores, and says so
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            yield
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "img",
        help="folder to write the PNGs into (default: docs/img next to this script)",
    )
    parser.add_argument(
        "--runs", type=Path, help="folder of the demo sorters drawn by the head pictures (reused)"
    )
    args = parser.parse_args(argv)
    if args.runs is not None:
        heads_pictures._RUNS.append(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    start = time.perf_counter()
    with _one_browser():
        for name, (make, size) in PICTURES.items():
            path = plot.write_png(make(), args.out / name, **size)
            total += path.stat().st_size
            print(f"{path}  {path.stat().st_size / 1024:6.1f} KiB")
    took = time.perf_counter() - start
    print(f"{len(PICTURES)} pictures, {total / 1024:.0f} KiB in all, {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
