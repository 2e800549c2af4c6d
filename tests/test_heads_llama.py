"""models.heads on Llama-style Hugging Face directories (Llama, Mistral, Qwen2): attention equal
to transformers' eager output_attentions on small random-weight models saved as safetensors,
.bin and shards — grouped-query attention with 1, 2 and 3 key heads, rope scaling (linear,
llama3), Mistral's and Qwen2's sliding windows, tied embeddings, Qwen2's and Llama's biases —
their tokenizers against AutoTokenizer, and the errors for what the loader does not read.
transformers is a test-only dependency: the loader never imports it (checked in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import edit_config as _edit_config
from hf_models import reference_attention as _reference
from hf_models import save_model as _save

from flowgraph.models import CheckpointError
from flowgraph.models.heads import load_checkpoint
from flowgraph.models.heads.checkpoint import LONG_CONTEXT_TOKENS, MEMORY_LIMIT_ENV

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 40
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}  # with head_dim 16: wavelengths 6.3 (kept), 20 (smoothed), ≥ 63 (divided by the factor)


def _model(kind: str = "llama", *, heads: int = 4, kv_heads: int = 2, width: int = 32, **extra):
    config_name, model_name = CLASSES[kind]
    config = getattr(transformers, config_name)(
        hidden_size=width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=64,
        vocab_size=extra.pop("vocab_size", 60),
        max_position_embeddings=N_CTX,
        initializer_range=0.2,  # far from uniform attention, so the comparison means something
        attn_implementation="eager",
        **extra,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: make them matter
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
    return model


IDS = [2, 1, 7, 9, 1, 13, 5, 30, 59, 0, 4]

CASES = {  # name: (build, form, key heads)
    "llama-gqa2": (lambda: _model(), "safetensors", 2),
    "llama-gqa3": (lambda: _model(heads=6, kv_heads=3, width=48), "bin", 3),
    "llama-mqa": (lambda: _model(kv_heads=1), "safetensors", 1),
    "llama-mha-sharded": (lambda: _model(kv_heads=4), "sharded", 4),
    "llama-rope-linear": (
        lambda: _model(rope_scaling={"rope_type": "linear", "factor": 3.0}, rope_theta=100.0),
        "safetensors",
        2,
    ),
    "llama-rope-llama3": (lambda: _model(width=64, rope_scaling=dict(LLAMA3)), "safetensors", 2),
    "llama-tied-biases": (
        lambda: _model(tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
        "bin",
        2,
    ),
    "llama-head-dim": (lambda: _model(head_dim=12), "safetensors", 2),  # H·d ≠ hidden_size
    "mistral-window": (lambda: _model("mistral", sliding_window=4), "safetensors", 2),
    "mistral-window-gqa3": (
        lambda: _model("mistral", heads=6, kv_heads=3, width=48, sliding_window=5),
        "sharded",
        3,
    ),
    "mistral-no-window": (lambda: _model("mistral", sliding_window=None), "bin", 2),
    "qwen2-biases-tied": (lambda: _model("qwen2", tie_word_embeddings=True), "safetensors", 2),
    "qwen2-window": (
        lambda: _model("qwen2", use_sliding_window=True, sliding_window=3, max_window_layers=1),
        "bin",
        2,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_transformers(tmp_path, case):
    build, form, kv_heads = CASES[case]
    model = build()
    ckpt = load_checkpoint(_save(model, tmp_path / case, form))
    config = model.config
    assert ckpt.kind == case.split("-")[0] and ckpt.attention_kind == "dot" and ckpt.causal
    assert ckpt.num_layers == 2 and ckpt.num_heads == config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // ckpt.num_heads
    assert ckpt.num_kv_heads == kv_heads and ckpt.head_dim == head_dim
    assert ckpt.d_model == config.hidden_size and ckpt.n_ctx == N_CTX and ckpt.name == case
    assert ckpt.rotary.rotary_dim == ckpt.head_dim
    expected = _reference(model, IDS)
    assert expected[:, :, 3:].max() > 0.5  # peaked rows: a wrong scale or rotation would show
    got = ckpt.attention(IDS)
    assert got.shape == expected.shape == (2, ckpt.num_heads, len(IDS), len(IDS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    longest = [(7 * i) % 60 for i in range(N_CTX)]  # the longest input works, one more is refused
    np.testing.assert_allclose(ckpt.attention(longest), _reference(model, longest), atol=1e-5)
    with pytest.raises(ValueError, match=f"more than the model's n_ctx={N_CTX}"):
        ckpt.attention([*longest, 0])


@pytest.mark.parametrize(
    "case, windows",
    [("mistral-window", (4, 4)), ("qwen2-window", (None, 3)), ("llama-gqa2", (None, None))],
)
def test_sliding_windows_mask_as_transformers(tmp_path, case, windows):
    """Query q sees keys q − W < k ≤ q (transformers' sliding_window_overlay, eager): W keys,
    itself included. The text is longer than the window, so the window cuts real mass."""
    build, form, _ = CASES[case]
    model = build()
    ckpt = load_checkpoint(_save(model, tmp_path / case, form))
    assert ckpt.sliding_windows == windows
    expected = _reference(model, IDS)
    q_t1, k_1t = np.arange(len(IDS))[:, None], np.arange(len(IDS))[None]
    for layer, window in enumerate(windows):
        inside_tt = k_1t <= q_t1
        if window is not None:
            inside_tt &= k_1t > q_t1 - window
            assert (~inside_tt & (k_1t <= q_t1)).any()  # the window is shorter than the text
        assert (expected[layer][:, ~inside_tt] == 0).all()
        assert (expected[layer][:, inside_tt] > 0).all()
    np.testing.assert_allclose(ckpt.attention(IDS), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["llama-rope-linear", "llama-rope-llama3"])
def test_rope_scaling_is_what_makes_it_match(tmp_path, case):
    """The same weights read with the scaling dropped from config.json give other attention:
    the comparison above could fail if the scaling were ignored."""
    build, form, _ = CASES[case]
    model = build()
    directory = _save(model, tmp_path / case, form)
    scaled = load_checkpoint(directory).attention(IDS)
    config = json.loads((directory / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    config.pop("rope_scaling", None)
    (directory / "config.json").write_text(json.dumps(config))
    plain = load_checkpoint(directory)
    assert plain.rotary.rope_type == "default"
    assert np.abs(plain.attention(IDS) - scaled).max() > 1e-3


def test_old_config_format_rope_theta_and_rope_scaling(tmp_path):
    """Files written before transformers 5 carry ``rope_theta`` and ``rope_scaling`` (with
    ``type`` or ``rope_type``) instead of ``rope_parameters``."""
    model = _model(width=64, rope_scaling=dict(LLAMA3), rope_theta=500.0)
    directory = _save(model, tmp_path / "old", "safetensors")
    config = json.loads((directory / "config.json").read_text())
    if "rope_parameters" in config:  # transformers ≥ 5 wrote it; transformers 4 writes the old
        rope = config.pop("rope_parameters")
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    (directory / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(directory)
    assert ckpt.rotary.rope_type == "llama3"
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0)


def test_half_precision_weights_are_upcast(tmp_path):
    model = _model("qwen2").to(torch.bfloat16)
    ckpt = load_checkpoint(_save(model, tmp_path / "half", "safetensors"))
    # the reference: float32 with the same (rounded) weights; model.float() would also keep the
    # rope frequencies that .to(bfloat16) rounded
    reference = _model("qwen2")
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(reference, IDS), atol=1e-5)
    assert ckpt.head_weights(0).w_q_hcd.dtype == np.float64


def test_head_weights_follow_the_key_groups(tmp_path):
    """Query head h reads key head h // (H / H_kv) (transformers' repeat_kv); head_weights gives
    every query head the W_k of its key head, and kv_group lists the heads that share it."""
    model = _model(heads=6, kv_heads=3, width=48)
    ckpt = load_checkpoint(_save(model, tmp_path / "gqa", "safetensors"))
    attn = model.model.layers[1].self_attn
    weights = ckpt.head_weights(1)
    assert weights.kind == "dot" and weights.scale == pytest.approx(8**-0.5)
    assert weights.w_q_hcd.shape == weights.w_k_hcd.shape == (6, 48, 8)
    w_q = attn.q_proj.weight.detach().double().numpy()
    w_k = attn.k_proj.weight.detach().double().numpy()
    for h in range(6):
        np.testing.assert_array_equal(weights.w_q_hcd[h], w_q[8 * h : 8 * h + 8].T)
        g = h // 2
        np.testing.assert_array_equal(weights.w_k_hcd[h], w_k[8 * g : 8 * g + 8].T)
        assert ckpt.kv_head(h) == g and ckpt.kv_group(h) == (2 * g, 2 * g + 1)
    np.testing.assert_array_equal(
        ckpt.token_embeddings(), model.model.embed_tokens.weight.detach().double().numpy()
    )
    assert ckpt.position_embeddings() is None
    with pytest.raises(ValueError, match=r"no learned position embeddings.*offset"):
        ckpt.token_distances(0, 0, [1, 2, 3], positions=True)
    with pytest.raises(ValueError, match="head=6 is out of range"):
        ckpt.kv_group(6)


def test_tied_embeddings_stored_only_as_the_lm_head(tmp_path):
    """With ``tie_word_embeddings`` a file may hold the table once, as ``lm_head.weight``."""
    model = _model(tie_word_embeddings=True)
    directory = tmp_path / "tied"
    directory.mkdir()
    model.config.to_json_file(directory / "config.json")
    state = {k: v for k, v in model.state_dict().items() if k != "model.embed_tokens.weight"}
    state["lm_head.weight"] = model.model.embed_tokens.weight.detach().clone()
    torch.save(state, directory / "pytorch_model.bin")
    ckpt = load_checkpoint(directory)
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0)
    config = json.loads((directory / "config.json").read_text())
    config["tie_word_embeddings"] = False  # untied: the LM head is not the input table
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor embed_tokens\.weight missing"):
        load_checkpoint(directory)


def test_a_minimal_config_means_transformers_defaults(tmp_path):
    """Keys a config.json leaves out take LlamaConfig's defaults (SiLU, eps 1e-6, rope_theta
    10000, as many key heads as query heads)."""
    model = _model(kv_heads=4)
    directory = _save(model, tmp_path / "minimal", "safetensors")
    config = json.loads((directory / "config.json").read_text())
    keep = {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads"}
    keep |= {"intermediate_size", "vocab_size", "max_position_embeddings"}
    (directory / "config.json").write_text(json.dumps({k: config[k] for k in keep}))
    ckpt = load_checkpoint(directory)
    assert ckpt.num_kv_heads == 4 and ckpt.rotary.rope_type == "default"
    np.testing.assert_allclose(ckpt.attention(IDS), _reference(model, IDS), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "changes, match",
    [
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
            r"rope type 'yarn' .* is not supported; supported: default, linear, llama3",
        ),
        (
            {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            r"rope type 'dynamic' .* is not supported",
        ),
        (
            {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}},
            "rope factor must be a finite number, got None",
        ),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}},
            "rope_theta must be > 0, got -1.0",
        ),
        ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor .* is not supported"),
        ({"num_key_value_heads": 4}, r"dimension 0 is num_key_value_heads·head_dim=32"),
        ({"num_hidden_layers": 3}, "tensor layers.2.self_attn.q_proj.weight missing"),
        ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
        ({"rms_norm_eps": 0}, "rms_norm_eps must be a finite number > 0"),
    ],
)
def test_bad_configs_are_named(tmp_path, changes, match):
    directory = _save(_model(), tmp_path / "bad", "safetensors")
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(directory)


def test_bad_layer_types_are_named(tmp_path):
    model = _model("qwen2", use_sliding_window=True, sliding_window=3, max_window_layers=1)
    directory = _save(model, tmp_path / "q", "safetensors")
    _edit_config(directory, layer_types=["full_attention", "local"])
    with pytest.raises(CheckpointError, match="layer_types must list 2 of full_attention"):
        load_checkpoint(directory)


def test_an_unsupported_architecture_names_itself_and_the_supported_ones(tmp_path):
    directory = _save(_model(), tmp_path / "gptj", "safetensors")
    _edit_config(directory, model_type="gptj", architectures=["GPTJForCausalLM"])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "model_type='gptj' (GPTJForCausalLM) is not supported" in message
    for supported in ("bert", "roberta", "xlm-roberta", "gpt2", "llama", "mistral", "qwen2"):
        assert supported in message


def test_a_long_context_is_checked_per_sequence(tmp_path, monkeypatch):
    """A rope model's n_ctx (here 100 000) is not a table: loading checks memory for
    LONG_CONTEXT_TOKENS tokens, and a longer sequence is refused when its attention cannot
    fit, before the forward pass runs."""
    directory = _save(_model(), tmp_path / "long", "safetensors")
    _edit_config(directory, max_position_embeddings=100_000)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(2**28))  # 256 MiB
    ckpt = load_checkpoint(directory)
    assert ckpt.n_ctx == 100_000 and LONG_CONTEXT_TOKENS == 1024
    assert ckpt.attention([1, 2, 3]).shape == (2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"input_ids has 2048 tokens: their \(2, 4, 2048, 2048\)"):
        ckpt.attention([1] * 2048)


# --- tokenizers ---------------------------------------------------------------------------------
TRAIN = [
    "The cat sat on the mat.",
    "Café naïve — déjà vu!",
    "日本語のテキスト",
    "emoji 🙂 ok",
    "numbers 12345 and 678",
] * 5
TEXTS = [
    "The cat sat on the mat.",
    "Café naïve — déjà vu!",
    "日本語のテキストです",
    "emoji 🙂 ok 🎉",
    "  leading  spaces",
    "tab\tnew\nline",
    "Ünïcödé ß 𝔘 Ω≈ç√",
    "12345 + 678 = 13023",
]
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)  # Qwen2's pre-tokenizer split


def _sentencepiece_bpe():
    """A Llama/Mistral-style tokenizer: BPE with byte fallback over ▁-marked text (Metaspace),
    <s> prepended."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=330, special_tokens=special, min_frequency=2, show_progress=False
    )
    tok.train_from_iterator(TRAIN, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    options = {
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
    }
    return tok, options


def _byte_level(qwen: bool):
    """SmolLM's (GPT2Tokenizer) or Qwen2's (NFC, a split regex) byte-level BPE."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    if qwen:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<|endoftext|>"],
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN, trainer)
    end = "<|endoftext|>"
    if qwen:
        options = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": end, "bos_token": None}
    else:
        options = {"tokenizer_class": "GPT2Tokenizer", "bos_token": end, "eos_token": end}
    return tok, options


TOKENIZERS = {
    "llama-sentencepiece": ("llama", _sentencepiece_bpe),
    "smollm-byte-level": ("llama", lambda: _byte_level(qwen=False)),
    "mistral-sentencepiece": ("mistral", _sentencepiece_bpe),
    "qwen2-byte-level": ("qwen2", lambda: _byte_level(qwen=True)),
}


def _with_tokenizer(tmp_path: Path, kind: str, tok, options: dict) -> Path:
    directory = _save(_model(kind, vocab_size=336), tmp_path / kind, "safetensors")
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(options), encoding="utf-8")
    return directory


@pytest.mark.parametrize("case", TOKENIZERS)
def test_tokenizer_equals_auto_tokenizer(tmp_path, case):
    kind, build = TOKENIZERS[case]
    tok, options = build()
    directory = _with_tokenizer(tmp_path, kind, tok, options)
    ckpt = load_checkpoint(directory)
    reference = transformers.AutoTokenizer.from_pretrained(directory)
    for text in TEXTS:
        ids = ckpt.tokenize(text)
        assert ids.tolist() == reference(text).input_ids, text
        assert len(ids) > 1 and ckpt.attention(ids).shape[-1] == len(ids)
    if "sentencepiece" in case:
        assert ckpt.tokenize("Ω")[0] == 1  # <s> first; unseen characters fall back to bytes
        assert [ckpt.tokens[i] for i in ckpt.tokenize("Ω")[2:]] == ["<0xCE>", "<0xA9>"]
    vocab = reference.get_vocab()
    assert all(ckpt.tokens[i] == token for token, i in vocab.items())
    assert ckpt.tokens[len(vocab) :] == [str(i) for i in range(len(vocab), 336)]


def test_the_loader_does_not_import_transformers(tmp_path):
    tok, options = _sentencepiece_bpe()
    directory = _with_tokenizer(tmp_path, "mistral", tok, options)
    code = (
        "import sys; from flowgraph.models.heads import load_checkpoint;"
        f"c = load_checkpoint({str(directory)!r}); c.attention(c.tokenize('the cat'));"
        "c.qk_form(0, 0, offset=-3); c.rotary_planes(1, 2); print('transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


def test_a_hub_cache_snapshot_is_named_by_its_repository(tmp_path):
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-tiny" / "snapshots" / "0123abcd"
    snapshot.parent.mkdir(parents=True)
    _save(_model(), snapshot, "safetensors")
    assert load_checkpoint(snapshot).name == "HuggingFaceTB/SmolLM2-tiny"
    assert load_checkpoint(snapshot / "config.json").name == "HuggingFaceTB/SmolLM2-tiny"
