"""FlexAttention in and out: from_mask_mod (interval reader vs exact evaluation vs a dense
oracle), from_block_mask, to_mask_mod and to_block_mask (flex_attention on the CPU equals the
float64 dense-masked reference), and the errors of bad mask_mods."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph import _mask_eval
from flowgraph.keys import KeySpans

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def dense_mask(mask_mod, n: int, m: int, h: int = 0, b: int = 0) -> np.ndarray:
    """The oracle: every (q, kv) pair evaluated at once, as FlexAttention's create_mask does."""
    q = torch.arange(n, dtype=torch.int32)[:, None]
    kv = torch.arange(m, dtype=torch.int32)[None, :]
    out = mask_mod(torch.tensor(b), torch.tensor(h), q, kv)
    return torch.broadcast_to(out, (n, m)).numpy().copy()


DOC_N = torch.tensor([0] * 37 + [1] * 5 + [2] * 90 + [3] * 68)  # 200 tokens in 4 documents
IS_GLOBAL = torch.zeros(200, dtype=torch.bool)
IS_GLOBAL[[0, 17, 101]] = True


def sliding(b, h, q, kv):
    return (q >= kv) & (q - kv < 37)


def document(b, h, q, kv):
    return (DOC_N[q] == DOC_N[kv]) & (q >= kv)


def prefix_lm(b, h, q, kv):
    return (kv <= q) | (kv < 23)


def dilated(b, h, q, kv):
    return (q >= kv) & (q - kv < 60) & ((q - kv) % 3 == 0)


def globals_window(b, h, q, kv):
    return IS_GLOBAL[kv] | IS_GLOBAL[q] | (torch.abs(q - kv) <= 4)


def chunked(b, h, q, kv):
    return q // 16 >= kv // 16


def where_mask(b, h, q, kv):
    return torch.where(q < 100, kv <= q, torch.minimum(q, kv + 5) - kv >= 3)


def unknown_op(b, h, q, kv):  # sin has no interval rule here: the reader falls back
    return (torch.sin(q.float()) > 0) & (kv <= q)


MASKS = [sliding, document, prefix_lm, dilated, globals_window, chunked, where_mask, unknown_op]


@pytest.mark.parametrize("mask_mod", MASKS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [1, 33, 200])
def test_from_mask_mod_equals_the_dense_oracle(mask_mod, n):
    p = fg.from_mask_mod(mask_mod, n)
    np.testing.assert_array_equal(p.dense(0), dense_mask(mask_mod, n, n))


def test_interval_reader_decides_tiles_without_evaluating_them():
    n = 4096
    p = fg.from_mask_mod(sliding, n)
    assert p.params["exact_pairs"] < n * n // 20  # most of n² was decided by the rules
    assert "fallback" not in p.params
    assert fg.check(p) == fg.check(fg.from_masks(dense_mask(sliding, n, n), causal=True,
                                                 name="sliding"))  # fmt: skip
    q = fg.from_mask_mod(unknown_op, 200)
    assert q.params["fallback"] == [".float()"] and q.params["exact_pairs"] >= 200 * 200


# --- a random grammar of mask_mods: the interval rules against exact evaluation ------------
def _int_expr(draw, depth):
    choice = draw(st.integers(0, 7 if depth else 2))
    if choice == 0:
        return lambda q, kv: q
    if choice == 1:
        return lambda q, kv: kv
    if choice == 2:
        c = draw(st.integers(-40, 40))
        return lambda q, kv: c
    a = _int_expr(draw, depth - 1)
    c = draw(st.integers(1, 9))
    if choice == 3:
        b = _int_expr(draw, depth - 1)
        return lambda q, kv: a(q, kv) + b(q, kv)
    if choice == 4:
        b = _int_expr(draw, depth - 1)
        return lambda q, kv: a(q, kv) - b(q, kv)
    if choice == 5:
        return lambda q, kv: a(q, kv) * (c - 5)
    if choice == 6:
        return lambda q, kv: a(q, kv) // c
    return lambda q, kv: a(q, kv) % c


