"""models.heads.rollout and models.heads.attention_flow: rollout against a float64 loop oracle,
exact flow against networkx's maximum_flow on the same layered graph, causality, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowgraph.models.checkpoint import save_checkpoint
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads import attention_flow, load_checkpoint, mixed_attention, rollout
from flowgraph.models.heads.attention_flow import (
    MEET_SLACK,
    flow_networkx,
    is_causal,
    layered_max_flow,
    meeting_certificate,
    solve_pairs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTOL = 1e-9  # the bound against networkx


def random_attention(
    rng: np.random.Generator, L: int, H: int, T: int, *, causal: bool = False, scale: float = 2.0
) -> np.ndarray:
    """Softmax attention (L, H, T, T) of random scores; causal: keys k ≤ q only."""
    s = rng.normal(size=(L, H, T, T)) * scale
    if causal:
        s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


def rollout_oracle(attn_lhqk: np.ndarray, residual: float, heads: list[int]) -> np.ndarray:
    """Rollout by explicit loops over layers, rows and columns, in float64."""
    L, _, T, _ = attn_lhqk.shape
    out = np.zeros((L + 1, T, T))
    for i in range(T):
        out[0, i, i] = 1.0
    for layer in range(L):
        mixed = np.zeros((T, T))
        for q in range(T):
            for k in range(T):
                mean = sum(float(attn_lhqk[layer, h, q, k]) for h in heads) / len(heads)
                mixed[q, k] = (1 - residual) * mean + (residual if q == k else 0.0)
            total = sum(mixed[q])
            if total > 0:
                mixed[q] = [x / total for x in mixed[q]]
        for q in range(T):
            for k in range(T):
                out[layer + 1, q, k] = sum(mixed[q, j] * out[layer, j, k] for j in range(T))
    return out


def save_gpt(directory: Path, *, n_layer: int, causal: bool, seed: int) -> Path:
    """A small random GPT saved as a flowgraph run (what ``flowgraph train`` writes)."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=5, n_layer=n_layer, n_head=2, d_model=8, n_ctx=12, causal=causal)
    save_checkpoint(
        directory / "checkpoint",
        config={
            "model": config.to_dict(),
            "task": {"name": "sort", "length": 5, "vocab": 5},
            "train": {},
            "step": 1,
        },
        model_state=GPT(config).state_dict(),
    )
    return directory


def networkx_all(mixed_lqk: np.ndarray) -> np.ndarray:
    L, T, _ = mixed_lqk.shape
    pairs = [(layer, q, k) for layer in range(L + 1) for q in range(T) for k in range(T)]
    ref = flow_networkx(mixed_lqk, pairs)
    return np.array([ref[p] for p in pairs]).reshape(L + 1, T, T)


# --- rollout ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("residual", "heads"), [(0.5, "mean"), (0.0, "mean"), (0.8, [0, 2]), (0.3, 1)]
)
def test_rollout_equals_the_loop_oracle(residual, heads):
    rng = np.random.default_rng(1)
    attn = random_attention(rng, 3, 3, 5)
    picked = [0, 1, 2] if heads == "mean" else ([heads] if isinstance(heads, int) else heads)
    np.testing.assert_allclose(
        rollout(attn, residual=residual, heads=heads),
        rollout_oracle(attn, residual, picked),
        rtol=1e-12,
        atol=1e-15,
    )


