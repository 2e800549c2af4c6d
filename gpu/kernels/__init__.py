"""The CUDA sources of :mod:`gpu` and the template instantiations each is used with.

On a GPU each template instantiation is compiled as its own ``cupy.RawModule`` (NVRTC; see
``gpu._cupy.kernel``: a process compiles only what it launches, since CuPy keeps no disk cache
for modules with name expressions); the compile test builds each source whole with nvcc, the
emulation tests with the C++ compiler and ``tests/cuda_emu``. ``NAME_EXPRESSIONS`` lists, per
file, the template kernels to instantiate beside its ``extern "C"`` ones, so that every
instantiation the launchers use is compiled by every path.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BLOCKS",
    "HEAD_DIMS",
    "KERNELS",
    "METRIC_BWD_BLOCKS",
    "METRIC_HEAD_DIMS",
    "METRIC_TYPES",
    "NAME_EXPRESSIONS",
    "SPARSE_KERNELS",
    "metric_attention_bwd_config",
    "metric_attention_bwd_wmma_config",
    "metric_attention_fwd_config",
    "metric_attention_fwd_wmma_config",
    "metric_bwd_keys",
    "source",
    "sparse_attention_bwd_config",
    "sparse_attention_bwd_wmma_config",
    "sparse_attention_fwd_config",
    "sparse_attention_fwd_wmma_config",
    "sparse_bwd_keys",
]

KERNELS = Path(__file__).resolve().parent
BLOCKS = (16, 32, 64, 128)  # = gpu.mask.BLOCKS
HEAD_DIMS = (32, 64, 128)
METRIC_HEAD_DIMS = (16, 32, 64, 128)  # k of metric attention: the head dims 16–128
METRIC_BWD_BLOCKS = BLOCKS  # a key block of 128 is two thread blocks of 64 keys (metric_bwd_keys)
METRIC_TYPES = ("f32", "f16", "bf16")  # element types of p and M; sums accumulate in float32

# the sparse kernels, each for every block and head dim: forward and backward, by element type
SPARSE_KERNELS = ("fwd_f32", "bwd_f32", "fwd_f16", "fwd_bf16", "bwd_f16", "bwd_bf16")

NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "metric_attention.cu": tuple(
        f"metric_attention_fwd_{t}<{b}, {d}>"
        for t in METRIC_TYPES
        for b in BLOCKS
        for d in METRIC_HEAD_DIMS
    )
    + tuple(
        f"metric_attention_bwd_{t}<{b}, {d}>"
        for t in METRIC_TYPES
        for b in METRIC_BWD_BLOCKS
        for d in METRIC_HEAD_DIMS
    ),
    "reduce.cu": (),
    "sparse_attention.cu": tuple(
        f"sparse_attention_{kind}<{b}, {d}>"
        for kind in SPARSE_KERNELS
        for b in BLOCKS
        for d in HEAD_DIMS
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


def _check_sparse(block: int, head_dim: int) -> None:
    if block not in BLOCKS or head_dim not in HEAD_DIMS:
        raise ValueError(
            f"need block in {BLOCKS} and head_dim in {HEAD_DIMS}, got block={block}, "
            f"head_dim={head_dim}"
        )


def sparse_bwd_keys(block: int) -> int:
    """Keys per thread block of the sparse backward kernels, min(block, 64): a key block of 128
    is split over two thread blocks (and its queries go in chunks of 64) to fit shared memory."""
    return min(block, 64)


def sparse_attention_bwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``sparse_attention_bwd_f32<block, d>``:
    eight lanes per key row, KB = :func:`sparse_bwd_keys` keys; K, V, Q and dout tiles of
    KB × (d+1) floats, P and dS tiles of KB × (KB+1), the chunk's lse and delta."""
    _check_sparse(block, head_dim)
    kb = sparse_bwd_keys(block)
    return 8 * kb, 4 * (4 * kb * (head_dim + 1) + 2 * kb * (kb + 1) + 2 * kb)


