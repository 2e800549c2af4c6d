"""Bad input, tried as an adversary would: sizes (0, 1, huge, negative, float, bool, None), NaN
and inf, empty tensors, wrong dtypes and devices (``meta`` stands for a non-CPU device),
non-contiguous inputs, and corpora that are not text. Grouped by layer: the graph core, gpu/,
models/. Each error path matches the message, which names the argument, the value and what was
expected; a size too large is refused before anything large is allocated."""

from __future__ import annotations

import functools
import math
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph import gpu, plot
from flowgraph.gpu import SparseMask
from flowgraph.gpu.metric import (
    metric_attention,
    metric_attention_reference,
    pack_symmetric,
    quadratic_attention_reference,
)
from flowgraph.gpu.reference import sparse_attention_reference
from flowgraph.models import (
    GPT,
    CharTask,
    DotProductAttention,
    EntityMemory,
    GPTConfig,
    MetricAttention,
    PartiallyFrozenEmbedding,
    QuadraticAttention,
    SortTask,
    TrainConfig,
    entity_attention,
    find_mentions,
    remap,
)
from flowgraph.models.attention import masked_attention
from flowgraph.models.tasks import heldout_batches
from flowgraph.models.word2vec import WordVectors, train_word2vec
from flowgraph.models.word2vec.corpus import MAX_SENTENCE_WORDS, TextFile

MEMORY = r"would need about [\d.]+ [KMGTP]?i?B of memory, above the limit"


def small_peak(call) -> int:
    """Bytes that numpy/Python allocated at the peak of ``call`` (which must raise)."""
    tracemalloc.start()
    try:
        call()
    except (ValueError, TypeError):
        pass
    else:  # pragma: no cover - the callers expect a refusal
        raise AssertionError("the call was not refused")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# =============================================================================== graph core ====
@functools.cache
def big(name: str) -> fg.Pattern:
    """Patterns that build (a few MB) but are too large for the op tried on them: built once,
    outside the measured call."""
    return {
        "star": lambda: fg.star(10**6),
        "stack": lambda: fg.stack(fg.local(4096, 1), 600),
        "strided": lambda: fg.strided(2**20),
        "dense": lambda: fg.dense(10**6),
        "local-bi": lambda: fg.local(10**6, 10**5, causal=False),
        "ltr-merged": lambda: fg.ltr(2**20).merged(),
    }[name]()


HUGE_PATTERNS = [
    # rules that cannot fit are refused when the pattern is built ...
    ("fixed-1e9", lambda: fg.fixed(10**9), r"fixed\(n=1000000000, stride=31622, summary=1\)"),
    # ... and CSR steps that cannot fit when they are first asked for (check needs none)
    ("dense-1e6", lambda: big("dense").steps, r"dense\(n=1000000\) with 500,000,500,000 entries"),
    ("dense-2^40", lambda: fg.dense(2**40), r"dense\(n=1099511627776\)"),
    ("dense-uint64", lambda: fg.dense(np.uint64(2**63)), r"dense\(n=9223372036854775808\)"),
    ("strided-2^20", lambda: big("strided").steps, r"strided\(n=1048576, stride=1024\) with"),
    ("local-bi", lambda: big("local-bi").steps, r"local\(n=1000000, window=100000\) with"),
    ("ltr-merged", lambda: big("ltr-merged").steps, r"ltr\(n=1048576, stride=1024\)/merged"),
    ("ltr-1e9", lambda: fg.ltr(10**9), r"ltr\(n=1000000000"),
    ("rtl-1e9", lambda: fg.rtl(10**9), r"rtl\(n=1000000000"),
    ("star-1e9", lambda: fg.star(10**9), r"star\(n=1000000000\)"),
    (
        "layout",
        lambda: fg.from_block_layout(np.ones((64, 64), bool), 4096, True),
        r"from_block_layout\(nb=64, block=4096\)",
    ),
    ("stack-layers", lambda: fg.stack(fg.dense(4), 10**9), r"stack\(layers=1000000000"),
    (
        "check-star-bitsets",
        lambda: fg.check(big("star"), engine="bitsets"),
        r"check\(pattern\) at n=1000000",
    ),
    (
        "reachability-steps",
        lambda: fg.reachability(big("stack")),
        r"reachability\(\) of 600 steps at n=4096",
    ),
]


@pytest.mark.parametrize(
    "call,match", [c[1:] for c in HUGE_PATTERNS], ids=[c[0] for c in HUGE_PATTERNS]
)
def test_huge_sizes_are_refused_up_front_with_the_memory(call, match):
    """fg.flow_graph's refusal is tried with a small max_bytes (a pattern past its default limit
    would itself hold 25 million entries)."""
    with pytest.raises(ValueError, match=match + ".*" + MEMORY):
        call()
    assert small_peak(call) < 64 * 2**20  # refused before any large allocation


