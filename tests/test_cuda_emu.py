"""The CPU emulator of tests/cuda_emu: its CUDA semantics pinned by small kernels against models
written from the CUDA programming guide (indices, shuffles, votes, atomics, shared memory, half and
bfloat16 conversions against numpy and torch), its refusals of undefined behaviour, its launcher
API; then the real kernels: gpu/kernels/reduce.cu against numpy, and the fp32 forward of
gpu/kernels/sparse_attention.cu against gpu.reference on small shapes (‖out − ref‖/‖ref‖ < 1e-5,
the issue's fp32 bound), under two fiber schedules."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from cuda_emu import HERE, KERNELS, EmuError, load
from cuda_emu.testing import mask_case, needs_cxx

import flowgraph as fg
from flowgraph import gpu
from flowgraph.gpu.mask import SparseMask
from flowgraph.gpu.reference import _per_head, sparse_attention_reference

pytestmark = needs_cxx
HAS_NVCC = shutil.which("nvcc") is not None
needs_nvcc = pytest.mark.skipif(
    not HAS_NVCC and os.environ.get("CI") != "true",
    reason="no nvcc on PATH (with CI=true this test runs and fails instead)",
)
i32 = np.int32


@pytest.fixture(scope="module")
def selftest():
    return load(HERE / "selftest.cu", name_expressions=["fill<3>", "fill<7>"])


@pytest.fixture(scope="module")
def reduce():
    return load(KERNELS / "reduce.cu")


# --- half and bfloat16 --------------------------------------------------------------------------
def _float_samples() -> np.ndarray:
    """Every half as a float, every midpoint between neighbouring halves (the ties), values at
    the overflow and underflow edges, random float32 bit patterns (NaN, inf, subnormals too)."""
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = np.sort(halves[np.isfinite(halves)])
    mids = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)
    edges = np.array(
        [65504, 65519.99, 65520, 65536, 2**-24, 2**-25, 2**-25 * 1.0001, 2**-26, 1e-30]
    )
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([halves, mids, edges.astype(np.float32), -edges.astype(np.float32), bits])


def _same(got: np.ndarray, want: np.ndarray) -> None:
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = np.uint16 if want.itemsize == 2 else np.uint32
    np.testing.assert_array_equal(got[~nan].view(bits), want[~nan].view(bits))


def test_float_to_half_rounds_like_numpy(selftest):
    x = _float_samples()
    h, back = np.empty(x.size, np.float16), np.empty(x.size, np.float32)
    selftest.get_function("convert_f16")((-(-x.size // 256),), (256,), (x, h, back, i32(x.size)))
    with np.errstate(over="ignore"):  # numpy warns where the cast gives ±inf, as it should
        want = x.astype(np.float16)
    _same(h, want)
    _same(back, want.astype(np.float32))


def test_half_to_float_on_every_bit_pattern(selftest):
    bits = np.arange(2**16, dtype=np.uint16)
    out = np.empty(bits.size, np.float32)
    selftest.get_function("half_bits_to_float")((256,), (256,), (bits, out, i32(bits.size)))
    _same(out, bits.view(np.float16).astype(np.float32))


def test_float_to_bfloat16_rounds_like_torch(selftest):
    x = _float_samples()
    b = torch.empty(x.size, dtype=torch.bfloat16)
    back = np.empty(x.size, np.float32)
    selftest.get_function("convert_bf16")((-(-x.size // 256),), (256,), (x, b, back, i32(x.size)))
    want = torch.from_numpy(x).to(torch.bfloat16)
    nan = want.isnan().numpy()
    np.testing.assert_array_equal(b.isnan().numpy(), nan)
    np.testing.assert_array_equal(
        b.view(torch.int16).numpy()[~nan], want.view(torch.int16).numpy()[~nan]
    )
    _same(back, want.float().numpy())


# --- indices, shuffles, votes, atomics, shared memory -------------------------------------------
def test_indices_in_a_3d_grid_of_3d_blocks(selftest):
    grid, block = (2, 3, 2), (4, 3, 2)
    out = np.zeros((12, 24, 12), np.uint32)
    selftest.get_function("indices")(grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(v) for v in (2, 3, 2, 2, 3, 4)), indexing="ij")
    want = np.stack(
        [tx, ty, tz, bx, by, bz, *(np.full_like(tx, v) for v in (*block, *grid))], axis=-1
    ).reshape(12, 24, 12)
    np.testing.assert_array_equal(out, want)


def _warp_model(v: np.ndarray) -> np.ndarray:
    """The ten results of the `shuffles` kernel for one warp, from the CUDA guide's definitions."""
    lane = np.arange(32)

    def shfl(src, width=32):
        return v[lane - lane % width + src % width]

    def up(delta, width=32):
        return np.where(lane % width < delta, v, v[np.maximum(lane - delta, 0)])

    def down(delta, width=32):
        return np.where(lane % width + delta >= width, v, v[np.minimum(lane + delta, 31)])

    def xor(mask, width=32):
        src = lane ^ mask
        return np.where(src // width > lane // width, v, v[src % 32])

    ballot = int(((v & 1).astype(np.int64) << lane).sum())
    ballot = np.full(32, ballot - 2**32 if ballot >= 2**31 else ballot)
    votes = int((v == 7).any()) + 2 * int((v >= 0).all()) + 4 * xor(17, 16)
    return np.stack(
        [shfl(np.full(32, 5)), shfl((lane * 7 + 3) % 37), up(3), down(5), xor(9),
         shfl(np.full(32, 11), 8), up(2, 8), down(3, 16), ballot, votes], axis=-1,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffles_and_votes(selftest, seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(-5, 10, 4 * 64).astype(np.int32)
    v[64:96] = np.abs(v[64:96])  # one warp where __all_sync(v ≥ 0) holds
    out = np.zeros((4 * 64, 10), np.int32)
    selftest.get_function("shuffles")((4,), (64,), (v, out), seed=seed)
    want = np.concatenate([_warp_model(w) for w in v.reshape(-1, 32)])
    np.testing.assert_array_equal(out, want)


def test_shuffle_of_doubles(selftest):
    x = np.random.default_rng(0).random(64)
    out = np.zeros(64)
    selftest.get_function("shuffle_f64")((1,), (64,), (x, out))
    lane = np.arange(64) % 32
    down = np.where(lane == 31, x, np.roll(x, -1))
    np.testing.assert_array_equal(out, x[np.arange(64) ^ 1] + down)


def test_a_partial_last_warp(selftest):
    x = np.arange(40, dtype=np.int32) ** 2
    out = np.zeros(40, np.int32)
    selftest.get_function("partial_warp")((1,), (40,), (x, out))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(5, 8).sum(1), 8))


def test_a_missing_syncthreads_shows_under_some_schedule(selftest):
    kernel = selftest.get_function("neighbour")
    rng = np.random.default_rng(1)
    wrong = []
    for seed in range(6):
        x = rng.random(4 * 128).astype(np.float32)
        want = np.where(np.arange(512) % 128 == 0, x, np.roll(x, 1))
        out = np.zeros_like(x)
        kernel((4,), (128,), (x, out, i32(1)), seed=seed)
        np.testing.assert_array_equal(out, want)  # with the barrier: right under every order
        kernel((4,), (128,), (x, out, i32(0)), seed=seed)
        wrong.append(not np.array_equal(out, want))
    assert wrong[0] is False  # threads in index order hide the race ...
    assert any(wrong[1:])  # ... another order exposes it


def test_dynamic_shared_memory_is_poisoned_then_shared(selftest):
    found, out = np.zeros(3 * 64, np.float32), np.zeros(3 * 64, np.float32)
    selftest.get_function("dynamic_shared")((3,), (64,), (found, out), shared_mem=64 * 4)
    assert (found.view(np.uint32) == 0xFFFFFFFF).all()  # NaN: reading before writing shows
    g = np.arange(3 * 64)
    np.testing.assert_array_equal(out, g - g % 64 + (g + 1) % 64)


def test_atomics(selftest):
    counter, largest = np.zeros(1, np.int32), np.zeros(1, np.int32)
    total = np.zeros(1, np.float32)
    selftest.get_function("atomics")((5,), (96,), (counter, total, largest), seed=3)
    assert (counter[0], total[0], largest[0]) == (480, 240.0, 479)


def test_template_instantiations_by_name_expression(selftest):
    assert selftest.names[-2:] == ["fill<3>", "fill<7>"]
    out = np.zeros(8, np.int32)
    selftest.get_function("fill<7>")((1,), (4,), (out,))
    assert out.tolist() == [7] * 4 + [0] * 4


# --- what the emulator refuses ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kernel", "block", "message"),
    [
        ("skipped_barrier", 64, r"exited while others wait at __syncthreads.*block \(0, 0, 0\)"),
        ("divergent_shuffle", 32, r"__shfl_xor_sync in warp 0: the mask names a lane that exited"),
        ("partial_mask", 32, r"the mask leaves out a live lane"),
        ("barrier_against_shuffle", 32, r"deadlock"),
        ("mixed_warp_calls", 32, r"different warp-synchronous calls"),
        ("absent_lane", 40, r"reads a lane that does not exist.*thread \(32, 0, 0\)"),
        ("exited_lane", 32, r"__shfl_sync: reads a lane that has exited"),
    ],
)
def test_undefined_behaviour_fails_the_launch(selftest, kernel, block, message):
    with pytest.raises(EmuError, match=message):
        selftest.get_function(kernel)((1,), (block,), (np.zeros(block, np.int32),))


