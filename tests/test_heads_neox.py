"""models.heads on GPT-NeoX / Pythia Hugging Face directories: attention equal to transformers'
eager output_attentions on small random-weight GPTNeoXForCausalLM models (parallel residual on
and off, partial rotary 0.25/0.5/1, no attention biases, tied embeddings, the old rotary_pct /
rotary_emb_base config keys), the per-head fused query_key_value in head_weights, the rotary form
at an offset against the model's own pre-softmax scores, and the errors for what is not read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_models import edit_config as _edit_config
from hf_models import perturb_norms_and_biases
from hf_models import reference_attention as _reference

from flowgraph.models import CheckpointError
from flowgraph.models.heads import load_checkpoint
from flowgraph.models.heads.hf import MODEL_TYPES

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 40
IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]


def _model(
    *, rotary: float = 0.25, width: int = 64, heads: int = 4, rope: dict | None = None, **extra
):
    config = transformers.GPTNeoXConfig(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        intermediate_size=96,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        initializer_range=0.2,  # far from uniform attention, so the comparison means something
        rope_parameters=rope
        or {"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": rotary},
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).eval()
    perturb_norms_and_biases(model, "layernorm")
    return model


CASES = {  # name: (build, rotary_dim)
    "pythia-parallel": (lambda: _model(), 4),
    "sequential-residual": (lambda: _model(use_parallel_residual=False), 4),
    "half-rotary-no-bias": (lambda: _model(rotary=0.5, attention_bias=False), 8),
    "full-rotary-tied": (lambda: _model(rotary=1.0, tie_word_embeddings=True), 16),
    "linear-rope": (
        lambda: _model(
            rope={
                "rope_type": "linear",
                "factor": 3.0,
                "rope_theta": 100.0,
                "partial_rotary_factor": 0.5,
            }
        ),
        8,
    ),
    "six-heads": (lambda: _model(width=48, heads=6, use_parallel_residual=False), 2),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    build, rotary_dim = CASES[case]
    model = build()
    model.save_pretrained(tmp_path / case)
    ckpt = load_checkpoint(tmp_path / case)
    config = model.config
    assert ckpt.kind == "gpt_neox" and ckpt.attention_kind == "dot" and ckpt.causal
    assert ckpt.num_layers == 2 and ckpt.num_heads == config.num_attention_heads
    assert ckpt.head_dim == config.hidden_size // ckpt.num_heads and ckpt.n_ctx == N_CTX
    assert ckpt.parallel_residual == config.use_parallel_residual
    assert ckpt.rotary.rotary_dim == rotary_dim
    expected = _reference(model, IDS)
    assert expected[:, :, 3:].max() > 0.5  # peaked rows: a wrong scale or rotation would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (2, ckpt.num_heads, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(N_CTX)]
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    np.testing.assert_array_equal(
        ckpt.token_embeddings(), model.gpt_neox.embed_in.weight.detach().double().numpy()
    )


def test_parallel_residual_is_what_makes_it_match(tmp_path):
    """The same weights read with use_parallel_residual flipped give other attention in layer 1
    (the comparison above could fail if the flag were ignored)."""
    model = _model()
    model.save_pretrained(tmp_path / "p")
    parallel = load_checkpoint(tmp_path / "p").attention(IDS)
    _edit_config(tmp_path / "p", use_parallel_residual=False)
    sequential = load_checkpoint(tmp_path / "p").attention(IDS)
    np.testing.assert_array_equal(parallel[0], sequential[0])
    assert np.abs(parallel[1] - sequential[1]).max() > 1e-3


def test_old_config_keys_rotary_pct_and_rotary_emb_base(tmp_path):
    """Pythia's config.json (before transformers 5) says rotary_pct and rotary_emb_base; with
    neither, GPTNeoXConfig's defaults (0.25, 10000) apply."""
    model = _model(rotary=0.5)
    model.save_pretrained(tmp_path / "old")
    _edit_config(tmp_path / "old", rope_parameters=None, rotary_pct=0.5, rotary_emb_base=100.0)
    ckpt = load_checkpoint(tmp_path / "old")
    assert ckpt.rotary.rotary_dim == 8
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0)
    default = _model(rotary=0.25)
    default.config.rope_parameters["rope_theta"] = 10000.0
    default = transformers.GPTNeoXForCausalLM(default.config).eval()
    default.load_state_dict(_model(rotary=0.25).state_dict())
    default.save_pretrained(tmp_path / "bare")
    _edit_config(tmp_path / "bare", rope_parameters=None)
    ckpt = load_checkpoint(tmp_path / "bare")
    assert ckpt.rotary.rotary_dim == 4
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(default, IDS), atol=1e-5, rtol=0)


