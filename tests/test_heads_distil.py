"""models.heads on DistilBERT and ALBERT Hugging Face directories: attention equal to
transformers' eager output_attentions on small random-weight models — DistilBERT with learned and
sinusoidal position tables, saved bare and as DistilBertForMaskedLM (tied); ALBERT with its
factorised embedding, one shared group repeated, several groups, and several layers per group —
head weights read from the shared layer, and the errors for what is not read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import edit_config as _edit_config
from hf_models import reference_attention as _reference

from flowgraph.models import CheckpointError
from flowgraph.models.heads import load_checkpoint

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 40
IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]


def _randomise(model) -> None:
    with torch.no_grad():  # LayerNorms start at (1, 0) and biases at 0: make them matter
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or "layer_norm" in name) and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.3, 0.3)


def _distilbert(cls: str = "DistilBertModel", **extra):
    config = transformers.DistilBertConfig(
        dim=32,
        n_heads=4,
        n_layers=3,
        hidden_dim=64,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        initializer_range=0.3,  # far from uniform attention, so the comparison means something
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    _randomise(model)
    return model


def _albert(cls: str = "AlbertModel", **extra):
    options = dict(
        hidden_size=32,
        embedding_size=16,
        num_attention_heads=4,
        num_hidden_layers=3,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=N_CTX,
        initializer_range=0.3,
        attn_implementation="eager",
    )
    options.update(extra)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.AlbertConfig(**options)).eval()
    _randomise(model)
    return model


CASES = {  # name: (build, kind, attention layers)
    "distilbert": (lambda: _distilbert(), "distilbert", 3),
    "distilbert-mlm-tied": (lambda: _distilbert("DistilBertForMaskedLM"), "distilbert", 3),
    "distilbert-sinusoidal-relu": (
        lambda: _distilbert(sinusoidal_pos_embds=True, activation="relu"),
        "distilbert",
        3,
    ),
    "albert-shared": (lambda: _albert(), "albert", 3),
    "albert-mlm-tied": (lambda: _albert("AlbertForMaskedLM"), "albert", 3),
    "albert-two-groups": (lambda: _albert(num_hidden_groups=2, num_hidden_layers=5), "albert", 5),
    "albert-inner-two": (lambda: _albert(inner_group_num=2, num_hidden_layers=2), "albert", 4),
    "albert-no-factorising": (lambda: _albert(embedding_size=32, hidden_act="gelu"), "albert", 3),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    build, kind, layers = CASES[case]
    model = build()
    model.save_pretrained(tmp_path / case)
    ckpt = load_checkpoint(tmp_path / case)
    assert ckpt.kind == kind and ckpt.attention_kind == "dot" and not ckpt.causal
    assert ckpt.num_layers == layers and ckpt.num_heads == 4 and ckpt.head_dim == 8
    assert ckpt.d_model == 32 and ckpt.n_ctx == N_CTX
    expected = _reference(model, IDS)
    assert expected.max() > 0.5  # peaked rows: a wrong scale would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (layers, 4, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(N_CTX)]
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)


def test_albert_layers_share_the_groups_weights(tmp_path):
    """With one group every attention layer reads the same W_q, W_k; with 5 layers in 2 groups
    layers 0–2 read group 0 and 3–4 group 1 (int(i / 2.5)), as AlbertTransformer runs them."""
    model = _albert(num_hidden_groups=2, num_hidden_layers=5)
    model.save_pretrained(tmp_path / "g")
    ckpt = load_checkpoint(tmp_path / "g")
    groups = model.encoder.albert_layer_groups
    for layer, g in enumerate([0, 0, 0, 1, 1]):
        attn = groups[g].albert_layers[0].attention
        w_q = attn.query.weight.detach().double().numpy()
        np.testing.assert_array_equal(ckpt.head_weights(layer).w_q_hcd[1], w_q[8:16].T)
    mapping = model.encoder.embedding_hidden_mapping_in.weight.detach().double()
    table = model.embeddings.word_embeddings.weight.detach().double()
    np.testing.assert_allclose(ckpt.token_embeddings(), (table @ mapping.T).numpy(), atol=1e-6)
    assert ckpt.position_embeddings().shape == (N_CTX, 32)


def test_distilbert_head_weights_and_tables(tmp_path):
    model = _distilbert()
    model.save_pretrained(tmp_path / "d")
    ckpt = load_checkpoint(tmp_path / "d")
    attn = model.transformer.layer[2].attention
    weights = ckpt.head_weights(2)
    assert weights.scale == pytest.approx(8**-0.5)
    np.testing.assert_array_equal(
        weights.w_k_hcd[3], attn.k_lin.weight.detach().double().numpy()[24:32].T
    )
    np.testing.assert_array_equal(
        ckpt.position_embeddings(),
        model.embeddings.position_embeddings.weight.detach().double().numpy(),
    )


@pytest.mark.parametrize(
    "build, changes, match",
    [
        (_distilbert, {"activation": "mish"}, "activation='mish' is not supported"),
        (_distilbert, {"n_heads": 5}, "dim=32 is not a multiple of n_heads=5"),
        (_distilbert, {"n_layers": 4}, r"transformer\.layer\.3\.attention\.q_lin\.weight missing"),
        (_distilbert, {"hidden_dim": 63}, "hidden_dim"),
        (
            _distilbert,
            {"position_embedding_type": "relative_key"},
            "position_embedding_type='relative_key' is not supported",
        ),
        (_albert, {"embedding_size": 12}, "embedding_size"),
        (_albert, {"num_hidden_groups": 2}, r"albert_layer_groups\.1\.albert_layers\.0"),
        (_albert, {"num_hidden_groups": 4}, "num_hidden_groups=4 is more than"),
        (_albert, {"inner_group_num": 2}, r"albert_layer_groups\.0\.albert_layers\.1"),
        (_albert, {"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
        (_albert, {"layer_norm_eps": -1}, "layer_norm_eps must be a finite number > 0"),
    ],
)
def test_bad_configs_are_named(tmp_path, build, changes, match):
    build().save_pretrained(tmp_path / "bad")
    _edit_config(tmp_path / "bad", **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "bad")


# --- BERT-layout aliases ----------------------------------------------------------------------
def _bert_like(config_name: str, model_name: str, **extra):
    options = dict(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=64,
        vocab_size=60,
        max_position_embeddings=N_CTX + 2,  # RoBERTa-style positions start at padding_idx + 1
        initializer_range=0.3,
        attn_implementation="eager",
    )
    options.update(extra)
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**options)
    model = getattr(transformers, model_name)(config).eval()
    _randomise(model)
    return model


ALIASES = {  # name: (build, roberta-style positions)
    "camembert": (lambda: _bert_like("CamembertConfig", "CamembertForMaskedLM"), True),
    "data2vec-text": (lambda: _bert_like("Data2VecTextConfig", "Data2VecTextModel"), True),
    "ernie": (lambda: _bert_like("ErnieConfig", "ErnieModel"), False),
    "ernie-task-id": (
        lambda: _bert_like("ErnieConfig", "ErnieForMaskedLM", use_task_id=True),
        False,
    ),
    "electra-projected": (
        lambda: _bert_like("ElectraConfig", "ElectraForMaskedLM", embedding_size=16),
        False,
    ),
    "electra-same-width": (
        lambda: _bert_like("ElectraConfig", "ElectraModel", embedding_size=32),
        False,
    ),
}


@pytest.mark.parametrize("case", ALIASES)
def test_bert_layout_aliases_equal_transformers(tmp_path, case):
    """CamemBERT and data2vec-text (RoBERTa positions, ids with the padding id in the middle),
    ERNIE (with and without its task-type embedding) and ELECTRA (embeddings_project when
    embedding_size ≠ hidden_size) read as the BERT family."""
    build, roberta = ALIASES[case]
    model = build()
    model.save_pretrained(tmp_path / case)
    ckpt = load_checkpoint(tmp_path / case)
    assert ckpt.kind == "bert" and ckpt.num_layers == 2 and not ckpt.causal
    assert ckpt.n_ctx == (N_CTX if roberta else N_CTX + 2)
    ids = [0, 5, 1, 7, 9, 13, 5, 30, 59, 2, 4]  # 1 is RoBERTa's padding id
    expected = _reference(model, ids)
    assert expected.max() > 0.5
    np.testing.assert_allclose(ckpt.attention(ids), expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(ckpt.n_ctx)]
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    assert ckpt.token_embeddings().shape == (60, 32)


def test_electra_embeddings_are_given_in_model_space(tmp_path):
    model = _bert_like("ElectraConfig", "ElectraModel", embedding_size=16)
    model.save_pretrained(tmp_path / "e")
    ckpt = load_checkpoint(tmp_path / "e")
    project = model.embeddings_project.weight.detach().double()
    table = model.embeddings.word_embeddings.weight.detach().double()
    np.testing.assert_allclose(ckpt.token_embeddings(), (table @ project.T).numpy(), atol=1e-6)
    assert ckpt.position_embeddings().shape == (N_CTX + 2, 32)
    _edit_config(tmp_path / "e", embedding_size=32)
    with pytest.raises(CheckpointError, match="embedding_size"):
        load_checkpoint(tmp_path / "e")


def test_ernie_task_type_embedding_is_what_makes_it_match(tmp_path):
    model = _bert_like("ErnieConfig", "ErnieModel", use_task_id=True)
    model.save_pretrained(tmp_path / "t")
    with_task = load_checkpoint(tmp_path / "t").attention(IDS)
    _edit_config(tmp_path / "t", use_task_id=False)
    assert np.abs(load_checkpoint(tmp_path / "t").attention(IDS) - with_task).max() > 1e-3
    _edit_config(tmp_path / "t", use_task_id=True, task_type_vocab_size=5)
    with pytest.raises(CheckpointError, match="task_type_vocab_size"):
        load_checkpoint(tmp_path / "t")


def test_the_loader_does_not_import_transformers(tmp_path):
    _albert().save_pretrained(tmp_path / "m")
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(tmp_path / 'm')!r}); c.attention([1, 2, 3]); c.qk_form(0, 0);"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"
