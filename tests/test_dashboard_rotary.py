"""The Heads page on a rotary checkpoint without a browser: a small random-weight Llama with
grouped-query attention (8 query heads, 2 key heads), saved by transformers' save_pretrained.
The offset box's Δ reaches the form, spectrum and token distances (each figure equals
``Checkpoint.qk_form(..., offset=Δ)`` / ``token_distances``), the rotation-planes figure equals
``rotary_planes`` and its trace curve the trace of the form at every offset, the key groups
are named, and a bad offset is a message that names the box; a model without rotary
embeddings hides the box and accepts Δ = 0 only. transformers is a test-only dependency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from browser import shared_tiny_runs

from flowgraph.app.dashboard import create_app
from flowgraph.app.dashboard.figures import NO_RESULT
from flowgraph.app.dashboard.state import DashboardState
from flowgraph.app.pages import heads as page
from flowgraph.models.heads import load_checkpoint

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CTX = 40
HEADS, KV_HEADS = 8, 2  # head dim 64 / 8 = 8: four rotation planes


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    import torch

    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    directory = tmp_path_factory.mktemp("rotary") / "tiny-llama"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_tiny_runs(tmp_path_factory)


@pytest.fixture
def state(llama, runs) -> DashboardState:
    return DashboardState(None, [llama, runs / "tiny-sdpa"], None)


def _args(layer: int = 1, head: int = 5) -> tuple:
    return (layer, head, "model", list(page.PARTS), "3 1 4 1 5 9 2 6", "ids", False)


@pytest.mark.parametrize("offset", [0, -3, 5])
def test_the_offset_reaches_the_form_spectrum_and_distances(state, llama, offset):
    ckpt = load_checkpoint(llama)
    out = page.head_figures(state, str(llama), *_args(), offset=offset)
    form = ckpt.qk_form(1, 5, offset=offset)
    # lighten sends float32 values: compare at float32's precision
    np.testing.assert_allclose(out["form"].data[0].z, form.matrix, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["form"].data[2].z, form.antisymmetric, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["spectrum"].data[0].y, form.eigenvalues, rtol=1e-5, atol=1e-6)
    assert out["symmetry"] == pytest.approx(form.symmetry)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    d2_tt = ckpt.token_distances(1, 5, ids, offset=offset)
    np.testing.assert_allclose(out["distances"].data[0].z, d2_tt, rtol=1e-5, atol=1e-6)
    assert f"Δ={offset}" in out["form"].layout.title.text
    if offset != 0:  # the offset matters: the form at Δ is not the form at 0
        plain = ckpt.qk_form(1, 5, offset=0).matrix
        assert not np.allclose(out["form"].data[0].z, plain, atol=1e-3)


def test_each_offset_is_its_own_cache_entry(state, llama):
    a = page.head_figures(state, str(llama), *_args(), halves=("form",), offset=-2)
    b = page.head_figures(state, str(llama), *_args(), halves=("form",), offset=-2)
    c = page.head_figures(state, str(llama), *_args(), halves=("form",), offset=-1)
    assert a["form"] is b["form"] and c["form"] is not a["form"]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("two", ValueError, r"offset Δ must be an integer in -39\.\.39, got 'two'"),
        (1.5, TypeError, r"offset Δ must be an integer"),
        (True, TypeError, r"offset Δ must be an integer"),
        (40, ValueError, r"offset Δ must be in -39\.\.39, got offset Δ=40"),
        (-400, ValueError, r"offset Δ must be in -39\.\.39"),
    ],
)
def test_a_bad_offset_names_the_control(state, llama, value, error, match):
    ckpt = state.checkpoint(str(llama))
    with pytest.raises(error, match=match):
        page.offset_option(ckpt, value)
    with pytest.raises(error, match=match):
        page.head_figures(state, str(llama), *_args(), offset=value)
    with pytest.raises(error, match=match):
        page.rotary_figure(state, str(llama), 0, 0, value)


def test_typed_offsets_are_read_as_integers(state, llama):
    ckpt = state.checkpoint(str(llama))
    assert page.offset_option(ckpt, None) == 0  # an empty box
    assert page.offset_option(ckpt, "") == 0
    assert page.offset_option(ckpt, -7.0) == -7  # a number box sends -7 as a float sometimes
    assert page.offset_option(ckpt, " -39 ") == -39


def test_a_model_without_rotary_embeddings_accepts_offset_zero_only(state, runs, llama):
    path = str(runs / "tiny-sdpa")
    ckpt = state.checkpoint(path)
    assert page.offset_option(ckpt, None) == 0 and page.offset_option(ckpt, 0) == 0
    with pytest.raises(ValueError, match=r"offset Δ = 2, but .* has no rotary position"):
        page.offset_option(ckpt, 2)
    with pytest.raises(ValueError, match="offset Δ = -1"):
        page.head_figures(state, path, 0, 0, "model", ["matrix"], "", "text", False, offset=-1)
    assert page.rotary_figure(state, path, 0, 0, 0) is None
    assert page.offset_control_state(ckpt) == (page.HIDDEN, True)
    assert page.offset_control_state(None) == (page.HIDDEN, True)
    assert page.offset_control_state(state.checkpoint(str(llama))) == ({}, False)
    assert page.group_note(ckpt, 0) is None  # no grouped-query attention
    text = page.describe(ckpt)
    assert "rotary" not in text and "key heads" not in text


def test_the_planes_figure_is_the_heads_planes(state, llama):
    ckpt = load_checkpoint(llama)
    fig = page.rotary_figure(state, str(llama), 1, 6, -4)
    planes = ckpt.rotary_planes(1, 6)
    assert planes.theta_p.size == 4
    np.testing.assert_allclose(fig.data[0].x, planes.wavelength_p, rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].y, planes.scale_p, rtol=1e-5, atol=1e-7)
    assert fig.layout.xaxis.type == "log"
    # the trace curve against an oracle that does not use the planes: the form's own trace
    delta = np.asarray(fig.data[1].x)
    assert delta[0] == -page.PLANES_SPAN and delta[-1] == 0
    for d in (-page.PLANES_SPAN, -17, -4, -1, 0):
        y = fig.data[1].y[int(np.flatnonzero(delta == d)[0])]
        assert y == pytest.approx(np.trace(ckpt.qk_form(1, 6, offset=d).matrix), rel=1e-5)
    assert list(fig.data[2].x) == [-4]  # the chosen offset, marked
    assert fig.data[2].y[0] == pytest.approx(np.trace(ckpt.qk_form(1, 6, offset=-4).matrix))
    far = page.make_rotary_figure(planes, offset=-90, span=8)
    assert far.data[1].x[0] == -90  # the curve reaches a chosen offset beyond the span
    with pytest.raises(ValueError, match="out of range"):
        page.rotary_figure(state, str(llama), 0, HEADS, 0)


def test_heads_that_share_a_key_head_are_named_as_a_group(state, llama):
    ckpt = state.checkpoint(str(llama))
    note = page.group_note(ckpt, 5)
    assert "8 query heads read 2 key heads" in note
    assert "heads 0–3 share key head 0; heads 4–7 share key head 1" in note
    assert "Head 5 reads key head 1 with heads 4, 6, 7" in note
    for head in range(HEADS):  # every head's group is kv_group's
        others = [h for h in ckpt.kv_group(head) if h != head]
        assert f"with heads {', '.join(map(str, others))}:" in page.group_note(ckpt, head)
    assert "Head" not in page.group_note(ckpt, None)  # before a head is chosen
    text = page.describe(ckpt)
    assert "2 key heads (grouped-query)" in text and "rotary (default, 4 planes)" in text


# --- the callbacks, through the app's own request handler ---------------------------------------
def _components(tree) -> dict[str, object]:
    """Every component of a layout tree with an id, by id."""
    out, todo = {}, [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (list, tuple)):
            todo.extend(node)
            continue
        if getattr(node, "id", None):
            out[node.id] = node
        children = getattr(node, "children", None)
        if children is not None and not isinstance(children, str):
            todo.append(children)
    return out


def _array(value: object) -> np.ndarray:
    """A figure array as the response sends it: a list, or plotly's typed array (base64)."""
    if isinstance(value, dict):
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return flat.reshape(shape if shape else -1).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def _post(app, client, output: str, values: dict[str, object], changed: str) -> dict:
    key = next(k for k in app.callback_map if output in k)
    spec = app.callback_map[key]
    body = {
        "output": key,
        "outputs": [
            {"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1]}
            for part in key.strip(".").split("...")
        ],
        "inputs": [
            {"id": i["id"], "property": i["property"], "value": values[i["id"]]}
            for i in spec["inputs"]
        ],
        "changedPropIds": [changed],
        "state": [
            {"id": s["id"], "property": s["property"], "value": values[s["id"]]}
            for s in spec["state"]
        ],
    }
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:400]
    return response.get_json()["response"]