def test_rollout_renormalises_an_empty_row_to_its_residual():
    attn = np.full((1, 1, 3, 3), 1 / 3)
    attn[0, 0, 1] = 0.0  # query 1 attends nothing (a sparse pattern's empty row)
    roll = rollout(attn, residual=0.5)
    np.testing.assert_allclose(roll[1, 1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(roll[1].sum(-1), 1.0)
    np.testing.assert_allclose(rollout(attn, residual=0.0)[1, 1], 0.0)  # nothing to renormalise
    np.testing.assert_allclose(rollout_oracle(attn, 0.5, [0]), roll, atol=1e-15)


def test_rollout_rows_are_distributions_and_index_zero_is_the_identity():
    attn = random_attention(np.random.default_rng(2), 4, 2, 6)
    roll = rollout(attn)
    assert roll.shape == (5, 6, 6) and roll.dtype == np.float64
    np.testing.assert_array_equal(roll[0], np.eye(6))
    np.testing.assert_allclose(roll.sum(-1), 1.0, atol=1e-12)
    assert (roll >= 0).all()


def test_causal_rollout_and_flow_stay_lower_triangular():
    attn = random_attention(np.random.default_rng(3), 4, 2, 7, causal=True)
    upper = np.triu(np.ones((7, 7), dtype=bool), 1)
    roll, flow = rollout(attn), attention_flow(attn)
    assert (roll[:, upper] == 0).all() and (flow[:, upper] == 0).all()
    assert (roll[1:, ~upper] > 0).all()  # every k ≤ q is reached after layer 1


def test_checkpoint_rollout_is_the_attention_rollout(tmp_path):
    ck = load_checkpoint(save_gpt(tmp_path / "gpt", n_layer=3, causal=True, seed=0))
    ids = ck.tokenize("0 1 2 3 4 0 1")
    roll = rollout(ck, ids)
    np.testing.assert_allclose(roll, rollout_oracle(ck.attention(ids), 0.5, [0, 1]), atol=1e-13)
    assert (roll[:, np.triu(np.ones((7, 7), dtype=bool), 1)] == 0).all()  # a causal model


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"residual": 1.5}, ValueError, "residual must be in [0, 1]"),
        ({"residual": -0.1}, ValueError, "residual must be in [0, 1]"),
        ({"residual": "half"}, TypeError, "residual must be a number"),
        ({"residual": True}, TypeError, "residual must be a number"),
        ({"heads": "max"}, ValueError, "heads must be 'mean'"),
        ({"heads": 2}, ValueError, "heads holds 2, but the model has 2 heads"),
        ({"heads": []}, ValueError, "at least one head"),
        ({"heads": [0.5]}, TypeError, "heads must be 'mean', an int or a list of ints"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, message):
    attn = random_attention(np.random.default_rng(4), 2, 2, 3)
    for fn in (rollout, attention_flow):
        with pytest.raises(error, match=_re(message)):
            fn(attn, **kwargs)


def _re(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("attn", "error", "message"),
    [
        (np.ones((2, 3, 3)), ValueError, "attention must have shape (L, H, T, T)"),
        (np.ones((1, 1, 2, 3)) / 3, ValueError, "attention must have shape (L, H, T, T)"),
        (np.full((1, 1, 2, 2), np.nan), ValueError, "NaN or infinite"),
        (np.array([[[[1.5, -0.5], [0.5, 0.5]]]]), ValueError, "must be ≥ 0"),
        (np.full((1, 1, 2, 2), 0.7), ValueError, "layer 0, head 0, query 0 sums to 1.4"),
        (np.ones((1, 1, 2, 2), dtype=bool), TypeError, "real numeric array"),
        ("attention", TypeError, "ck must be a models.heads.Checkpoint or an (L, H, T, T)"),
    ],
)
def test_bad_attention_is_refused(attn, error, message):
    for fn in (rollout, attention_flow):
        with pytest.raises(error, match=_re(message)):
            fn(attn)


def test_ids_go_with_a_checkpoint_only(tmp_path):
    attn = random_attention(np.random.default_rng(5), 1, 1, 3)
    with pytest.raises(ValueError, match="ids must be None when ck is an attention array"):
        rollout(attn, [0, 1, 2])
    ck = load_checkpoint(save_gpt(tmp_path / "gpt", n_layer=1, causal=True, seed=0))
    with pytest.raises(ValueError, match="ids is required with a Checkpoint"):
        rollout(ck)
    with pytest.raises(ValueError, match="is not a token id"):
        attention_flow(ck, [0, 9])


# --- attention flow ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "L", "T", "causal", "scale"),
    [(0, 3, 5, False, 2.0), (1, 4, 6, False, 4.0), (2, 5, 5, True, 2.0), (3, 4, 7, False, 0.5)],
)
def test_flow_equals_networkx_on_random_attention(seed, L, T, causal, scale):
    attn = random_attention(np.random.default_rng(seed), L, 2, T, causal=causal, scale=scale)
    mixed = mixed_attention(attn)
    ours = attention_flow(attn)
    ref = networkx_all(mixed)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-15)