@pytest.mark.parametrize(
    "make",
    [
        lambda mb: fg.dense(64, max_bytes=mb),
        lambda mb: fg.local(64, 4, max_bytes=mb),
        lambda mb: fg.strided(64, max_bytes=mb),
        lambda mb: fg.fixed(64, max_bytes=mb),
        lambda mb: fg.ltr(64, max_bytes=mb),
        lambda mb: fg.rtl(64, max_bytes=mb),
        lambda mb: fg.star(64, max_bytes=mb),
        lambda mb: fg.from_masks(np.ones((64, 64), bool), True, max_bytes=mb),
        lambda mb: fg.from_block_layout(np.ones((4, 4), bool), 16, True, max_bytes=mb),
        lambda mb: fg.stack(fg.strided(64), 3, max_bytes=mb).steps,  # a stack's CSR
        lambda mb: fg.stack(fg.from_masks(np.ones((64, 64), bool), True), 3, max_bytes=mb),
        lambda mb: fg.check(fg.strided(64), max_bytes=mb),
        lambda mb: fg.reachability(fg.strided(64), max_bytes=mb),
        lambda mb: fg.flow_graph(fg.strided(64), max_bytes=mb),
    ],
)
def test_max_bytes_is_the_limit_and_is_checked(make):
    make(2**30)  # within the limit: built
    with pytest.raises(ValueError, match=MEMORY + r" max_bytes=1000\.0 B"):
        make(1000)
    with pytest.raises(ValueError, match=r"max_bytes must be ≥ 1, got max_bytes=0"):
        make(0)
    with pytest.raises(TypeError, match=r"max_bytes must be an int, got None"):
        make(None)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 300),
    data=st.data(),
    causal=st.booleans(),
    name=st.sampled_from(["dense", "local", "strided", "fixed", "ltr", "rtl", "star"]),
)
def test_the_entry_count_of_the_rules_is_the_built_count(n, data, causal, name):
    """edges() and the up-front refusal count a rule's entries without building them; they equal
    the entries of the built CSR steps."""
    stride = data.draw(st.integers(1, n))
    summary = data.draw(st.integers(1, stride))
    makers = {
        "dense": lambda: fg.dense(n, causal),
        "local": lambda: fg.local(n, stride, causal),
        "strided": lambda: fg.strided(n, stride, causal),
        "fixed": lambda: fg.fixed(n, stride, summary, causal),
        "ltr": lambda: fg.ltr(n, stride),
        "rtl": lambda: fg.rtl(n, stride),
        "star": lambda: fg.star(n, data.draw(st.integers(0, n - 1))),
    }
    p = makers[name]()
    assert p.edges() == tuple(int(s.nnz) for s in p.steps)


def test_positions_above_int32_are_refused_even_with_the_memory():
    with pytest.raises(ValueError, match=r"n must be ≤ 2\*\*31 − 1 = 2147483647.*n=2147483648"):
        fg.star(2**31, max_bytes=2**62)


ONE = [
    fg.dense(1),
    fg.dense(1, causal=False),
    fg.local(1, 1),
    fg.strided(1),
    fg.fixed(1),
    fg.ltr(1),
    fg.rtl(1),
    fg.star(1),
    fg.from_masks(np.ones((1, 1), bool), True),
    fg.from_block_layout(np.ones((1, 1), bool), 1, True),
]


@pytest.mark.parametrize("pattern", ONE, ids=lambda p: p.name)
def test_n_equal_one_goes_through_every_op(pattern):
    report = fg.check(fg.stack(pattern, 2), flow=True)
    assert report.full_information and report.flow.per_query == (1,)
    assert fg.flow_graph(pattern).number_of_nodes() == pattern.num_steps + 1
    assert fg.reachability(pattern)[-1].tolist() == [[True]]
    for fig in (
        plot.make_mask_figure(pattern),
        plot.make_flow_graph_figure(pattern),
        plot.make_reachability_figure(pattern),
        plot.make_flow_figure(report),
    ):
        assert fig.data
    mask = SparseMask.from_pattern(pattern, block=16)
    x = torch.randn(1, 1, 1, 4)
    torch.testing.assert_close(gpu.sparse_attention(x, x, x, mask), x)  # softmax over one key