@pytest.fixture
def served(llama, runs):
    app = create_app(None, [llama, runs / "tiny-sdpa"], None)
    client = app.server.test_client()
    client.get("/")  # the first request sets the callbacks up
    return app, client


def _values(path: object, offset: object) -> dict[str, object]:
    return {
        f"heads-{k}": v
        for k, v in (
            ("ckpt", str(path)),
            ("ckpt2", None),
            ("layer", 1),
            ("head", 5),
            ("space", "model"),
            ("parts", ["matrix"]),
            ("text", "3 1 4"),
            ("input-kind", "ids"),
            ("offset", offset),
            ("positions", []),
        )
    }


def test_the_layout_shows_the_offset_box_for_a_rotary_first_checkpoint(served, llama):
    app, _ = served
    with app.server.app_context():
        parts = _components(page.layout())
    assert parts["heads-offset-control"].style == {}
    assert parts["heads-offset"].disabled is False and parts["heads-offset"].value == 0
    assert parts["heads-rotary-section"].style == {}
    assert "heads 0–3 share key head 0" in parts["heads-groups"].children


def test_the_figures_callbacks_draw_the_chosen_offset(served, llama):
    app, client = served
    ckpt = load_checkpoint(llama)
    values = _values(llama, -6)
    top = _post(app, client, "heads-symmetry.children", values, "heads-offset.value")
    z = _array(top["heads-form"]["figure"]["data"][0]["z"])
    np.testing.assert_allclose(z, ckpt.qk_form(1, 5, offset=-6).matrix, rtol=1e-5, atol=1e-6)
    assert "Δ=-6" in top["heads-form"]["figure"]["layout"]["title"]["text"]
    below = _post(app, client, "heads-distances.figure", values, "heads-offset.value")
    d2 = _array(below["heads-distances"]["figure"]["data"][0]["z"])
    expected = ckpt.token_distances(1, 5, [3, 1, 4], offset=-6)
    np.testing.assert_allclose(d2, expected, rtol=1e-5, atol=1e-6)
    planes = _post(app, client, "heads-rotary.figure", values, "heads-offset.value")
    assert _array(planes["heads-rotary"]["figure"]["data"][2]["x"]).tolist() == [-6]
    assert "Head 5 reads key head 1" in planes["heads-groups"]["children"]


