"""Checkpoint.attention's cache: bounded in bytes (ATTENTION_CACHE_BYTES by default, the loader's
cache_bytes, settable), least recently used first out, clear(); results in the forward's own
precision (float32 for every loader) unless float64 is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowgraph.models.heads import Checkpoint, load_checkpoint
from flowgraph.models.heads.checkpoint import ATTENTION_CACHE_BYTES, ATTENTION_CACHE_SIZE

L, H = 2, 3


class CountingCheckpoint(Checkpoint):
    """Attention that depends on the ids, in float32 (or ``dtype``), counting forward passes."""

    kind = "counting"

    def __init__(self, dtype=torch.float32, **options):
        super().__init__(
            Path("counting"),
            name="counting",
            attention_kind="dot",
            num_layers=L,
            num_heads=H,
            head_dim=1,
            d_model=H,
            n_ctx=64,
            vocab_size=10,
            causal=True,
            **options,
        )
        self.dtype, self.calls = dtype, 0

    def _attention_lhtt(self, ids_t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        T = len(ids_t)
        g = torch.Generator().manual_seed(int(ids_t.sum()) * 1000 + T)
        s_lhtt = torch.randn(L, H, T, T, generator=g, dtype=torch.float64)
        s_lhtt = s_lhtt.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -torch.inf)
        return torch.softmax(s_lhtt, -1).to(self.dtype)

    def _head_weights(self, layer):  # pragma: no cover - not used here
        raise NotImplementedError

    def _token_embeddings(self):  # pragma: no cover - not used here
        raise NotImplementedError

    def _vocabulary(self):  # pragma: no cover - not used here
        raise NotImplementedError


def nbytes(T: int, itemsize: int = 4) -> int:
    return L * H * T * T * itemsize


def test_the_default_bound_and_the_loader_parameter(tmp_path):
    assert ATTENTION_CACHE_BYTES == 2**30
    assert CountingCheckpoint().cache_bytes == ATTENTION_CACHE_BYTES
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=10, n_positions=8)
    transformers.GPT2Model(config).save_pretrained(tmp_path / "g")
    assert load_checkpoint(tmp_path / "g").cache_bytes == ATTENTION_CACHE_BYTES
    small = load_checkpoint(tmp_path / "g", cache_bytes=550)
    assert small.cache_bytes == 550
    first = small.attention([1, 2, 3])  # 1·2·9·4 = 72 bytes
    assert small.attention([1, 2, 3]) is first and small.cached_bytes == first.nbytes == 72
    small.attention(list(range(8)))  # 1·2·64·4 = 512 bytes: the two no longer fit together
    assert small.cached_bytes == 512 and small.attention([1, 2, 3]) is not first


def test_bytes_stay_under_the_bound_oldest_out_first():
    bound = int(2.5 * nbytes(10))
    ckpt = CountingCheckpoint(cache_bytes=bound)
    seqs = [[i, 1, 2, 3, 4, 5, 6, 7, 8, 9] for i in range(4)]
    kept = [ckpt.attention(s) for s in seqs[:2]]
    assert ckpt.cached_bytes == 2 * nbytes(10) and ckpt.calls == 2
    assert ckpt.attention(seqs[0]) is kept[0]  # a hit, and seqs[0] is now the most recent
    ckpt.attention(seqs[2])  # evicts seqs[1], the least recently used
    assert ckpt.cached_bytes == 2 * nbytes(10) <= bound and ckpt.calls == 3
    assert ckpt.attention(seqs[0]) is kept[0] and ckpt.calls == 3
    again = ckpt.attention(seqs[1])
    assert again is not kept[1] and ckpt.calls == 4
    np.testing.assert_array_equal(again, kept[1])  # recomputed: the same numbers
    for s in seqs:
        ckpt.attention(s)
        assert ckpt.cached_bytes <= bound


def test_a_result_larger_than_the_bound_is_returned_not_kept():
    ckpt = CountingCheckpoint(cache_bytes=nbytes(10) - 1)
    small = ckpt.attention([1, 2, 3])
    big = ckpt.attention(list(range(10)))
    assert big.shape == (L, H, 10, 10) and not big.flags.writeable
    assert ckpt.cached_bytes == small.nbytes
    assert ckpt.attention(list(range(10))) is not big and ckpt.calls == 3
    assert ckpt.attention([1, 2, 3]) is small  # the big one evicted nothing


def test_zero_keeps_nothing_and_the_setter_evicts():
    ckpt = CountingCheckpoint(cache_bytes=0)
    ckpt.attention([1, 2])
    ckpt.attention([1, 2])
    assert ckpt.calls == 2 and ckpt.cached_bytes == 0
    ckpt.cache_bytes = 10 * nbytes(6)
    for i in range(5):
        ckpt.attention([i] * 6)
    assert ckpt.cached_bytes == 5 * nbytes(6)
    ckpt.cache_bytes = 2 * nbytes(6)
    assert ckpt.cached_bytes == 2 * nbytes(6)
    calls = ckpt.calls
    ckpt.attention([4] * 6)  # the newest two stay
    ckpt.attention([3] * 6)
    assert ckpt.calls == calls
    ckpt.attention([0] * 6)
    assert ckpt.calls == calls + 1


def test_the_count_bound_still_holds():
    ckpt = CountingCheckpoint()
    for i in range(ATTENTION_CACHE_SIZE + 3):
        ckpt.attention([i % 10, i // 10])
    assert ckpt.cached_bytes == ATTENTION_CACHE_SIZE * nbytes(2)


def test_clear_empties_the_cache():
    ckpt = CountingCheckpoint()
    first = ckpt.attention([1, 2, 3])
    ckpt.attention([3, 2, 1])
    ckpt.clear()
    assert ckpt.cached_bytes == 0
    again = ckpt.attention([1, 2, 3])
    assert again is not first and ckpt.calls == 3
    np.testing.assert_array_equal(again, first)


def test_float32_unless_asked():
    ckpt = CountingCheckpoint()
    attn = ckpt.attention([1, 2, 3, 4])
    assert attn.dtype == np.float32 and attn.nbytes == nbytes(4)
    wide = ckpt.attention([1, 2, 3, 4], dtype=np.float64)
    assert wide.dtype == np.float64 and not wide.flags.writeable
    np.testing.assert_array_equal(wide, attn.astype(np.float64))
    assert ckpt.attention([1, 2, 3, 4], dtype="float64") is wide  # cached per dtype
    assert ckpt.cached_bytes == nbytes(4) + nbytes(4, 8)
    native = CountingCheckpoint(dtype=torch.float64)  # a float64 forward keeps its precision
    assert native.attention([1, 2]).dtype == np.float64
    assert native.attention([1, 2], dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int32, "float16", np.bool_, "nonsense", object])
def test_bad_dtype_is_named(dtype):
    with pytest.raises(ValueError, match=r"dtype must be numpy\.float32 or numpy\.float64"):
        CountingCheckpoint().attention([1], dtype=dtype)


@pytest.mark.parametrize(
    "value, error, match",
    [
        (-1, ValueError, r"cache_bytes must be ≥ 0 \(0 keeps nothing\), got cache_bytes=-1"),
        (1.5, TypeError, "cache_bytes must be an int, got 1.5"),
        (True, TypeError, "cache_bytes must be an int, got True"),
    ],
)
def test_bad_cache_bytes_are_named(tmp_path, value, error, match):
    with pytest.raises(error, match=match):
        CountingCheckpoint(cache_bytes=value)
    ckpt = CountingCheckpoint()
    with pytest.raises(error, match=match):
        ckpt.cache_bytes = value
    with pytest.raises(error, match=match):
        load_checkpoint(tmp_path, cache_bytes=value)  # checked before the path is read
