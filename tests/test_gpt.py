"""GPT: shapes, causality (a future token never changes past logits), the encoder, tied weights,
layer-indexed interleave, and the config's checks and JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import flowgraph as fg
from flowgraph.models.gpt import GPT, GPTConfig

VARIANTS = [
    dict(attention="sdpa"),
    dict(attention="quadratic"),
    dict(attention="metric"),
    dict(attention="metric", metric="psd"),
    dict(attention="sdpa", pattern="fixed", pattern_mode="interleave"),
    dict(attention="metric", pattern="strided", pattern_mode="heads"),
    dict(attention="quadratic", pattern="fixed", pattern_mode="merged"),
]


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=7, n_layer=3, n_head=2, d_model=16, n_ctx=16, **kw)).double()


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_shapes_and_causality(kw):
    model = _model(**kw)
    idx = torch.randint(0, 7, (3, 16), generator=torch.Generator().manual_seed(1))
    logits = model(idx)
    assert logits.shape == (3, 16, 7) and logits.dtype == torch.float64
    assert model(idx[:, :9]).shape == (3, 9, 7)  # shorter than n_ctx
    for t in (5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 7
        after = model(changed)
        assert torch.equal(after[:, :t], logits[:, :t]), "a future token changed a past logit"
        assert not torch.allclose(after[:, t], logits[:, t])  # the token itself matters
    # a prefix computed alone gives the same logits as inside the longer sequence
    torch.testing.assert_close(model(idx[:, :9]), logits[:, :9], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(attention="sdpa"), dict(attention="metric", pattern="ltr")])
def test_encoder_sees_the_future(kw):
    model = _model(causal=False, **kw)
    idx = torch.randint(0, 7, (2, 16), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 7
    assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])


def test_tied_output_head():
    model = _model()
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "wte.weight" in names
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.wte.weight[3].zero_()
    idx = torch.randint(0, 7, (1, 16))
    assert torch.equal(model(idx)[..., 3], torch.zeros(1, 16, dtype=torch.float64))
    model.zero_grad()
    model(idx).sum().backward()  # the head's gradient lands in the shared matrix
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_interleave_gives_each_layer_its_step():
    model = _model(pattern="fixed", pattern_args={"stride": 4})
    pattern = fg.fixed(16, stride=4)
    for i, block in enumerate(model.blocks):
        expected = torch.from_numpy(pattern.dense(i % 2))[None]
        assert torch.equal(block.attn.mask_hnn, expected)
        assert block.attn.layer == i


def test_config_round_trip_and_errors():
    config = GPTConfig(
        vocab_size=5, attention="metric", pattern="fixed", pattern_args={"stride": 4}
    )
    again = GPTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="attention must be one of"):
        GPTConfig(vocab_size=5, attention="flash")
    with pytest.raises(ValueError, match="pattern must be one of"):
        GPTConfig(vocab_size=5, pattern="spiral")
    with pytest.raises(ValueError, match="n_layer must be an int"):
        GPTConfig(vocab_size=5, n_layer=0)
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(vocab_size=5, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({"vocab_size": 5, "n_embd": 3})
    with pytest.raises(ValueError, match="bidirectional"):
        GPT(GPTConfig(vocab_size=5, n_ctx=16, pattern="ltr"))
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        _model()(torch.zeros(1, 17, dtype=torch.long))


def test_a_custom_pattern_round_trips_through_the_config():
    masks = np.tril(np.ones((2, 16, 16), dtype=bool))
    masks[1, 5:, :3] = False  # something no named pattern gives
    custom = fg.from_masks(masks, causal=True, name="mine")
    config = GPTConfig(vocab_size=5, n_ctx=16, pattern=custom, pattern_mode="heads")
    again = GPTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.pattern.name == "mine" and again.pattern.num_steps == 2
    torch.manual_seed(0)
    model = GPT(config)
    twin = GPT(again)
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, 5, (2, 16))
    torch.testing.assert_close(twin(ids), model(ids))


def test_generate_is_greedy_and_feeds_back():
    model = _model(attention="metric", pattern="fixed")
    prefix = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(3))
    out = model.generate(prefix, 8)
    assert out.shape == (3, 14) and torch.equal(out[:, :6], prefix)
    # every generated token is the argmax of the model on the sequence before it
    assert torch.equal(model(out[:, :-1])[:, 5:].argmax(-1), out[:, 6:])
    long = model.generate(torch.zeros(1, 16, dtype=torch.long), 3)  # context cropped to n_ctx
    assert long.shape == (1, 19)
    with pytest.raises(ValueError, match="causal model"):
        _model(causal=False).generate(prefix, 1)