@pytest.mark.parametrize(
    ("grid", "block", "shared", "message"),
    [
        ((1,), (1025,), 0, r"invalid launch configuration.*block \(1025, 1, 1\)"),
        ((1,), (1, 1, 65), 0, r"invalid launch configuration"),
        ((0,), (32,), 0, r"grid \(0, 1, 1\)"),
        ((1, 65536), (32,), 0, r"invalid launch configuration"),
        ((1,), (32,), 232449, r"232449 bytes exceeds 232448"),
    ],
)
def test_bad_launch_configurations(selftest, grid, block, shared, message):
    with pytest.raises(EmuError, match=message):
        selftest.get_function("fill<3>")(
            grid, block, (np.zeros(2048, np.int32),), shared_mem=shared
        )


def test_argument_checks(selftest, reduce):
    row_dot = reduce.get_function("row_dot_f32")
    a, out = np.zeros((2, 3), np.float32), np.zeros(2, np.float32)
    assert row_dot.params == ["*f32", "*f32", "*f32", "i32", "i32"]
    with pytest.raises(TypeError, match=r"argument 3 \(i32\) takes a numpy\.int32 scalar.*\(int\)"):
        row_dot((1,), (32,), (a, a, out, 2, i32(3)))
    with pytest.raises(TypeError, match=r"argument 4 \(i32\).*numpy\.int32.*int64"):
        row_dot((1,), (32,), (a, a, out, i32(2), np.int64(3)))
    with pytest.raises(TypeError, match=r"argument 0 \(\*f32\) needs f32 elements, got a float64"):
        row_dot((1,), (32,), (a.astype(np.float64), a, out, i32(2), i32(3)))
    with pytest.raises(TypeError, match=r"got a float16 tensor"):
        row_dot((1,), (32,), (torch.zeros(2, 3, dtype=torch.float16), a, out, i32(2), i32(3)))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        row_dot((1,), (32,), (np.zeros((3, 2), np.float32).T, a, out, i32(2), i32(3)))
    with pytest.raises(TypeError, match=r"numpy array or a CPU torch tensor, got \[0\.0\]"):
        row_dot((1,), (32,), ([0.0], a, out, i32(2), i32(3)))
    with pytest.raises(
        TypeError, match=r"takes 5 arguments \(\*f32, \*f32, \*f32, i32, i32\), got 2"
    ):
        row_dot((1,), (32,), (a, a))
    with pytest.raises(TypeError, match=r"grid must be an int or a tuple of 1 to 3 ints"):
        row_dot((1, 1, 1, 1), (32,), (a, a, out, i32(2), i32(3)))
    with pytest.raises(EmuError, match=r"no kernel 'row_dot_f64'"):
        reduce.get_function("row_dot_f64")


