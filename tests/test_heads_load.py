"""models.heads on our own runs: load_checkpoint's dispatch and errors, attention probabilities
that rebuild every attention module's output and the GPT's logits, head weights that give the
scores, embeddings, vocabularies, input checks and the attention cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.models.attention import DotProductAttention, QuadraticAttention
from flowgraph.models.checkpoint import CheckpointError, save_checkpoint
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads import Checkpoint, HeadWeights, load_checkpoint
from flowgraph.models.heads.checkpoint import ATTENTION_CACHE_SIZE
from flowgraph.models.heads.flowgraph_run import attention_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CTX = 12
ATTENTION_KIND = {"sdpa": "dot", "metric": "metric", "quadratic": "quadratic"}
# (attention, pattern, pattern_mode, causal, metric parameterisation)
MODELS = [
    ("sdpa", None, "interleave", True, "symmetric"),
    ("sdpa", "strided", "interleave", True, "symmetric"),
    ("sdpa", "ltr", "heads", False, "symmetric"),
    ("metric", None, "interleave", True, "symmetric"),
    ("metric", "fixed", "merged", True, "psd"),
    ("metric", None, "interleave", False, "psd"),
    ("quadratic", None, "interleave", True, "symmetric"),
    ("quadratic", "strided", "heads", True, "symmetric"),
]


def _model(attention, pattern, mode, causal, metric, seed=0, vocab=5) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab,
        n_layer=2,
        n_head=2,
        d_model=16,
        n_ctx=N_CTX,
        attention=attention,
        pattern=pattern,
        pattern_mode=mode,
        causal=causal,
        metric=metric,
    )
    model = GPT(config)
    with torch.no_grad():  # far from the near-uniform init, so every row's softmax is peaked
        for name, p in model.named_parameters():
            if not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.normal_(0.0, 0.5 if p.dim() > 1 else 0.2)
        for block in model.blocks:
            if hasattr(block.attn, "m_packed_hl"):  # a symmetric M that is not PSD
                block.attn.m_packed_hl.normal_(0.0, 1.0)
    return model.eval()


def _save_run(root: Path, model: GPT, task: dict | None = None) -> Path:
    task = task or {"name": "sort", "length": 6, "vocab": model.config.vocab_size}
    save_checkpoint(
        root / "checkpoint",
        config={"model": model.config.to_dict(), "task": task, "train": {}, "step": 1},
        model_state=model.state_dict(),
    )
    return root


def _values(attn, x_bnc: torch.Tensor) -> torch.Tensor:
    """(B, h, T, e) the values each kind of module weighs with its probabilities."""
    B, T, C = x_bnc.shape
    if isinstance(attn, DotProductAttention):
        v_bnc = attn.c_attn(x_bnc).split(C, dim=2)[2]
    elif isinstance(attn, QuadraticAttention):
        v_bnc = attn.c_value(x_bnc)
    else:
        v_bnc = attn.c_p(x_bnc)
    return v_bnc.view(B, T, attn.n_head, -1).transpose(1, 2)


def _rebuild(attn, x_bnc: torch.Tensor, p_bhnn: torch.Tensor) -> torch.Tensor:
    """The module's output from given probabilities: c_proj(heads of p·v, side by side)."""
    B, T, C = x_bnc.shape
    y_bhne = p_bhnn.to(x_bnc.dtype) @ _values(attn, x_bnc)
    return attn.c_proj(y_bhne.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: "-".join(map(str, s)))
def test_probabilities_rebuild_each_module_output(spec):
    model = _model(*spec).double()  # float64: agreement to rounding, not to float32's 1e-5
    torch.manual_seed(1)
    for T in (N_CTX, 7):
        x_bnc = 2.0 * torch.randn(3, T, 16, dtype=torch.float64)
        for block in model.blocks:
            with torch.no_grad():
                p_bhnn = attention_probs(block.attn, x_bnc)
                expected = block.attn(x_bnc)
                torch.testing.assert_close(
                    _rebuild(block.attn, x_bnc, p_bhnn), expected, atol=1e-10, rtol=1e-10
                )
                rows = p_bhnn.sum(-1)
                assert ((rows - 1).abs() < 1e-12).logical_or(rows == 0).all()


def test_probabilities_match_the_gpu_path_of_a_pattern():
    model = _model("metric", "strided", "interleave", True, "symmetric").double()
    attn = model.blocks[1].attn
    attn.use_gpu_ops = True  # the blockwise sparse reference with a gpu.SparseMask
    x_bnc = 2.0 * torch.randn(2, N_CTX, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            _rebuild(attn, x_bnc, attention_probs(attn, x_bnc)), attn(x_bnc), atol=1e-9, rtol=1e-9
        )


