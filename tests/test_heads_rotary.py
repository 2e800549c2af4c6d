"""Rotary heads (models.heads.rotary): the rotation against transformers' apply_rotary_pos_emb and
its rope frequencies; the form at an offset, W_q R(Δθ) W_kᵀ, against a Llama model's own
pre-softmax scores (RMSNorm'd layer input, q and k rotated by transformers); the rotation planes
against their defining identities and a head built to attend at a known offset; token distances
at an offset; what a model without rotary embeddings says about offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowgraph.models.heads import HeadWeights, Rotary, load_checkpoint
from flowgraph.models.heads.metrics import qk_form
from flowgraph.models.heads.rotary import (
    rope_inv_freq,
    rotary_from_config,
    rotary_planes,
    rotary_qk_form,
)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def _llama(**extra):
    config = transformers.LlamaConfig(
        hidden_size=extra.pop("hidden_size", 64),
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=48,
        initializer_range=0.2,
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    model = _llama(rope_scaling=dict(LLAMA3))
    directory = tmp_path_factory.mktemp("rotary") / "llama3"
    model.save_pretrained(directory)
    return model, load_checkpoint(directory)


# --- the rotation and its frequencies ----------------------------------------------------------
def test_apply_is_transformers_apply_rotary_pos_emb(llama3):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, ckpt = llama3
    T = 20
    torch.manual_seed(2)
    q_bhtd, k_bhtd = torch.randn(1, 4, T, 16), torch.randn(1, 2, T, 16)
    cos, sin = model.model.rotary_emb(q_bhtd, torch.arange(T)[None])
    q_ref, k_ref = apply_rotary_pos_emb(q_bhtd, k_bhtd, cos, sin)
    cos_tp, sin_tp = ckpt.rotary.cos_sin(torch.arange(T))
    torch.testing.assert_close(
        ckpt.rotary.apply(q_bhtd[0], cos_tp, sin_tp), q_ref[0], rtol=0, atol=0
    )
    torch.testing.assert_close(
        ckpt.rotary.apply(k_bhtd[0], cos_tp, sin_tp), k_ref[0], rtol=0, atol=0
    )


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_rotation_matrix_is_what_apply_does(layout, rotary_dim):
    """R(nθ) as a matrix rotates like apply() at position n, plane (a_i, b_i) as the complex
    number x_a + i·x_b times e^{inθ_i}; pass-through dims (partial rotary) are untouched."""
    rotary = Rotary(10000.0 ** -(np.arange(0, rotary_dim, 2) / rotary_dim), 8, layout=layout)
    rng = np.random.default_rng(0)
    x_td = rng.standard_normal((6, 8))
    pos_t = np.arange(6) * 3
    cos_tp, sin_tp = rotary.cos_sin(torch.from_numpy(pos_t))
    applied = rotary.apply(torch.from_numpy(x_td).float()[None], cos_tp, sin_tp)[0].double()
    a_p, b_p = rotary.plane_dims()
    for t, n in enumerate(pos_t):
        turned_d = rotary.rotation(int(n)) @ x_td[t]
        np.testing.assert_allclose(applied[t].numpy(), turned_d, atol=1e-5)
        z_p = (x_td[t, a_p] + 1j * x_td[t, b_p]) * np.exp(1j * n * rotary.inv_freq_p)
        np.testing.assert_allclose(turned_d[a_p] + 1j * turned_d[b_p], z_p, atol=1e-12)
        np.testing.assert_array_equal(turned_d[rotary_dim:], x_td[t, rotary_dim:])
    r_dd = rotary.rotation(5)
    np.testing.assert_allclose(r_dd.T @ r_dd, np.eye(8), atol=1e-14)  # orthogonal
    np.testing.assert_allclose(rotary.rotation(-2).T @ rotary.rotation(5), rotary.rotation(7))


@pytest.mark.parametrize(
    "scaling",
    [None, {"rope_type": "linear", "factor": 2.5}, LLAMA3],
    ids=["default", "linear", "llama3"],
)
def test_frequencies_are_transformers(scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model = _llama(rope_scaling=scaling and dict(scaling), rope_theta=5000.0)  # it edits dicts
    config = model.config
    kind = (scaling or {"rope_type": "default"})["rope_type"]
    if kind in ROPE_INIT_FUNCTIONS:  # transformers 4 lists "default" there too
        expected, _ = ROPE_INIT_FUNCTIONS[kind](config, None)
    else:
        expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    rotary = rotary_from_config(
        config.to_dict(), head_dim=16, max_position_embeddings=48, where="config.json"
    )
    torch.testing.assert_close(
        torch.tensor(rotary.inv_freq_p, dtype=torch.float32), expected, rtol=0, atol=0
    )
    params = {k: v for k, v in (scaling or {}).items() if k != "rope_type"}
    torch.testing.assert_close(rope_inv_freq(kind, 5000.0, 16, params), expected, rtol=0, atol=0)


def test_partial_rotary_factor_rotates_the_first_dims():
    rotary = rotary_from_config(
        {"rope_theta": 100.0, "partial_rotary_factor": 0.25},
        head_dim=16,
        max_position_embeddings=64,
        where="config.json",
    )
    assert rotary.rotary_dim == 4 and rotary.num_planes == 2
    np.testing.assert_allclose(rotary.inv_freq_p, [1.0, 100.0**-0.5], rtol=1e-7)


# --- the form at an offset ----------------------------------------------------------------------
def _layer_input_and_scores(model, ids: list[int], layer: int):
    """The RMSNorm'd input of layer ``layer``'s attention and its pre-softmax scores (H, T, T),
    q and k rotated by transformers, before the causal mask."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    captured = {}
    attn = model.model.layers[layer].self_attn
    hook = attn.register_forward_hook(
        lambda mod, args, kwargs, out: captured.update(h=kwargs["hidden_states"]),
        with_kwargs=True,
    )
    with torch.no_grad():
        attentions = model(torch.tensor([ids]), output_attentions=True).attentions
        hook.remove()
        h_btc = captured["h"]
        T, d = len(ids), attn.head_dim
        q_bhtd = attn.q_proj(h_btc).view(1, T, -1, d).transpose(1, 2)
        k_bhtd = attn.k_proj(h_btc).view(1, T, -1, d).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h_btc, torch.arange(T)[None])
        q_bhtd, k_bhtd = apply_rotary_pos_emb(q_bhtd, k_bhtd, cos, sin)
        k_bhtd = repeat_kv(k_bhtd, attn.num_key_value_groups)
        s_htt = (q_bhtd @ k_bhtd.transpose(2, 3))[0] * attn.scaling
    return h_btc[0].double().numpy(), s_htt.double().numpy(), attentions[layer][0].double().numpy()