def test_head_weights_split_the_fused_per_head_layout(tmp_path):
    """query_key_value's rows are [h, (q, k, v), d]: head h's query rows are 3dh … 3dh + d − 1
    and its key rows the next d (not GPT-2's q|k|v blocks)."""
    model = _model()
    model.save_pretrained(tmp_path / "w")
    ckpt = load_checkpoint(tmp_path / "w")
    w = model.gpt_neox.layers[1].attention.query_key_value.weight.detach().double().numpy()
    weights = ckpt.head_weights(1)
    d = 16
    assert weights.scale == pytest.approx(d**-0.5)
    assert weights.w_q_hcd.shape == weights.w_k_hcd.shape == (4, 64, d)
    for h in range(4):
        np.testing.assert_array_equal(weights.w_q_hcd[h], w[3 * d * h : 3 * d * h + d].T)
        np.testing.assert_array_equal(weights.w_k_hcd[h], w[3 * d * h + d : 3 * d * h + 2 * d].T)
    assert ckpt.position_embeddings() is None


@pytest.mark.parametrize("layer", [0, 1])
def test_form_at_an_offset_gives_the_models_scores(tmp_path, layer):
    """scale · x_m U(n − m) x_nᵀ is the model's pre-softmax score of query m against key n with
    the query_key_value bias removed (the form leaves biases out), x the layer's LayerNorm'd
    input and q, k rotated by transformers (partial rotary: 4 of 16 dims rotate)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    model = _model()
    model.save_pretrained(tmp_path / "f")
    ckpt = load_checkpoint(tmp_path / "f")
    ids = [5, 17, 3, 3, 42, 8, 0, 59, 21, 5]
    T, H, d = len(ids), 4, 16
    attn = model.gpt_neox.layers[layer].attention
    captured = {}
    hook = attn.register_forward_hook(
        lambda mod, args, kwargs, out: captured.update(h=kwargs.get("hidden_states", args[0])),
        with_kwargs=True,
    )
    with torch.no_grad():
        model(torch.tensor([ids]))
        hook.remove()
        h_btc = captured["h"]
        qkv = F.linear(h_btc, attn.query_key_value.weight).view(1, T, H, 3 * d).transpose(1, 2)
        q_bhtd, k_bhtd, _ = qkv.chunk(3, dim=-1)
        cos, sin = model.gpt_neox.rotary_emb(h_btc, torch.arange(T)[None])
        q_bhtd, k_bhtd = apply_rotary_pos_emb(q_bhtd, k_bhtd, cos, sin)
        s_htt = (q_bhtd @ k_bhtd.transpose(2, 3))[0].double().numpy() * attn.scaling
    x_tc = h_btc[0].double().numpy()
    for head in range(H):
        forms = {o: ckpt.qk_form(layer, head, offset=o) for o in range(-(T - 1), T)}
        got_tt = np.array(
            [
                [forms[n - m].scale * x_tc[m] @ forms[n - m].matrix @ x_tc[n] for n in range(T)]
                for m in range(T)
            ]
        )
        np.testing.assert_allclose(got_tt, s_htt[head], atol=2e-5 * np.abs(s_htt[head]).max())
    assert np.abs(forms[-3].matrix - forms[0].matrix).max() > 1e-3  # the offset matters
    planes = ckpt.rotary_planes(layer, 0)
    assert planes.theta_p.size == 2 and planes.passthrough_trace != 0.0


def test_tied_embeddings_stored_only_as_the_lm_head(tmp_path):
    model = _model(tie_word_embeddings=True)
    directory = tmp_path / "tied"
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    state = {k: v for k, v in model.state_dict().items() if k != "gpt_neox.embed_in.weight"}
    state["embed_out.weight"] = model.gpt_neox.embed_in.weight.detach().clone()
    state.pop("lm_head.weight", None)
    torch.save(state, directory / "pytorch_model.bin")
    np.testing.assert_allclose(
        load_checkpoint(directory).attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0
    )
    _edit_config(directory, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match=r"tensor embed_in\.weight missing"):
        load_checkpoint(directory)


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
            r"rope type 'dynamic' .* is not supported; supported: default, linear, llama3",
        ),
        (
            {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.01}},
            r"partial_rotary_factor=0.01 × head_dim=16 gives rotary_dim=0",
        ),
        ({"use_parallel_residual": "yes"}, "use_parallel_residual must be true or false"),
        ({"num_attention_heads": 5}, "hidden_size=64 is not a multiple of num_attention_heads=5"),
        ({"num_hidden_layers": 3}, r"tensor layers\.2\.attention\.query_key_value\.weight"),
        ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
        ({"intermediate_size": 95}, "intermediate_size"),
    ],
)
def test_bad_configs_are_named(tmp_path, changes, match):
    _model().save_pretrained(tmp_path / "bad")
    _edit_config(tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad")


def test_the_unsupported_architecture_error_lists_gpt_neox(tmp_path):
    _model().save_pretrained(tmp_path / "x")
    _edit_config(tmp_path / "x", model_type="gptj", architectures=["GPTJForCausalLM"])
    with pytest.raises(
        CheckpointError, match=r"model_type='gptj' .* supported: .*gpt_neox"
    ) as info:
        load_checkpoint(tmp_path / "x")
    assert "(GPTJForCausalLM) is not supported" in str(info.value)
    for supported in MODEL_TYPES:
        assert supported in str(info.value)


def test_the_loader_does_not_import_transformers(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(tmp_path / 'm')!r}); c.attention([1, 2, 3]); c.qk_form(0, 0);"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"