CORE_CASES = [
    # the checks of check, reachability, stack and the figure functions
    (
        "check-flow-int",
        lambda: fg.check(fg.dense(2), flow=1),
        TypeError,
        r"flow must be True or False, got 1",
    ),
    (
        "reach-not-pattern",
        lambda: fg.reachability("x"),
        TypeError,
        r"pattern must be a flowgraph\.Pattern, got str",
    ),
    (
        "reach-max-n-none",
        lambda: fg.reachability(fg.dense(2), max_n=None),
        TypeError,
        r"max_n must be an int, got None",
    ),
    (
        "reach-max-n-float",
        lambda: fg.reachability(fg.dense(4), max_n=1.5),
        TypeError,
        r"max_n must be an int, got 1\.5",
    ),
    (
        "dense-max-bytes-none",
        lambda: fg.dense(4).dense(0, max_bytes=None),
        TypeError,
        r"max_bytes must be an int, got None",
    ),
    (
        "stack-heads-float",
        lambda: fg.stack(fg.dense(2), 2, mode="heads", heads=1.5),
        TypeError,
        r"heads must be an int",
    ),
    (
        "png-scale-inf",
        lambda: plot.write_png(plot.make_mask_figure(fg.dense(2)), "/tmp/x.png", scale=math.inf),
        ValueError,
        r"scale must be a number > 0 and finite, got scale=inf",
    ),
    (
        "png-scale-nan",
        lambda: plot.write_png(plot.make_mask_figure(fg.dense(2)), "/tmp/x.png", scale=math.nan),
        ValueError,
        r"scale=nan",
    ),
    # user masks and layouts
    (
        "masks-ragged",
        lambda: fg.from_masks([[True, False], [True]], True),
        ValueError,
        r"masks\[0\] is not a rectangular array",
    ),
    (
        "layout-sparse-int",
        lambda: fg.from_block_layout(sp.csr_array(np.ones((2, 2), int)), 2, True),
        TypeError,
        r"layout must be boolean, got dtype int64",
    ),
    (
        "layout-no-steps",
        lambda: fg.from_block_layout(np.ones((0, 2, 2), bool), 2, True),
        ValueError,
        r"layout must hold at least one step, got shape \(0, 2, 2\)",
    ),
    (
        "pattern-params-list",
        lambda: fg.Pattern("x", 2, True, [np.eye(2, dtype=bool)], params=[1]),
        TypeError,
        r"params must be a mapping or None, got list",
    ),
    (
        "pattern-steps-int",
        lambda: fg.Pattern("x", 2, True, 5),
        TypeError,
        r"steps must be a sequence of masks, got int",
    ),
    # Pattern.from_dict: nothing truncated, nothing passed to scipy unchecked
    (
        "dict-float-index",
        lambda: fg.Pattern.from_dict(
            {
                "name": "x",
                "n": 2,
                "causal": True,
                "steps": [{"indptr": [0, 1, 2], "indices": [0.5, 1]}],
            }
        ),
        ValueError,
        r"steps\[0\].*indices must be a list of integers, got dtype float64",
    ),
    (
        "dict-bool-index",
        lambda: fg.Pattern.from_dict(
            {
                "name": "x",
                "n": 2,
                "causal": True,
                "steps": [{"indptr": [0, 1, 2], "indices": [True, False]}],
            }
        ),
        ValueError,
        r"indices must be a list of integers, got dtype bool",
    ),
    (
        "dict-decreasing",
        lambda: fg.Pattern.from_dict(
            {"name": "x", "n": 2, "causal": True, "steps": [{"indptr": [0, 2, 1], "indices": [0]}]}
        ),
        ValueError,
        r"steps\[0\] is not a CSR step: indptr must be non-decreasing",
    ),
    (
        "dict-non-monotone",
        lambda: fg.Pattern.from_dict(
            {
                "name": "x",
                "n": 3,
                "causal": True,
                "steps": [{"indptr": [0, 2, 1, 2], "indices": [0, 1]}],
            }
        ),
        ValueError,
        r"indptr must be non-decreasing",
    ),
    (
        "dict-steps-int",
        lambda: fg.Pattern.from_dict({"name": "x", "n": 2, "causal": True, "steps": 5}),
        TypeError,
        r"steps must be a list of CSR steps, got int",
    ),
]


@pytest.mark.parametrize(
    "call,exc,match", [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES]
)
def test_graph_core_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_stack_of_many_heads_joins_only_the_distinct_steps():
    # heads=10**9 once built a list of 10**9 steps; the union only needs the p distinct ones
    p = fg.strided(16, stride=4)
    assert fg.stack(p, 2, mode="heads", heads=10**9) == fg.stack(p, 2, mode="heads", heads=2)


def test_sparse_layouts_are_read_like_dense_ones():
    layout = np.eye(3, dtype=bool)
    assert fg.from_block_layout(sp.csr_array(layout), 2, True) == fg.from_block_layout(
        layout, 2, True
    )


# ==================================================================================== gpu ====
P16 = fg.strided(16, stride=4)
M16 = SparseMask.from_pattern(P16, block=16)


def qkv(b=1, h=2, n=16, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def with_value(x: torch.Tensor, value: float, index=(0, 1, 3, 2)) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_sparse_attention_refuses_nan_and_inf_naming_the_tensor(which, value):
    args = qkv()
    args[which] = with_value(args[which], value)
    name = ("q_bhnd", "k_bhnd", "v_bhnd")[which]
    for fn in (gpu.sparse_attention, sparse_attention_reference):
        with pytest.raises(
            ValueError, match=rf"{name} must be finite, got {value} at index \(0, 1, 3, 2\)"
        ):
            fn(*args, M16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_overflowing_score_takes_the_weight_instead_of_nan(dtype):
    """Finite inputs whose score overflows to +inf: the softmax's limit (all weight on that key),
    not inf − inf = NaN. The oracle: the same attention where that key alone is allowed."""
    big = 1e30 if dtype == torch.float32 else 1e200
    q, k, v = qkv(dtype=dtype)
    k = with_value(k, 0.0, (0, 0, 5, slice(None)))
    k[0, 0, 5, 0] = big
    q[0, 0, 9:, 0] = big  # queries ≥ 9 of head 0 score +inf against key 5 (when allowed)
    out, lse = sparse_attention_reference(q, k, v, M16, return_lse=True)
    assert torch.isfinite(out).all()
    allowed = torch.from_numpy(P16.dense(0))
    for query in range(9, 16):
        if allowed[query, 5]:
            torch.testing.assert_close(out[0, 0, query], v[0, 0, 5])
            assert lse[0, 0, query] == math.inf
    torch.testing.assert_close(gpu.sparse_attention(q, k, v, M16), out)


def test_metric_attention_refuses_nan_and_keeps_overflow_finite():
    p = torch.randn(1, 2, 16, 4, dtype=torch.float64)
    m = pack_symmetric(torch.eye(4, dtype=torch.float64).expand(2, 4, 4).contiguous())
    with pytest.raises(ValueError, match=r"p_bhnk must be finite, got nan at index \(0, 1, 3, 2\)"):
        metric_attention(with_value(p, math.nan), m)
    with pytest.raises(ValueError, match=r"m_packed_hl must be finite, got inf at index \(1, 0\)"):
        metric_attention(p, with_value(m, math.inf, (1, 0)))
    big = p * 1e160  # p·M·pᵀ overflows float64
    for mask in (None, M16):
        for causal in (True, False):
            out = metric_attention(big, m, causal=causal, mask=mask)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, metric_attention_reference(big, m, causal, mask))
    x = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match=r"x_bnc must be finite, got nan"):
        quadratic_attention_reference(
            with_value(x, math.nan, (0, 1, 1)), torch.ones(2, 3, 3), torch.ones(1, 2, 4, 5)
        )


