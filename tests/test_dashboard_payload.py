"""What the dashboard sends the browser: light figures (float32 heatmaps, templates cut to the
trace types present) and plotly.js from a versioned, long-cached, gzipped URL in the page."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flowgraph.app.dashboard import create_app
from flowgraph.app.dashboard.payload import lighten
from flowgraph.app.dashboard.plotlyjs import ONE_YEAR_S, PLOTLY_JS, plotlyjs_route


@settings(max_examples=25, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-1e6, 1e6, allow_nan=False),
    )
)
def test_lighten_keeps_heatmap_values_to_float32_precision(z):
    fig = lighten(go.Figure(go.Heatmap(z=z, name="h"), layout={"template": "plotly_white"}))
    sent = np.asarray(fig.data[0].z)
    assert sent.dtype == np.float32
    np.testing.assert_allclose(sent, z.astype(np.float32))
    assert json.loads(fig.to_json())["data"][0]["z"]["dtype"] == "f4"  # base64-packed


def test_lighten_cuts_the_template_to_the_trace_types_present():
    fig = go.Figure(
        [go.Heatmap(z=[[1, None], [2, 3]]), go.Scatter(x=[1, 2], y=["a", "b"])],
        layout={"template": "plotly_white", "title_text": "t"},
    )
    full = go.Figure(fig)
    fig = lighten(fig)
    kept = fig.layout.template.data.to_plotly_json()
    assert set(kept) == {"heatmap", "scatter"}
    assert kept["heatmap"] == full.layout.template.data.to_plotly_json()["heatmap"]
    assert fig.layout.template.layout == full.layout.template.layout
    assert np.isnan(fig.data[0].z[0][1])  # a gap stays a gap
    assert list(fig.data[1].y) == ["a", "b"]  # labels are not numbers: untouched
    assert len(fig.to_json()) < len(full.to_json())


def test_lighten_refuses_what_is_not_a_figure():
    with pytest.raises(TypeError, match="fig must be a plotly Figure, got dict"):
        lighten({"data": []})


def test_plotlyjs_comes_with_the_page_versioned_cached_and_gzipped():
    client = create_app(None, [], None).server.test_client()
    html = client.get("/").data.decode()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts[0] == plotlyjs_route()  # before Dash's scripts: window.Plotly is there first
    assert re.search(r"plotly-\d+\.\d+\.\d+\.min\.js$", scripts[0])
    preloads = re.findall(r'<link rel="preload" as="script" href="([^"]+)"', html)
    assert preloads and all(client.get(u).status_code == 200 for u in preloads)

    zipped = client.get(scripts[0], headers={"Accept-Encoding": "gzip, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert f"max-age={ONE_YEAR_S}" in zipped.headers["Cache-Control"]
    assert gzip.decompress(zipped.data) == PLOTLY_JS.read_bytes()
    plain = client.get(scripts[0], headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.data == PLOTLY_JS.read_bytes()
    assert f"max-age={ONE_YEAR_S}" in plain.headers["Cache-Control"]