def _bool_expr(draw, depth):
    choice = draw(st.integers(0, 6 if depth else 1))
    if choice <= 1:
        a, b = _int_expr(draw, 2), _int_expr(draw, 2)
        op = draw(st.sampled_from(["ge", "lt", "eq", "ne"]))

        def cmp(q, kv):
            x, y = a(q, kv), b(q, kv)
            return {"ge": x >= y, "lt": x < y, "eq": x == y, "ne": x != y}[op]

        return cmp if not isinstance(a(1, 1), int) or not isinstance(b(1, 1), int) else (
            lambda q, kv: q >= kv
        )  # fmt: skip
    x, y = _bool_expr(draw, depth - 1), _bool_expr(draw, depth - 1)
    if choice == 2:
        return lambda q, kv: x(q, kv) & y(q, kv)
    if choice == 3:
        return lambda q, kv: x(q, kv) | y(q, kv)
    if choice == 4:
        return lambda q, kv: ~x(q, kv)
    if choice == 5:
        return lambda q, kv: x(q, kv) ^ y(q, kv)
    z = _bool_expr(draw, depth - 1)
    return lambda q, kv: torch.where(x(q, kv), y(q, kv), z(q, kv))


@st.composite
def mask_mods(draw):
    expr = _bool_expr(draw, 2)
    return lambda b, h, q, kv: expr(q, kv)


@settings(max_examples=120, deadline=None)
@given(mask_mod=mask_mods(), n=st.integers(1, 300), m=st.integers(1, 300))
def test_interval_rules_never_decide_a_tile_wrongly(mask_mod, n, m):
    b, h = torch.tensor(0), torch.tensor(0)
    try:
        fast = _mask_eval.read_mask(mask_mod, n, m, b, h, "random")
    except _mask_eval.MaskModError:  # an expression with no index in it: not a mask
        return
    slow = _mask_eval.read_mask(mask_mod, n, m, b, h, "random", intervals=False)
    for a, c in zip(
        (fast.row_r, fast.lo_r, fast.hi_r), (slow.row_r, slow.lo_r, slow.hi_r), strict=True
    ):
        np.testing.assert_array_equal(a, c)


# --- heads, batch, compressed keys ----------------------------------------------------------
def per_head(b, h, q, kv):
    return (q >= kv) & (q - kv < 4 * (h + 1))


def test_heads_give_one_step_per_head():
    p = fg.from_mask_mod(per_head, 64, heads=3)
    assert p.num_steps == 3 and p.params["heads"] == 3
    for h in range(3):
        np.testing.assert_array_equal(p.dense(h), dense_mask(per_head, 64, 64, h=h))
    layer = fg.check(fg.stack(p, layers=1, mode="heads"))
    assert layer.edges == (int(dense_mask(per_head, 64, 64, h=2).sum()),)


def test_batch_is_passed_as_b():
    def by_batch(b, h, q, kv):
        return (kv <= q) & (kv >= b)

    np.testing.assert_array_equal(
        fg.from_mask_mod(by_batch, 40, batch=5).dense(0), dense_mask(by_batch, 40, 40, b=5)
    )


def nsa_bug(b, h, q, kv):  # the compression mask_mod that shipped: the future blocks
    return q <= (kv + 1) * 64 - 1


def nsa_fixed(b, h, q, kv):
    return q >= (kv + 1) * 64 - 1


