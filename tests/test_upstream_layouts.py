"""flowgraph's constructors against the layouts the upstream code builds, and ``fg.check`` on those
layouts against a brute force.

The upstream arrays are in tests/fixtures/upstream/*.npz, written by the upstream code itself
(``generate.py`` there; SOURCES.md lists each repository, commit, file and function). Where
flowgraph claims to be an upstream pattern the masks are equal; where it differs, the test pins
the exact entries, and docs/upstream.md explains them.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from oracles import brute_check

import flowgraph as fg

HERE = Path(__file__).resolve().parent / "fixtures" / "upstream"
FILES = ("openai_attn_mask", "openai_blocksparse", "deepspeed_layouts", "ylg_masks_1d",
         "ylg_grid_masks")  # fmt: skip


@cache
def fixture(name: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    with np.load(HERE / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    return arrays, meta


def arr(name: str, key: str) -> np.ndarray:
    return fixture(name)[0][key]


def q_k(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[:, None], np.arange(n)[None, :]


def assert_report_true(p: fg.Pattern) -> fg.Report:
    """``fg.check(p)`` says what the brute force says (and, with leaks, what it says of the
    pattern without them)."""
    masks = [p.dense(s) for s in range(p.num_steps)]
    r, b = fg.check(p), brute_check(masks, p.causal)
    assert (r.full_information, r.missing_pairs, r.witness, r.reached) == (
        b.full_information, b.missing_pairs, b.witness, b.reached,
    )  # fmt: skip
    assert (r.edges, r.empty_rows, r.causality_violations, r.in_degree) == (
        b.edges, b.empty_rows, b.causality_violations, b.in_degree,
    )  # fmt: skip
    if b.causality_violations:
        clean = brute_check([np.tril(m) for m in masks], True)
        assert r.full_information_without_leaks == clean.full_information
        assert r.missing_pairs_without_leaks == clean.missing_pairs
    return r


def diff(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    """The (q, k) entries where two masks differ."""
    return {(int(q), int(k)) for q, k in np.argwhere(a != b)}


# --- the fixtures themselves ---------------------------------------------------------------------
def test_every_fixture_names_its_upstream_source():
    sources = (HERE / "SOURCES.md").read_text(encoding="utf-8")
    total = 0
    for name in FILES:
        arrays, meta = fixture(name)
        total += (HERE / f"{name}.npz").stat().st_size
        assert arrays and set(arrays) == set(meta)
        for key, m in meta.items():
            assert re.fullmatch(r"[0-9a-f]{40}", m["commit"]), key
            assert m["repo"] in sources and m["commit"] in sources, key
            assert m["file"] and m["function"] and m["call"], key
        assert f"{name}.npz" in sources
    assert "generate.py" in sources
    assert total < 2**20


# --- OpenAI: get_attn_mask and the block-sparse masks ---------------------------------------------
OPENAI_N = (16, 30, 64)


@pytest.mark.parametrize("n", OPENAI_N)
def test_openai_all_and_local_are_fg_dense_and_local(n):
    assert fg.from_masks(arr("openai_attn_mask", f"all_n{n}"), True) == fg.dense(n)
    for ctx in (1, 3, 4, 5, 8):
        assert fg.from_masks(arr("openai_attn_mask", f"local_n{n}_ctx{ctx}"), True) == fg.local(
            n, ctx
        )


@pytest.mark.parametrize("n", OPENAI_N)
@pytest.mark.parametrize("stride", [3, 4, 5, 8])
def test_openai_strided_steps(n, stride):
    """OpenAI's strided step is fg.strided's step 2; its local step (attn_mode='local' with
    local_attn_ctx = l, "the first step of strided attention") has l keys where fg.strided's
    step 1 has the paper's l + 1: the entries k = q − l. Both are full information."""
    up_local = arr("openai_attn_mask", f"local_n{n}_ctx{stride}")
    up_strided = arr("openai_attn_mask", f"strided_n{n}_stride{stride}")
    p = fg.strided(n, stride)
    np.testing.assert_array_equal(p.dense(1), up_strided)
    assert diff(p.dense(0), up_local) == {(q, q - stride) for q in range(stride, n)}
    assert not (up_local & ~p.dense(0)).any()  # upstream has nothing fg.strided lacks
    upstream = fg.from_masks([up_local, up_strided], causal=True)
    r = assert_report_true(upstream)
    assert r.full_information and fg.check(p).full_information
    assert r.edges[0] == fg.check(p).edges[0] - (n - stride)


