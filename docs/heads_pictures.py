"""The head-metric pictures of docs/heads.md: two demo sorters (metric and dot-product attention)
trained here, drawn with models.plots.

    .venv/bin/python docs/heads_pictures.py [--out docs/img] [--runs DIR]

:data:`PICTURES` maps each file name to its figure maker, in the form docs/pictures.py uses, so
that script can merge them. The sorters are the demo's (2 layers, 4 heads, width 64, the sort
task of 11 tokens over 3 symbols, 300 steps, seed 0) trained into ``--runs`` (default: a
temporary folder), or reused when that folder already holds them (``runs/`` after
``flowgraph train --demo``). Needs torch, kaleido and a Chromium (see flowgraph.plot.write_png).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go

import flowgraph as fg
from flowgraph import plot

SEQUENCE = [2, 0, 1, 2, 2, 0, 1, 0, 0, 2, 1]  # a sort input: the model then emits 0 0 0 0 1 …
LAYER, HEAD = 0, 0
_RUNS: list[Path] = []  # where the sorters live (set by main, or a temporary folder)


@functools.cache
def sorters() -> tuple:
    """(metric checkpoint, dot-product checkpoint), trained once per process if missing."""
    import torch

    from flowgraph.models.heads import load_checkpoint
    from flowgraph.models.train import DEMO_MODEL, DEMO_TRAIN, TrainConfig, run_from_args

    root = _RUNS[0] if _RUNS else Path(tempfile.mkdtemp(prefix="heads-pictures-"))
    torch.set_num_threads(1)  # small models on a busy CPU run faster on one thread
    loaded = []
    for name, attention in (("sort-metric", "metric"), ("sort-sdpa", "sdpa")):
        run = root / name
        run_from_args(
            task="sort",
            task_options={},
            model_options={**DEMO_MODEL, "attention": attention},
            train_config=TrainConfig(**DEMO_TRAIN),
            out=run,
            resume=True,  # a finished run is reused as it is
            device="cpu",
            progress=False,
        )
        loaded.append(load_checkpoint(run))
    return tuple(loaded)


def _input_ids():
    import numpy as np

    return np.asarray(SEQUENCE + sorted(SEQUENCE)[:-1], dtype=np.int64)  # n_ctx = 21 tokens


def forms() -> go.Figure:
    """The symmetric and antisymmetric parts of layer 0, head 0, metric beside dot-product."""
    from flowgraph.models import plots

    figs = [
        plots.make_form_figure(
            c.qk_form(LAYER, HEAD, "model"), parts=("symmetric", "antisymmetric")
        )
        for c in sorters()
    ]
    return plots.side_by_side(*figs, titles=tuple(_who(c) for c in sorters()))


def spectra() -> go.Figure:
    from flowgraph.models import plots

    figs = [plots.make_spectrum_figure(c.qk_form(LAYER, HEAD, "model")) for c in sorters()]
    return plots.side_by_side(*figs, titles=tuple(_who(c) for c in sorters()))


def distances() -> go.Figure:
    """Squared distances between the three symbols' embeddings, as in the seed's sorter plot."""
    from flowgraph.models import plots

    figs = [
        plots.make_token_distance_figure(
            c.token_distances(LAYER, HEAD, list(range(len(c.tokens)))), c.tokens
        )
        for c in sorters()
    ]
    return plots.side_by_side(*figs, titles=tuple(_who(c) for c in sorters()))


def attention() -> go.Figure:
    from flowgraph.models import plots

    ids = _input_ids()
    figs = [
        plots.make_attention_figure(c.attention(ids)[LAYER, HEAD], [c.tokens[i] for i in ids])
        for c in sorters()
    ]
    return plots.side_by_side(*figs, titles=tuple(_who(c) for c in sorters()))


def coverage() -> go.Figure:
    """How much of every head's attention the strided pattern (stride ⌊√21⌋ = 4) keeps."""
    from flowgraph.models import plots

    ids = _input_ids()
    pattern = fg.strided(len(ids))
    figs = [
        plots.make_coverage_figure(c.coverage(ids, pattern), pattern="strided (merged)")
        for c in sorters()
    ]
    return plots.side_by_side(*figs, titles=tuple(_who(c) for c in sorters()))


def _who(ckpt) -> str:
    return f"{ckpt.name} ({ckpt.attention_kind}): layer {LAYER}, head {HEAD}"


# file name → (figure maker, write_png keyword arguments), as in docs/pictures.py
PICTURES: dict[str, tuple[Callable[[], go.Figure], dict]] = {
    "heads_forms.png": (forms, {}),
    "heads_spectra.png": (spectra, {}),
    "heads_distances.png": (distances, {}),
    "heads_attention.png": (attention, {}),
    "heads_coverage.png": (coverage, {}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--out", type=Path, default=here / "img", help="folder for the PNGs")
    parser.add_argument("--runs", type=Path, help="folder for the two sorters (reused if there)")
    args = parser.parse_args(argv)
    if args.runs is not None:
        _RUNS.append(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (make, size) in PICTURES.items():
        path = plot.write_png(make(), args.out / name, **size)
        print(f"{path}  {path.stat().st_size / 1024:6.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