def test_inputs_on_the_meta_device_get_a_clear_error():
    meta = [x.to("meta") for x in qkv()]
    with pytest.raises(ValueError, match=r"a mask on the meta device holds none"):
        gpu.sparse_attention(*meta, M16.to("meta"))
    with pytest.raises(ValueError, match=r"masks_hqk is on the meta device, which holds no values"):
        SparseMask.from_masks(torch.ones(1, 4, 4, dtype=torch.bool, device="meta"), block=16)
    with pytest.raises(ValueError, match=r"permute is on the meta device"):
        SparseMask.from_pattern(P16, permute=torch.arange(16, device="meta"))
    # shapes only: pack_symmetric has no values to check on meta, and gives the packed shape
    assert pack_symmetric(torch.eye(3, device="meta")).shape == (6,)


def test_non_contiguous_inputs_give_the_contiguous_result():
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in qkv(1, 3, 16, 4))
    mask = SparseMask.from_pattern(P16, block=16)
    assert not q.is_contiguous()
    got = gpu.sparse_attention(q, k, v, mask)
    torch.testing.assert_close(
        got, gpu.sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), mask)
    )


SCATTERED = np.zeros((1, 1024, 1024), bool)
SCATTERED[0, ::128, ::128] = True  # one entry in each 128×128 tile: few pairs, many bitmasks

GPU_CASES = [
    (
        "heads-huge",
        lambda: SparseMask.from_pattern(P16, mode="heads", heads=10**9),
        ValueError,
        r"a SparseMask of 1,000,000,000 heads at n=16.*" + MEMORY,
    ),
    (
        "pattern-max-bytes",
        lambda: SparseMask.from_pattern(P16, max_bytes=1000),
        ValueError,
        r"from_pattern\(n=16, block=64\) with 70 allowed pairs.*" + MEMORY,
    ),
    (
        "masks-max-bytes",
        lambda: SparseMask.from_masks(np.ones((1, 64, 64), bool), max_bytes=10**5),
        ValueError,
        r"from_masks\(n=64, block=64\) with 4,096 allowed pairs.*" + MEMORY,
    ),
    (
        "bits-max-bytes",
        lambda: SparseMask.from_masks(SCATTERED, block=128, max_bytes=10**5),
        ValueError,
        r"the bitmasks of 64 partial 128×128 tiles.*" + MEMORY,
    ),
    (
        "max-bytes-none",
        lambda: SparseMask.from_pattern(P16, max_bytes=None),
        TypeError,
        r"max_bytes must be an int, got None",
    ),
    (
        "to-dense-none",
        lambda: M16.to_dense(max_bytes=None),
        TypeError,
        r"max_bytes must be an int, got None",
    ),
    (
        "bits-float-slots",
        lambda: M16.unpacked_bits(torch.tensor([0.5])),
        TypeError,
        r"slots must be an integer tensor of slot indices, got torch\.float32",
    ),
    (
        "permutation-huge",
        lambda: gpu.mask.strided_permutation(10**12, 1),
        ValueError,
        r"n must be ≤ 2\*\*31 − 1",
    ),
    (
        "pack-atol-nan",
        lambda: pack_symmetric(torch.eye(2), atol=math.nan),
        ValueError,
        r"atol must be None or a finite number ≥ 0, got atol=nan",
    ),
    ("pack-atol-neg", lambda: pack_symmetric(torch.eye(2), atol=-1.0), ValueError, r"atol=-1\.0"),
    ("pack-atol-str", lambda: pack_symmetric(torch.eye(2), atol="x"), ValueError, r"atol='x'"),
    (
        "pack-inf",
        lambda: pack_symmetric(torch.tensor([[math.inf, 1.0], [1.0, 0.0]])),
        ValueError,
        r"m_hkk must be symmetric with finite entries, got 1 nan or inf entries",
    ),
]


@pytest.mark.parametrize(
    "call,exc,match", [c[1:] for c in GPU_CASES], ids=[c[0] for c in GPU_CASES]
)
def test_gpu_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_a_shared_permutation_for_many_heads_is_checked_once():
    # (n,) for 2048 heads was broadcast to (heads, n) and materialised twice to be checked
    perm = np.random.default_rng(0).permutation(16)
    many = SparseMask.from_pattern(P16, mode="heads", heads=2048, block=16, permute=perm)
    two = SparseMask.from_pattern(P16, mode="heads", heads=2, block=16, permute=perm)
    assert many.heads == 2048
    assert torch.equal(many.to_dense()[:2], two.to_dense())


