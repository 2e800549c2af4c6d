"""Which sparse pattern could replace a trained model's dense attention: :func:`fit_pattern`.

For every pattern of a small grid — the library's ``dense``, ``local``, ``strided``, ``fixed``
and, for a bidirectional model, ``ltr``, ``rtl``, ``star``, plus attention sinks beside a window
(``sinks+local``, StreamingLLM's shape, built with :func:`flowgraph.from_masks`) — it measures,
over the given texts:

- ``kept_lh``: the fraction of each head's attention mass inside the mask that head would use
  (:func:`models.heads.metrics.coverage` in the chosen mode), averaged over the texts weighted by
  their lengths; ``kept`` is its mean over layers and heads;
- ``density``: the edges the heads would compute over those of dense attention (causal:
  T(T+1)/2 per head), summed over the texts;
- ``full_information``: whether the pattern stacked over the model's layers in that mode
  (:func:`flowgraph.stack`, :func:`flowgraph.check`) lets every token reach every position it
  may (k ≤ q when causal) at every text length.

Patterns denser than ``budget`` are kept in the table, marked over budget and ranked after the
others. Each pattern is built at each text's length T (a bidirectional pattern's structure
depends on n), with strides and windows from {2, 4, 8, …} up to the shortest text's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import flowgraph as fg
from flowgraph.models.heads.metrics import MODES, coverage

__all__ = ["FitReport", "PatternFit", "fit_pattern", "pattern_grid"]

GRID_MAX = 64  # the largest stride / window tried: beyond it the patterns are nearly dense
SINKS = 1  # sink tokens of sinks+local (StreamingLLM keeps the first few; one carries most)


@dataclass(frozen=True)
class PatternFit:
    """One pattern of the grid against the model: see the module docstring for the fields."""

    name: str
    params: dict[str, int]
    kept_lh: np.ndarray
    kept: float
    density: float
    full_information: bool
    within_budget: bool

    @property
    def label(self) -> str:
        """``name(p=v, …)``, e.g. ``local(window=4)``; the name alone without parameters."""
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})" if inner else self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "label": self.label,
            "kept": self.kept,
            "kept_min_head": float(self.kept_lh.min()),
            "kept_lh": self.kept_lh.tolist(),
            "density": self.density,
            "full_information": self.full_information,
            "within_budget": self.within_budget,
        }


@dataclass(frozen=True)
class FitReport:
    """:func:`fit_pattern`'s result: ``fits`` ranked best first (within budget, then by mass
    kept, then sparser first); ``best`` is the first within budget (None if none is)."""

    model: str
    causal: bool
    mode: str
    budget: float
    lengths: tuple[int, ...]
    fits: tuple[PatternFit, ...] = field(repr=False)

    @property
    def best(self) -> PatternFit | None:
        return next((f for f in self.fits if f.within_budget), None)

    def table(self) -> str:
        """The ranked table as markdown."""
        lines = [
            f"{self.model}: {'causal' if self.causal else 'bidirectional'}, mode {self.mode}, "
            f"budget {self.budget:g}, {len(self.lengths)} text(s) of "
            f"{min(self.lengths)}–{max(self.lengths)} tokens",
            "",
            "| rank | pattern | kept | min head | density | full information | budget |",
            "|---:|---|---:|---:|---:|---|---|",
        ]
        for rank, f in enumerate(self.fits, 1):
            lines.append(
                f"| {rank} | {f.label} | {f.kept:.3f} | {f.kept_lh.min():.3f} | "
                f"{f.density:.3f} | {'yes' if f.full_information else 'no'} | "
                f"{'within' if f.within_budget else 'over'} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: ``json.dumps(report.to_dict())`` works."""
        best = self.best
        return {
            "model": self.model,
            "causal": self.causal,
            "mode": self.mode,
            "budget": self.budget,
            "lengths": list(self.lengths),
            "best": None if best is None else best.label,
            "fits": [f.to_dict() for f in self.fits],
        }


def _sinks_local(n: int, window: int, causal: bool) -> fg.Pattern:
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    near = np.abs(q - k) < window
    if causal:
        mask = (near | (k < SINKS)) & (k <= q)
    else:
        mask = near | (k < SINKS) | (q < SINKS)
    return fg.from_masks(mask, causal=causal, name="sinks+local")


