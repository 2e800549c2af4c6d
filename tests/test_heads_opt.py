"""models.heads on OPT Hugging Face directories: attention equal to transformers' eager
output_attentions on small random-weight OPTForCausalLM models — pre- and post-LayerNorm
(do_layer_norm_before true/false), word_embed_proj_dim ≠ hidden_size (project_in), no biases, no
LayerNorm affine, tied and untied embeddings — the position table's offset of 2, and the errors
for what is not read."""

from __future__ import annotations

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
IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]


def _model(*, width: int = 32, heads: int = 4, **extra):
    config = transformers.OPTConfig(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        ffn_dim=64,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        init_std=0.3,  # far from uniform attention, so the comparison means something
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config).eval()
    perturb_norms_and_biases(model, "layer_norm")
    return model


CASES = {
    "pre-ln": lambda: _model(),
    "post-ln-350m-like": lambda: _model(do_layer_norm_before=False, word_embed_proj_dim=16),
    "projected-untied": lambda: _model(word_embed_proj_dim=24, tie_word_embeddings=False),
    "no-bias-no-affine": lambda: _model(enable_bias=False, layer_norm_elementwise_affine=False),
    "gelu-six-heads": lambda: _model(width=48, heads=6, activation_function="gelu"),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    model = CASES[case]()
    model.save_pretrained(tmp_path / case)
    ckpt = load_checkpoint(tmp_path / case)
    config = model.config
    assert ckpt.kind == "opt" and ckpt.attention_kind == "dot" and ckpt.causal
    assert ckpt.num_layers == 2 and ckpt.num_heads == config.num_attention_heads
    assert ckpt.d_model == config.hidden_size and ckpt.n_ctx == N_CTX
    assert ckpt.pre_norm == config.do_layer_norm_before
    expected = _reference(model, IDS)
    assert expected[:, :, 3:].max() > 0.5  # peaked rows: a wrong scale would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (2, ckpt.num_heads, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(N_CTX)]  # the longest input works, one more is refused
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    with pytest.raises(ValueError, match=f"more than the model's n_ctx={N_CTX}"):
        ckpt.attention([*longest, 0])


def test_layer_norm_placement_is_what_makes_it_match(tmp_path):
    """The same weights read with do_layer_norm_before flipped give other attention."""
    model = _model()
    model.save_pretrained(tmp_path / "m")
    pre = load_checkpoint(tmp_path / "m").attention(IDS)
    _edit_config(tmp_path / "m", do_layer_norm_before=False)
    post = load_checkpoint(tmp_path / "m").attention(IDS)
    assert np.abs(pre - post).max() > 1e-3


def test_positions_are_the_table_from_row_two(tmp_path):
    """Position t reads row t + 2 of embed_positions (OPTLearnedPositionalEmbedding's offset);
    token_embeddings are the table as the layers see it (through project_in)."""
    model = _model(word_embed_proj_dim=16)
    model.save_pretrained(tmp_path / "p")
    ckpt = load_checkpoint(tmp_path / "p")
    decoder = model.model.decoder
    table = decoder.embed_positions.weight.detach().double().numpy()
    np.testing.assert_array_equal(ckpt.position_embeddings(), table[2 : 2 + N_CTX])
    with torch.no_grad():
        projected = decoder.project_in(decoder.embed_tokens.weight).double().numpy()
        np.testing.assert_allclose(ckpt.token_embeddings(), projected, atol=1e-6)
        positions = decoder.embed_positions(torch.ones(1, 5, dtype=torch.long))[0]
    np.testing.assert_array_equal(ckpt.position_embeddings()[:5], positions.double().numpy())
    weights = ckpt.head_weights(1)
    w_q = decoder.layers[1].self_attn.q_proj.weight.detach().double().numpy()
    assert weights.scale == pytest.approx(8**-0.5)
    np.testing.assert_array_equal(weights.w_q_hcd[2], w_q[16:24].T)


def test_tied_embeddings_stored_only_as_the_lm_head(tmp_path):
    model = _model()
    directory = tmp_path / "tied"
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    state = {
        k: v for k, v in model.state_dict().items() if k != "model.decoder.embed_tokens.weight"
    }
    state["lm_head.weight"] = model.model.decoder.embed_tokens.weight.detach().clone()
    torch.save(state, directory / "pytorch_model.bin")
    np.testing.assert_allclose(
        load_checkpoint(directory).attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0
    )
    _edit_config(directory, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match=r"tensor embed_tokens\.weight missing"):
        load_checkpoint(directory)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"do_layer_norm_before": "yes"}, "do_layer_norm_before must be true or false"),
        ({"activation_function": "mish"}, "activation_function='mish' is not supported"),
        ({"max_position_embeddings": 41}, r"max_position_embeddings \+ 2=43"),
        ({"word_embed_proj_dim": 16}, r"tensor project_in\.weight missing"),
        ({"num_attention_heads": 5}, "hidden_size=32 is not a multiple of num_attention_heads=5"),
        ({"num_hidden_layers": 3}, r"tensor layers\.2\.self_attn\.q_proj\.weight missing"),
        ({"enable_bias": 1}, "enable_bias must be true or false"),
    ],
)
def test_bad_configs_are_named(tmp_path, changes, match):
    _model().save_pretrained(tmp_path / "bad")
    _edit_config(tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad")


def test_the_loader_does_not_import_transformers(tmp_path):
    _model(word_embed_proj_dim=16).save_pretrained(tmp_path / "m")
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(tmp_path / 'm')!r}); c.attention([1, 2, 3]); c.qk_form(0, 0);"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"