# ================================================================================= models ====
ATTN = [DotProductAttention, QuadraticAttention, MetricAttention]


@pytest.mark.parametrize("cls", ATTN)
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(d_model=8, n_head=0), ValueError, r"n_head must be an int ≥ 1, got n_head=0"),
        (dict(d_model=8, n_head=-2), ValueError, r"n_head=-2"),
        (dict(d_model=0, n_head=1), ValueError, r"d_model must be an int ≥ 1, got d_model=0"),
        (dict(d_model=8.0, n_head=2), ValueError, r"d_model=8\.0"),
        (dict(d_model=8, n_head=True), ValueError, r"n_head=True"),
        (dict(n_ctx=0), ValueError, r"n_ctx must be an int ≥ 1, got n_ctx=0"),
        (dict(n_ctx=None), ValueError, r"n_ctx=None"),
        (dict(causal="no"), TypeError, r"causal must be True or False, got 'no'"),
        (dict(layer=-1), ValueError, r"layer must be an int ≥ 0, got layer=-1"),
        (dict(dropout=math.nan), ValueError, r"dropout must be in \[0, 1\), got dropout=nan"),
        (dict(dropout="x"), TypeError, r"dropout must be a number"),
        (dict(pattern_mode="bad"), ValueError, r"pattern_mode must be one of"),
        (dict(d_model=2**20, n_head=1), ValueError, r"with [\d,]+ parameters.*" + MEMORY),
    ],
)
def test_attention_module_arguments(cls, kwargs, exc, match):
    kwargs = {"d_model": 8, "n_head": 2, "n_ctx": 4, **kwargs}
    with pytest.raises(exc, match=match):
        cls(kwargs.pop("d_model"), kwargs.pop("n_head"), **kwargs)


@pytest.mark.parametrize("cls", ATTN)
@pytest.mark.parametrize("pattern", [None, "strided"])
def test_attention_modules_on_empty_and_odd_inputs(cls, pattern):
    pat = fg.strided(4, stride=2) if pattern else None
    m = cls(8, 2, n_ctx=4, pattern=pat)
    for shape in [(1, 0, 8), (0, 4, 8), (0, 0, 8)]:  # T = 0, B = 0: empty outputs, no error
        assert m(torch.zeros(shape)).shape == shape
    x = torch.randn(1, 8, 4).transpose(1, 2)  # non-contiguous
    torch.testing.assert_close(m(x), m(x.contiguous()))
    with pytest.raises(TypeError, match=r"x_bnc must be a torch\.Tensor, got list"):
        m([[1.0] * 8] * 4)
    with pytest.raises(
        TypeError,
        match=r"x_bnc must match the module's parameters \(torch\.float32 on cpu\), got "
        r"torch\.int64 on cpu",
    ):
        m(torch.zeros(1, 4, 8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"got torch\.float32 on meta"):
        m(torch.zeros(1, 4, 8, device="meta"))
    with pytest.raises(ValueError, match=r"x_bnc must be finite, got nan at index \(0, 1, 2\)"):
        m(with_value(torch.zeros(1, 4, 8), math.nan, (0, 1, 2)))
    with pytest.raises(
        ValueError,
        match=r"attn_mask's leading dimensions \(3, 2\) must each be 1 or match \(B, h\)=\(2, 2\)",
    ):
        m(torch.randn(2, 4, 8), torch.ones(3, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"expected x_bnc and attn_mask on one device, got cpu and meta"
    ):
        m(torch.randn(1, 4, 8), torch.ones(4, 4, dtype=torch.bool, device="meta"))


def test_masked_attention_with_an_infinite_score_is_finite():
    """The dense reference path: a +inf score takes the weight (the softmax's limit)."""
    q = torch.tensor([[[[1e30], [1.0]]]])
    v = torch.tensor([[[[2.0], [5.0]]]])
    out = masked_attention(q, q, v, None, 1.0)
    assert torch.isfinite(out).all()
    assert out[0, 0, 0, 0] == 2.0  # query 0 scores +inf against key 0 only


GPT_CASES = [
    (
        "vocab-huge",
        lambda: GPTConfig(vocab_size=10**12),
        ValueError,
        r"GPT\(vocab_size=1000000000000.*parameters.*" + MEMORY,
    ),
    (
        "n-ctx-huge",
        lambda: GPTConfig(vocab_size=10, n_ctx=10**11),
        ValueError,
        r"n_ctx=100000000000.*" + MEMORY,
    ),
    (
        "masks-huge",
        lambda: GPTConfig(vocab_size=10, n_ctx=2**15, pattern="strided", n_layer=16),
        ValueError,
        MEMORY,
    ),
    (
        "causal-str",
        lambda: GPTConfig(vocab_size=10, causal="no"),
        TypeError,
        r"causal must be True or False, got causal='no'",
    ),
    (
        "dropout-str",
        lambda: GPTConfig(vocab_size=10, dropout="x"),
        TypeError,
        r"dropout must be a number in \[0, 1\), got dropout='x'",
    ),
    (
        "pattern-args-list",
        lambda: GPTConfig(vocab_size=10, pattern="strided", pattern_args=[1]),
        TypeError,
        r"pattern_args must be a dict",
    ),
    (
        "train-lr-inf",
        lambda: TrainConfig(lr=math.inf),
        ValueError,
        r"need 0 < min_lr ≤ lr < inf, got min_lr=0\.0003, lr=inf",
    ),
    ("train-lr-str", lambda: TrainConfig(lr="x"), ValueError, r"lr must be a number, got lr='x'"),
    (
        "train-wd-nan",
        lambda: TrainConfig(weight_decay=math.nan),
        ValueError,
        r"weight_decay must be a number, got weight_decay=nan",
    ),
    (
        "train-wd-neg",
        lambda: TrainConfig(weight_decay=-0.1),
        ValueError,
        r"weight_decay must be finite and ≥ 0, got -0\.1",
    ),
    (
        "train-beta",
        lambda: TrainConfig(beta1=1.0),
        ValueError,
        r"beta1 must be in \[0, 1\), got beta1=1\.0",
    ),
    ("train-clip-0", lambda: TrainConfig(grad_clip=0.0), ValueError, r"grad_clip must be > 0"),
    (
        "train-clip-nan",
        lambda: TrainConfig(grad_clip=math.nan),
        ValueError,
        r"grad_clip must be a number, got grad_clip=nan",
    ),
    (
        "train-warmup-float",
        lambda: TrainConfig(warmup=2.5),
        ValueError,
        r"warmup must be an int ≥ 0, got warmup=2\.5",
    ),
    (
        "train-seed-str",
        lambda: TrainConfig(seed="x"),
        ValueError,
        r"seed must be an int ≥ 0, got seed='x'",
    ),
    ("train-seed-huge", lambda: TrainConfig(seed=2**64), ValueError, r"seed must be below 2\*\*64"),
]


@pytest.mark.parametrize(
    "call,exc,match", [c[1:] for c in GPT_CASES], ids=[c[0] for c in GPT_CASES]
)
def test_gpt_and_train_config_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
    assert small_peak(call) < 64 * 2**20


@pytest.mark.parametrize("attention", ["sdpa", "quadratic", "metric"])
@pytest.mark.parametrize("metric", ["symmetric", "psd"])
def test_the_parameter_count_checked_up_front_is_the_built_count(attention, metric):
    config = GPTConfig(
        vocab_size=11, n_layer=3, n_head=4, d_model=32, n_ctx=9, attention=attention, metric=metric
    )
    assert config.num_params() == GPT(config).num_params()


def test_gpt_forward_and_generate_bad_input():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8, d_model=8, n_head=2, n_layer=1))
    with pytest.raises(
        ValueError,
        match=r"idx_bt must hold token ids in \[0, vocab_size=10\), got values from 0 to 10",
    ):
        model(torch.tensor([[0, 10]]))
    with pytest.raises(ValueError, match=r"got values from -1 to 3"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match=r"idx_bt must be a torch\.Tensor, got list"):
        model([[1, 2]])
    assert model(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 10)
    assert model(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3, 10)
    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match=r"max_new_tokens must be an int ≥ 0"):
            model.generate(torch.zeros(1, 1, dtype=torch.long), bad)