def pattern_grid(
    n: int, causal: bool, shortest: int
) -> list[tuple[str, dict[str, int], fg.Pattern]]:
    """(name, params, pattern built at n) for every pattern of the grid; strides and windows
    are the powers of two from 2 up to ``min(shortest, GRID_MAX)``."""
    sizes = [2**i for i in range(1, int(math.log2(GRID_MAX)) + 1) if 2**i <= shortest]
    grid: list[tuple[str, dict[str, int], fg.Pattern]] = [("dense", {}, fg.dense(n, causal=causal))]
    for w in sizes:
        grid.append(("local", {"window": w}, fg.local(n, w, causal=causal)))
        grid.append(("sinks+local", {"sinks": SINKS, "window": w}, _sinks_local(n, w, causal)))
    for s in sizes:
        grid.append(("strided", {"stride": s}, fg.strided(n, s, causal=causal)))
        grid.append(("fixed", {"stride": s}, fg.fixed(n, s, causal=causal)))
        if not causal:
            grid.append(("ltr", {"stride": s}, fg.ltr(n, s)))
            grid.append(("rtl", {"stride": s}, fg.rtl(n, s)))
    if not causal:
        grid.append(("star", {"hub": 0}, fg.star(n)))
    return grid


def _head_edges(pattern: fg.Pattern, mode: str, L: int, H: int) -> float:
    """Edges summed over the L·H heads, each head's mask as :func:`coverage` gives it."""
    edges = pattern.edges()
    p = len(edges)
    if mode == "merged":
        return float(pattern.merged().edges()[0]) * L * H
    if mode == "interleave":
        return float(sum(edges[layer % p] for layer in range(L))) * H
    return float(sum(edges[h % p] for h in range(H))) * L


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"texts must be a list of strings, got {type(texts).__name__}"
            + (" (wrap one text in a list)" if isinstance(texts, str) else "")
        )
    if len(texts) == 0:
        raise ValueError("texts must hold at least one text, got none")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def fit_pattern(
    ck: object, texts: Sequence[str], *, budget: float = 0.1, mode: str = "merged"
) -> FitReport:
    """Rank the grid's sparse patterns by how much of ``ck``'s attention on ``texts`` they keep.

    Parameters
    ----------
    ck : a :class:`~models.heads.Checkpoint`.
    texts : the texts (each tokenized with ``ck.tokenize``, 2 ≤ T ≤ n_ctx tokens).
    budget : the largest density allowed, in (0, 1]; denser patterns are marked over budget.
    mode : how a pattern's steps map to the model's heads: ``"merged"`` (every head uses the
        union), ``"interleave"`` (layer l uses step l mod p) or ``"heads"`` (head h step h mod p).

    Returns
    -------
    :class:`FitReport`: ranked :class:`PatternFit` rows, ``table()``, ``to_dict()``.
    """
    from flowgraph.models.heads.checkpoint import Checkpoint

    if not isinstance(ck, Checkpoint):
        raise TypeError(f"ck must be a models.heads.Checkpoint, got {type(ck).__name__}")
    texts = _check_texts(texts)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a density in (0, 1], got budget={budget!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got mode={mode!r}")
    sequences = []
    for i, text in enumerate(texts):
        ids = ck.tokenize(text)
        if not 2 <= ids.size <= ck.n_ctx:
            raise ValueError(
                f"texts[{i}] gives {ids.size} tokens; need 2 ≤ T ≤ {ck.n_ctx} (the model's n_ctx)"
            )
        sequences.append(ids)
    L, H, causal = ck.num_layers, ck.num_heads, bool(ck.causal)
    lengths = tuple(int(ids.size) for ids in sequences)
    shortest = min(lengths)
    kept: dict[int, np.ndarray] = {}
    edges: dict[int, float] = {}
    full: dict[int, bool] = {}
    names: dict[int, tuple[str, dict[str, int]]] = {}
    dense_edges = 0.0
    checked: dict[tuple[int, int], bool] = {}
    for ids in sequences:
        T = int(ids.size)
        attn = ck.attention(ids)
        dense_edges += (T * (T + 1) / 2 if causal else T * T) * L * H
        for g, (name, params, pattern) in enumerate(pattern_grid(T, causal, shortest)):
            names[g] = (name, params)
            kept[g] = kept.get(g, 0.0) + T * coverage(attn, pattern, mode)
            edges[g] = edges.get(g, 0.0) + _head_edges(pattern, mode, L, H)
            if (g, T) not in checked:
                stacked = fg.stack(pattern, L, mode, heads=H if mode == "heads" else None)
                checked[(g, T)] = fg.check(stacked).full_information
            full[g] = full.get(g, True) and checked[(g, T)]
    total = float(sum(lengths))
    fits = []
    for g, (name, params) in names.items():
        kept_lh = kept[g] / total
        density = edges[g] / dense_edges
        fits.append(
            PatternFit(
                name=name,
                params=params,
                kept_lh=kept_lh,
                kept=float(kept_lh.mean()),
                density=float(density),
                full_information=bool(full[g]),
                within_budget=bool(density <= budget),
            )
        )
    fits.sort(key=lambda f: (not f.within_budget, -f.kept, f.density))
    return FitReport(
        model=ck.name,
        causal=causal,
        mode=mode,
        budget=float(budget),
        lengths=lengths,
        fits=tuple(fits),
    )
