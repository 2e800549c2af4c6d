"""models.heads on GPT-Neo Hugging Face directories: attention equal to transformers' eager
output_attentions on small random-weight GPTNeoForCausalLM models — global layers only,
alternating global/local with a window shorter than the text, tied embeddings stored only as
the LM head — the unscaled scores (qk_form's scale is 1), the local window's mask, and the
errors for what is not read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import edit_config as _edit_config
from hf_models import perturb_norms_and_biases
from hf_models import reference_attention as _reference

from flowgraph.models import CheckpointError
from flowgraph.models.heads import load_checkpoint

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 40
WINDOW = 4
IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]


def _model(*, width: int = 32, heads: int = 4, types=None, **extra):
    config = transformers.GPTNeoConfig(
        hidden_size=width,
        num_layers=2,
        num_heads=heads,
        attention_types=types or [[["global"], 2]],
        window_size=WINDOW,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        initializer_range=0.1,  # unscaled scores: 0.1 already gives peaked rows
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.GPTNeoForCausalLM(config).eval()
    perturb_norms_and_biases(model, ".ln_")
    return model


ALTERNATING = [[["global", "local"], 1]]
CASES = {
    "global": lambda: _model(),
    "global-local": lambda: _model(types=ALTERNATING),
    "local-global-six-heads": lambda: _model(
        width=48, heads=6, types=[[["local"], 1], [["global"], 1]], activation_function="gelu"
    ),
    "untied": lambda: _model(types=ALTERNATING, tie_word_embeddings=False),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    model = CASES[case]()
    model.save_pretrained(tmp_path / case)
    ckpt = load_checkpoint(tmp_path / case)
    config = model.config
    assert ckpt.kind == "gpt_neo" and ckpt.attention_kind == "dot" and ckpt.causal
    assert ckpt.num_layers == 2 and ckpt.num_heads == config.num_heads
    assert ckpt.d_model == config.hidden_size and ckpt.n_ctx == N_CTX
    assert ckpt.attention_layers == tuple(config.attention_layers)
    expected = _reference(model, IDS)
    assert expected[:, :, 3:].max() > 0.5  # peaked rows: a wrong scale would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (2, ckpt.num_heads, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(N_CTX)]  # the longest input works, one more is refused
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    with pytest.raises(ValueError, match=f"more than the model's n_ctx={N_CTX}"):
        ckpt.attention([*longest, 0])


def test_local_layers_see_the_query_and_the_window_minus_one_keys_before(tmp_path):
    """A local query q sees exactly the keys q − window_size < k ≤ q (transformers'
    tril ^ tril(-window_size)); its masked entries are exactly 0; a global one sees all k ≤ q."""
    model = _model(types=ALTERNATING)
    model.save_pretrained(tmp_path / "m")
    ckpt = load_checkpoint(tmp_path / "m")
    assert ckpt.window_size == WINDOW and ckpt.sliding_windows == (None, WINDOW)
    got = ckpt.attention(IDS)
    T = len(IDS)
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    np.testing.assert_array_equal(got[0] > 0, np.broadcast_to(k <= q, got[0].shape))
    local = (k <= q) & (k > q - WINDOW)
    np.testing.assert_array_equal(got[1] > 0, np.broadcast_to(local, got[1].shape))
    assert T > WINDOW and local.sum(axis=1).max() == WINDOW


def test_scores_are_unscaled_and_qk_form_has_scale_one(tmp_path):
    """qk_form is W_qʰ W_kʰᵀ with scale 1: x_q M x_kᵀ on the layer's LayerNormed input gives the
    scores whose softmax is layer 0's attention (no 1/√d)."""
    model = _model()
    model.save_pretrained(tmp_path / "m")
    ckpt = load_checkpoint(tmp_path / "m")
    weights = ckpt.head_weights(0)
    assert weights.scale == 1.0
    attn = model.transformer.h[0].attn.attention
    w_q = attn.q_proj.weight.detach().double().numpy()
    np.testing.assert_array_equal(weights.w_q_hcd[2], w_q[16:24].T)
    with torch.no_grad():
        x = model.transformer.wte.weight[IDS] + model.transformer.wpe.weight[: len(IDS)]
        h = model.transformer.h[0].ln_1(x).double().numpy()
    expected = _reference(model, IDS)[0]
    for head in range(ckpt.num_heads):
        form = ckpt.qk_form(0, head)
        assert form.scale == 1.0
        s = h @ form.matrix @ h.T
        s = np.where(np.tril(np.ones_like(s, dtype=bool)), s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        np.testing.assert_allclose(p / p.sum(axis=1, keepdims=True), expected[head], atol=1e-5)
    with pytest.raises(ValueError, match="no rotary position embedding"):
        ckpt.qk_form(0, 0, offset=1)
    np.testing.assert_array_equal(
        ckpt.position_embeddings(), model.transformer.wpe.weight.detach().double().numpy()
    )
    np.testing.assert_array_equal(
        ckpt.token_embeddings(), model.transformer.wte.weight.detach().double().numpy()
    )


def test_tied_embeddings_stored_only_as_the_lm_head(tmp_path):
    model = _model(types=ALTERNATING)
    directory = tmp_path / "tied"
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    state = {k: v for k, v in model.state_dict().items() if k != "transformer.wte.weight"}
    state["lm_head.weight"] = model.transformer.wte.weight.detach().clone()
    torch.save(state, directory / "pytorch_model.bin")
    np.testing.assert_allclose(
        load_checkpoint(directory).attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0
    )
    _edit_config(directory, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match=r"tensor wte\.weight missing"):
        load_checkpoint(directory)


def test_attention_types_decide_the_mask(tmp_path):
    """The same weights read with the layers' types swapped give other attention."""
    model = _model(types=ALTERNATING)
    model.save_pretrained(tmp_path / "m")
    mixed = load_checkpoint(tmp_path / "m").attention(IDS)
    _edit_config(tmp_path / "m", attention_types=[[["global"], 2]])
    full = load_checkpoint(tmp_path / "m").attention(IDS)
    np.testing.assert_array_equal(mixed[0], full[0])
    assert np.abs(mixed[1] - full[1]).max() > 1e-3


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"attention_types": [[["global", "sparse"], 1]]}, "attention_types must be a list"),
        ({"attention_types": [[["global"], 3]]}, r"attention_types .* more than 2 layers"),
        ({"attention_types": [[["global"], 1]]}, r"attention_types .* gives 1 layers"),
        ({"attention_types": "global"}, "attention_types must be a list"),
        ({"attention_types": [[["local"], True], [["global"], 1]]}, "count is not an int"),
        ({"attention_types": [["global", 2]]}, "types are not a list"),
        ({"window_size": 0}, "window_size must be an int ≥ 1, got 0"),
        ({"activation_function": "mish"}, "activation_function='mish' is not supported"),
        ({"num_heads": 5}, "hidden_size=32 is not a multiple of num_heads=5"),
        ({"num_layers": 3}, r"tensor h\.2\.attn\.attention\.q_proj\.weight missing"),
        ({"intermediate_size": 65}, "intermediate_size=65"),
        ({"max_position_embeddings": 41}, "max_position_embeddings=41"),
    ],
)
def test_bad_configs_are_named(tmp_path, changes, match):
    _model(types=ALTERNATING).save_pretrained(tmp_path / "bad")
    _edit_config(tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad")


def test_null_intermediate_size_is_four_times_the_width(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["intermediate_size"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"4·hidden_size \(intermediate_size is null\)=128"):
        load_checkpoint(tmp_path / "m")


def test_the_loader_does_not_import_transformers(tmp_path):
    _model(types=ALTERNATING).save_pretrained(tmp_path / "m")
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(tmp_path / 'm')!r}); c.attention([1, 2, 3]); c.qk_form(0, 0);"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"
