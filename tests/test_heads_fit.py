"""models.heads.fit_pattern: a model whose attention is a local window ranks local first; mass
kept, density and full information equal brute-force oracles on dense masks; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.models.heads import Checkpoint, fit_pattern, load_checkpoint
from flowgraph.models.heads.fit import pattern_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class SyntheticCheckpoint(Checkpoint):
    """A checkpoint whose attention is given: ``make(T) -> (L, H, T, T)``; text "0 1 2" is ids."""

    kind = "synthetic"

    def __init__(self, make, *, layers: int, heads: int, causal: bool, n_ctx: int = 64):
        super().__init__(
            Path("synthetic"),
            name="synthetic",
            attention_kind="dot",
            num_layers=layers,
            num_heads=heads,
            head_dim=1,
            d_model=heads,
            n_ctx=n_ctx,
            vocab_size=10,
            causal=causal,
        )
        self._make = make

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._make(len(ids_t)))

    def _head_weights(self, layer):  # pragma: no cover - not used here
        raise NotImplementedError

    def _token_embeddings(self):  # pragma: no cover - not used here
        raise NotImplementedError

    def _vocabulary(self):
        tokens = [str(i) for i in range(10)]
        return tokens, lambda text: [int(t) for t in text.split()]


def window_attention(L: int, H: int, window: int, causal: bool, seed: int = 0):
    """Random weights on q − window < k ≤ q (|q − k| < window when bidirectional), 0 elsewhere."""

    def make(T: int) -> np.ndarray:
        rng = np.random.default_rng(seed + T)
        d = np.subtract.outer(np.arange(T), np.arange(T))
        mask = (d >= 0) & (d < window) if causal else np.abs(d) < window
        a = rng.random((L, H, T, T)) * mask
        return a / a.sum(-1, keepdims=True)

    return make


def text(T: int) -> str:
    return " ".join(str(i % 10) for i in range(T))


@pytest.mark.parametrize("causal", [True, False])
def test_local_attention_ranks_local_first(causal):
    ck = SyntheticCheckpoint(window_attention(2, 3, 4, causal), layers=2, heads=3, causal=causal)
    report = fit_pattern(ck, [text(32), text(40)], budget=0.25)
    best = report.best
    assert best is not None and best.label == "local(window=4)"
    assert best.kept == pytest.approx(1.0) and best.within_budget
    assert report.fits[0] is best
    over = [f for f in report.fits if not f.within_budget]
    assert over and all(f.density > 0.25 for f in over)
    assert report.fits.index(over[0]) > report.fits.index(best)  # over budget ranks after
    dense = next(f for f in report.fits if f.name == "dense")
    assert (
        dense.density == pytest.approx(1.0) and dense.full_information and not dense.within_budget
    )
    assert not best.full_information  # 2 layers of a 4-window reach 6 back, not 31


def brute_mask(name: str, params: dict, T: int, causal: bool) -> np.ndarray:
    """Masks from the constructors' definitions (flowgraph/patterns.py docstrings)."""
    q = np.arange(T)[:, None]
    k = np.arange(T)[None, :]
    below = k <= q if causal else np.ones((T, T), dtype=bool)
    if name == "dense":
        return below
    if name == "local":
        w = params["window"]
        return below & ((q - k < w) if causal else (np.abs(q - k) < w))
    if name == "strided":
        s = params["stride"]
        near = (q - k <= s) & (k <= q) if causal else np.abs(q - k) <= s
        return (near | ((q - k) % s == 0)) & below
    if name == "fixed":
        s = params["stride"]
        return ((k // s == q // s) | (k % s == s - 1)) & below
    raise AssertionError(name)


@pytest.mark.parametrize("causal", [True, False])
def test_kept_density_and_full_information_equal_brute_force(causal):
    L, H, T = 3, 2, 24
    rng = np.random.default_rng(1)
    attn = rng.random((L, H, T, T)) ** 6
    if causal:
        attn = np.tril(attn)
    attn /= attn.sum(-1, keepdims=True)
    ck = SyntheticCheckpoint(lambda n: attn, layers=L, heads=H, causal=causal)
    report = fit_pattern(ck, [text(T)], budget=0.5)
    checked = 0
    for fit in report.fits:
        if fit.name not in ("dense", "local", "strided", "fixed"):
            continue
        mask = brute_mask(fit.name, fit.params, T, causal)
        kept_lh = (attn * mask).sum(-1).mean(-1)
        np.testing.assert_allclose(fit.kept_lh, kept_lh, rtol=1e-12)
        assert fit.density == pytest.approx(mask.sum() / (T * (T + 1) / 2 if causal else T * T))
        reach = np.eye(T, dtype=int)
        for _ in range(L):
            reach = ((mask.astype(int) @ reach) > 0).astype(int)
        target = np.tril(np.ones((T, T), dtype=bool)) if causal else np.ones((T, T), dtype=bool)
        assert fit.full_information == bool(reach[target].all()), fit.label
        assert fit.within_budget == (fit.density <= 0.5)
        checked += 1
    assert checked >= 10


def test_grid_follows_causality():
    causal = {name for name, _, _ in pattern_grid(16, True, 16)}
    bidirectional = {name for name, _, _ in pattern_grid(16, False, 16)}
    assert causal == {"dense", "local", "sinks+local", "strided", "fixed"}
    assert bidirectional == causal | {"ltr", "rtl", "star"}
    assert all(p.causal for _, _, p in pattern_grid(16, True, 16))
    sizes = {params.get("window") for name, params, _ in pattern_grid(16, True, 5)}
    assert sizes == {None, 2, 4}  # up to the shortest text


def test_interleave_mode_and_json(tmp_path):
    ck = SyntheticCheckpoint(window_attention(2, 2, 2, True), layers=2, heads=2, causal=True)
    report = fit_pattern(ck, [text(16)], budget=0.3, mode="interleave")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mode"] == "interleave" and data["lengths"] == [16]
    assert data["best"] == report.best.label
    assert len(data["fits"]) == len(report.fits)
    strided = next(f for f in report.fits if f.label == "strided(stride=4)")
    # interleave: layer 0 uses the window step, layer 1 the stride step
    pattern = fg.strided(16, 4)
    per_step = [s.nnz for s in pattern.steps]
    assert strided.density == pytest.approx(sum(per_step) / 2 / (16 * 17 / 2))
    assert "| 1 | " + report.best.label in report.table()


def test_a_trained_size_checkpoint_runs(tmp_path):
    from test_heads_flow import save_gpt

    ck = load_checkpoint(save_gpt(tmp_path / "gpt", n_layer=2, causal=True, seed=0))
    report = fit_pattern(ck, ["0 1 2 3 4 0 1 2", "4 3 2 1"], budget=0.6)
    assert report.lengths == (8, 4)
    for fit in report.fits:
        assert fit.kept_lh.shape == (2, 2) and 0 <= fit.kept <= 1 + 1e-12
    assert next(f for f in report.fits if f.name == "dense").kept == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("texts", "kwargs", "error", "message"),
    [
        ("0 1 2", {}, TypeError, "wrap one text in a list"),
        ([], {}, ValueError, "at least one text"),
        ([3], {}, TypeError, "texts[0] must be a str"),
        (["0"], {}, ValueError, "texts[0] gives 1 tokens; need 2 ≤ T ≤ 64"),
        (["0 1"], {"budget": 0}, ValueError, "budget must be a density in (0, 1]"),
        (["0 1"], {"budget": 1.5}, ValueError, "budget must be a density in (0, 1]"),
        (["0 1"], {"mode": "stacked"}, ValueError, "mode must be one of"),
    ],
)
def test_bad_arguments(texts, kwargs, error, message):
    import re

    ck = SyntheticCheckpoint(window_attention(1, 1, 2, True), layers=1, heads=1, causal=True)
    with pytest.raises(error, match=re.escape(message)):
        fit_pattern(ck, texts, **kwargs)
    with pytest.raises(TypeError, match=r"ck must be a models\.heads\.Checkpoint"):
        fit_pattern(np.zeros((1, 1, 2, 2)), ["0 1"])