def test_flow_equals_networkx_with_zero_capacities_and_no_residual():
    """Sparse attention (a local window) with residual 0: many arcs are absent, some pairs are
    joined by no path, and flow must find the paths that zigzag through backward arcs."""
    rng = np.random.default_rng(6)
    L, T = 4, 8
    attn = random_attention(rng, L, 1, T, scale=3.0)
    window = np.abs(np.subtract.outer(np.arange(T), np.arange(T))) <= 1
    attn = np.where(window, attn, 0.0)
    attn /= attn.sum(-1, keepdims=True)
    mixed = mixed_attention(attn, residual=0.0)
    ours = layered_max_flow(mixed)
    np.testing.assert_allclose(ours, networkx_all(mixed), rtol=RTOL, atol=1e-15)
    assert (ours[1][~window] == 0).all()


def test_flow_equals_networkx_on_arbitrary_capacities():
    """The solver is max flow on any capacities ≥ 0, not only stochastic rows."""
    rng = np.random.default_rng(7)
    cap = rng.random((4, 6, 6)) * (rng.random((4, 6, 6)) < 0.6)
    np.testing.assert_allclose(layered_max_flow(cap), networkx_all(cap), rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("causal", [True, False])
def test_flow_of_a_checkpoint_equals_networkx(tmp_path, causal):
    ck = load_checkpoint(save_gpt(tmp_path / "gpt", n_layer=4, causal=causal, seed=1))
    ids = ck.tokenize("3 1 4 1 0 2 2 4")
    flow = attention_flow(ck, ids)
    ref = networkx_all(mixed_attention(ck.attention(ids)))
    np.testing.assert_allclose(flow, ref, rtol=RTOL, atol=1e-15)


def test_closed_forms_equal_the_search():
    """Layers 1 and 2 use closed forms; the compiled search gives the same on those layers."""
    attn = random_attention(np.random.default_rng(8), 3, 2, 9)
    mixed = mixed_attention(attn)
    flow = layered_max_flow(mixed)
    T = 9
    for layer in (1, 2):
        q, k = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
        tasks = np.stack([k.ravel(), np.full(T * T, layer), q.ravel()], axis=1)
        searched = solve_pairs(mixed, tasks).reshape(T, T)
        np.testing.assert_allclose(flow[layer], searched, rtol=1e-12, atol=1e-15)


def test_flow_bounds_and_options():
    attn = random_attention(np.random.default_rng(9), 4, 3, 8)
    mixed = mixed_attention(attn)
    flow = attention_flow(attn)
    np.testing.assert_array_equal(flow[0], np.eye(8))
    np.testing.assert_allclose(flow[1], mixed[0])
    assert (flow <= 1 + 1e-12).all() and (flow >= 0).all()  # a target's in-arcs sum to 1
    source_cut = mixed[0].sum(axis=0)  # capacity out of each source token
    assert (flow[1:] <= source_cut[None, None, :] + 1e-12).all()
    np.testing.assert_allclose(attention_flow(attn, threads=1), flow, rtol=1e-12, atol=1e-15)
    last = attention_flow(attn, layers=4)
    assert np.isnan(last[:4]).all()
    np.testing.assert_allclose(last[4], flow[4], rtol=1e-12)
    normed = attention_flow(attn, normalize=True)
    np.testing.assert_allclose(normed.sum(-1), 1.0)
    np.testing.assert_allclose(normed, flow / flow.sum(-1, keepdims=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layers": 5}, ValueError, "layers holds 5: expected 0 ≤ layer ≤ L = 2"),
        ({"layers": []}, ValueError, "at least one layer"),
        ({"layers": ["1"]}, TypeError, "layers must hold ints"),
        ({"normalize": 1}, TypeError, "normalize must be True or False"),
        ({"threads": 0}, ValueError, "threads must be an int ≥ 1"),
    ],
)
def test_bad_flow_options(kwargs, error, message):
    attn = random_attention(np.random.default_rng(10), 2, 1, 3)
    with pytest.raises(error, match=_re(message)):
        attention_flow(attn, **kwargs)


def test_bad_capacities_and_tasks():
    with pytest.raises(ValueError, match="mixed_lqk must have shape"):
        layered_max_flow(np.ones((2, 3)))
    with pytest.raises(ValueError, match="finite capacities ≥ 0"):
        layered_max_flow(-np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="tasks_n3 rows must be"):
        solve_pairs(np.ones((1, 2, 2)), [[0, 2, 0]])


@pytest.mark.parametrize(("causal", "scale"), [(False, 3.0), (True, 1.0), (False, 0.3)])
def test_flow_equals_networkx_at_a_larger_size_on_sampled_pairs(causal, scale):
    """T = 32, 6 layers: long paths, many augmentations, the union-find skipping of the last
    layers at work; networkx on a sample of pairs across the deep layers."""
    rng = np.random.default_rng(11)
    attn = random_attention(rng, 6, 2, 32, causal=causal, scale=scale)
    mixed = mixed_attention(attn)
    flow = attention_flow(attn)
    pairs = [(int(la), int(q), int(k)) for la, q, k in zip(
        rng.integers(3, 7, 24), rng.integers(0, 32, 24), rng.integers(0, 32, 24), strict=True
    )]  # fmt: skip
    ref = flow_networkx(mixed, pairs)
    for pair, value in ref.items():
        assert flow[pair] == pytest.approx(value, rel=RTOL, abs=1e-15), pair


# --- the meeting certificate ------------------------------------------------------------------
def assert_equals_networkx(mixed: np.ndarray, layer: int, got_qk: np.ndarray) -> None:
    """Every finite entry of ``got_qk`` equals networkx's max flow to (layer, q) from (0, k)."""
    q_idx, k_idx = np.nonzero(np.isfinite(got_qk))
    ref = flow_networkx(mixed, [(layer, int(q), int(k)) for q, k in zip(q_idx, k_idx, strict=True)])
    for (_, q, k), value in ref.items():
        assert got_qk[q, k] == pytest.approx(value, rel=RTOL, abs=1e-15), (layer, q, k)


@pytest.mark.parametrize(("seed", "L", "T", "scale"), [(21, 6, 12, 3.0), (22, 7, 16, 2.0)])
def test_meeting_certificate_settles_dense_attention_and_equals_networkx(seed, L, T, scale):
    """Dense attention: nearly every spread and gather saturates, so the pairs of layers ≥ 6 are
    settled without a per-pair search, and each value is networkx's max flow."""
    attn = random_attention(np.random.default_rng(seed), L, 2, T, scale=scale)
    mixed = mixed_attention(attn)
    flow = layered_max_flow(mixed)
    for layer in range(6, L + 1):
        met = meeting_certificate(mixed, layer)
        settled = np.isfinite(met)
        assert settled.mean() > 0.9, (layer, settled.mean())  # the certificate did the work
        np.testing.assert_array_equal(met[settled], flow[layer][settled])  # layered_max_flow too
        assert_equals_networkx(mixed, layer, met)


def test_meeting_certificate_equals_the_per_pair_search_at_a_larger_size():
    """T = 40, 8 layers: the certified values against the compiled Dinic on every pair."""
    attn = random_attention(np.random.default_rng(22), 8, 3, 40, scale=2.0)
    mixed = mixed_attention(attn)
    met = meeting_certificate(mixed, 8)
    assert np.isfinite(met).mean() > 0.99
    q, k = np.nonzero(np.isfinite(met))
    searched = solve_pairs(mixed, np.stack([k, np.full_like(k, 8), q], axis=1))
    np.testing.assert_allclose(met[q, k], searched, rtol=2 * MEET_SLACK, atol=1e-15)


def bottleneck_capacities(rng: np.random.Generator, L: int, T: int, where: int) -> np.ndarray:
    """Dense random capacities whose layer ``where`` is scaled by 1e-3: the min cut runs through
    the middle, below both the source's and the target's cut."""
    cap = rng.random((L, T, T)) + 0.05
    cap[where - 1] *= 1e-3
    return cap


@pytest.mark.parametrize("where", [2, 5])  # a bottleneck in the spread half, in the gather half
def test_meeting_certificate_declines_a_middle_cut(where):
    """A certificate that cannot be met must say so (NaN), never claim min(c_k, d_q); the
    search then gives networkx's value."""
    cap = bottleneck_capacities(np.random.default_rng(23), 6, 6, where)
    assert np.isnan(meeting_certificate(cap, 6)).all()
    flow = layered_max_flow(cap)
    assert (flow[6] < 0.1 * np.minimum(cap[0].sum(0)[None, :], cap[5].sum(1)[:, None])).all()
    np.testing.assert_allclose(flow, networkx_all(cap), rtol=RTOL, atol=1e-15)


def test_causal_pairs_fall_back_to_the_search_and_equal_networkx():
    """A causal model: the source k cannot spread to positions < k, so uniform meeting fails for
    all but k = 0 / q = T − 1 and the search answers; flow stays lower-triangular."""
    attn = random_attention(np.random.default_rng(24), 6, 2, 9, causal=True)
    mixed = mixed_attention(attn)
    met = meeting_certificate(mixed, 6)
    assert np.isnan(met[:, 1:]).all() and np.isnan(met[:-1, :]).all()
    assert_equals_networkx(mixed, 6, met)
    flow = attention_flow(attn)
    np.testing.assert_allclose(flow, networkx_all(mixed), rtol=RTOL, atol=1e-15)
    assert (flow[:, np.triu(np.ones((9, 9), dtype=bool), 1)] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_flow_equals_networkx_on_random_mixed_graphs(seed):
    """Random graphs across the regimes the certificate must get right or decline: dense or
    sparse, capacities over ten decades (1e-9 .. 10), causal or not, a zero column or row."""
    rng = np.random.default_rng(100 + seed)
    L, T = int(rng.integers(6, 8)), int(rng.integers(4, 9))
    cap = 10.0 ** rng.uniform(-9, 1, (L, T, T))
    cap *= rng.random((L, T, T)) < rng.choice([1.0, 0.7, 0.35])
    cap += np.eye(T) * rng.choice([0.0, 1.0])  # a residual stream, or none
    if seed % 2:
        cap *= np.tril(np.ones((T, T)))  # causal
    if seed % 3 == 0:
        cap[0][:, 0] = 0.0  # source 0 reaches nothing
        cap[-1][T - 1] = 0.0  # target T − 1 is fed by nothing
    np.testing.assert_allclose(layered_max_flow(cap), networkx_all(cap), rtol=RTOL, atol=1e-15)
    for layer in range(6, L + 1):
        assert_equals_networkx(cap, layer, meeting_certificate(cap, layer))


@pytest.mark.parametrize("scale", [1e-7, 1.0, 1e4])
def test_certified_flow_equals_networkx_at_extreme_scales_and_tiny_arcs(scale):
    """Dense graphs the certificate settles, scaled over eleven decades, with a tenth of the
    arcs at 1e-12 of the rest: the certified values still equal networkx's."""
    rng = np.random.default_rng(30)
    L, T = 6, 10
    cap = rng.random((L, T, T)) + 2 * np.eye(T)
    cap = np.where(rng.random((L, T, T)) < 0.1, cap * 1e-12, cap) * scale
    met = meeting_certificate(cap, L)
    assert np.isfinite(met).mean() > 0.5  # the certificate, not the search, is under test
    assert_equals_networkx(cap, L, met)
    np.testing.assert_allclose(layered_max_flow(cap, layers=L)[L], networkx_all(cap)[L], rtol=RTOL)


@pytest.mark.parametrize(
    ("layer", "error", "message"),
    [
        (5, ValueError, "layer must be in [6, L = 7] for a meeting certificate, got 5"),
        (8, ValueError, "layer must be in [6, L = 7] for a meeting certificate, got 8"),
        (True, TypeError, "layer must be an int, got True"),
        (6.0, TypeError, "layer must be an int, got 6.0"),
    ],
)
def test_bad_meeting_layer(layer, error, message):
    with pytest.raises(error, match=_re(message)):
        meeting_certificate(np.ones((7, 3, 3)) / 3, layer)


@pytest.mark.parametrize("name", ["rollout", "attention_flow"])
def test_module_doctests_run(name) -> None:
    import doctest
    import importlib

    module = importlib.import_module(f"flowgraph.models.heads.{name}")  # not the function
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --- the causal restriction to positions k..q ----------------------------------------------------
def all_search_tasks(L: int, T: int, layers: range) -> np.ndarray:
    """Every (k, layer, q) with k ≤ q for the given target layers."""
    q_g, k_g = np.nonzero(np.tril(np.ones((T, T), dtype=bool)))
    return np.concatenate(
        [np.stack([k_g, np.full_like(k_g, layer), q_g], axis=1) for layer in layers]
    )


@pytest.mark.parametrize(
    ("seed", "L", "T", "scale"),
    [(30, 3, 12, 2.0), (31, 6, 17, 4.0), (32, 8, 24, 1.0), (33, 12, 40, 2.0), (34, 5, 40, 0.3)],
)
def test_causal_restricted_search_equals_networkx_and_the_unrestricted_search(seed, L, T, scale):
    """Random causal attention: the search on positions k..q (the default on causal capacities)
    equals the search on the whole graph and networkx (on a sample of pairs at the larger
    sizes); pairs k > q are 0."""
    rng = np.random.default_rng(seed)
    mixed = mixed_attention(random_attention(rng, L, 2, T, causal=True, scale=scale))
    assert is_causal(mixed) and not is_causal(mixed.transpose(0, 2, 1))
    tasks = all_search_tasks(L, T, range(max(1, L - 2), L + 1))
    restricted = solve_pairs(mixed, tasks)  # detected as causal
    np.testing.assert_array_equal(restricted, solve_pairs(mixed, tasks, restrict=True))
    whole = solve_pairs(mixed, tasks, restrict=False)
    np.testing.assert_allclose(restricted, whole, rtol=RTOL, atol=1e-15)
    n_ref = len(tasks) if T <= 17 else 40
    sample = rng.choice(len(tasks), n_ref, replace=False)
    ref = flow_networkx(
        mixed, [(int(tasks[i, 1]), int(tasks[i, 2]), int(tasks[i, 0])) for i in sample]
    )
    for i, value in zip(sample, ref.values(), strict=True):
        assert restricted[i] == pytest.approx(value, rel=RTOL, abs=1e-15), tasks[i]
    above = np.array([[T - 1, L, 0], [3, L, 2]])
    assert (solve_pairs(mixed, above) == 0).all()
    flow = layered_max_flow(mixed, layers=L)[L]
    np.testing.assert_allclose(flow[tasks[tasks[:, 1] == L, 2], tasks[tasks[:, 1] == L, 0]],
                               restricted[tasks[:, 1] == L], rtol=RTOL, atol=1e-15)  # fmt: skip
    assert (flow[np.triu(np.ones((T, T), dtype=bool), 1)] == 0).all()


def test_causal_flow_of_every_layer_equals_networkx_with_sparse_and_tiny_capacities():
    """Causal capacities over decades with zeros below the diagonal too (dead arcs inside the
    window): every layer of the restricted path against networkx, every pair."""
    rng = np.random.default_rng(35)
    L, T = 5, 10
    cap = 10.0 ** rng.uniform(-9, 1, (L, T, T)) * (rng.random((L, T, T)) < 0.5)
    cap *= np.tril(np.ones((T, T)))
    assert is_causal(cap)
    np.testing.assert_allclose(layered_max_flow(cap), networkx_all(cap), rtol=RTOL, atol=1e-15)


def test_restrict_is_refused_on_bidirectional_capacities():
    mixed = mixed_attention(random_attention(np.random.default_rng(36), 3, 2, 6))
    assert not is_causal(mixed)
    with pytest.raises(ValueError, match="restrict=True needs causal capacities"):
        solve_pairs(mixed, [[0, 3, 5]], restrict=True)
    with pytest.raises(TypeError, match="restrict must be True, False or None"):
        solve_pairs(mixed, [[0, 3, 5]], restrict=1)
