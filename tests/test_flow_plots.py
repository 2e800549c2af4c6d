"""models/heads/flow_plots.py: the layer heatmaps hover with positions and tokens (a repeated
token is told apart), skip layers that were not computed, and refuse what they cannot draw."""

from __future__ import annotations

import numpy as np
import pytest

from flowgraph.models.heads.flow_plots import make_layers_figure, make_sources_figure


def test_layer_heatmaps_hover_with_positions_and_tokens():
    values_lqk = np.random.default_rng(0).random((3, 3, 3))
    values_lqk[1] = np.nan  # layer 1 not computed: left out
    fig = make_layers_figure(values_lqk, ["the", "cat", "the"])
    assert [t.name for t in fig.data] == ["layer 2"]
    trace = fig.data[0]
    assert "customdata[2]" in trace.hovertemplate and "customdata[3]" in trace.hovertemplate
    assert "%{x}" not in trace.hovertemplate and "%{y}" not in trace.hovertemplate
    # cell (query 2, key 0): both tokens read "the", the positions tell them apart
    assert list(trace.customdata[2][0]) == ["the", "the", 2, 0]


def test_nothing_to_draw_is_refused():
    with pytest.raises(ValueError, match="values_lqk has no layer ≥ 1 without NaN"):
        make_layers_figure(np.full((2, 3, 3), np.nan))


def test_sources_bars_compare_shares():
    a_qk = np.full((3, 3), 1 / 3)
    fig = make_sources_figure(a_qk, a_qk, 2 * a_qk, 1, ["a", "b", "c"])
    flow = next(t for t in fig.data if "flow" in t.name)
    assert np.allclose(np.asarray(flow.y, dtype=float), 1 / 3)  # flow divided by its row sum