def test_attention_probs_rejects_other_modules():
    with pytest.raises(TypeError, match="attn must be one of"):
        attention_probs(torch.nn.Linear(4, 4), torch.zeros(1, 2, 4))


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: "-".join(map(str, s)))
def test_checkpoint_attention_rebuilds_the_models_logits(tmp_path, spec):
    model = _model(*spec)
    ckpt = load_checkpoint(_save_run(tmp_path / "run", model))
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.kind, ckpt.attention_kind) == ("flowgraph", ATTENTION_KIND[spec[0]])
    assert (ckpt.num_layers, ckpt.num_heads, ckpt.head_dim, ckpt.d_model) == (2, 2, 8, 16)
    assert (ckpt.n_ctx, ckpt.causal, ckpt.name) == (N_CTX, spec[3], "run")
    ids = [4, 0, 3, 3, 1, 2, 0, 4, 1]
    attn_lhtt = ckpt.attention(ids)
    assert attn_lhtt.shape == (2, 2, 9, 9) and attn_lhtt.dtype == np.float32  # unless asked
    # the model's own forward with its attention replaced by these probabilities
    ids_bt = torch.tensor([ids])
    with torch.no_grad():
        x_bnc = model.wte(ids_bt) + model.wpe(torch.arange(9))
        for layer, block in enumerate(model.blocks):
            h_bnc = block.ln_1(x_bnc)
            p_bhnn = torch.tensor(attn_lhtt[layer])[None].float()
            x_bnc = x_bnc + _rebuild(block.attn, h_bnc, p_bhnn)
            x_bnc = x_bnc + block.mlp(block.ln_2(x_bnc))
        logits = model.lm_head(model.ln_f(x_bnc))
        torch.testing.assert_close(logits, model(ids_bt), atol=1e-4, rtol=1e-4)
    # the mask: nothing outside the layer's causal/pattern mask, everything else a distribution
    for layer, block in enumerate(model.blocks):
        mask_hnn = block.attn.dense_mask(9, torch.device("cpu"))
        if mask_hnn is not None:
            assert (attn_lhtt[layer][~np.broadcast_to(mask_hnn.numpy(), (2, 9, 9))] == 0).all()
    rows = attn_lhtt.sum(-1)
    assert (np.isclose(rows, 1, atol=1e-5) | (rows == 0)).all()


def _scores_from(weights: HeadWeights, x_tc: np.ndarray, head: int) -> np.ndarray:
    if weights.kind == "dot":
        q, k = x_tc @ weights.w_q_hcd[head], x_tc @ weights.w_k_hcd[head]
        return weights.scale * q @ k.T
    if weights.kind == "metric":
        p = x_tc @ weights.p_hck[head]
        return weights.scale * p @ weights.m_hkk[head] @ p.T
    return weights.scale * x_tc @ weights.u_hcc[head] @ x_tc.T