@pytest.mark.parametrize("layer", [0, 1])
def test_form_at_an_offset_gives_the_models_scores(llama3, layer):
    """scale · x_m U(n − m) x_nᵀ is the model's pre-softmax score of query m against key n, for
    every pair (both signs of the offset), with x the layer's RMSNorm'd input; softmax of the
    causal part is the model's attention."""
    model, ckpt = llama3
    ids = [5, 17, 3, 3, 42, 8, 0, 59, 21, 5, 5, 30, 11, 2]
    x_tc, s_htt, attn_htt = _layer_input_and_scores(model, ids, layer)
    T = len(ids)
    for head in range(4):
        forms = {o: ckpt.qk_form(layer, head, offset=o) for o in range(-(T - 1), T)}
        got_tt = np.array(
            [
                [forms[n - m].scale * x_tc[m] @ forms[n - m].matrix @ x_tc[n] for n in range(T)]
                for m in range(T)
            ]
        )
        np.testing.assert_allclose(got_tt, s_htt[head], atol=2e-5 * np.abs(s_htt[head]).max())
        masked_tt = np.where(np.tril(np.ones((T, T), bool)), got_tt, -np.inf)
        p_tt = np.exp(masked_tt - masked_tt.max(-1, keepdims=True))
        np.testing.assert_allclose(p_tt / p_tt.sum(-1, keepdims=True), attn_htt[head], atol=1e-5)
    assert np.abs(forms[-3].matrix - forms[0].matrix).max() > 1e-3  # the offset matters


