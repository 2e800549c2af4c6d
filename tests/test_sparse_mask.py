"""gpu.SparseMask against brute force: the tiles, full flags, bitmasks (decoded bit by bit, as the
kernels read them), both block CSRs, the permutation and the densities are recomputed here from a
dense boolean mask with plain numpy and compared with what the vectorised build stored."""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowgraph as fg
from flowgraph import gpu
from flowgraph.gpu import kernels as gpu_kernels
from flowgraph.gpu import reference as gpu_reference
from flowgraph.gpu.mask import BLOCKS, Density, SparseMask, strided_permutation


# --- brute force --------------------------------------------------------------------------------
def stored_order(masks_hqk: np.ndarray, perm_hn: np.ndarray | None) -> np.ndarray:
    """The masks in the stored order: position i holds token perm[h, i]."""
    if perm_hn is None:
        return masks_hqk
    return np.stack([m[np.ix_(p, p)] for m, p in zip(masks_hqk, perm_hn, strict=True)])


def brute_tiles(stored_hqk: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, nb, nb) non-empty and full flags, with the entries past n counted as off."""
    heads, n, _ = stored_hqk.shape
    nb = -(-n // block)
    padded = np.zeros((heads, nb * block, nb * block), dtype=bool)
    padded[:, :n, :n] = stored_hqk
    tiles = padded.reshape(heads, nb, block, nb, block).transpose(0, 1, 3, 2, 4)
    return tiles.any(axis=(-1, -2)), tiles.all(axis=(-1, -2))


def decode_tile(mask: SparseMask, slot: int) -> np.ndarray:
    """A (block, block) tile read word by word, bit by bit, exactly as the layout doc says."""
    words = mask.bits_pbw.numpy()
    tile = np.zeros((mask.block, mask.block), dtype=bool)
    for r in range(mask.block):
        for c in range(mask.block):
            word = int(words[slot, r, c // 32]) & 0xFFFFFFFF
            tile[r, c] = (word >> (c % 32)) & 1
    return tile


def check_against_brute_force(mask: SparseMask, masks_hqk: np.ndarray, perm_hn) -> None:
    heads, n, _ = masks_hqk.shape
    block, nb = mask.block, -(-n // mask.block)
    assert (mask.heads, mask.n, mask.num_blocks, mask.words) == (heads, n, nb, -(-block // 32))
    for t in (mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.q_indptr, mask.q_indices):
        assert t.dtype == torch.int32
    assert mask.bits_pbw.dtype == torch.int32
    assert mask.bits_pbw.shape[1:] == (block, mask.words)
    stored = stored_order(masks_hqk, perm_hn)
    nonempty, full = brute_tiles(stored, block)
    padded = np.zeros((heads, nb * block, nb * block), dtype=bool)
    padded[:, :n, :n] = stored

    kv_indptr, kv_indices = mask.kv_indptr.numpy(), mask.kv_indices.numpy()
    kv_slots = mask.kv_slots.numpy()
    assert kv_indptr.shape == (heads, nb + 1) and kv_indptr[0, 0] == 0
    assert (kv_indptr[1:, 0] == kv_indptr[:-1, -1]).all()  # heads follow one another
    assert kv_indptr[-1, -1] == kv_indices.size == kv_slots.size
    forward = set()
    for h in range(heads):
        assert (np.diff(kv_indptr[h]) >= 0).all()
        for i in range(nb):
            row = slice(kv_indptr[h, i], kv_indptr[h, i + 1])
            assert (np.diff(kv_indices[row]) > 0).all(), "key blocks ascend within a row"
            for j, slot in zip(kv_indices[row], kv_slots[row], strict=True):
                forward.add((h, i, int(j), int(slot)))
                tile = padded[h, i * block : (i + 1) * block, j * block : (j + 1) * block]
                assert (slot < 0) == full[h, i, j]
                if slot >= 0:
                    np.testing.assert_array_equal(decode_tile(mask, slot), tile)
    assert {(h, i, j) for h, i, j, _ in forward} == set(zip(*np.nonzero(nonempty), strict=True))
    slots = sorted(s for *_, s in forward if s >= 0)
    assert slots == list(range(mask.bits_pbw.shape[0])), "each partial tile owns one slot"

    q_indptr, q_indices = mask.q_indptr.numpy(), mask.q_indices.numpy()
    q_slots = mask.q_slots.numpy()
    backward = set()
    for h in range(heads):
        for j in range(nb):
            col = slice(q_indptr[h, j], q_indptr[h, j + 1])
            assert (np.diff(q_indices[col]) > 0).all(), "query blocks ascend within a column"
            backward |= {
                (h, int(i), j, int(s)) for i, s in zip(q_indices[col], q_slots[col], strict=True)
            }
    assert backward == forward
    assert (q_indptr[:, 0] == kv_indptr[:, 0]).all() and (q_indptr[:, -1] == kv_indptr[:, -1]).all()

    natural, _ = brute_tiles(masks_hqk, block)
    expect = Density(
        element=masks_hqk.sum() / (heads * n * n),
        block=nonempty.sum() / (heads * nb * nb),
        block_unpermuted=natural.sum() / (heads * nb * nb),
        full=full.sum() / nonempty.sum() if nonempty.any() else 0.0,
    )
    assert _close(mask.density(), expect)
    h = heads - 1
    assert _close(mask.density(head=h), _density_of(masks_hqk[h : h + 1], perm_hn, h, block))

    np.testing.assert_array_equal(mask.block_layout().numpy(), nonempty)
    np.testing.assert_array_equal(mask.to_dense().numpy(), masks_hqk)
    np.testing.assert_array_equal(mask.to_dense(stored_order=True).numpy(), stored)


def _close(a: Density, b: Density) -> bool:
    return all(
        getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-15)
        for f in ("element", "block", "block_unpermuted", "full")
    )


def _density_of(masks_hqk: np.ndarray, perm_hn, h: int, block: int) -> Density:
    perm = None if perm_hn is None else perm_hn[h : h + 1]
    nonempty, full = brute_tiles(stored_order(masks_hqk, perm), block)
    natural, _ = brute_tiles(masks_hqk, block)
    n = masks_hqk.shape[1]
    return Density(
        element=masks_hqk.sum() / n**2,
        block=nonempty.sum() / nonempty.size,
        block_unpermuted=natural.sum() / natural.size,
        full=full.sum() / nonempty.sum() if nonempty.any() else 0.0,
    )


# --- random masks -------------------------------------------------------------------------------
@st.composite
def masks_and_permutations(draw):
    block = draw(st.sampled_from(BLOCKS))
    n = draw(st.integers(1, 2 * block + 3))
    heads = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["random", "full", "empty", "blocky", "causal"]))
    if kind == "random":
        masks = rng.random((heads, n, n)) < draw(st.sampled_from([0.02, 0.3, 0.9]))
    elif kind == "full":
        masks = np.ones((heads, n, n), dtype=bool)
    elif kind == "empty":
        masks = np.zeros((heads, n, n), dtype=bool)
    elif kind == "blocky":  # whole 16×16 tiles on: full tiles for block 16, partial for larger
        nb16 = -(-n // 16)
        layout = rng.random((heads, nb16, nb16)) < 0.4
        masks = np.kron(layout, np.ones((16, 16), dtype=bool))[:, :n, :n]
    else:
        masks = np.broadcast_to(np.tril(np.ones((n, n), dtype=bool)), (heads, n, n)).copy()
    masks[:, rng.random(n) < 0.1] = False  # some queries attend nothing
    which = draw(st.sampled_from(["none", "shared", "per-head"]))
    perm = None
    if which == "shared":
        perm = np.broadcast_to(rng.permutation(n), (heads, n))
    elif which == "per-head":
        perm = np.stack([rng.permutation(n) for _ in range(heads)])
    return masks, block, perm, which


@settings(max_examples=60, deadline=None)
@given(masks_and_permutations())
def test_from_masks_matches_brute_force(case):
    masks, block, perm, which = case
    permute = None if perm is None else perm[0] if which == "shared" else perm
    mask = SparseMask.from_masks(masks, block=block, permute=permute)
    check_against_brute_force(mask, masks, perm)
    if perm is not None:
        np.testing.assert_array_equal(mask.perm_hn.numpy(), perm)
        back = np.take_along_axis(perm, mask.inv_perm_hn.numpy().astype(np.int64), 1)
        np.testing.assert_array_equal(back, np.broadcast_to(np.arange(masks.shape[1]), perm.shape))
    else:
        assert mask.perm_hn is None and mask.inv_perm_hn is None and not mask.permuted


def test_the_sort_path_agrees_with_brute_force(monkeypatch):
    """Large nb² counts tiles by sorting instead of a dense count; force that path here."""
    monkeypatch.setattr(gpu.mask, "_dense_count", lambda key, size: False)
    rng = np.random.default_rng(11)
    masks = rng.random((2, 70, 70)) < 0.3
    masks[:, :, :16] = True  # full tiles too
    perm = rng.permutation(70)
    mask = SparseMask.from_masks(masks, block=16, permute=perm)
    check_against_brute_force(mask, masks, np.broadcast_to(perm, (2, 70)))


def test_from_masks_takes_torch_tensors():
    masks = torch.rand(2, 40, 40) < 0.3
    mask = SparseMask.from_masks(masks, block=16)
    assert mask.to_dense().equal(masks)


def test_bit_layout_is_pinned():
    """The word layout the kernels read: bits_pbw[slot, r, w] bit j ↔ key 32·w + j of row r."""
    masks = np.zeros((1, 120, 120), dtype=bool)
    masks[0, 65, 64 + 37] = True  # tile (1, 1), row 1, key column 37: word 1, bit 5
    masks[0, 3, 31] = True  # tile (0, 0), row 3, column 31: word 0, bit 31 (negative as int32)
    mask = SparseMask.from_masks(masks, block=64)
    assert mask.kv_indptr.tolist() == [[0, 1, 2]]
    assert mask.kv_indices.tolist() == [0, 1] and mask.kv_slots.tolist() == [0, 1]
    words = mask.bits_pbw.numpy().view(np.uint32)
    assert words.shape == (2, 64, 2)
    assert words[0, 3, 0] == 1 << 31 and words[1, 1, 1] == 1 << 5
    assert np.count_nonzero(words) == 2
    assert mask.bits_pbw[0, 3, 0].item() == -(2**31)


def test_boundary_tiles_are_partial_and_out_of_range_is_off():
    mask = SparseMask.from_masks(np.ones((1, 70, 70), dtype=bool), block=64)
    assert mask.kv_slots.tolist() == [-1, 0, 1, 2]  # only the tile inside n is full
    tiles = mask.unpacked_bits()
    assert tiles[0, :, :6].all() and not tiles[0, :, 6:].any()  # tile (0, 1): keys 64..69
    assert tiles[2, :6, :6].all() and tiles[2].sum() == 36  # tile (1, 1)
    assert mask.density().full == 0.25


# --- from_pattern -------------------------------------------------------------------------------
PATTERNS = [
    fg.dense(50),
    fg.dense(50, causal=False),
    fg.local(50, window=7),
    fg.strided(50, stride=7),
    fg.strided(50, stride=7, causal=False),
    fg.fixed(50, stride=8, summary=2),
    fg.ltr(50, stride=8),
    fg.rtl(50, stride=8),
    fg.star(50, hub=3),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: repr(p)[:40])
@pytest.mark.parametrize("block", [16, 32])
def test_from_pattern_every_step(pattern, block):
    for step in range(pattern.num_steps):
        for permute in (None, "auto"):
            mask = SparseMask.from_pattern(pattern, step, block=block, permute=permute)
            masks = pattern.dense(step)[None]
            perm = None if mask.perm_hn is None else mask.perm_hn.numpy()
            check_against_brute_force(mask, masks, perm)


def test_heads_mode_uses_step_h_mod_p():
    p = fg.strided(40, stride=5)
    mask = SparseMask.from_pattern(p, heads=5, mode="heads", block=16)
    expect = np.stack([p.dense(h % 2) for h in range(5)])
    check_against_brute_force(mask, expect, None)
    assert SparseMask.from_pattern(p, mode="heads", block=16).heads == 2  # default: one per step


def test_merged_mode_is_the_union():
    p = fg.fixed(40, stride=5)
    mask = SparseMask.from_pattern(p, mode="merged", block=16)
    check_against_brute_force(mask, (p.dense(0) | p.dense(1))[None], None)


def test_explicit_permutations_in_from_pattern():
    p = fg.strided(40, stride=5)
    rng = np.random.default_rng(0)
    perm = rng.permutation(40)
    mask = SparseMask.from_pattern(p, 1, block=16, permute=perm)
    check_against_brute_force(mask, p.dense(1)[None], perm[None])
    perms = np.stack([rng.permutation(40) for _ in range(3)])
    mask = SparseMask.from_pattern(p, heads=3, mode="heads", block=16, permute=perms)
    check_against_brute_force(mask, np.stack([p.dense(h % 2) for h in range(3)]), perms)


# --- the strided transpose ----------------------------------------------------------------------
@pytest.mark.parametrize(("n", "stride"), [(64, 8), (60, 6), (61, 8), (7, 3), (5, 5), (9, 1)])
def test_strided_permutation(n, stride):
    perm = strided_permutation(n, stride)
    assert sorted(perm.tolist()) == list(range(n))
    position = np.argsort(perm)
    t = np.arange(n)
    key = (t % stride) * n + t // stride  # sorted by residue class, then by t div l
    assert (np.diff(key[perm]) > 0).all()
    if n % stride == 0:  # Child et al.'s formula
        np.testing.assert_array_equal(position, (t % stride) * (n // stride) + t // stride)
    # under it, (q − k) mod l = 0 keeps pairs inside one contiguous class
    step2 = fg.strided(n, stride=stride).dense(1)
    cls = (t % stride)[perm]
    moved = step2[np.ix_(perm, perm)]
    assert (cls[:, None] == cls[None, :])[moved].all()


def test_auto_permutes_only_the_strided_step():
    p = fg.strided(256, stride=16)
    local = SparseMask.from_pattern(p, 0, block=16, permute="auto")
    strided = SparseMask.from_pattern(p, 1, block=16, permute="auto")
    assert local.perm_hn is None
    np.testing.assert_array_equal(strided.perm_hn[0].numpy(), strided_permutation(256, 16))
    d = strided.density()
    # natural order: every tile at or below the diagonal; permuted: 16 diagonal tiles
    assert (d.block, d.block_unpermuted) == (16 / 256, 136 / 256)
    assert d.element == p.edges()[1] / 256**2
    heads = SparseMask.from_pattern(p, heads=4, mode="heads", block=16, permute="auto")
    perm = heads.perm_hn.numpy()
    assert (perm[0] == np.arange(256)).all() and (perm[1] == strided_permutation(256, 16)).all()
    assert heads.density(head=1) == d
    check_against_brute_force(heads, np.stack([p.dense(h % 2) for h in range(4)]), perm)


def test_auto_without_a_stride_keeps_natural_order():
    p = fg.from_masks(fg.strided(64, stride=8).dense(1), causal=True)
    assert SparseMask.from_pattern(p, block=16, permute="auto").perm_hn is None


def test_large_n_builds_from_csr_with_matching_counts():
    """n = 16384, block 64: the build is vectorised; counts agree with Pattern.block_layout."""
    p = fg.strided(16384, stride=128)
    mask = SparseMask.from_pattern(p, heads=4, mode="heads", permute="auto")
    layout = p.block_layout(64)
    d0, d1 = mask.density(head=0), mask.density(head=1)
    assert d0.element == p.edges()[0] / 16384**2 and d1.element == p.edges()[1] / 16384**2
    assert d0.block == d0.block_unpermuted == layout[0].mean()
    assert d1.block_unpermuted == layout[1].mean()
    assert d1.block == 3 * 128 / 256**2  # 128 classes of 128 tokens: a 2×2 lower triangle each


# --- the object ---------------------------------------------------------------------------------
def test_repr_to_and_fields():
    mask = SparseMask.from_pattern(fg.strided(100, stride=10), heads=3, mode="heads", block=32)
    text = repr(mask)
    assert text.startswith("SparseMask(heads=3, n=100, block=32, kv_indptr=(3, 5)")
    assert f"bits_pbw={tuple(mask.bits_pbw.shape)}" in text and "device=cpu" in text
    meta = mask.to("meta")
    assert meta.device.type == "meta" and meta.bits_pbw.device.type == "meta"
    assert meta.heads == 3 and meta.density() == mask.density()
    same = mask.to("cpu")
    assert same.to_dense().equal(mask.to_dense())


ERRORS = [
    (lambda: SparseMask.from_pattern("x"), TypeError, r"pattern must be a flowgraph\.Pattern"),
    (lambda: SparseMask.from_pattern(fg.dense(8), block=48), ValueError, r"16, 32, 64, 128.*=48"),
    (lambda: SparseMask.from_pattern(fg.dense(8), block=256), ValueError, r"block=256"),
    (lambda: SparseMask.from_pattern(fg.dense(8), block=0), ValueError, r"block=0"),
    (lambda: SparseMask.from_pattern(fg.dense(8), block=64.0), TypeError, r"block.*64\.0"),
    (lambda: SparseMask.from_pattern(fg.dense(8), block=True), TypeError, r"block.*True"),
    (lambda: SparseMask.from_pattern(fg.strided(8), 2), ValueError, r"0\.\.1.*2 steps.*step=2"),
    (lambda: SparseMask.from_pattern(fg.strided(8), -1), ValueError, r"step=-1"),
    (lambda: SparseMask.from_pattern(fg.strided(8), "0"), TypeError, r"step.*'0'"),
    (
        lambda: SparseMask.from_pattern(fg.strided(8), mode="interleave"),
        ValueError,
        r"mode='interleave'.*step=i % pattern\.num_steps",
    ),
    (lambda: SparseMask.from_pattern(fg.strided(8), mode="x"), ValueError, r"mode='x'"),
    (lambda: SparseMask.from_pattern(fg.strided(8), heads=2), ValueError, r"heads=2"),
    (
        lambda: SparseMask.from_pattern(fg.strided(8), 1, mode="heads"),
        ValueError,
        r"step=1 with mode='heads'",
    ),
    (lambda: SparseMask.from_pattern(fg.strided(8), heads=0, mode="heads"), ValueError, r"=0"),
    (lambda: SparseMask.from_pattern(fg.strided(8), heads=2.0, mode="heads"), TypeError, r"2\.0"),
    (lambda: SparseMask.from_pattern(fg.dense(8), permute="yes"), ValueError, r"'yes'"),
    (lambda: SparseMask.from_pattern(fg.dense(8), permute=[0, 1]), ValueError, r"\(8,\).*\(2,\)"),
    (
        lambda: SparseMask.from_pattern(fg.dense(4), permute=[0, 1, 1, 2]),
        ValueError,
        r"permutation of 0\.\.3",
    ),
    (lambda: SparseMask.from_pattern(fg.dense(3), permute=[0, 1, 3]), ValueError, r"0\.\.2"),
    (lambda: SparseMask.from_pattern(fg.dense(2), permute=[0.0, 1.0]), TypeError, r"float64"),
    (lambda: SparseMask.from_pattern(fg.dense(2), permute=[True, False]), TypeError, r"bool"),
    (
        lambda: SparseMask.from_pattern(fg.dense(2), mode="heads", heads=2, permute=np.eye(3, 2)),
        TypeError,
        r"permute",
    ),
    (
        lambda: SparseMask.from_pattern(fg.dense(2), mode="heads", heads=2, permute=[[0, 1]] * 3),
        ValueError,
        r"\(heads, n\)=\(2, 2\).*\(3, 2\)",
    ),
    (lambda: SparseMask.from_masks(np.ones((1, 4, 4))), TypeError, r"masks_hqk.*float64"),
    (lambda: SparseMask.from_masks(torch.ones(1, 4, 4)), TypeError, r"masks_hqk.*float32"),
    (lambda: SparseMask.from_masks(np.ones((4, 4), bool)), ValueError, r"\(4, 4\).*masks\[None\]"),
    (lambda: SparseMask.from_masks(np.ones((1, 4, 5), bool)), ValueError, r"\(1, 4, 5\)"),
    (lambda: SparseMask.from_masks(np.ones((0, 4, 4), bool)), ValueError, r"heads ≥ 1"),
    (lambda: SparseMask.from_masks(np.ones((1, 0, 0), bool)), ValueError, r"n ≥ 1"),
    (lambda: SparseMask.from_masks(np.ones((1, 4, 4), bool), block=8), ValueError, r"block=8"),
    (
        lambda: SparseMask.from_masks(np.ones((1, 4, 4), bool), permute="auto"),
        ValueError,
        r"from_pattern",
    ),
    (lambda: strided_permutation(0, 1), ValueError, r"n=0"),
    (lambda: strided_permutation(5, 6), ValueError, r"stride=6"),
    (lambda: strided_permutation(5, 2.0), TypeError, r"stride.*2\.0"),
]


@pytest.mark.parametrize(("call", "error", "message"), ERRORS)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_inspection_errors():
    mask = SparseMask.from_masks(np.ones((2, 40, 40), dtype=bool), block=16)
    with pytest.raises(ValueError, match=r"0\.\.1 \(the mask has 2 heads\), got head=2"):
        mask.density(head=2)
    with pytest.raises(TypeError, match=r"head must be an int, got '0'"):
        mask.density(head="0")
    with pytest.raises(MemoryError, match=r"max_bytes=100"):
        mask.to_dense(max_bytes=100)


# --- docs -------------------------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "gpu.md"


def _fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.M | re.S)


@pytest.mark.parametrize("module", [gpu, gpu.mask, gpu_reference, gpu_kernels])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0 or module in (gpu_reference, gpu_kernels)


def test_gpu_page_examples_run():
    text = "".join(_fenced("pycon"))
    test = doctest.DocTestParser().get_doctest(text, {"gpu": gpu}, "gpu.md", str(DOCS), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert test.examples and runner.summarize(verbose=False).failed == 0


def test_gpu_page_density_table_is_real_output():
    code = next(b for b in _fenced("python") if "density()" in b and "print" in b)
    table = next(b for b in _fenced("text") if b.startswith("n= 4096"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOCS), "exec"), {})
    assert out.getvalue() == table