TASK = SortTask(length=5, vocab=3)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: TASK.batch("train", 0, torch.Generator()),
            ValueError,
            r"batch_size must be ≥ 1, got batch_size=0",
        ),
        (lambda: TASK.batch("train", -1, torch.Generator()), ValueError, r"batch_size=-1"),
        (
            lambda: TASK.batch("train", 2.5, torch.Generator()),
            TypeError,
            r"batch_size must be an int, got 2\.5",
        ),
        (
            lambda: TASK.batch("train", 10**12, torch.Generator()),
            ValueError,
            r"a batch of 1,000,000,000,000.*" + MEMORY,
        ),
        (
            lambda: TASK.batch("train", 2, None),
            TypeError,
            r"generator must be a CPU torch\.Generator, got None",
        ),
        (
            lambda: TASK.batch("train", 2, 5),
            TypeError,
            r"generator must be a CPU torch\.Generator, got 5",
        ),
        (lambda: SortTask(length=10**9).batch("train", 2, torch.Generator()), ValueError, MEMORY),
        (
            lambda: SortTask(test_fraction="x"),
            TypeError,
            r"test_fraction must be a number in \(0, 0\.5\), got 'x'",
        ),
        (lambda: SortTask(length=True), ValueError, r"length must be an int ≥ 2, got length=True"),
        (
            lambda: list(heldout_batches(TASK, 3, 0)),
            ValueError,
            r"batch_size must be an int ≥ 1, got batch_size=0",
        ),
        (
            lambda: list(heldout_batches(TASK, -1)),
            ValueError,
            r"size must be an int ≥ 1, got size=-1",
        ),
    ],
)
def test_task_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_char_task_files(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("héllo wörld\n" * 50).encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"latin1\.txt is not valid UTF-8: byte 1 \(line 1\) is b'\\xe9'"
    ):
        CharTask(bad)
    with pytest.raises(ValueError, match=r"text must be a readable text file"):
        CharTask(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"has 0 characters"):
        CharTask(empty)
    good = tmp_path / "good.txt"
    good.write_text("abcdefgh" * 100)
    with pytest.raises(ValueError, match=r"batch_size must be ≥ 1"):
        CharTask(good, n_ctx=8).batch("train", 0, torch.Generator())


