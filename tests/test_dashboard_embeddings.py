"""The Embeddings page's logic without a browser: neighbours by cosine (gensim is the oracle),
the PCA map (an eigendecomposition of the covariance is the oracle), cosine distances, tables
from checkpoints and saved word2vec vectors, only from the roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser import make_tiny_vectors, shared_tiny_runs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flowgraph.app.dashboard.embeddings import (
    cosine_distances,
    parse_tokens,
    pca_2d,
    table_from_checkpoint,
)
from flowgraph.app.dashboard.figures import make_distance_heatmap_figure, make_pca_figure
from flowgraph.app.dashboard.state import DashboardState
from flowgraph.app.pages import embeddings as page
from flowgraph.models.heads import load_checkpoint
from flowgraph.models.word2vec import WordVectors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    runs = shared_tiny_runs(tmp_path_factory)
    vectors = tmp_path_factory.mktemp("vectors")
    make_tiny_vectors(vectors)
    return runs, vectors


@pytest.fixture
def state(roots) -> DashboardState:
    return DashboardState(roots[0], [], roots[1])


def test_sources_list_token_and_position_tables_and_vectors(state):
    labels = [o["label"] for o in page.source_options(state)]
    assert labels[-1].endswith("tiny-w2v · word2vec vectors")
    assert sum("token embeddings" in x for x in labels) == 2
    assert sum("position embeddings" in x for x in labels) == 2


def test_neighbours_match_gensim(state, roots):
    gensim = pytest.importorskip("gensim.models")
    wv = WordVectors.load(roots[1] / "tiny-w2v")
    kv = gensim.KeyedVectors(vector_size=wv.vectors.shape[1])
    kv.add_vectors(wv.words, wv.vectors)
    out = page.explore(state, f"w2v:{roots[1] / 'tiny-w2v'}", "w3", 5, "")
    bars = out["neighbours"].data[0]
    expected = kv.most_similar("w3", topn=5)
    assert list(bars.y) == [w for w, _ in expected]
    np.testing.assert_allclose(bars.x, [s for _, s in expected], rtol=1e-5)
    heat = out["distances"].data[0]
    assert list(heat.x) == ["w3"] + [w for w, _ in expected]  # default: query and neighbours
    for i, a in enumerate(heat.x):
        for j, b in enumerate(heat.x):
            assert heat.z[i][j] == pytest.approx(1 - kv.similarity(a, b), abs=1e-5)


def test_checkpoint_tables(state, roots):
    ckpt = load_checkpoint(roots[0] / "tiny-sdpa")
    tok = table_from_checkpoint(ckpt, "tok")
    assert tok.words == ckpt.tokens
    np.testing.assert_allclose(tok.vectors, ckpt.token_embeddings(), rtol=1e-6)
    pos = table_from_checkpoint(ckpt, "pos")
    assert pos.words[:2] == ["p0", "p1"] and pos.vectors.shape[0] == ckpt.n_ctx
    out = page.explore(state, f"pos:{roots[0] / 'tiny-sdpa'}", "p3", 4, "p0 p1 p2")
    assert list(out["distances"].data[0].x) == ["p0", "p1", "p2"]
    assert out["info"] == f"{ckpt.n_ctx} vectors of dimension {ckpt.d_model}"
    with pytest.raises(ValueError, match="source must be"):
        table_from_checkpoint(ckpt, "w2v")


@pytest.mark.parametrize(
    ("source", "query", "tokens", "match"),
    [
        ("tok:{runs}/tiny-sdpa", "9", "", "not in the vocabulary"),
        ("tok:{runs}/tiny-sdpa", "0", "0 9", "not in this table"),
        ("tok:/etc", "0", "", "outside"),
        ("w2v:{runs}/../../", "w1", "", "outside|not found"),
        ("nope", "0", "", "source must be"),
        ("tok:{runs}/tiny-sdpa", "0", " ".join(["0"] * 65), "limit is 64"),
    ],
)
def test_bad_inputs_raise_messages(state, roots, source, query, tokens, match):
    source = source.format(runs=roots[0])
    with pytest.raises((ValueError, KeyError), match=match):
        page.explore(state, source, query, 3, tokens)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(3, 12), st.integers(2, 6)),
        elements=st.floats(-10, 10, allow_nan=False),
    )
)
def test_pca_matches_the_covariance_eigenvectors(x_vd):
    xy_v2, explained = pca_2d(x_vd)
    centred = x_vd - x_vd.mean(axis=0)
    lam, vec = np.linalg.eigh(centred.T @ centred)
    lam, vec = lam[::-1].clip(min=0), vec[:, ::-1]  # descending
    total = lam.sum()
    if total < 1e-9:
        np.testing.assert_allclose(xy_v2, 0, atol=1e-9)
        return
    np.testing.assert_allclose(explained, lam[:2] / total, rtol=1e-6, atol=1e-9)
    third = lam[2] if lam.size > 2 else 0.0
    if lam[1] - third > 1e-6 * total:  # the top-2 subspace is unique: its projection is too
        top = centred @ vec[:, :2]
        np.testing.assert_allclose(xy_v2 @ xy_v2.T, top @ top.T, atol=1e-6 * (1 + total))


def test_cosine_distances_and_token_parsing():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    np.testing.assert_allclose(cosine_distances(x), [[0, 1, 2], [1, 0, 1], [2, 1, 0]], atol=1e-12)
    assert parse_tokens(" a, b  c ", 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="limit is 2"):
        parse_tokens("a b c", 2)


def test_figures_check_their_arrays():
    with pytest.raises(ValueError, match="dist_tt must be"):
        make_distance_heatmap_figure(["a", "b"], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="xy_v2 must be"):
        make_pca_figure(["a"], np.zeros((2, 2)), [0.5, 0.5])
    fig = make_distance_heatmap_figure(["a", "a"], np.zeros((2, 2)))
    assert list(fig.data[0].x) == ["a #0", "a #1"]  # repeats stay apart on a category axis