@pytest.mark.parametrize("offset", ["soon", 2.5, 99])
def test_a_bad_offset_is_a_message_naming_the_box(served, llama, offset):
    app, client = served
    values = _values(llama, offset)
    top = _post(app, client, "heads-symmetry.children", values, "heads-offset.value")
    assert "offset Δ must be" in json.dumps(top["heads-message"], ensure_ascii=False)
    assert NO_RESULT in json.dumps(top["heads-form"]["figure"])
    planes = _post(app, client, "heads-rotary.figure", values, "heads-offset.value")
    assert NO_RESULT in json.dumps(planes["heads-rotary"]["figure"])


def test_switching_checkpoint_hides_and_resets_the_box_without_rotary(served, llama, runs):
    app, client = served
    values = {"heads-ckpt": str(runs / "tiny-sdpa"), "heads-offset": -6}
    out = _post(app, client, "heads-offset.disabled", values, "heads-ckpt.value")
    assert out["heads-offset-control"]["style"] == page.HIDDEN
    assert out["heads-offset"] == {"disabled": True, "value": 0}
    assert out["heads-rotary-section"]["style"] == page.HIDDEN
    values["heads-ckpt"] = str(llama)
    out = _post(app, client, "heads-offset.disabled", values, "heads-ckpt.value")
    assert out["heads-offset"] == {"disabled": False}  # a rotary model keeps the typed Δ
    assert out["heads-offset-control"]["style"] == {}