def sparse_attention_fwd_wmma_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads, dynamic shared memory bytes) of ``sparse_attention_fwd_{f16,bf16}<block, d>``:
    eight lanes per query row; Q and K/V tiles of block × (d+8) halves, a float score tile of
    block × (block+4) that the half probabilities overwrite row by row, a float output tile of
    block × (d+4)."""
    _check_sparse(block, head_dim)
    return 8 * block, 2 * 2 * block * (head_dim + 8) + 4 * block * (block + 4 + head_dim + 4)


def sparse_attention_bwd_wmma_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads, dynamic shared memory bytes) of ``sparse_attention_bwd_{f16,bf16}<block, d>``:
    eight lanes per key row, KB = :func:`sparse_bwd_keys` keys; K, V, Q and dout tiles of
    KB × (d+8) halves, float Sᵀ and dPᵀ tiles of KB × (KB+4) (Pᵀ and dSᵀ overwrite them), a float
    dq tile of KB × (d+4), the chunk's lse and delta."""
    _check_sparse(block, head_dim)
    kb = sparse_bwd_keys(block)
    return 8 * kb, 2 * 4 * kb * (head_dim + 8) + 4 * (
        2 * kb * (kb + 4) + kb * (head_dim + 4) + 2 * kb
    )


def metric_attention_fwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_fwd_<t><block, k>``
    for every t in METRIC_TYPES: eight lanes per query row; a q tile and one p tile (keys and
    values at once) of block × (k+1) floats and a block × (block+1) probability tile."""
    if block not in BLOCKS or head_dim not in METRIC_HEAD_DIMS:
        raise ValueError(
            f"need block in {BLOCKS} and head_dim in {METRIC_HEAD_DIMS}, got block={block}, "
            f"head_dim={head_dim}"
        )
    return 8 * block, 4 * (2 * block * (head_dim + 1) + block * (block + 1))


def metric_attention_fwd_wmma_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_fwd_{f16,bf16}<block,
    k>`` (tensor cores): eight lanes per query row; a q tile and one p tile of block × (k+8)
    halves, a float score tile of block × (block+4) that the half probabilities overwrite row by
    row, and a float output tile of block × (k+4)."""
    metric_attention_fwd_config(block, head_dim)  # the same blocks and head dims
    return 8 * block, 2 * 2 * block * (head_dim + 8) + 4 * block * (block + 4 + head_dim + 4)


def metric_attention_bwd_wmma_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_bwd_{f16,bf16}<block,
    k>`` (tensor cores): eight lanes per key row, KB = :func:`metric_bwd_keys` keys; p, q and
    dout tiles of KB × (k+8) halves, float Sᵀ and dPᵀ tiles of KB × (KB+4) (Pᵀ and dSᵀ overwrite
    them), a float dq tile of KB × (k+4), the chunk's lse and delta."""
    metric_attention_bwd_config(block, head_dim)  # the same blocks and head dims
    kb = metric_bwd_keys(block)
    return 8 * kb, 2 * 3 * kb * (head_dim + 8) + 4 * (
        2 * kb * (kb + 4) + kb * (head_dim + 4) + 2 * kb
    )


def metric_bwd_keys(block: int) -> int:
    """Keys per thread block of the metric backward, KB = min(block, 64): a key block of 128 is
    split over two thread blocks (its grid has ⌈n/block⌉·block/KB of them along x) and the query
    tiles are walked in chunks of KB rows; at block 128 and k = 128 whole tiles would need 330 KB
    of shared memory."""
    return min(block, 64)


def metric_attention_bwd_config(block: int, head_dim: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory bytes) of ``metric_attention_bwd_<t><block, k>``
    for every t in METRIC_TYPES: eight lanes per key row, KB = :func:`metric_bwd_keys` keys; p, q
    and dout tiles of KB × (k+1) floats, P and dS tiles of KB × (KB+1), the chunk's lse and
    delta."""
    if block not in METRIC_BWD_BLOCKS or head_dim not in METRIC_HEAD_DIMS:
        raise ValueError(
            f"need block in {METRIC_BWD_BLOCKS} and head_dim in {METRIC_HEAD_DIMS}, got "
            f"block={block}, head_dim={head_dim}"
        )
    kb = metric_bwd_keys(block)
    return 8 * kb, 4 * (3 * kb * (head_dim + 1) + 2 * kb * (kb + 1) + 2 * kb)
