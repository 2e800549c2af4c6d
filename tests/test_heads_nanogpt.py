"""models.heads on nanoGPT ckpt.pt files written here in nanoGPT's format: attention against an
independent float64 numpy forward of nanoGPT's model, head weights against its scores, the
torch.compile prefix, optional biases, and the meta.pkl vocabulary."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from flowgraph.models.heads import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=11, dropout=0.0)
PARTS = {  # nanoGPT's nn.Linear weights (out, in) per block
    "attn.c_attn": (3, 1),
    "attn.c_proj": (1, 1),
    "mlp.c_fc": (4, 1),
    "mlp.c_proj": (1, 4),
}


def _state(bias: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c, L, V, P = ARGS["n_embd"], ARGS["n_layer"], ARGS["vocab_size"], ARGS["block_size"]

    def rand(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    state = {"transformer.wte.weight": rand(V, c, std=1.0), "transformer.wpe.weight": rand(P, c)}
    for i in range(L):
        pre = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            state[pre + ln + ".weight"] = 1 + rand(c, std=0.1)
            if bias:
                state[pre + ln + ".bias"] = rand(c, std=0.1)
        for part, (o, n) in PARTS.items():
            state[pre + part + ".weight"] = rand(o * c, n * c)
            if bias:
                state[pre + part + ".bias"] = rand(o * c, std=0.1)
        # the causal-mask buffer nanoGPT registers when flash attention is unavailable
        state[pre + "attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
    state["transformer.ln_f.weight"] = torch.ones(c)
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as nanoGPT saves it
    return state


def _write(directory: Path, bias: bool = True, compiled: bool = False, meta: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = _state(bias)
    if compiled:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4, "params": [0, 1]}]},
        "model_args": {**ARGS, "bias": bias},
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.25),
        "config": {"dataset": "shakespeare_char", "compile": compiled},
    }
    torch.save(checkpoint, directory / "ckpt.pt")
    if meta:
        chars = sorted(set("hello world"))
        chars += ["!", "?", "."][: ARGS["vocab_size"] - len(chars)]
        meta_dict = {
            "vocab_size": len(chars),
            "itos": dict(enumerate(chars)),
            "stoi": {ch: i for i, ch in enumerate(chars)},
        }
        (directory / "meta.pkl").write_bytes(pickle.dumps(meta_dict))
    return directory / "ckpt.pt"


def _ln(x, w, b):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + (0 if b is None else b)


def _oracle(state, ids, bias):
    """nanoGPT's forward in float64 numpy: (L, H, T, T) attention and each layer's ln_1 input."""
    s = {k: v.double().numpy() for k, v in state.items()}
    c, H, T = ARGS["n_embd"], ARGS["n_head"], len(ids)
    d = c // H

    def lin(x, name):
        return x @ s[name + ".weight"].T + (s[name + ".bias"] if bias else 0)

    x = s["transformer.wte.weight"][ids] + s["transformer.wpe.weight"][:T]
    attn, inputs = [], []
    for i in range(ARGS["n_layer"]):
        pre = f"transformer.h.{i}."
        h = _ln(x, s[pre + "ln_1.weight"], s.get(pre + "ln_1.bias"))
        inputs.append(h)
        q, k, v = np.split(lin(h, pre + "attn.c_attn"), 3, axis=1)
        q, k, v = (t.reshape(T, H, d).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        attn.append(p)
        x = x + lin((p @ v).transpose(1, 0, 2).reshape(T, c), pre + "attn.c_proj")
        h = _ln(x, s[pre + "ln_2.weight"], s.get(pre + "ln_2.bias"))
        u = lin(h, pre + "mlp.c_fc")
        x = x + lin(0.5 * u * (1 + erf(u / np.sqrt(2))), pre + "mlp.c_proj")
    return np.stack(attn), inputs


IDS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 10]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_attention_equals_a_numpy_nanogpt(tmp_path, bias, compiled):
    ckpt = load_checkpoint(_write(tmp_path / "out", bias=bias, compiled=compiled))
    assert (ckpt.kind, ckpt.attention_kind, ckpt.name, ckpt.causal) == (
        "nanogpt",
        "dot",
        "out",  # a nanoGPT run is named by its folder (issue 20)
        True,
    )
    assert (ckpt.num_layers, ckpt.num_heads, ckpt.head_dim, ckpt.d_model, ckpt.n_ctx) == (
        2,
        4,
        8,
        32,
        16,
    )
    expected, inputs = _oracle(_state(bias), IDS, bias)
    assert expected.max() > 0.5
    np.testing.assert_allclose(ckpt.attention(IDS), expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(
        ckpt.attention(IDS[:5]), _oracle(_state(bias), IDS[:5], bias)[0], atol=2e-5
    )
    # head weights: the oracle's scores without the biases
    state = {k: v.double().numpy() for k, v in _state(bias).items()}
    for layer in range(2):
        w = ckpt.head_weights(layer)
        assert w.scale == pytest.approx(8**-0.5)
        qkv = state[f"transformer.h.{layer}.attn.c_attn.weight"]
        h = inputs[layer]
        for head in range(4):
            q = h @ qkv[8 * head : 8 * head + 8].T
            k = h @ qkv[32 + 8 * head : 32 + 8 * head + 8].T
            np.testing.assert_allclose(
                h @ w.w_q_hcd[head] @ (h @ w.w_k_hcd[head]).T, q @ k.T, rtol=1e-5, atol=1e-4
            )
    np.testing.assert_array_equal(ckpt.token_embeddings(), state["transformer.wte.weight"])
    np.testing.assert_array_equal(ckpt.position_embeddings(), state["transformer.wpe.weight"])


def test_meta_pkl_vocabulary_and_directory_name(tmp_path):
    _write(tmp_path / "out-chars")
    ckpt = load_checkpoint(tmp_path / "out-chars")  # the directory holding ckpt.pt
    assert ckpt.name == "out-chars"
    chars = [*sorted(set("hello world")), "!", "?", "."]
    assert ckpt.tokens == chars
    ids = ckpt.tokenize("hello world!")
    assert "".join(chars[i] for i in ids) == "hello world!"
    with pytest.raises(ValueError, match="'z'"):
        ckpt.tokenize("zoo")
    assert ckpt.attention(ids).shape == (2, 4, 12, 12)


def test_without_meta_the_tokens_are_ids(tmp_path):
    ckpt = load_checkpoint(_write(tmp_path / "bpe", meta=False))
    assert ckpt.tokens == [str(i) for i in range(11)]
    assert ckpt.tokenize("10 2 3").tolist() == [10, 2, 3]


def test_a_file_that_is_not_nanogpt(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a nanoGPT checkpoint: expected a dict with 'model'"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "model_args": {**ARGS, "n_head": 0}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"model_args\['n_head'\] must be an int ≥ 1, got 0"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.fixture(scope="module")
def nanogpt_ckpt(tmp_path_factory):
    return load_checkpoint(_write(tmp_path_factory.mktemp("nano") / "out", bias=True))


@settings(max_examples=25, deadline=None)
@given(ids=st.lists(st.integers(0, ARGS["vocab_size"] - 1), min_size=1, max_size=16))
def test_any_sequence_matches_the_oracle(nanogpt_ckpt, ids):
    expected, _ = _oracle(_state(True), ids, True)
    np.testing.assert_allclose(nanogpt_ckpt.attention(ids), expected, atol=2e-5, rtol=0)


def _repo_layout(root: Path) -> Path:
    """nanoGPT's own layout: out-*/ckpt.pt beside data/<dataset>/meta.pkl."""
    ckpt = _write(root / "out-shakespeare-char")
    (root / "data" / "shakespeare_char").mkdir(parents=True)
    (ckpt.parent / "meta.pkl").rename(root / "data" / "shakespeare_char" / "meta.pkl")
    return ckpt


