"""The Heads page's logic without a browser, on two tiny trained runs (a dot-product and a
metric sorter): every number is the one ``models.heads`` computes, figures come from
``models.plots``, results are cached, and checkpoints open only from the roots."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from browser import shared_tiny_runs

import flowgraph as fg
from flowgraph.app.dashboard import limits
from flowgraph.app.dashboard.state import DashboardState, Prefetcher
from flowgraph.app.pages import heads as page
from flowgraph.app.pages.patterns import build_pattern
from flowgraph.models.heads import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_tiny_runs(tmp_path_factory)


@pytest.fixture
def state(runs) -> DashboardState:
    return DashboardState(runs, [], None)


def test_the_listing_offers_both_runs(state, runs):
    options = state.checkpoint_options()
    assert [o["label"] for o in options] == [
        f"{runs.name}/tiny-metric",
        f"{runs.name}/tiny-sdpa",
    ]


@pytest.mark.parametrize("name", ["tiny-metric", "tiny-sdpa"])
def test_head_figures_show_the_checkpoints_own_numbers(state, runs, name):
    ckpt = load_checkpoint(runs / name)
    ids = page.default_ids(ckpt)
    out = page.head_figures(state, name, 1, 1, "model", list(page.PARTS), "", "text", False)
    form = ckpt.qk_form(1, 1, "model")
    np.testing.assert_allclose(out["form"].data[0].z, form.matrix)
    np.testing.assert_allclose(out["form"].data[2].z, form.antisymmetric)
    assert out["symmetry"] == pytest.approx(form.symmetry)
    np.testing.assert_allclose(out["spectrum"].data[0].y, form.eigenvalues)
    np.testing.assert_array_equal(out["ids"], ids)
    np.testing.assert_allclose(out["distances"].data[0].z, ckpt.token_distances(1, 1, ids))
    np.testing.assert_allclose(out["attention"].data[0].z, ckpt.attention(ids)[1, 1])
    if name == "tiny-metric":
        assert out["symmetry"] == pytest.approx(1.0)
        head = page.head_figures(state, name, 0, 1, "head", ["matrix"], "", "text", False)
        np.testing.assert_allclose(head["form"].data[0].z, ckpt.qk_form(0, 1, "head").matrix)
    else:
        with pytest.raises(ValueError, match="metric heads only"):
            page.head_figures(state, name, 0, 1, "head", ["matrix"], "", "text", False)


def test_switching_back_to_a_head_is_served_from_the_cache(state):
    args = ("tiny-metric", 0, 1, "model", ["matrix"], "0 1 2 0", "text", False)
    first = page.head_figures(state, *args)
    hits = state.results.hits
    second = page.head_figures(state, *args)
    assert second["form"] is first["form"] and second["attention"] is first["attention"]
    assert state.results.hits == hits + 2
    assert len(state.checkpoints) == 1  # loaded once


def test_inputs_as_text_or_ids(state, runs):
    ckpt = state.checkpoint("tiny-sdpa")
    np.testing.assert_array_equal(page.input_ids(ckpt, "0 2 1", "text"), ckpt.tokenize("0 2 1"))
    np.testing.assert_array_equal(page.input_ids(ckpt, "0, 2 1", "ids"), [0, 2, 1])
    with pytest.raises(ValueError, match="non-negative integers"):
        page.input_ids(ckpt, "0 x", "ids")
    with pytest.raises(ValueError, match=r"token id 7 is out of range: .* \(ids 0\.\.\d+\)"):
        page.input_ids(ckpt, "0 7", "ids")
    with pytest.raises(ValueError, match="reads at most"):
        page.input_ids(ckpt, " ".join(["1"] * (ckpt.n_ctx + 1)), "ids")
    with pytest.raises(ValueError, match="more than 64 tokens"):
        page.input_ids(ckpt, " ".join(["1"] * 80), "ids")
    with pytest.raises(ValueError, match="limit"):
        page.input_ids(ckpt, "1 " * limits.MAX_TEXT_CHARS, "ids")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        page.input_ids(ckpt, "0 9", "text")


def test_an_unknown_token_id_is_a_message_for_every_figure(state):
    # the labels were looked up before the model checked the ids: an IndexError, shown as
    # "internal error" in the page
    with pytest.raises(ValueError, match="token id 3 is out of range"):
        page.head_figures(state, "tiny-sdpa", 0, 0, "model", ["matrix"], "0 3", "ids", False)
    with pytest.raises(ValueError, match="token id 3 is out of range"):
        page.coverage_figure(state, "tiny-sdpa", "0 1 3", "ids", "fixed", "merged")


def test_a_bad_input_leaves_the_weights_figures(state):
    """The form and spectrum depend on the weights alone: a typo in the input blanked them
    (the form half checked the input too); only the input's figures refuse it."""
    args = ("tiny-sdpa", 0, 1, "model", ["matrix"])
    good = page.head_figures(state, *args, "", "text", False, halves=("form",))
    bad = page.head_figures(state, *args, "0 typo", "text", False, halves=("form",))
    np.testing.assert_array_equal(bad["form"].data[0].z, good["form"].data[0].z)
    np.testing.assert_array_equal(bad["spectrum"].data[0].y, good["spectrum"].data[0].y)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        page.head_figures(state, *args, "0 typo", "text", False, halves=("tokens",))