def test_offset_zero_is_the_plain_form(tmp_path, llama3):
    """R(0) = I: at offset 0 the form is W_q W_kᵀ, scaled rope or not."""
    plain_model = _llama()
    plain_model.save_pretrained(tmp_path / "plain")
    for ckpt in (load_checkpoint(tmp_path / "plain"), llama3[1]):
        weights = ckpt.head_weights(1)
        for head in range(4):
            form = ckpt.qk_form(1, head, offset=0)
            np.testing.assert_array_equal(
                form.matrix, weights.w_q_hcd[head] @ weights.w_k_hcd[head].T
            )
            np.testing.assert_array_equal(form.matrix, qk_form(weights, head).matrix)
            np.testing.assert_array_equal(form.matrix, ckpt.qk_form(1, head).matrix)
            assert form.scale == pytest.approx(16**-0.5)


def test_heads_of_a_key_group_share_w_k(llama3):
    _, ckpt = llama3
    weights = ckpt.head_weights(0)
    assert ckpt.kv_group(0) == ckpt.kv_group(1) == (0, 1) and ckpt.kv_group(3) == (2, 3)
    np.testing.assert_array_equal(weights.w_k_hcd[0], weights.w_k_hcd[1])
    assert not np.array_equal(weights.w_k_hcd[1], weights.w_k_hcd[2])


# --- the rotation planes ------------------------------------------------------------------------
def test_planes_satisfy_their_identities(llama3):
    """G_i is the (a_i, b_i) block of W_qᵀW_k; ‖G_i‖² = 2ρ_i² + ‖A_i‖²; and for every offset
    tr U(Δ) = Σ 2ρ_i cos(Δθ_i − α_i) (no pass-through dims here)."""
    _, ckpt = llama3
    weights = ckpt.head_weights(1)
    for head in range(4):
        planes = ckpt.rotary_planes(1, head)
        g_dd = weights.w_q_hcd[head].T @ weights.w_k_hcd[head]
        for i, (a, b) in enumerate(planes.dims_p2):
            np.testing.assert_array_equal(planes.block_p22[i], g_dd[np.ix_([a, b], [a, b])])
        np.testing.assert_allclose(planes.theta_p, ckpt.rotary.inv_freq_p)
        np.testing.assert_allclose(planes.wavelength_p * planes.theta_p, 2 * np.pi)
        np.testing.assert_allclose(
            (planes.block_p22**2).sum((1, 2)), 2 * planes.scale_p**2 + planes.residual_p**2
        )
        assert planes.passthrough_trace == 0.0 and (planes.scale_p >= 0).all()
        for offset in range(-40, 8):
            trace = np.trace(ckpt.qk_form(1, head, offset=offset).matrix)
            assert planes.trace(offset) == pytest.approx(trace, rel=1e-9, abs=1e-9)
    assert sorted(planes.dims_p2.ravel().tolist()) == list(range(16))


def _head_at_offset(rotary: Rotary, c: int, scale_p: np.ndarray, rotation_p: np.ndarray):
    """A head whose Gram blocks are exactly ρ_i R(α_i): W_q with orthonormal columns and
    W_k = W_q·C, C block-diagonal on the planes."""
    d = rotary.head_dim
    q_cd, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((c, d)))
    c_dd = np.eye(d) * 0.5  # the pass-through dims score 0.5 each
    a_p, b_p = rotary.plane_dims()
    cos_p, sin_p = scale_p * np.cos(rotation_p), scale_p * np.sin(rotation_p)
    c_dd[a_p, a_p], c_dd[b_p, b_p] = cos_p, cos_p
    c_dd[a_p, b_p], c_dd[b_p, a_p] = -sin_p, sin_p
    return HeadWeights("dot", d**-0.5, w_q_hcd=q_cd[None], w_k_hcd=(q_cd @ c_dd)[None])