H, E = torch.randn(3, 4), torch.randn(6, 4)
ENTITY_CASES = [
    (
        "em-huge",
        lambda: EntityMemory(8, 10**10, 64),
        ValueError,
        r"EntityMemory\(n_entities=10000000000, d_entity=64\).*" + MEMORY,
    ),
    (
        "ea-list",
        lambda: entity_attention([[1.0]], E),
        TypeError,
        r"h_md must be a torch\.Tensor, got list",
    ),
    (
        "ea-int",
        lambda: entity_attention(H.long(), E.long()),
        TypeError,
        r"h_md must be floating point, got dtype torch\.int64",
    ),
    ("ea-complex", lambda: entity_attention(H.cfloat(), E.cfloat()), TypeError, r"complex64"),
    (
        "ea-no-entities",
        lambda: entity_attention(H, torch.zeros(0, 4)),
        ValueError,
        r"e_kd must hold at least one entity row",
    ),
    (
        "ea-need-out",
        lambda: entity_attention(H, E, need_out="no"),
        TypeError,
        r"need_out must be True or False, got 'no'",
    ),
    (
        "ea-nan",
        lambda: entity_attention(with_value(H, math.nan, (1, 2)), E),
        ValueError,
        r"h_md must be finite, got nan at index \(1, 2\)",
    ),
    (
        "ea-inf-e",
        lambda: entity_attention(H, with_value(E, -math.inf, (5, 0))),
        ValueError,
        r"e_kd must be finite, got -inf at index \(5, 0\)",
    ),
    (
        "ea-overflow",
        lambda: entity_attention(H * 1e30, E * 1e10),
        ValueError,
        r"the logits h_md·e_kdᵀ overflow torch\.float32",
    ),
    (
        "ea-gold-meta",
        lambda: entity_attention(H, E, torch.tensor([0, 1, 2], device="meta")),
        ValueError,
        r"gold_m is on the meta device",
    ),
    (
        "mentions-meta",
        lambda: find_mentions(torch.zeros(1, 3, dtype=torch.long, device="meta")),
        ValueError,
        r"bio_bn is on the meta device",
    ),
    (
        "em-nan",
        lambda: EntityMemory(8, 10, 4, top_k=3)(
            torch.full((1, 5, 8), math.nan), torch.tensor([[1, 2, 0, 1, 0]])
        ),
        ValueError,
        r"x_bnc must be finite",
    ),
    (
        "emb-dtype-str",
        lambda: PartiallyFrozenEmbedding(torch.randn(5, 3), [1], dtype="float32"),
        TypeError,
        r"dtype must be a floating-point dtype, got 'float32'",
    ),
    (
        "emb-device",
        lambda: PartiallyFrozenEmbedding(torch.randn(5, 3), [1], device="nonsense"),
        ValueError,
        r"device must be a torch\.device or a name like 'cpu', got 'nonsense'",
    ),
    (
        "emb-trainable-meta",
        lambda: PartiallyFrozenEmbedding(torch.randn(5, 3), torch.tensor([1], device="meta")),
        ValueError,
        r"trainable is on the meta device",
    ),
    (
        "remap-ids-meta",
        lambda: remap(torch.tensor([0], device="meta"), [0]),
        ValueError,
        r"ids is on the meta device",
    ),
    (
        "remap-order-meta",
        lambda: remap(torch.tensor([0]), torch.tensor([0], device="meta")),
        ValueError,
        r"order is on the meta device",
    ),
]