@pytest.mark.parametrize("spec", MODELS[::2], ids=lambda s: "-".join(map(str, s)))
def test_head_weights_give_the_attention(tmp_path, spec):
    """With the projection biases zeroed, softmax(scores from head_weights) under the layer's
    mask is the checkpoint's attention: the split into heads, the transposes and the scale."""
    model = _model(*spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_attn.bias"):
                p.zero_()
    ckpt = load_checkpoint(_save_run(tmp_path / "run", model) / "checkpoint")
    assert ckpt.name == "run"
    ids = [1, 2, 0, 4, 4, 3, 1]
    attn_lhtt = ckpt.attention(ids)
    with torch.no_grad():
        x_tc = (model.wte(torch.tensor(ids)) + model.wpe(torch.arange(7))).double()
    for layer, block in enumerate(model.blocks):
        weights = ckpt.head_weights(layer)
        assert weights.kind == ckpt.attention_kind and weights.num_heads == 2
        with torch.no_grad():
            h_tc = block.ln_1(x_tc.float()).double().numpy()
        mask = block.attn.dense_mask(7, torch.device("cpu"))
        for head in range(2):
            s = _scores_from(weights, h_tc, head)
            if mask is not None:
                s = np.where(mask[head % mask.shape[0]].numpy(), s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            np.testing.assert_allclose(
                p / p.sum(-1, keepdims=True), attn_lhtt[layer, head], atol=2e-5
            )
        with torch.no_grad():
            x_tc = x_tc + block.attn(torch.from_numpy(h_tc).float()[None])[0].double()
            x_tc = x_tc + block.mlp(block.ln_2(x_tc.float())).double()
    assert ckpt.head_weights(0) is ckpt.head_weights(0)  # cached


def test_embeddings_and_token_distances(tmp_path):
    model = _model("sdpa", None, "interleave", True, "symmetric")
    ckpt = load_checkpoint(_save_run(tmp_path / "run", model))
    e_vc, pos_nc = ckpt.token_embeddings(), ckpt.position_embeddings()
    np.testing.assert_array_equal(e_vc, model.wte.weight.detach().double().numpy())
    np.testing.assert_array_equal(pos_nc, model.wpe.weight.detach().double().numpy())
    assert not e_vc.flags.writeable
    w = model.blocks[1].attn.c_attn.weight.detach().double().numpy()  # (3c, c) rows: q, k, v
    q_cd, k_cd = w[8:16].T, w[16 + 8 : 32].T  # head 1
    s_cc = (q_cd @ k_cd.T + k_cd @ q_cd.T) / 2
    ids = [0, 3, 3, 1]
    for positions in (False, True):
        e_tc = e_vc[ids] + (pos_nc[:4] if positions else 0)
        diff = e_tc[:, None] - e_tc[None]
        expected = np.einsum("abc,cd,abd->ab", diff, s_cc, diff)
        got = ckpt.token_distances(1, 1, ids, positions=positions)
        np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.diag(got).tolist() == [0.0] * 4
    assert ckpt.token_distances(0, 0, list(range(5))).shape == (5, 5)
    with pytest.raises(ValueError, match="token_ids has 13 tokens"):
        ckpt.token_distances(0, 0, [0] * 13, positions=True)
    with pytest.raises(TypeError, match="positions must be a bool"):
        ckpt.token_distances(0, 0, [0], positions=1)


def test_qk_form_and_coverage_use_the_checkpoint(tmp_path):
    model = _model("metric", "strided", "interleave", True, "symmetric")
    ckpt = load_checkpoint(_save_run(tmp_path / "run", model))
    attn = model.blocks[0].attn
    m_kk = attn.metric_hkk()[1].detach().double().numpy()
    np.testing.assert_allclose(ckpt.qk_form(0, 1, space="head").matrix, m_kk, atol=1e-12)
    p_ck = attn.c_p.weight.detach().double().numpy()[8:16].T
    np.testing.assert_allclose(ckpt.qk_form(0, 1).matrix, p_ck @ m_kk @ p_ck.T, atol=1e-10)
    ids = [1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]
    pattern = fg.strided(N_CTX, causal=True)
    # the run's own pattern keeps all of every head's attention; a local window does not
    np.testing.assert_allclose(ckpt.coverage(ids, pattern, mode="interleave"), 1.0, atol=1e-12)
    local = ckpt.coverage(ids, fg.local(N_CTX, window=2, causal=True), mode="merged")
    assert local.shape == (2, 2) and (local < 1 - 1e-6).any()
    with pytest.raises(ValueError, match="head=2 is out of range"):
        ckpt.qk_form(0, 2)
    with pytest.raises(ValueError, match="layer=-1 is out of range"):
        ckpt.head_weights(-1)
    with pytest.raises(TypeError, match="layer must be an int"):
        ckpt.head_weights(1.0)


def test_input_ids_are_checked(tmp_path):
    ckpt = load_checkpoint(
        _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    )
    same = ckpt.attention([1, 2, 3])
    for ids in (np.array([1, 2, 3], dtype=np.int32), torch.tensor([1, 2, 3]), (1, 2, 3)):
        np.testing.assert_array_equal(ckpt.attention(ids), same)
    for bad, error, match in [
        ([1, 5], ValueError, r"input_ids\[1\] = 5 is not a token id: expected 0 ≤ id < 5"),
        ([-1], ValueError, r"input_ids\[0\] = -1"),
        ([0] * 13, ValueError, "input_ids has 13 tokens, more than the model's n_ctx=12"),
        ([], ValueError, "at least one"),
        ([[1, 2]], TypeError, "must hold integers"),
        (np.zeros((2, 2), dtype=np.int64), ValueError, "must be 1-D"),
        (np.array([1.0, 2.0]), TypeError, "must hold integers, got dtype float64"),
        (torch.tensor([1.0]), TypeError, "torch tensor of torch.float32"),
        ([True, False], TypeError, "must hold integers"),
        ("1 2", TypeError, "input_ids must be a list"),
    ]:
        with pytest.raises(error, match=match):
            ckpt.attention(bad)


def test_attention_is_cached_and_read_only(tmp_path):
    ckpt = load_checkpoint(
        _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    )
    first = ckpt.attention([1, 2, 3])
    assert ckpt.attention(np.array([1, 2, 3])) is first
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0, 0, 0] = 1.0
    for i in range(ATTENTION_CACHE_SIZE):
        ckpt.attention([i % 5, 1, 1, i // 5])
    again = ckpt.attention([1, 2, 3])
    assert again is not first  # evicted, computed again: the same numbers
    np.testing.assert_array_equal(again, first)


def test_vocabularies_of_our_tasks(tmp_path):
    ckpt = load_checkpoint(
        _save_run(tmp_path / "sort", _model("sdpa", None, "interleave", True, "symmetric"))
    )
    assert ckpt.tokens == ["0", "1", "2", "3", "4"]
    assert ckpt.tokenize("0 4, 2").tolist() == [0, 4, 2]
    assert ckpt.tokenize("0342").tolist() == [0, 3, 4, 2]
    assert ckpt.tokenize("0342").dtype == np.int64
    with pytest.raises(ValueError, match="'7', not in the vocabulary"):
        ckpt.tokenize("1 7")
    with pytest.raises(TypeError, match="text must be a str"):
        ckpt.tokenize([1])

    text = tmp_path / "text.txt"
    text.write_text("abcab cab\n" * 20, encoding="utf-8")
    chars = {"name": "chars", "text": str(text), "n_ctx": N_CTX}
    model = _model("sdpa", None, "interleave", True, "symmetric", vocab=5)
    ckpt = load_checkpoint(_save_run(tmp_path / "chars", model, task=chars))
    assert ckpt.tokens == ["\n", " ", "a", "b", "c"]
    assert ckpt.tokenize("ab c").tolist() == [2, 3, 1, 4]
    with pytest.raises(ValueError, match="'z'"):
        ckpt.tokenize("az")
    text.unlink()  # the vocabulary is gone with its text: ids, and a warning that says why
    with pytest.warns(UserWarning, match="cannot be read now"):
        tokens = load_checkpoint(tmp_path / "chars").tokens
    assert tokens == ["0", "1", "2", "3", "4"]


def test_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="looked for a flowgraph run directory") as info:
        load_checkpoint(tmp_path / "empty")
    assert "nanoGPT ckpt.pt" in str(info.value) and "Hugging Face" in str(info.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"holds: notes\.txt"):
        load_checkpoint(tmp_path / "other")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(CheckpointError, match="model_type='t5' is not supported; supported: bert"):
        load_checkpoint(hf)
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match=r"no weights: looked for model\.safetensors"):
        load_checkpoint(hf)
    with pytest.raises(TypeError, match="path must be a str or Path"):
        load_checkpoint(3)


def test_a_corrupted_run_names_its_file(tmp_path):
    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupted"):
        load_checkpoint(run)


def test_the_demo_runs_load_when_present():
    root = Path(__file__).resolve().parents[1] / "runs"
    runs = sorted(p for p in root.glob("*") if (p / "checkpoint").is_dir()) if root.is_dir() else []
    if not runs:
        pytest.skip("no demo runs in runs/ (make demo trains them)")
    for run in runs:
        ckpt = load_checkpoint(run)
        attn_lhtt = ckpt.attention(ckpt.tokenize("0 1 2 1 0"))
        assert attn_lhtt.shape == (ckpt.num_layers, ckpt.num_heads, 5, 5)
        rows = attn_lhtt.sum(-1)
        assert (np.isclose(rows, 1, atol=1e-5) | (rows == 0)).all()
        assert (np.triu(attn_lhtt, k=1) == 0).all()  # causal sorters


def test_a_checkpoint_left_aside_by_an_interrupted_save_loads(tmp_path):
    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    expected = load_checkpoint(run).attention([1, 2, 3])
    (run / "checkpoint").rename(run / ".checkpoint.old-4242")  # killed between the renames
    for path in (run, run / "checkpoint"):
        ckpt = load_checkpoint(path)
        assert ckpt.name == "run"
        np.testing.assert_array_equal(ckpt.attention([1, 2, 3]), expected)


def test_one_checkpoint_serves_many_threads(tmp_path):
    """Dashboard callbacks call one Checkpoint from several threads at once: every result is
    the one a single thread gets (the forward hooks of concurrent passes must not mix), and each
    lazy build happens once."""
    from concurrent.futures import ThreadPoolExecutor

    run = _save_run(tmp_path / "run", _model("metric", "strided", "interleave", True, "psd"))
    seqs = [[(3 * i + j * j) % 5 for j in range(2 + i % 10)] for i in range(24)]
    serial = load_checkpoint(run)
    expected = [
        (serial.attention(s), serial.token_distances(i % 2, 1, s, positions=True))
        for i, s in enumerate(seqs)
    ]
    ckpt = load_checkpoint(run)

    def work(i: int):
        s = seqs[i]
        return (
            ckpt.attention(s),
            ckpt.token_distances(i % 2, 1, s, positions=True),
            ckpt.head_weights(i % 2),
            ckpt.token_embeddings(),
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(len(seqs))))
    for (attn, d2, _, _), (attn_1, d2_1) in zip(results, expected, strict=True):
        np.testing.assert_array_equal(attn, attn_1)
        np.testing.assert_array_equal(d2, d2_1)
    assert len({id(w) for _, _, w, _ in results}) == 2  # one HeadWeights per layer
    assert len({id(e) for _, _, _, e in results}) == 1