@pytest.mark.parametrize("key", ["n64_block8_ctx8", "n64_block8_ctx16", "n128_block8_ctx24"])
def test_openai_blocksparse_local_is_fg_local(key):
    n, ctx = (int(x) for x in re.fullmatch(r"n(\d+)_block\d+_ctx(\d+)", key).groups())
    np.testing.assert_array_equal(arr("openai_blocksparse", f"local_{key}_mask"),
                                  fg.local(n, ctx).dense())  # fmt: skip


@pytest.mark.parametrize("key", ["n64_block8_ctx8", "n128_block8_ctx8", "n128_block8_ctx16"])
def test_openai_blocksparse_strided_is_fg_strided_step2(key):
    """The kernel runs strided attention on strided_transpose(x); read back in token order, its
    mask is get_attn_mask's strided mask, fg.strided's step 2."""
    n, ctx = (int(x) for x in re.fullmatch(r"n(\d+)_block\d+_ctx(\d+)", key).groups())
    np.testing.assert_array_equal(arr("openai_blocksparse", f"strided_{key}_mask"),
                                  fg.strided(n, ctx).dense(1))  # fmt: skip


FIXED = [  # (n, heads, block, local_attn_ctx, num_verts, vertsize), as generate.py calls them
    (64, 4, 8, 32, 4, 1),
    (64, 2, 8, 32, 1, 1),
    (128, 4, 8, 32, 2, 2),
    (128, 4, 8, 64, 4, 2),
    (112, 2, 8, 32, 2, 1),
    (64, 4, 8, 36, 4, 1),
]


def fixed_key(n, heads, block, ctx, verts, vsize):
    return f"fixed_n{n}_heads{heads}_block{block}_ctx{ctx}_verts{verts}_vsize{vsize}"