@pytest.mark.parametrize(
    "call,exc,match", [c[1:] for c in ENTITY_CASES], ids=[c[0] for c in ENTITY_CASES]
)
def test_entity_memory_and_embedding_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_entity_attention_of_non_contiguous_inputs():
    h_md, e_kd = torch.randn(4, 3).T, torch.randn(4, 6).T
    assert not h_md.is_contiguous()
    for got, want in zip(
        entity_attention(h_md, e_kd, torch.tensor([0, 5, 2]), block_size=4),
        entity_attention(
            h_md.contiguous(), e_kd.contiguous(), torch.tensor([0, 5, 2]), block_size=4
        ),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


def test_entity_memory_eval_softmax_with_an_infinite_logit_is_finite():
    """Eval mode's top-k softmax: a logit that overflows to +inf takes all the weight."""
    from flowgraph.models.entity_memory import _topk_attention

    e_kd = torch.randn(10, 4)
    e_kd[7] = torch.tensor([1e30, 0.0, 0.0, 0.0])
    h_md = torch.tensor([[1e30, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # h₀·E₇ = +inf
    o_md = _topk_attention(h_md, e_kd, 3, block_size=4)
    assert torch.isfinite(o_md).all()
    torch.testing.assert_close(o_md[0], e_kd[7])


# --- word2vec corpora ----------------------------------------------------------------------------
W2V = dict(min_count=1, vector_size=4, epochs=1, progress=False, workers=1)


@pytest.mark.parametrize(
    "content,match",
    [
        (
            b"a b \xff\xfe c\n",
            r"bad\.txt' is not valid utf-8 text \(at or after line 1: invalid start byte, "
            r"byte b'\\xff'\)",
        ),
        (b"a b\nc\x00d e\n", r"bad\.txt' holds a NUL byte on line 2; expected a text file"),
        (b"", r"sentences: the corpus is empty"),
        (b"  \n\t\n \r\n\x0b", r"sentences: the corpus is empty"),
    ],
    ids=["invalid-utf8", "nul", "empty", "whitespace"],
)
def test_corpora_that_are_not_text(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        train_word2vec(path, **W2V)


def test_a_directory_and_other_non_files(tmp_path):
    with pytest.raises(ValueError, match=r"sentences: '.*' is a directory, expected a text file"):
        train_word2vec(tmp_path, **W2V)
    with pytest.raises(TypeError, match=r"sentences: got bytes; pass a file path as str"):
        train_word2vec(str(tmp_path / "x.txt").encode(), **W2V)
    path = tmp_path / "ok.txt"
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match=r"block_chars: expected an integer ≥ 1, got 0"):
        TextFile(path, block_chars=0)  # it read nothing at all before
    with pytest.raises(ValueError, match=r"encoding: unknown text encoding 'bogus'"):
        TextFile(path, encoding="bogus")


@pytest.mark.parametrize("block_chars", [1, 3, 1 << 20])
def test_a_nul_byte_is_found_on_its_line_across_blocks(tmp_path, block_chars):
    path = tmp_path / "late-nul.txt"
    path.write_bytes(b"a b\n" * 5 + b"c\x00d\n")
    with pytest.raises(ValueError, match=r"holds a NUL byte on line 6"):
        list(TextFile(path, block_chars=block_chars))


def test_a_10_mb_line_without_a_newline_streams_in_bounded_sentences(tmp_path):
    path = tmp_path / "one-line.txt"
    words = [f"w{i % 97}" for i in range(2_800_000)]  # about 10 MB, no newline at all
    path.write_text(" ".join(words))
    assert path.stat().st_size > 10 * 2**20
    sentences = TextFile(path, block_chars=1 << 16)
    lengths = [len(s) for s in sentences]
    assert max(lengths) == MAX_SENTENCE_WORDS and sum(lengths) == len(words)


W2V_CASES = [
    (
        "mixed-tokens",
        dict(sentences=[["a", 3]]),
        TypeError,
        r"sentences: tokens must be str, got 3 \(int\)",
    ),
    ("alpha-inf", dict(alpha=math.inf), ValueError, r"alpha: expected a number > 0, got inf"),
    ("progress-str", dict(progress="x"), TypeError, r"progress: expected a bool, got 'x'"),
    (
        "device-meta",
        dict(device="meta"),
        ValueError,
        r"device: expected 'cpu', 'cuda' or 'cuda:N', got 'meta'",
    ),
    (
        "vector-size-huge",
        dict(vector_size=10**11),
        ValueError,
        r"word2vec \(V=2, vector_size=100,000,000,000, workers=1\).*" + MEMORY,
    ),
    (
        "workers-huge",
        dict(vector_size=10**6, workers=10**4),
        ValueError,
        r"workers=10000\).*" + MEMORY,
    ),
    (
        "epochs-huge",
        dict(epochs=10**30),
        ValueError,
        r"epochs: epochs × corpus words = .* overflows int64",
    ),
]


@pytest.mark.parametrize(
    "kwargs,exc,match", [c[1:] for c in W2V_CASES], ids=[c[0] for c in W2V_CASES]
)
def test_word2vec_bad_options(kwargs, exc, match):
    kwargs = {"sentences": [["a", "b"]], **W2V, **kwargs}
    with pytest.raises(exc, match=match):
        train_word2vec(**kwargs)


@pytest.mark.parametrize(
    "words,vectors,counts,exc,match",
    [
        (
            ["a", "b"],
            [[math.nan, 1.0], [1.0, 0.0]],
            None,
            ValueError,
            r"vectors: expected finite float32 values, got nan at row 0, column 0 \(1 values",
        ),
        (["a"], [[1e300]], None, ValueError, r"got 1e\+300 at row 0"),  # inf once cast
        (
            ["a"],
            np.array([[1j]]),
            None,
            TypeError,
            r"vectors: expected real numbers, got dtype complex128",
        ),
        (
            ["a"],
            np.array([["x"]]),
            None,
            TypeError,
            r"vectors: expected real numbers, got dtype <U1",
        ),
        ("ab", np.zeros((2, 2)), None, TypeError, r"words: expected a list of str, got a str"),
        (
            ["a"],
            np.zeros((1, 2)),
            [1.7],
            TypeError,
            r"counts: expected integers, got dtype float64",
        ),
        (["a"], np.zeros((1, 2)), [-5], ValueError, r"counts: expected counts ≥ 0, got -5"),
    ],
)
def test_word_vectors_bad_input(words, vectors, counts, exc, match):
    with pytest.raises(exc, match=match):
        WordVectors(words, vectors, counts=counts)


def test_word_pair_files(tmp_path):
    wv = WordVectors(["a", "b", "c"], np.eye(3))
    bad = tmp_path / "pairs.txt"
    bad.write_bytes(b"a\tb\t1\n\xff\tc\t2\n")
    with pytest.raises(ValueError, match=r"is not valid UTF-8 text"):
        wv.evaluate_pairs(bad)
    bad.write_text("a\tb\t1\na\tc\tnan\nb\tc\t3\n")
    with pytest.raises(ValueError, match=r"line 2 of .* has score nan"):
        wv.evaluate_pairs(bad)
