"""The CUDA sources of :mod:`gpu` and the template instantiations each is used with.

A source is compiled whole (NVRTC through ``cupy.RawModule(code=..., name_expressions=...)`` on a
GPU, nvcc in the compile test, the C++ compiler and ``tests/cuda_emu`` in the emulation tests);
``NAME_EXPRESSIONS`` lists, per file, the template kernels to instantiate beside its
``extern "C"`` ones, so that every instantiation the launchers use is compiled by every path.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BLOCKS",
    "HEAD_DIMS",
    "KERNELS",
    "METRIC_BWD_BLOCKS",
    "METRIC_HEAD_DIMS",
    "NAME_EXPRESSIONS",
    "metric_attention_bwd_config",
    "metric_attention_fwd_config",
    "source",
    "sparse_attention_fwd_config",
]

KERNELS = Path(__file__).resolve().parent
BLOCKS = (16, 32, 64, 128)  # = gpu.mask.BLOCKS
HEAD_DIMS = (32, 64, 128)
METRIC_HEAD_DIMS = (16, 32, 64, 128)  # k of metric attention: the head dims 16–128
METRIC_BWD_BLOCKS = (16, 32, 64)  # block 128 would need 330 KB of shared memory at k = 128

NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "metric_attention.cu": tuple(
        f"metric_attention_fwd_f32<{b}, {d}>" for b in BLOCKS for d in METRIC_HEAD_DIMS
    )
    + tuple(
        f"metric_attention_bwd_f32<{b}, {d}>" for b in METRIC_BWD_BLOCKS for d in METRIC_HEAD_DIMS
    ),
    "reduce.cu": (),
    "sparse_attention.cu": tuple(
        f"sparse_attention_fwd_f32<{b}, {d}>" for b in BLOCKS for d in HEAD_DIMS
    ),
}


def source(name: str) -> str:
    """The text of ``gpu/kernels/<name>``."""
    if name not in NAME_EXPRESSIONS:
        raise ValueError(f"name must be one of {sorted(NAME_EXPRESSIONS)}, got {name!r}")
    return (KERNELS / name).read_text(encoding="utf-8")


def sparse_attention_fwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``sparse_attention_fwd_f32<block, d>``:
    eight lanes per query row; Q and K/V tiles of block × (d+1) floats and a block × (block+1)
    probability tile."""
    if block not in BLOCKS or head_dim not in HEAD_DIMS:
        raise ValueError(
            f"need block in {BLOCKS} and head_dim in {HEAD_DIMS}, got block={block}, "
            f"head_dim={head_dim}"
        )
    return 8 * block, 4 * (2 * block * (head_dim + 1) + block * (block + 1))


def metric_attention_fwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_fwd_f32<block, k>``:
    eight lanes per query row; a q tile and one p tile (keys and values at once) of
    block × (k+1) floats and a block × (block+1) probability tile."""
    if block not in BLOCKS or head_dim not in METRIC_HEAD_DIMS:
        raise ValueError(
            f"need block in {BLOCKS} and head_dim in {METRIC_HEAD_DIMS}, got block={block}, "
            f"head_dim={head_dim}"
        )
    return 8 * block, 4 * (2 * block * (head_dim + 1) + block * (block + 1))


def metric_attention_bwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_bwd_f32<block, k>``:
    eight lanes per key row; p, q and dout tiles of block × (k+1) floats, P and dS tiles of
    block × (block+1), and the tile's lse and delta."""
    if block not in METRIC_BWD_BLOCKS or head_dim not in METRIC_HEAD_DIMS:
        raise ValueError(
            f"need block in {METRIC_BWD_BLOCKS} and head_dim in {METRIC_HEAD_DIMS}, got "
            f"block={block}, head_dim={head_dim}"
        )
    return 8 * block, 4 * (3 * block * (head_dim + 1) + 2 * block * (block + 1) + 2 * block)