@pytest.mark.parametrize("case", FIXED, ids=lambda c: fixed_key(*c))
def test_openai_fixed_heads_is_fg_fixed_heads(case):
    n, heads, block, ctx, verts, vsize = case
    mask_hqk = arr("openai_blocksparse", fixed_key(*case) + "_mask")
    layout_hqk = arr("openai_blocksparse", fixed_key(*case) + "_layout")
    l, c = (ctx // block) * block, vsize * block  # noqa: E741  # upstream's stride is in blocks
    p = fg.fixed_heads(n, l, c, heads=verts)
    assert p.params == {"stride": l, "summary": c, "heads": verts, "steps_are": "heads"}
    for h in range(mask_hqk.shape[0]):  # one layout per head, or one shared (num_verts = 1)
        np.testing.assert_array_equal(p.dense(h % verts), mask_hqk[h])
        # the kernel's callback cuts the diagonal blocks to k ≤ q, as causal_diagonal does
        one = fg.from_block_layout(layout_hqk[h], block, True, causal_diagonal=True)
        np.testing.assert_array_equal(one.dense(), mask_hqk[h])
    # head 0 is fg.fixed with both steps in one mask
    np.testing.assert_array_equal(mask_hqk[0], fg.fixed(n, l, c).merged().dense())
    # one layer of all heads: the heads stack of fixed_heads is the heads-mode layout
    layer = fg.from_block_layout(layout_hqk, block, True, mode="heads")
    assert fg.stack(p, layers=1, mode="heads", heads=heads) == layer
    for layers in (1, 2):
        assert_report_true(fg.stack(layer, layers=layers))


def test_openai_fixed_truncates_a_context_that_is_not_a_multiple_of_the_block():
    """local_attn_ctx=36 with blocks of 8 is the stride 36 // 8 = 4 blocks: l = 32, not 36."""
    mask_hqk = arr("openai_blocksparse", fixed_key(64, 4, 8, 36, 4, 1) + "_mask")
    np.testing.assert_array_equal(
        mask_hqk, arr("openai_blocksparse", fixed_key(64, 4, 8, 32, 4, 1) + "_mask")
    )
    assert not np.array_equal(fg.fixed_heads(64, 36, 8, 4).dense(0), mask_hqk[0])


@pytest.mark.parametrize("case", FIXED[:5], ids=lambda c: fixed_key(*c))
def test_openai_fixed_summaries_are_whole_blocks_later_heads_earlier(case):
    """Each head's summary is vertsize whole blocks (at least one block of ≥ 8 tokens): the last
    query sees, in the first group, exactly residues l − (h+1)c .. l − hc − 1."""
    n, _, block, ctx, verts, vsize = case
    mask_hqk = arr("openai_blocksparse", fixed_key(*case) + "_mask")
    l, c = ctx, vsize * block  # noqa: E741
    for h in range(mask_hqk.shape[0]):
        seen = np.flatnonzero(mask_hqk[h][n - 1, :l])
        v = h % verts
        np.testing.assert_array_equal(seen, np.arange(l - (v + 1) * c, l - v * c))
        assert seen.size % block == 0 and seen.size >= block


# --- DeepSpeed -----------------------------------------------------------------------------------
DS_BLOCK = 4


def ds(key: str) -> np.ndarray:
    return arr("deepspeed_layouts", key)


def ds_pattern(key: str, causal: bool, **kw) -> fg.Pattern:
    return fg.from_block_layout(ds(key), DS_BLOCK, causal, mode="heads", **kw)


@pytest.mark.parametrize("seq", ["", "_partial"])
def test_deepspeed_fixed_unidirectional_is_fg_fixed(seq):
    """Fixed(num_local_blocks=4, num_global_blocks=1) with block 4 is fg.fixed(l=16, c=4), both
    steps in one mask, once the diagonal blocks are cut — also when the last window is partial
    (56 tokens): its moved global block is seen only by rows it already reaches locally."""
    p = ds_pattern(f"fixed_uni_l4_g1{seq}", True)
    assert p == fg.fixed(p.n, 16, 4).merged()
    for layers in (1, 2):
        assert_report_true(fg.stack(p, layers=layers))


def test_deepspeed_fixed_unidirectional_layout_alone_has_whole_diagonal_blocks():
    whole = ds_pattern("fixed_uni_l4_g1", True, causal_diagonal=False)
    cut = ds_pattern("fixed_uni_l4_g1", True)
    q, k = q_k(64)
    assert diff(whole.dense(), cut.dense()) == {
        (int(a), int(b)) for a, b in np.argwhere((q // 4 == k // 4) & (k > q))
    }
    r = assert_report_true(fg.stack(whole, layers=2))
    assert r.causality_violations == 2 * 16 * 6  # 6 upper entries in each of 16 diagonal blocks
    assert r.full_information_without_leaks


def test_deepspeed_fixed_two_global_blocks_see_the_future():
    """num_global_blocks=2, unidirectional: layout[h, i:, i:i+2] = 1 lets the first global block
    i attend block i + 1 — 16 future entries in each of the 4 windows."""
    p = ds_pattern("fixed_uni_l4_g2", True)
    ref = fg.fixed(64, 16, 8).merged()
    extra = {(q, k) for i in (2, 6, 10, 14) for q in range(4 * i, 4 * i + 4)
             for k in range(4 * i + 4, 4 * i + 8)}  # fmt: skip
    assert diff(p.dense(), ref.dense()) == extra
    assert not (ref.dense() & ~p.dense()).any()
    r = assert_report_true(p)
    assert (r.causality_violations, r.missing_pairs) == (64, fg.check(ref).missing_pairs)
    assert r.missing_pairs_without_leaks == fg.check(ref).missing_pairs


def test_deepspeed_fixed_bidirectional_is_fg_fixed():
    p = ds_pattern("fixed_bi_l4_g1", False)
    assert p == fg.fixed(64, 16, 4, causal=False).merged()
    assert_report_true(fg.stack(p, layers=2))


def test_deepspeed_fixed_bidirectional_partial_window_keeps_a_summary():
    """56 tokens, windows of 16: DeepSpeed moves the last window's global block to the last
    block (tokens 52..55); fg.fixed has no summary position there (residues 0..7 < 12), so it
    never relays the last window's keys: 384 pairs missing at any depth of its merged stack (448
    for its two steps), none for DeepSpeed's two layers."""
    p = ds_pattern("fixed_bi_l4_g1_partial", False)
    ref = fg.fixed(56, 16, 4, causal=False)
    assert diff(p.dense(), ref.merged().dense()) == {
        (q, k) for q in range(48) for k in range(52, 56)
    }
    assert not (ref.merged().dense() & ~p.dense()).any()
    up = assert_report_true(fg.stack(p, layers=2))
    assert up.full_information
    q, k = q_k(56)
    for layers in (2, 3):  # the keys of the last window never leave it
        merged = [m.toarray() for m in fg.stack(ref.merged(), layers=layers).steps]
        np.testing.assert_array_equal(brute_check(merged, False).missing, (k >= 48) & (q < 48))
        assert fg.check(fg.stack(ref.merged(), layers=layers)).missing_pairs == 384
    # the two steps in sequence also lose them for the last window's own queries, whose step 2
    # reads summary positions only: 448 = 8 keys × 56 queries
    np.testing.assert_array_equal(
        brute_check([ref.dense(0), ref.dense(1)], False).missing, (k >= 48) & (q >= 0)
    )
    assert fg.check(ref).missing_pairs == 448


def test_fg_fixed_bidirectional_loses_information_exactly_without_a_last_summary():
    """n ≤ 40, every l and c: fg.fixed(causal=False) is full information iff l | n or the last,
    partial block (t = n mod l positions) holds a summary position (t > l − c)."""
    failures = 0
    for n in range(1, 41):
        for l in range(1, n + 1):  # noqa: E741
            for c in range(1, l + 1):
                t = n % l
                full = fg.check(fg.fixed(n, l, c, causal=False)).full_information
                assert full == (t == 0 or t > l - c), (n, l, c)
                failures += not full
    assert failures == 6473  # of 11,480 (n, l, c); docs/upstream.md quotes it


@pytest.mark.parametrize("seq", ["", "_partial"])
def test_deepspeed_fixed_different_global_patterns_are_fg_fixed_heads(seq):
    key = f"fixed_uni_l4_g1_patterns4{seq}"
    layout_hqk = ds(key)
    n = layout_hqk.shape[1] * DS_BLOCK
    p = fg.fixed_heads(n, 16, 4, heads=4)
    for h in range(4):
        np.testing.assert_array_equal(
            fg.from_block_layout(layout_hqk[h], DS_BLOCK, True).dense(), p.dense(h)
        )
    assert ds_pattern(key, True) == fg.stack(p, layers=1, mode="heads")


def test_deepspeed_variable_sees_the_future_through_its_random_blocks():
    """Variable(num_random_blocks=2, unidirectional) draws random blocks over the whole row: 17
    of them lie above the diagonal (seed 0). Over 5 layers the pattern is full information only
    through those entries; without them 528 pairs are missing."""
    layout = ds("variable_uni_r2")
    assert int(np.triu(layout[0], 1).sum()) == 17
    p = ds_pattern("variable_uni_r2", True)
    r = assert_report_true(fg.stack(p, layers=5))
    assert r.full_information
    assert r.causality_violations == 5 * 17 * 16
    assert (r.full_information_without_leaks, r.missing_pairs_without_leaks) == (False, 528)


@pytest.mark.parametrize(
    "key,causal",
    [("dense", False), ("variable_bi_r0", False), ("bigbird_uni", True), ("bigbird_bi", False),
     ("longformer_uni", True), ("longformer_bi", False), ("sliding_uni_w3", True),
     ("sliding_bi_w3", False), ("fixed_bi_l4_g1_horizontal", False)],
)  # fmt: skip
def test_deepspeed_layouts_are_reported_truly(key, causal):
    p = ds_pattern(key, causal)
    if causal:  # BigBird, BSLongformer and LocalSlidingWindow keep to the causal blocks
        assert not np.triu(ds(key), 1).any()
    for layers in (1, 3):
        assert_report_true(fg.stack(p, layers=layers))
    if causal:
        assert_report_true(fg.stack(ds_pattern(key, True, causal_diagonal=False), layers=2))


def test_deepspeed_heads_mode_is_the_union_of_the_heads():
    layout_hqk = ds("fixed_uni_l4_g1_patterns4")
    p = fg.from_block_layout(layout_hqk, DS_BLOCK, True, mode="heads")
    steps = fg.from_block_layout(layout_hqk, DS_BLOCK, True, mode="steps")
    assert p.num_steps == 1 and steps.num_steps == 4
    np.testing.assert_array_equal(
        p.dense(), np.logical_or.reduce([steps.dense(s) for s in range(4)])
    )
    with pytest.raises(ValueError, match="choose what they are"):
        fg.from_block_layout(layout_hqk, DS_BLOCK, True)


# --- YLG -----------------------------------------------------------------------------------------
YLG_N = range(1, 41)


def ylg(kind: str, n: int, stride: int) -> np.ndarray:
    return arr("ylg_masks_1d", f"{kind}_n{n}")[stride - 1]


@pytest.mark.parametrize("n", YLG_N)
def test_ylg_ltr_is_fg_ltr(n):
    for stride in range(1, n + 1):
        p = fg.ltr(n, stride)
        np.testing.assert_array_equal(p.dense(0), ylg("ltr1", n, stride))
        np.testing.assert_array_equal(p.dense(1), ylg("ltr2", n, stride))


@pytest.mark.parametrize("n", YLG_N)
def test_ylg_rtl_step2_lacks_the_relay_of_the_partial_block(n):
    """YLG's RightRepetitiveMask shifts LTR's relay columns (k mod l = l − 1) left by l − 1, so
    the last, partial block gets no relay: step 2 lacks column m = l·⌊n/l⌋ except its diagonal
    entry (m, m) — n − 1 entries — when l ∤ n, and equals fg.rtl's otherwise."""
    for stride in range(1, n + 1):
        p = fg.rtl(n, stride)
        np.testing.assert_array_equal(p.dense(0), ylg("rtl1", n, stride))
        m = stride * (n // stride)
        lost = {(q, m) for q in range(n) if q != m} if n % stride else set()
        assert diff(p.dense(1), ylg("rtl2", n, stride)) == lost
        assert not (ylg("rtl2", n, stride) & ~p.dense(1)).any()


def test_ylg_rtl_loses_information_when_the_stride_does_not_divide_n():
    """n ≤ 40, every stride: YLG's RTL fails in the 662 of 820 cases with l ∤ n (as LTR does),
    fg.rtl in none."""
    cases = failures = 0
    for n in YLG_N:
        for stride in range(1, n + 1):
            up = fg.from_masks([ylg("rtl1", n, stride), ylg("rtl2", n, stride)], causal=False)
            r = fg.check(up)
            assert r.full_information == (n % stride == 0), (n, stride)
            assert fg.check(fg.rtl(n, stride)).full_information
            cases += 1
            failures += not r.full_information
    assert (failures, cases) == (662, 820)


@pytest.mark.parametrize("n,stride", [(10, 4), (17, 4), (23, 5), (40, 6), (40, 8)])
def test_ylg_masks_are_reported_truly(n, stride):
    for kind in ("ltr", "rtl"):
        masks = [ylg(f"{kind}1", n, stride), ylg(f"{kind}2", n, stride)]
        assert_report_true(fg.from_masks(masks, causal=False))


@pytest.mark.parametrize("n,stride", [(16, 4), (20, 4), (30, 5)])
def test_ylg_strided_masks_are_fg_local_and_strided(n, stride):
    np.testing.assert_array_equal(arr("ylg_masks_1d", f"strided1_n{n}_stride{stride}"),
                                  fg.local(n, stride).dense())  # fmt: skip
    np.testing.assert_array_equal(arr("ylg_masks_1d", f"strided2_n{n}_stride{stride}"),
                                  fg.strided(n, stride, causal=False).dense(1))  # fmt: skip


@pytest.mark.parametrize("n,stride", [(16, 4), (20, 4), (30, 5)])
def test_ylg_merged_head_intersects_where_fg_unites(n, stride):
    """MasksCollection(mode='merged_head') multiplies the masks: LTR's two steps meet only on
    the diagonal, so YLG's merged LTR is the identity and never moves information; fg's merged
    stack is the union and is full information in two layers."""
    merged = arr("ylg_masks_1d", f"merged_ltr_n{n}_stride{stride}")
    p = fg.ltr(n, stride)
    np.testing.assert_array_equal(merged, p.dense(0) & p.dense(1))
    np.testing.assert_array_equal(merged, np.eye(n, dtype=bool))
    union = fg.stack(p, layers=2, mode="merged")
    np.testing.assert_array_equal(union.dense(0), p.dense(0) | p.dense(1))
    assert fg.check(union).full_information
    up = assert_report_true(fg.stack(fg.from_masks(merged, causal=False), layers=2))
    assert up.missing_pairs == n * n - n


# --- fixed_heads against its definition ----------------------------------------------------------
def fixed_head_mask(n: int, l: int, c: int, h: int, causal: bool) -> np.ndarray:  # noqa: E741
    q, k = q_k(n)
    m = (q // l == k // l) | ((k % l >= l - (h + 1) * c) & (k % l < l - h * c))
    return m & (k <= q) if causal else m


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 4, 9, 16, 17, 30])
def test_fixed_heads_definition(n, causal):
    for l in range(1, min(n, 8) + 1):  # noqa: E741
        for c in range(1, l + 1):
            for heads in range(1, l // c + 1):
                p = fg.fixed_heads(n, l, c, heads, causal)
                assert (p.num_steps, p.causal, p.name) == (heads, causal, "fixed_heads")
                for h in range(heads):
                    np.testing.assert_array_equal(p.dense(h), fixed_head_mask(n, l, c, h, causal))
                    assert p.edges()[h] == p.steps[h].nnz  # the rule's terms are disjoint
                assert p.dense(0).tolist() == fg.fixed(n, l, c, causal).merged().dense().tolist()


@pytest.mark.parametrize("causal", [True, False])
def test_fixed_heads_stack_is_checked_alike_by_both_engines(causal):
    p = fg.stack(fg.fixed_heads(48, 8, 2, 3, causal), layers=2, mode="heads")
    a, b = fg.check(p, engine="intervals"), fg.check(p, engine="bitsets")
    assert a == b
    assert_report_true(p)


def test_fixed_heads_refuses_bad_input():
    with pytest.raises(ValueError, match=r"heads must be in 1\.\.2 \(heads · summary ≤ stride"):
        fg.fixed_heads(64, 8, 4, heads=3)
    with pytest.raises(ValueError, match=r"summary must be in 1\.\.8"):
        fg.fixed_heads(64, 8, 9)
    with pytest.raises(ValueError, match=r"heads must be in 1\.\.3"):
        fg.fixed_heads(9)  # stride 3, summary 1: at most 3 heads, the default is 4
    with pytest.raises(TypeError, match=r"heads must be an int"):
        fg.fixed_heads(64, heads=2.0)
    with pytest.raises(ValueError, match=r"fixed_heads\(n=65536.*would need about"):
        fg.fixed_heads(65536, 256, 8, 4, max_bytes=2**20)