def test_a_compared_checkpoint_fits_the_page_beside_or_below(state):
    # side_by_side of two forms was 2,706 px wide: the second model's form lay off the page
    args = (0, 0, "model", list(page.PARTS), "", "text", False)
    a = page.head_figures(state, "tiny-metric", *args)
    b = page.head_figures(state, "tiny-sdpa", *args)
    for name in ("form", "spectrum", "distances", "attention"):
        fig = page.pair(a[name], b[name], ("tiny-metric", "tiny-sdpa"))
        assert (fig.layout.width or 0) <= page.PAGE_WIDTH, name
        titles = [n.text for n in fig.layout.annotations if "<b>" in (n.text or "")]
        assert titles == ["<b>tiny-metric</b>", "<b>tiny-sdpa</b>"], name
        assert len(fig.data) == len(a[name].data) + len(b[name].data)
    form = page.pair(a["form"], b["form"], ("tiny-metric", "tiny-sdpa"))
    assert form.layout.height > 1.5 * a["form"].layout.height  # wide figures: one below the other
    cov = page.coverage_figure(state, "tiny-sdpa", "", "text", "fixed", "merged")
    assert (page.pair(cov, cov, ("a", "b")).layout.width or 0) <= page.PAGE_WIDTH


def test_coverage_grid_is_checkpoint_coverage(state, runs):
    ckpt = load_checkpoint(runs / "tiny-sdpa")
    ids = ckpt.tokenize("0 1 2 2 1 0 1 1")
    for pattern_name, mode in (("fixed", "merged"), ("strided", "interleave"), ("ltr", "heads")):
        fig = page.coverage_figure(
            state, "tiny-sdpa", "0 1 2 2 1 0 1 1", "text", pattern_name, mode
        )
        pattern = build_pattern(pattern_name, len(ids), None, 1, ckpt.causal)
        np.testing.assert_allclose(fig.data[0].z, ckpt.coverage(ids, pattern, mode))
    dense = page.coverage_figure(state, "tiny-sdpa", "0 1 2 2", "text", "dense", "merged")
    np.testing.assert_allclose(dense.data[0].z, 1.0)  # a causal model's attention is all k ≤ q
    with pytest.raises(ValueError, match="mode must be one of"):
        page.coverage_figure(state, "tiny-sdpa", "", "text", "fixed", "diagonal")
    assert isinstance(build_pattern("fixed", 8, None, 1, True), fg.Pattern)