def test_meta_pkl_is_found_where_nanogpt_puts_it(tmp_path):
    ckpt = load_checkpoint(_repo_layout(tmp_path))  # the file itself
    assert ckpt.name == "out-shakespeare-char"  # the run's folder, not "ckpt"
    assert ckpt.tokens[:3] == sorted(set("hello world"))[:3]
    assert "".join(ckpt.tokens[i] for i in ckpt.tokenize("hello")) == "hello"


def test_meta_can_be_given_and_its_absence_is_named(tmp_path):
    path = _write(tmp_path / "run", meta=False)
    with pytest.raises(ValueError, match=r"no meta.pkl at .*run/meta.pkl.*data/shakespeare_char"):
        load_checkpoint(path).tokenize("hello")
    meta = _repo_layout(tmp_path / "repo").parents[1] / "data" / "shakespeare_char" / "meta.pkl"
    ckpt = load_checkpoint(path, meta=meta)
    assert "".join(ckpt.tokens[i] for i in ckpt.tokenize("hello")) == "hello"
    with pytest.raises(ValueError, match="meta: no such file"):
        load_checkpoint(path, meta=tmp_path / "nope.pkl")


def test_cli_heads_takes_meta(tmp_path):
    from flowgraph.app.cli import main

    path = _write(tmp_path / "run", meta=False)
    meta = _repo_layout(tmp_path / "repo").parents[1] / "data" / "shakespeare_char" / "meta.pkl"
    out = tmp_path / "head.html"
    argv = ["heads", str(path), "--meta", str(meta), "--text", "hello", "--out", str(out)]
    assert main(argv) == 0
    assert out.is_file()
