"""``stack``: the three attention modes against their definitions, and ``check`` on stacks against
the brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import brute_check, random_masks

import flowgraph as fg


def masks_of(p: fg.Pattern) -> list[np.ndarray]:
    return [p.dense(s) for s in range(p.num_steps)]


def union(masks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros_like(masks[0])
    for m in masks:
        out = out | m
    return out


def expected_layers(base: list[np.ndarray], layers: int, mode: str, heads: int | None):
    """The definitions: interleave i → step i mod p; merged → the union of all steps;
    heads → the union of steps h mod p over heads h < heads (default: one head per step)."""
    p = len(base)
    if mode == "interleave":
        return [base[i % p] for i in range(layers)]
    if mode == "merged":
        return [union(base)] * layers
    heads = p if heads is None else heads
    return [union([base[h % p] for h in range(heads)])] * layers


BASES = [
    fg.strided(12, stride=3),
    fg.fixed(10, stride=4, summary=2, causal=False),
    fg.ltr(9, stride=3),
    fg.star(7, hub=2),
    fg.from_masks(np.random.default_rng(0).random((3, 8, 8)) < 0.3, causal=True),
]


@pytest.mark.parametrize("layers", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("base", BASES, ids=lambda p: f"{p.name}-{p.num_steps}")
def test_interleave_uses_step_i_mod_p(base, layers):
    s = fg.stack(base, layers=layers, mode="interleave")
    assert (s.n, s.causal, s.num_steps) == (base.n, base.causal, layers)
    got = masks_of(s)
    for i, m in enumerate(expected_layers(masks_of(base), layers, "interleave", None)):
        np.testing.assert_array_equal(got[i], m, err_msg=f"layer {i}")


@pytest.mark.parametrize("layers", [1, 2, 4])
@pytest.mark.parametrize("base", BASES, ids=lambda p: f"{p.name}-{p.num_steps}")
def test_merged_uses_the_union_in_every_layer(base, layers):
    s = fg.stack(base, layers=layers, mode="merged")
    assert s.num_steps == layers
    for i, m in enumerate(expected_layers(masks_of(base), layers, "merged", None)):
        np.testing.assert_array_equal(s.dense(i), m, err_msg=f"layer {i}")


@pytest.mark.parametrize("heads", [None, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("base", BASES, ids=lambda p: f"{p.name}-{p.num_steps}")
def test_heads_use_the_union_of_steps_h_mod_p(base, heads):
    s = fg.stack(base, layers=3, mode="heads", heads=heads)
    assert s.num_steps == 3
    assert s.params["heads"] == (base.num_steps if heads is None else heads)
    for i, m in enumerate(expected_layers(masks_of(base), 3, "heads", heads)):
        np.testing.assert_array_equal(s.dense(i), m, err_msg=f"layer {i}")


def test_heads_with_one_head_per_step_equals_merged():
    base = fg.fixed(16, stride=4)
    assert fg.stack(base, 3, mode="heads") == fg.stack(base, 3, mode="merged")


def test_default_mode_is_interleave():
    base = fg.strided(16, stride=4)
    assert fg.stack(base, 4) == fg.stack(base, 4, mode="interleave")


def test_stack_name_and_params():
    base = fg.fixed(16, stride=4, summary=2)
    s = fg.stack(base, layers=4, mode="merged")
    assert s.name == "fixed×4/merged"
    assert s.params == {"stride": 4, "summary": 2, "base": "fixed", "layers": 4, "mode": "merged"}
    assert base.params == {"stride": 4, "summary": 2}  # the base pattern is untouched


@settings(max_examples=80, deadline=None)
@given(
    drawn=random_masks(max_n=32, max_steps=3),
    layers=st.integers(1, 5),
    mode=st.sampled_from(["interleave", "merged", "heads"]),
    heads=st.integers(1, 4),
)
def test_check_on_random_stacks_matches_brute_force(drawn, layers, mode, heads):
    masks, causal = drawn
    s = fg.stack(
        fg.from_masks(masks, causal=causal),
        layers=layers,
        mode=mode,
        heads=heads if mode == "heads" else None,
    )
    layer_masks = expected_layers(masks, layers, mode, heads if mode == "heads" else None)
    r, b = fg.check(s), brute_check(layer_masks, causal)
    assert (r.full_information, r.missing_pairs, r.witness) == (
        b.full_information,
        b.missing_pairs,
        b.witness,
    )
    assert (r.reached, r.edges, r.in_degree, r.empty_rows) == (
        b.reached,
        b.edges,
        b.in_degree,
        b.empty_rows,
    )
    assert r.causality_violations == b.causality_violations


@pytest.mark.parametrize("mode", ["interleave", "merged", "heads"])
def test_fixed_stacked_over_four_layers_matches_brute_force(mode):
    base = fg.fixed(64, stride=8)
    s = fg.stack(base, layers=4, mode=mode)
    r = fg.check(s)
    b = brute_check(expected_layers(masks_of(base), 4, mode, None), True)
    assert (r.full_information, r.missing_pairs, r.witness, r.reached) == (
        b.full_information,
        b.missing_pairs,
        b.witness,
        b.reached,
    )
    assert r.num_steps == 4 and r.edges == b.edges


def test_fixed_interleave_keeps_the_hole_merged_closes_it():
    # interleave ends on step 2, where query 0 attends nothing; the union keeps the diagonal
    base = fg.fixed(64, stride=8)
    assert not fg.check(fg.stack(base, 4, mode="interleave")).full_information
    assert fg.check(fg.stack(base, 2, mode="merged")).full_information
    assert not fg.check(fg.stack(base, 1, mode="merged")).full_information