def test_compressed_keys_catch_the_nsa_leak_with_a_witness():
    r = fg.check(fg.from_mask_mod(nsa_bug, n=4096, kv_len=64, key_span=64))
    assert r.causality_violations > 0
    q, key, token = r.causality_witness
    assert token > q and 64 * key <= token <= 64 * key + 63
    ok = fg.check(fg.from_mask_mod(nsa_fixed, n=4096, kv_len=64, key_span=64))
    assert ok.causality_violations == 0 and ok.causality_witness is None
    # a key is attended once it is complete: query 63 reads tokens 0..63 through key 0
    p = fg.from_mask_mod(nsa_fixed, n=256, kv_len=4, key_span=64)
    assert p.key_step(0)[[63]].indices.tolist() == [0]
    assert p.steps[0][[63]].indices.tolist() == list(range(64))
    assert p.edges() == (int(dense_mask(nsa_fixed, 256, 4).sum()),)


def test_compressed_flow_view_and_check_match_brute_force():
    n, size, stride = 96, 16, 8  # overlapping spans, as NSA's compression
    spans = KeySpans.blocks(n, size, stride)

    def cmp(b, h, q, kv):
        return q >= kv * stride + size - 1

    p = fg.from_mask_mod(cmp, n, kv_len=spans.m, key_span=(size, stride))
    keys_nm = dense_mask(cmp, n, spans.m)
    member_mn = spans.membership().toarray()
    flow_nn = (keys_nm.astype(int) @ member_mn.astype(int)) > 0
    np.testing.assert_array_equal(p.dense(0), flow_nn)
    window = fg.local(n, 8)
    both = fg.Pattern.from_rules(
        "cmp+window", n, True, [p.key_rules[0], window.rules[0]],
        key_spans=[p.key_spans[0], None],
    )  # fmt: skip
    masks = fg.from_masks([flow_nn, window.dense(0)], causal=True)
    assert fg.check(both).missing_pairs == fg.check(masks).missing_pairs
    assert fg.check(both, engine="bitsets").reached == fg.check(masks).reached
    explicit = fg.from_mask_mod(cmp, n, kv_len=spans.m, key_span=KeySpans.from_array(
        spans.spans(), n, overlapping=True))  # fmt: skip
    assert explicit == p


def test_leak_that_makes_a_pattern_full_is_reported():
    # each query reads its window and one future token: full only through the leak
    n = 32

    def leaky(b, h, q, kv):
        return ((q >= kv) & (q - kv < 2)) | (kv == torch.clamp(q + 1, max=n - 1)) | (kv == 0)

    r = fg.check(fg.stack(fg.from_mask_mod(leaky, n), layers=n))
    assert r.full_information and r.causality_violations > 0
    assert r.full_information_without_leaks is not None
    clean = fg.check(fg.stack(fg.from_mask_mod(sliding, n), layers=n))
    assert clean.full_information_without_leaks is None


