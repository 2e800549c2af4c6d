"""models.heads on Hugging Face directories: attention equal to transformers' output_attentions
(eager) on small random BERT, RoBERTa, XLM-R and GPT-2 models saved in each weight format; head
weights, embeddings and tokenizers. transformers is a test-only dependency: the loader itself
never imports it (checked in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import reference_attention as _reference
from hf_models import save_model as _save

from flowgraph.models.heads import load_checkpoint

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _bert(cls_name="BertModel", config_name="BertConfig", vocab=60, **extra):
    config = getattr(transformers, config_name)(
        **SMALL,
        vocab_size=vocab,
        max_position_embeddings=40,
        initializer_range=0.2,  # far from uniform attention, so the comparison means something
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def _gpt2(vocab=60, **extra):
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=vocab,
        n_positions=24,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]  # 1 is RoBERTa's padding id: positions skip it

CASES = {
    "bert-safetensors": (lambda: _bert(), "safetensors"),
    "bert-bin": (lambda: _bert(), "bin"),
    "bert-sharded": (lambda: _bert(), "sharded"),
    "bert-masked-lm-prefix": (lambda: _bert("BertForMaskedLM"), "safetensors"),
    "bert-relu": (lambda: _bert(hidden_act="relu"), "bin"),
    "minilm-style": (
        lambda: _bert(hidden_act="gelu_new", layer_norm_eps=1e-7),
        "safetensors",
    ),
    "roberta": (lambda: _bert("RobertaModel", "RobertaConfig"), "safetensors"),
    "roberta-bin": (lambda: _bert("RobertaForMaskedLM", "RobertaConfig"), "bin"),
    "xlm-roberta": (lambda: _bert("XLMRobertaModel", "XLMRobertaConfig"), "safetensors"),
    "gpt2": (lambda: _gpt2(), "safetensors"),
    "gpt2-bin": (lambda: _gpt2(), "bin"),
    "gpt2-inverse-layer-scale": (lambda: _gpt2(scale_attn_by_inverse_layer_idx=True), "sharded"),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    build, form = CASES[case]
    model = build()
    ckpt = load_checkpoint(_save(model, tmp_path / case, form))
    gpt2 = case.startswith("gpt2")
    assert ckpt.kind == ("gpt2" if gpt2 else "bert") and ckpt.attention_kind == "dot"
    assert (ckpt.num_layers, ckpt.num_heads, ckpt.head_dim, ckpt.d_model) == (2, 4, 8, 32)
    assert ckpt.causal is gpt2 and ckpt.vocab_size == 60 and ckpt.name == case
    assert ckpt.n_ctx == (24 if gpt2 else 38 if "roberta" in case else 40)
    expected = _reference(model, IDS)
    assert expected.max() > 0.5  # peaked rows: a wrong scale or position would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (2, 4, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = list(range(ckpt.n_ctx))  # the longest input works, one more is refused
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    with pytest.raises(ValueError, match=f"more than the model's n_ctx={ckpt.n_ctx}"):
        ckpt.attention([*longest, 0])


@pytest.mark.parametrize(
    "dtype, form",
    [(torch.float16, "safetensors"), (torch.bfloat16, "safetensors"), (torch.bfloat16, "bin")],
)
def test_half_precision_weights_are_upcast(tmp_path, dtype, form):
    model = _bert().to(dtype)
    directory = _save(model, tmp_path / "half", form)
    weights = "model.safetensors" if form == "safetensors" else "pytorch_model.bin"
    ckpt = load_checkpoint(directory / weights)  # a file stands for its directory
    assert ckpt.name == "half"
    assert ckpt.token_embeddings().dtype == np.float64
    assert ckpt.head_weights(0).w_q_hcd.dtype == np.float64
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model.float(), IDS), atol=1e-5)
    assert ckpt.qk_form(1, 0).matrix.dtype == np.float64


def test_old_bert_layer_norm_names(tmp_path):
    """Old BERT files call the LayerNorm parameters gamma and beta."""
    model = _bert()
    directory = tmp_path / "old"
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in model.state_dict().items()
    }
    torch.save(state, directory / "pytorch_model.bin")
    np.testing.assert_allclose(
        load_checkpoint(directory).attention(IDS), _reference(model, IDS), atol=1e-5
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_head_weights_and_embeddings(tmp_path, family):
    model = {
        "bert": lambda: _bert(),
        "roberta": lambda: _bert("RobertaModel", "RobertaConfig"),
        "gpt2": lambda: _gpt2(),
    }[family]()
    ckpt = load_checkpoint(_save(model, tmp_path / family, "safetensors"))
    torch.manual_seed(3)
    x_tc = torch.randn(5, 32)
    with torch.no_grad():
        if family == "gpt2":
            block, emb = model.transformer.h[1].attn.c_attn, model.transformer
            q_tc, k_tc, _ = (torch.addmm(torch.zeros(96), x_tc, block.weight)).split(32, dim=1)
            word, pos = emb.wte.weight, emb.wpe.weight
        else:
            self_attn = model.encoder.layer[1].attention.self
            q_tc = x_tc @ self_attn.query.weight.T  # no bias: the form leaves biases out
            k_tc = x_tc @ self_attn.key.weight.T
            word = model.embeddings.word_embeddings.weight
            pos = model.embeddings.position_embeddings.weight
            if family == "roberta":  # row t is the embedding at sequence position t
                pos = pos[model.config.pad_token_id + 1 :]
    weights = ckpt.head_weights(1)
    assert weights.kind == "dot" and weights.scale == pytest.approx(8**-0.5)
    x = x_tc.double().numpy()
    for h in range(4):
        np.testing.assert_allclose(x @ weights.w_q_hcd[h], q_tc[:, 8 * h : 8 * h + 8], atol=1e-5)
        np.testing.assert_allclose(x @ weights.w_k_hcd[h], k_tc[:, 8 * h : 8 * h + 8], atol=1e-5)
    np.testing.assert_array_equal(ckpt.token_embeddings(), word.detach().double().numpy())
    np.testing.assert_array_equal(ckpt.position_embeddings(), pos.detach().double().numpy())
    assert ckpt.position_embeddings().shape == (ckpt.n_ctx, 32)
    d_tt = ckpt.token_distances(1, 2, [3, 4, 5], positions=True)
    assert d_tt.shape == (3, 3) and np.isfinite(d_tt).all()


def test_gpt2_inverse_layer_scale_is_in_head_weights(tmp_path):
    ckpt = load_checkpoint(
        _save(_gpt2(scale_attn_by_inverse_layer_idx=True), tmp_path / "g", "bin")
    )
    assert ckpt.head_weights(0).scale == pytest.approx(8**-0.5)
    assert ckpt.head_weights(1).scale == pytest.approx(8**-0.5 / 2)


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on", "mat"]


def _wordpiece_dir(tmp_path: Path) -> Path:
    directory = _save(_bert(vocab=len(WORDS)), tmp_path / "wp", "safetensors")
    (directory / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return directory


def test_wordpiece_vocab_txt(tmp_path):
    ckpt = load_checkpoint(_wordpiece_dir(tmp_path))
    assert ckpt.tokens == WORDS
    ids = ckpt.tokenize("The cats sat on the mat")
    assert [WORDS[i] for i in ids] == [
        "[CLS]",
        "the",
        "cat",
        "##s",
        "sat",
        "on",
        "the",
        "mat",
        "[SEP]",
    ]
    assert ckpt.attention(ids).shape == (2, 4, 9, 9)


def test_tokenizer_json_without_its_padding(tmp_path):
    from tokenizers import BertWordPieceTokenizer

    directory = _wordpiece_dir(tmp_path)
    tokenizer = BertWordPieceTokenizer(str(directory / "vocab.txt"))
    tokenizer.enable_padding(length=30)  # a file may carry padding: tokenize must not pad
    tokenizer.enable_truncation(max_length=4)  # nor cut
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "vocab.txt").unlink()
    ckpt = load_checkpoint(directory)
    assert ckpt.tokens == WORDS
    assert ckpt.tokenize("the cat sat").tolist() == [2, 5, 6, 7, 3]
    assert len(ckpt.tokenize("the cat sat on the mat on the mat")) == 11


def test_byte_level_bpe_vocab_and_merges(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(["the cat sat on the mat"] * 20, vocab_size=280, min_frequency=1)
    V = trainer.get_vocab_size()
    directory = _save(_gpt2(vocab=V + 3), tmp_path / "bpe", "safetensors")
    trainer.save_model(str(directory))
    ckpt = load_checkpoint(directory)
    text = "the cat sat"
    assert ckpt.tokenize(text).tolist() == trainer.encode(text).ids
    assert ckpt.tokens[:V] == [
        t for t, _ in sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
    ]
    assert ckpt.tokens[V:] == [str(V), str(V + 1), str(V + 2)]  # ids the tokenizer lacks


def test_no_tokenizer_files_means_ids(tmp_path):
    ckpt = load_checkpoint(_save(_gpt2(), tmp_path / "bare", "safetensors"))
    assert ckpt.tokens == [str(i) for i in range(60)]
    assert ckpt.tokenize("3 17, 59").tolist() == [3, 17, 59]
    with pytest.raises(ValueError, match="'60', not in the vocabulary"):
        ckpt.tokenize("60")


def test_unsupported_bert_variants_are_named(tmp_path):
    model = _bert(position_embedding_type="relative_key")
    directory = _save(model, tmp_path / "rel", "safetensors")
    with pytest.raises(ValueError, match="position_embedding_type='relative_key' is not supported"):
        load_checkpoint(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(position_embedding_type="absolute", hidden_act="mish")
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act='mish' is not supported"):
        load_checkpoint(directory)


def test_the_loader_does_not_import_transformers(tmp_path):
    directory = _wordpiece_dir(tmp_path)
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(directory)!r}); c.attention(c.tokenize('the cat'));"
        "c.qk_form(0, 0); print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    "cls_name, config_name",
    [("BertLMHeadModel", "BertConfig"), ("RobertaForCausalLM", "RobertaConfig")],
)
def test_an_encoder_saved_as_a_decoder_attends_causally(tmp_path, cls_name, config_name):
    """``is_decoder: true`` (BertLMHeadModel, RobertaForCausalLM) puts a causal mask on the
    self-attention in transformers; the loader must too, not silently attend both ways."""
    model = _bert(cls_name, config_name, is_decoder=True)
    ckpt = load_checkpoint(_save(model, tmp_path / cls_name, "safetensors"))
    assert ckpt.kind == "bert" and ckpt.causal is True
    expected = _reference(model, IDS)
    assert (np.triu(expected, k=1) == 0).all()
    np.testing.assert_allclose(ckpt.attention(IDS), expected, atol=1e-5, rtol=0)


def test_roberta_distances_with_positions_use_its_position_ids(tmp_path):
    """With ``positions=True`` each token gets the position embedding ``attention()`` gives it:
    RoBERTa numbers positions from padding_idx + 1 and skips padding tokens, which get row
    padding_idx (transformers' create_position_ids_from_input_ids)."""
    model = _bert("RobertaModel", "RobertaConfig")
    ckpt = load_checkpoint(_save(model, tmp_path / "r", "safetensors"))
    ids = [5, 1, 7, 1, 9, 9]  # 1 is the padding id
    emb = model.embeddings
    with torch.no_grad():
        pos_ids = emb.create_position_ids_from_input_ids(torch.tensor([ids]), emb.padding_idx)[0]
        e_tc = (
            emb.word_embeddings.weight[ids].double()
            + emb.position_embeddings.weight[pos_ids].double()
        )
    assert pos_ids.tolist() == [2, 1, 3, 1, 4, 5]
    s_cc = ckpt.qk_form(1, 2).symmetric
    diff = e_tc.numpy()[:, None] - e_tc.numpy()[None]
    expected = np.einsum("abc,cd,abd->ab", diff, s_cc, diff)
    np.testing.assert_allclose(
        ckpt.token_distances(1, 2, ids, positions=True), expected, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_minimal_config_means_transformers_defaults(tmp_path, family):
    """Keys a config.json leaves out take transformers' defaults (BertConfig: two token types,
    GELU, eps 1e-12; GPT2Config: gelu_new, eps 1e-5, 4·n_embd inner width), as
    ``from_pretrained`` builds the model; the shapes in the file are still checked."""
    model = _bert() if family == "bert" else _gpt2()
    directory = _save(model, tmp_path / family, "safetensors")
    config = json.loads((directory / "config.json").read_text())
    keep = {
        "bert": {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads"}
        | {"intermediate_size", "vocab_size", "max_position_embeddings"},
        "gpt2": {"model_type", "n_embd", "n_layer", "n_head", "vocab_size", "n_positions"},
    }[family]
    (directory / "config.json").write_text(json.dumps({k: config[k] for k in keep}))
    ckpt = load_checkpoint(directory)
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0)