def test_planes_of_a_head_built_to_look_back_five_tokens():
    """α_i = −5θ_i on every plane: tr U(Δ) peaks at Δ = −5, and rotary_planes reads back the
    scales, rotations (mod 2π), no residual and the pass-through dims' trace."""
    rotary = Rotary(1.0 / 10.0 ** np.arange(3), head_dim=8)  # 3 planes, dims 6 and 7 pass
    scale_p = np.array([2.0, 1.0, 0.5])
    rotation_p = -5 * rotary.inv_freq_p
    weights = _head_at_offset(rotary, 12, scale_p, rotation_p)
    planes = rotary_planes(weights, 0, rotary)
    np.testing.assert_allclose(planes.scale_p, scale_p)
    np.testing.assert_allclose(np.exp(1j * planes.rotation_p), np.exp(1j * rotation_p))
    np.testing.assert_allclose(planes.residual_p, 0, atol=1e-12)
    assert planes.passthrough_trace == pytest.approx(1.0)
    offsets = np.arange(-30, 1)
    traces = [np.trace(rotary_qk_form(weights, 0, rotary, int(o)).matrix) for o in offsets]
    assert offsets[int(np.argmax(traces))] == -5
    np.testing.assert_allclose(traces, [planes.trace(int(o)) for o in offsets])


def test_token_distances_at_an_offset(llama3):
    _, ckpt = llama3
    ids = [3, 9, 9, 41, 0]
    e_tc = ckpt.token_embeddings()[ids]
    diff = e_tc[:, None] - e_tc[None]
    for offset in (0, -4):
        s_cc = ckpt.qk_form(0, 2, offset=offset).symmetric
        expected = np.einsum("abc,cd,abd->ab", diff, s_cc, diff)
        got = ckpt.token_distances(0, 2, ids, offset=offset)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
        assert got[1, 2] == 0.0  # a repeated token
    np.testing.assert_array_equal(
        ckpt.token_distances(0, 2, ids), ckpt.token_distances(0, 2, ids, offset=0)
    )
    assert not np.allclose(
        ckpt.token_distances(0, 2, ids, offset=-4), ckpt.token_distances(0, 2, ids)
    )


def test_offsets_of_a_model_without_rotary_embeddings(tmp_path):
    config = transformers.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8, attn_implementation="eager"
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    ckpt = load_checkpoint(tmp_path / "gpt2")
    assert ckpt.rotary is None and ckpt.num_kv_heads == 2 and ckpt.kv_group(1) == (1,)
    np.testing.assert_array_equal(ckpt.qk_form(0, 1, offset=0).matrix, ckpt.qk_form(0, 1).matrix)
    with pytest.raises(ValueError, match=r"offset=3, but gpt2 .* has no rotary position embedding"):
        ckpt.qk_form(0, 1, offset=3)
    with pytest.raises(ValueError, match="no rotary position embedding"):
        ckpt.token_distances(0, 1, [1, 2], offset=-1)
    with pytest.raises(ValueError, match="no rotary position embedding, so no rotation planes"):
        ckpt.rotary_planes(0, 1)


def test_bad_arguments_are_named(llama3):
    _, ckpt = llama3
    for bad in (1.0, True, "1"):
        with pytest.raises(TypeError, match="offset must be an int"):
            ckpt.qk_form(0, 0, offset=bad)
    with pytest.raises(ValueError, match="head=4 is out of range"):
        ckpt.rotary_planes(0, 4)
    with pytest.raises(ValueError, match="head_dim=16 differs from the rotary's head_dim=8"):
        rotary_planes(ckpt.head_weights(0), 0, Rotary(np.ones(2), 8))
    with pytest.raises(ValueError, match="need rotary_dim=10 ≤ head_dim"):
        Rotary(np.ones(5), 8)
    with pytest.raises(ValueError, match="layout must be one of half, interleaved"):
        Rotary(np.ones(2), 8, layout="gptj")


def test_the_heads_page_rotary_example_runs(tmp_path, monkeypatch):
    """docs/heads.md's rotary excerpt, on a small Llama saved where it looks."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "heads.md").read_text(encoding="utf-8")
    (code,) = re.findall(r'^```python title="a rotary model[^\n]*\n(.*?)^```', text, re.M | re.S)
    _llama().save_pretrained(tmp_path / "models" / "SmolLM-135M")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/heads.md", "exec"), ns)
    assert ns["form"].matrix.shape == (64, 64) and ns["group"] == (0, 1)
    assert ns["busiest"] in ns["planes"].wavelength_p