# --- round trips ----------------------------------------------------------------------------
def library(n: int) -> list[fg.Pattern]:
    w, l, c = min(7, n), min(9, n), min(2, n)  # noqa: E741
    return [
        fg.dense(n), fg.dense(n, causal=False), fg.local(n, w), fg.strided(n, l),
        fg.strided(n, l, causal=False), fg.fixed(n, l, summary=c), fg.fixed(n, n, summary=n),
        fg.ltr(n, l), fg.rtl(n, l), fg.star(n, hub=n - 1),
    ] + ([fg.from_mask_mod(nsa_fixed, n, kv_len=-(-n // 64), key_span=64)] if n >= 64 else []) + (
        modern(n) if n >= 64 else []
    )


def modern(n: int) -> list[fg.Pattern]:
    """The modern library at sizes that fit n ≥ 64."""
    return [
        fg.sliding_window(n, 9), fg.dilated_window(n, 4, 3), fg.sinks_window(n, 8, 3),
        fg.longformer(n, 4, 2), fg.bigbird(n, 8, random_blocks=2, seed=1),
        fg.document([n // 3, n - n // 3]), fg.prefix_lm(n, 11), fg.block_causal(n, 16),
        fg.moba(n, 8, 3, seed=0),
        fg.nsa(n, cmp_block=8, cmp_stride=4, sel_block=16, sel_blocks=2, window=8, seed=0),
    ]  # fmt: skip


@pytest.mark.parametrize("n", [1, 5, 77, 200])
def test_to_mask_mod_round_trips_every_library_step(n):
    for p in library(n):
        for s in range(p.num_steps):
            m = p.num_keys(s)
            back = dense_mask(p.to_mask_mod(s), n, m)
            np.testing.assert_array_equal(back, p.key_step(s).toarray(), err_msg=p.name)


def _reference(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, -1) @ v
    return torch.nan_to_num(out, nan=0.0)  # a query with no key: flex gives 0


@pytest.mark.parametrize("n,block", [(200, 128), (200, 64), (130, (64, 32))])
def test_flex_attention_with_our_block_mask_equals_the_dense_reference(n, block):
    gen = torch.Generator().manual_seed(0)
    for p in library(n):
        for s in range(p.num_steps):
            m = p.num_keys(s)
            q = torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float64)
            k = torch.randn(1, 2, m, 8, generator=gen, dtype=torch.float64)
            v = torch.randn(1, 2, m, 8, generator=gen, dtype=torch.float64)
            bm = p.to_block_mask(s, block=block)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # eager flex on the CPU warns that it is slow
                out = flex.flex_attention(q, k, v, block_mask=bm)
            mask = torch.from_numpy(p.key_step(s).toarray())
            torch.testing.assert_close(out, _reference(q, k, v, mask), rtol=1e-9, atol=1e-9)
            back = fg.from_block_mask(bm, key_span=p.key_spans[s], causal=p.causal)
            np.testing.assert_array_equal(back.key_step(0).toarray(), mask.numpy())


def test_from_block_mask_refines_partial_blocks_and_reads_heads():
    n = 1000
    bm = flex.create_block_mask(document, None, None, 200, 200, device="cpu", BLOCK_SIZE=32)
    p = fg.from_block_mask(bm)
    assert p == fg.from_mask_mod(document, 200)
    layout_entries = int(p.block_layout(32).sum()) * 32 * 32
    assert p.edges()[0] < layout_entries / 2  # the layout alone overstates the entries
    bm = flex.create_block_mask(per_head, None, 3, n, n, device="cpu", BLOCK_SIZE=128)
    heads = fg.from_block_mask(bm)
    assert heads.params["heads"] == 3 and heads == fg.from_mask_mod(per_head, n, heads=3)


# --- bad input ------------------------------------------------------------------------------
def test_bad_mask_mods_are_named():
    def raises(b, h, q, kv):
        raise KeyError("boom")

    def returns_int(b, h, q, kv):
        return q - kv

    def python_if(b, h, q, kv):
        return kv <= q if q > 0 else kv == 0

    def short_data(b, h, q, kv):
        return DOC_N[q] == DOC_N[kv]

    with pytest.raises(ValueError, match=r"raises.*KeyError"):
        fg.from_mask_mod(raises, 16)
    with pytest.raises(ValueError, match="returns_int must return a bool tensor"):
        fg.from_mask_mod(returns_int, 16)
    with pytest.raises(ValueError, match="python_if uses Python control flow"):
        fg.from_mask_mod(python_if, 16)
    with pytest.raises(ValueError, match="short_data indexes a tensor out of range"):
        fg.from_mask_mod(short_data, 300)
    with pytest.raises(ValueError, match=r"depends on h.*heads="):
        fg.from_mask_mod(per_head, 16)
    with pytest.raises(TypeError, match="four arguments"):
        fg.from_mask_mod(lambda q, kv: q >= kv, 16)
    with pytest.raises(TypeError, match="mask_mod must be a function"):
        fg.from_mask_mod("q >= kv", 16)


def test_bad_key_spans_are_refused_before_any_work():
    with pytest.raises(ValueError, match=r"kv_len=4 differs from n=256.*key_span"):
        fg.from_mask_mod(nsa_fixed, 256, kv_len=4)
    with pytest.raises(ValueError, match="key_span describes 3 keys but kv_len=4"):
        fg.from_mask_mod(nsa_fixed, 256, kv_len=4, key_span=[[0, 63], [64, 127], [128, 255]])
    with pytest.raises(ValueError, match=r"kv_len must be in 1..4"):
        fg.from_mask_mod(nsa_fixed, 256, kv_len=5, key_span=64)
    with pytest.raises(ValueError, match=r"key_span\[1\] = \[64, 300\]"):
        fg.from_mask_mod(nsa_fixed, 256, key_span=[[0, 63], [64, 300]])
    with pytest.raises(ValueError, match="share tokens; pass overlapping=True"):
        fg.from_mask_mod(nsa_fixed, 256, key_span=[[0, 70], [64, 127]])
    with pytest.raises(ValueError, match="would need about"):
        fg.from_mask_mod(sliding, 2**20, max_bytes=2**20)
    with pytest.raises(ValueError, match="flow=True is not defined"):
        fg.check(fg.from_mask_mod(nsa_fixed, 256, kv_len=4, key_span=64), flow=True)


def test_import_flowgraph_does_not_import_torch():
    code = "import flowgraph, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_dict_keeps_compressed_keys():
    p = fg.from_mask_mod(nsa_fixed, 256, kv_len=4, key_span=64)
    q = fg.Pattern.from_dict(p.to_dict())
    assert q == p and q.key_spans[0] == p.key_spans[0]


def test_spans_with_gaps_are_checked_through_their_csr_flow_view():
    n = 40
    spans = KeySpans.from_array([[0, 3], [10, 12], [20, 29]], n)  # not chained: tokens between
    assert not spans.chained

    def keys(b, h, q, kv):
        return q >= torch.tensor([3, 12, 29])[kv]

    p = fg.from_mask_mod(keys, n, kv_len=3, key_span=spans)
    assert p.rules is None  # the flow view is a CSR product
    flow = (dense_mask(keys, n, 3).astype(int) @ spans.membership().toarray().astype(int)) > 0
    np.testing.assert_array_equal(p.dense(0), flow)
    r = fg.check(p)
    assert r.missing_pairs == n * (n + 1) // 2 - int(np.tril(flow).sum())
    assert r.causality_violations == 0 and r.edges == (int(dense_mask(keys, n, 3).sum()),)


def test_flow_graph_figure_draws_compressed_keys():
    from flowgraph import plot

    n = 16
    p = fg.from_mask_mod(lambda b, h, q, kv: q >= kv * 4 + 3, n, kv_len=4, key_span=4)
    fig = plot.make_flow_graph_figure(p, key=0)
    names = [t.name for t in fig.data]
    assert "compressed keys (each stands for its span of tokens)" in names
    held = fig.data[names.index("holds key 0's information")]
    reach = fg.reachability(p)[0]
    assert sorted(int(x) for x, y in zip(held.x, held.y, strict=True) if y == 1) == [
        q for q in range(n) if reach[q, 0]
    ]


def test_from_masks_takes_downsampled_key_masks():
    n, m = 48, 6  # YLG-style: keys pooled over 8 tokens
    keys_nm = dense_mask(nsa_fixed_8 := (lambda b, h, q, kv: q >= kv * 8 + 7), n, m)
    p = fg.from_masks(keys_nm, causal=True, key_span=8, name="<lambda>")
    assert p == fg.from_mask_mod(nsa_fixed_8, n, kv_len=m, key_span=8)
    assert fg.check(p) == fg.check(fg.from_mask_mod(nsa_fixed_8, n, kv_len=m, key_span=8))
    with pytest.raises(ValueError, match="key_span describes 6 keys but kv_len=5"):
        fg.from_masks(keys_nm[:, :5], causal=True, key_span=KeySpans.blocks(n, 8).spans())