def test_checkpoints_outside_the_roots_never_open(state, runs, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs / "tiny-sdpa", outside)  # a real checkpoint, outside the roots
    load_checkpoint(outside)
    (runs / "link-out").symlink_to(tmp_path, target_is_directory=True)
    try:
        for text in (str(outside), "../" + runs.name + "/../elsewhere", "link-out/elsewhere"):
            with pytest.raises(ValueError, match=r"outside|not found"):
                state.checkpoint(text)
    finally:
        (runs / "link-out").unlink()
    assert len(state.checkpoints) == 0


def test_describe_names_the_model(state):
    text = page.describe(state.checkpoint("tiny-metric"))
    assert "metric attention, 2 layers × 2 heads" in text and "causal" in text


def test_prefetch_fills_the_cache_for_every_head(state):
    path = str(state.resolve_checkpoint("tiny-sdpa"))
    page.prefetch_heads(state, path, "model", ["matrix"], "0 1 2", "text", False)
    page.prefetch_heads(state, path, "model", ["matrix"], "0 1 2", "text", False)  # no repeats
    deadline = time.monotonic() + 120
    while state.prefetch.done < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.prefetch.done == 4  # 2 layers × 2 heads, each once
    hits = state.results.hits
    page.head_figures(state, path, 1, 1, "model", ["matrix"], "0 1 2", "text", False)
    assert state.results.hits == hits + 2  # the form and the token figures were ready


def test_prefetcher_runs_each_key_once_and_survives_errors():
    prefetcher = Prefetcher()
    ran = []

    def fail():
        raise RuntimeError("boom")

    assert prefetcher.submit("bad", fail)
    assert prefetcher.submit("a", lambda: ran.append("a"))
    assert not prefetcher.submit("a", lambda: ran.append("again"))
    deadline = time.monotonic() + 30
    while prefetcher.done < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["a"] and prefetcher.done == 2 and prefetcher.idle()


def test_warm_computes_each_pages_first_view(runs):
    from flowgraph.app.dashboard import create_app
    from flowgraph.app.dashboard.app import warm
    from flowgraph.app.dashboard.state import STATE_KEY

    app = create_app(runs, [], None)
    assert warm(app) == [f"{runs.name}/tiny-metric", f"{runs.name}/tiny-sdpa"]
    state = app.server.config[STATE_KEY]
    first = state.checkpoint_options()[0]["value"]
    hits = state.results.hits
    page.head_figures(state, first, 0, 0, "model", list(page.PARTS), "", "text", False)
    page.coverage_figure(state, first, "", "text", "fixed", "merged")
    assert state.results.hits == hits + 3  # form, token figures and coverage were ready


def _options(count: int) -> list[dict[str, object]]:
    return [{"label": str(i), "value": i} for i in range(count)]


def test_a_checkpoint_switch_writes_a_radio_value_only_when_it_must():
    from dash import no_update

    # the value read when the switch left is still valid, and so is every choice the radio
    # offered: a click made meanwhile is valid too, so the answer leaves the radio alone
    assert page.kept_choice(1, _options(2), 2) is no_update
    assert page.kept_choice(0, _options(2), 12) is no_update
    # the new checkpoint lacks some offered choice: a click on it must not stay
    assert page.kept_choice(1, _options(4), 2) == 1
    assert page.kept_choice(3, _options(4), 2) == 0
    # nothing chosen yet, or a value of the wrong type: the first choice
    for value in (None, True, "1", 1.0, -1):
        assert page.kept_choice(value, _options(2), 2) == 0, value
    assert page.kept_choice(1, "junk", 2) == 1  # options unreadable: write the value
    assert page.kept_space("head", "metric") is no_update
    assert page.kept_space("model", "metric") is no_update
    assert page.kept_space("head", "dot") == "model"  # greyed out for dot-product heads
    assert page.kept_space(None, "metric") == "model"