def test_builds_are_cached_by_content(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void k(int* out) { out[threadIdx.x] = 1; }\n')
    fast = ("-O0",)  # the flags are part of the key too
    first, again = load(src, extra_flags=fast), load(src, extra_flags=fast)
    assert first.path == again.path
    src.write_text('extern "C" __global__ void k(int* out) { out[threadIdx.x] = 2; }\n')
    changed = load(src, extra_flags=fast)
    assert changed.path != first.path
    out = np.zeros(4, np.int32)
    changed.get_function("k")((1,), (4,), (out,))
    assert out.tolist() == [2] * 4


def test_compile_errors_are_reported(tmp_path):
    src = tmp_path / "bad.cu"
    src.write_text('extern "C" __global__ void k(int* out) { out[threadIdx.x] = undeclared; }\n')
    with pytest.raises(
        EmuError, match=r"(?s)compiling bad\.cu for the emulator failed:.*undeclared"
    ):
        load(src)
    (tmp_path / "none.cu").write_text("__device__ int f() { return 1; }\n")
    with pytest.raises(EmuError, match=r'declares no extern "C" __global__ kernel'):
        load(tmp_path / "none.cu")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_selftest_kernels_are_valid_cuda(tmp_path, arch):
    done = subprocess.run(
        ["nvcc", "-std=c++17", "-cubin", f"-arch={arch}", "-o", str(tmp_path / "s.cubin"),
         str(HERE / "selftest.cu")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# --- gpu/kernels/reduce.cu ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "cols", "warps"), [(1, 1, 1), (37, 70, 4), (64, 128, 8), (5, 33, 2)]
)
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_row_dot_matches_numpy(reduce, rows, cols, warps, dtype):
    rng = np.random.default_rng(rows * cols)
    a64, b64 = rng.standard_normal((2, rows, cols))
    torch_dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    a, b = (torch.from_numpy(x).to(torch_dtype) for x in (a64, b64))
    out = np.full(rows, np.nan, np.float32)
    grid = (-(-rows // warps),)
    reduce.get_function(f"row_dot_{dtype}")(
        grid, (32, warps), (a, b, out, i32(rows), i32(cols)), seed=rows
    )
    want = (a.double() * b.double()).sum(1).numpy()  # the same rounded inputs, in float64
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(cols))


@pytest.mark.parametrize(
    ("n", "grid", "block"),
    [(1, 1, 32), (1000, 3, 64), (100_000, 8, 256), (4097, 2, 1024), (50, 4, 32)],
)
def test_block_sum_matches_numpy(reduce, n, grid, block):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = np.zeros(1, np.float32)
    reduce.get_function("block_sum_f32")((grid,), (block,), (x, out, np.int64(n)), seed=n % 7)
    assert out[0] == pytest.approx(x.astype(np.float64).sum(), rel=1e-5, abs=1e-4 * np.sqrt(n))


# --- gpu/kernels/sparse_attention.cu: the forward, fp32 -----------------------------------------
ATTENTION = [(16, 32), (32, 64), (16, 128), (64, 32), (128, 32)]  # (block, head dim) tested here


@pytest.fixture(scope="module")
def attention():
    from flowgraph.gpu.kernels import (
        NAME_EXPRESSIONS,  # every instantiation: one build, shared (cached)
    )

    module = load(KERNELS / "sparse_attention.cu", NAME_EXPRESSIONS["sparse_attention.cu"])
    assert {f"sparse_attention_fwd_f32<{b}, {d}>" for b, d in ATTENTION} <= set(module.names)
    return module


def emulated_forward(module, q, k, v, mask, scale, seed=0):
    """What the CuPy launcher will do, with the emulator in place of the GPU: permute, launch on
    poisoned outputs, un-permute. Returns (out, lse) in token order."""
    from flowgraph.gpu.kernels import sparse_attention_fwd_config

    b, h, n, d = q.shape
    if mask.perm_hn is not None:
        q, k, v = (_per_head(x, mask.perm_hn) for x in (q, k, v))
    q, k, v = (x.float().contiguous() for x in (q, k, v))
    out = torch.full_like(q, float("nan"))
    lse = torch.full((b, h, n), float("nan"))
    threads, shared = sparse_attention_fwd_config(mask.block, d)
    kernel = module.get_function(f"sparse_attention_fwd_f32<{mask.block}, {d}>")
    args = (q, k, v, mask.kv_indptr, mask.kv_indices, mask.kv_slots, mask.bits_pbw, out, lse)
    args += (i32(n), i32(h), i32(mask.heads), np.float32(scale))
    kernel((mask.num_blocks, b * h), (threads,), args, shared_mem=shared, seed=seed)
    if mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
        lse = _per_head(lse[..., None], mask.inv_perm_hn)[..., 0]
    return out, lse


@pytest.mark.parametrize(
    ("block", "d", "n", "b", "h", "mask_heads", "kind"),
    [
        (16, 32, 40, 2, 3, 3, "random"),
        (16, 32, 40, 1, 2, 1, "permuted"),
        (16, 32, 1, 1, 1, 1, "causal"),
        (16, 32, 17, 1, 2, 2, "empty"),
        (32, 64, 70, 1, 2, 2, "causal"),
        (32, 64, 45, 2, 1, 1, "permuted"),
        (16, 128, 20, 1, 2, 2, "random"),
        (64, 32, 130, 1, 1, 1, "random"),
        (128, 32, 130, 1, 1, 1, "causal"),
    ],
)
def test_forward_kernel_matches_the_reference(attention, block, d, n, b, h, mask_heads, kind):
    rng = np.random.default_rng(block * n + d)
    masks, perm = mask_case(kind, mask_heads, n, rng)
    mask = SparseMask.from_masks(masks, block=block, permute=perm)
    q, k, v = (torch.from_numpy(rng.standard_normal((b, h, n, d))).float() for _ in range(3))
    ref, ref_lse = sparse_attention_reference(
        q.double(), k.double(), v.double(), mask, 0.4, return_lse=True
    )
    for seed in (0, 7):
        out, lse = emulated_forward(attention, q, k, v, mask, 0.4, seed=seed)
        assert not out.isnan().any() and not lse.isnan().any(), "a row was not written"
        empty = torch.isneginf(ref_lse)
        assert torch.equal(torch.isneginf(lse), empty) and (out[empty] == 0).all()
        if ref.norm() > 0:
            assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
        torch.testing.assert_close(lse[~empty].double(), ref_lse[~empty], rtol=1e-5, atol=1e-5)


def test_forward_kernel_on_a_permuted_strided_pattern(attention):
    """The strided pattern's second step in heads mode with the strided transpose."""
    p = fg.strided(96, stride=8)
    mask = SparseMask.from_pattern(p, heads=2, mode="heads", block=32, permute="auto")
    assert mask.permuted
    rng = np.random.default_rng(5)
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 96, 64))).float() for _ in range(3))
    out, _ = emulated_forward(attention, q, k, v, mask, 0.125, seed=3)
    ref = gpu.sparse_attention(q.double(), k.double(), v.double(), mask, 0.125)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5
