"""The block-sparse mask the attention kernels read: :class:`SparseMask`.

A SparseMask cuts each head's boolean (n, n) mask into block×block tiles and keeps only the
non-empty ones, twice: as a block CSR by query block (the forward walks the key blocks of each
query block) and by key block (the backward walks the query blocks of each key block). A tile in
which every entry is allowed is *full* and carries no bits; every other non-empty tile is
*partial* and owns one bitmask. Tiles that reach past n (when block does not divide n) are always
partial: out-of-range entries are off, so a kernel never needs a separate bounds mask.

A head may carry a token permutation (OpenAI's strided transpose, :func:`strided_permutation`),
under which the strided pattern's second step becomes block-sparse; the tiles then describe the
permuted order and the attention entry points apply and undo the permutation around the kernel.

Everything is built with vectorised numpy/scipy index arithmetic (no loop over blocks) and held
as torch tensors: int32 indices, int32 bitmask words. The exact layout is in ``docs/gpu.md``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from flowgraph import Pattern, _validate

__all__ = ["BLOCKS", "Density", "SparseMask", "strided_permutation"]

BLOCKS = (16, 32, 64, 128)  # the kernels' tile sizes: multiples of the 16×16 tensor-core tile
DENSE_LIMIT_BYTES = 256 * 2**20  # to_dense refuses a larger bool array unless asked for
MEMORY_LIMIT_BYTES = _validate.MEMORY_LIMIT_BYTES  # a larger build is refused up front
# Peak bytes of a head's build per allowed (q, k) pair (int64 index temporaries), measured with
# tracemalloc on strided, fixed, local and dense patterns: 50–115.
BUILD_BYTES_PER_ENTRY = 120
_TILE_BYTES = 48  # per tile of each head while the heads are concatenated (int64, then int32)
_WORD_BYTES = 16  # per bitmask word: the float64 bincount and its uint32 copy
_MODES = ("merged", "heads")  # "interleave" is per layer: one mask per layer with step=i % p


# --- small named checks -------------------------------------------------------------------------
def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def _block(block: object) -> int:
    block = _int("block", block)
    if block not in BLOCKS:
        raise ValueError(
            f"block must be one of {', '.join(map(str, BLOCKS))} (the kernels' tile sizes), "
            f"got block={block}"
        )
    return block


def _no_meta(t: torch.Tensor, argname: str) -> None:
    if t.device.type == "meta":
        raise ValueError(
            f"{argname} is on the meta device, which holds no values; a mask is built from its "
            "values: pass a CPU or CUDA tensor"
        )


def _as_numpy_bool(masks: Any, argname: str) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        if masks.dtype != torch.bool:
            raise TypeError(f"{argname} must be a boolean tensor, got dtype {masks.dtype}")
        _no_meta(masks, argname)
        return masks.detach().cpu().numpy()
    arr = np.asarray(masks)
    if arr.dtype != np.bool_:
        raise TypeError(
            f"{argname} must be a boolean array, got dtype {arr.dtype}; "
            "convert with masks.astype(bool) if 0/1 values are meant"
        )
    return arr


def _permutations(permute: Any, heads: int, n: int) -> tuple[np.ndarray, bool]:
    """An explicit ``permute`` as (heads, n) int64 (a (n,) array for every head, or one per
    head) and whether every head shares it."""
    if isinstance(permute, torch.Tensor):
        _no_meta(permute, "permute")
        permute = permute.detach().cpu().numpy()
    perm = np.asarray(permute)
    if perm.dtype == np.bool_ or not np.issubdtype(perm.dtype, np.integer):
        raise TypeError(
            f'permute must be None, "auto" or an integer array of positions, got dtype {perm.dtype}'
        )
    shared = perm.shape == (n,)
    if not shared and perm.shape != (heads, n):
        raise ValueError(
            f"permute must have shape (n,)=({n},) or (heads, n)=({heads}, {n}), "
            f"got shape {perm.shape}"
        )
    rows = perm.reshape(-1, n).astype(np.int64)  # a shared permutation is checked once
    ok = (rows.min(initial=0) >= 0) & (rows.max(initial=0) < n)
    if ok:
        seen = np.zeros(rows.shape, dtype=np.int64)
        np.add.at(seen, (np.arange(rows.shape[0])[:, None], rows), 1)
        ok = bool((seen == 1).all())
    if not ok:
        raise ValueError(
            f"permute must be a permutation of 0..{n - 1} (each position exactly once) per head"
        )
    perm = np.broadcast_to(rows[0], (heads, n)) if shared else rows
    return perm, shared


def strided_permutation(n: int, stride: int) -> np.ndarray:
    """OpenAI's strided transpose as a permutation: ``perm[i]`` is the token at position i.

    Tokens are sorted by (t mod l, t div l), l = stride, so each residue class is contiguous. When
    l divides n, token t lands at (t mod l)·(n/l) + t div l, the formula of Child et al. 2019;
    for other n it is the same order with the classes packed (no gaps). Under it, the strided
    pattern's second step ((q−k) mod l = 0) keeps only pairs inside one class: block-sparse.

    >>> strided_permutation(8, 4).tolist()
    [0, 4, 1, 5, 2, 6, 3, 7]
    >>> strided_permutation(7, 3).tolist()
    [0, 3, 6, 1, 4, 2, 5]
    """
    n = _int("n", n)
    stride = _int("stride", stride)
    if n < 1 or not 1 <= stride <= n:
        raise ValueError(f"need n ≥ 1 and 1 ≤ stride ≤ n, got n={n}, stride={stride}")
    _validate.positions("n", n)
    t = np.arange(n, dtype=np.int64)
    return np.argsort(t % stride, kind="stable")


# --- the vectorised build -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Head:
    """One head's tiles, indices local to the head (slots count from 0)."""

    kv_indptr: np.ndarray  # (nb+1,)
    kv_indices: np.ndarray  # (nnz,) key block of each tile, by query block then key block
    kv_slots: np.ndarray  # (nnz,) −1 full, else row of bits
    q_indptr: np.ndarray  # (nb+1,)
    q_indices: np.ndarray  # (nnz,) query block of each tile, by key block then query block
    q_slots: np.ndarray  # (nnz,)
    bits: np.ndarray  # (partial, block, words) uint32
    perm: np.ndarray | None  # (n,) or None
    elements: int
    blocks_unpermuted: int


def _dense_count(key: np.ndarray, size: int) -> bool:
    return size <= max(1 << 20, 4 * key.size)  # a dense count is cheaper than a sort


def _tile_counts(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct tile keys, entries per tile, and each entry's rank among the tiles."""
    if _dense_count(key, size):
        counts = np.bincount(key, minlength=size)
        tiles = np.flatnonzero(counts)
        rank = np.zeros(size, dtype=np.int64)
        rank[tiles] = np.arange(tiles.size)
        return tiles, counts[tiles], rank[key]
    tiles, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return tiles, counts, inverse


def _distinct(key: np.ndarray, size: int) -> int:
    if _dense_count(key, size):
        return int(np.count_nonzero(np.bincount(key, minlength=size)))
    return int(np.unique(key).size)


def _csr(major: np.ndarray, nb: int) -> np.ndarray:
    indptr = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=nb), out=indptr[1:])
    return indptr


def _build_head(
    q: np.ndarray, k: np.ndarray, n: int, block: int, perm: np.ndarray | None, max_bytes: int
) -> _Head:
    """Tiles of one head from its allowed entries (q, k) in token order (distinct pairs)."""
    nb = -(-n // block)
    words = -(-block // 32)
    natural = _distinct((q // block) * nb + k // block, nb * nb) if perm is not None else 0
    if perm is not None:  # entries move to the positions their tokens take
        position = np.empty(n, dtype=np.int64)
        position[perm] = np.arange(n)
        q, k = position[q], position[k]
    bq, bk = q // block, k // block
    tiles, counts, rank = _tile_counts(bq * nb + bk, nb * nb)
    tile_q, tile_k = tiles // nb, tiles % nb
    partial = counts < block * block  # a tile past n never fills, so it is partial
    slots = np.where(partial, np.cumsum(partial) - 1, -1)
    n_partial = int(partial.sum())
    _validate.memory(
        f"the bitmasks of {n_partial:,} partial {block}×{block} tiles",
        n_partial * block * words * _WORD_BYTES,
        max_bytes,
    )

    entry_slot = slots[rank]
    on = entry_slot >= 0
    col = k[on] % block
    word = (entry_slot[on] * block + q[on] % block) * words + col // 32
    # distinct entries set distinct bits of a word, so their sum is their OR (exact in float64)
    bits = np.bincount(word, weights=np.ldexp(1.0, col % 32), minlength=n_partial * block * words)
    bits = bits.astype(np.uint32).reshape(n_partial, block, words)

    by_key = np.argsort(tile_k * nb + tile_q, kind="stable")
    return _Head(
        kv_indptr=_csr(tile_q, nb),
        kv_indices=tile_k,
        kv_slots=slots,
        q_indptr=_csr(tile_k[by_key], nb),
        q_indices=tile_q[by_key],
        q_slots=slots[by_key],
        bits=bits,
        perm=perm,
        elements=int(q.size),
        blocks_unpermuted=natural if perm is not None else int(tiles.size),
    )


def _entries(step: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    n = step.shape[0]
    q = np.repeat(np.arange(n, dtype=np.int64), np.diff(step.indptr))
    return q, step.indices.astype(np.int64)


def _auto_head(step: sp.csr_array, n: int, block: int, stride: int | None, max_bytes: int) -> _Head:
    """The head with the strided transpose when that lowers its block count, else without."""
    q, k = _entries(step)
    plain = _build_head(q, k, n, block, None, max_bytes)
    if stride is None or not 1 < stride < n:
        return plain
    moved = _build_head(q, k, n, block, strided_permutation(n, stride), max_bytes)
    return moved if moved.kv_indices.size < plain.kv_indices.size else plain


# --- the data object ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Density:
    """Fractions of a SparseMask (over all its heads, or one).

    ``element``: allowed (q, k) pairs / (heads·n²). ``block``: non-empty tiles / (heads·nb²), in
    the stored (possibly permuted) order — the work a kernel does. ``block_unpermuted``: the same
    in natural token order, i.e. without the permutation. ``full``: full tiles / non-empty tiles.
    """

    element: float
    block: float
    block_unpermuted: float
    full: float


class SparseMask:
    """Per-head block CSR (forward and backward), full/partial flags and partial-tile bitmasks.

    Build one with :meth:`from_pattern` or :meth:`from_masks`. Fields (torch tensors on
    ``device``; H = ``heads``, nb = ⌈n/block⌉, P = partial tiles, W = ⌈block/32⌉):

    - ``kv_indptr`` int32 (H, nb+1): tiles of query block i of head h are entries
      ``kv_indptr[h, i] : kv_indptr[h, i+1]`` of ``kv_indices`` (key block, ascending) and
      ``kv_slots`` (−1: full tile; s ≥ 0: partial, its bits are ``bits_pbw[s]``);
    - ``q_indptr``, ``q_indices``, ``q_slots``: the same tiles by key block (query blocks
      ascending) for the backward; a tile has the same slot in both;
    - ``bits_pbw`` int32 (P, block, W): row r of slot s is query bq·block + r; bit j (value
      1 << j) of word w is key bk·block + 32·w + j; bits past the block or past n are 0. The
      words are uint32 stored as int32 (torch has no full uint32 support);
    - ``perm_hn`` int32 (H, n) or None: position i of head h holds token ``perm_hn[h, i]``;
      the tiles describe the permuted order. ``inv_perm_hn`` is its inverse.

    Head h of a mask with one head applies to every head of q.

    Examples
    --------
    >>> import flowgraph as fg
    >>> m = SparseMask.from_pattern(fg.strided(256, stride=16), step=1, block=16, permute="auto")
    >>> m
    SparseMask(heads=1, n=256, block=16, kv_indptr=(1, 17), kv_indices=(16,), bits_pbw=(16, 16, 1), perm_hn=(1, 256), device=cpu)
    >>> d = m.density()  # one tile per residue class instead of a lower triangle of tiles
    >>> d.block, d.block_unpermuted
    (0.0625, 0.53125)
    >>> m.to_dense().equal(torch.from_numpy(fg.strided(256, stride=16).dense(1))[None])
    True
    """  # noqa: E501

    __slots__ = (
        "_block",
        "_counts_h",
        "_heads",
        "_n",
        "bits_pbw",
        "inv_perm_hn",
        "kv_indices",
        "kv_indptr",
        "kv_slots",
        "perm_hn",
        "q_indices",
        "q_indptr",
        "q_slots",
    )

    def __init__(
        self,
        *,
        n: int,
        block: int,
        kv_indptr: torch.Tensor,
        kv_indices: torch.Tensor,
        kv_slots: torch.Tensor,
        q_indptr: torch.Tensor,
        q_indices: torch.Tensor,
        q_slots: torch.Tensor,
        bits_pbw: torch.Tensor,
        perm_hn: torch.Tensor | None,
        inv_perm_hn: torch.Tensor | None,
        counts_h: np.ndarray,
    ) -> None:
        """Internal: use :meth:`from_pattern` or :meth:`from_masks`, which check their input."""
        self._n = n
        self._block = block
        self._heads = int(kv_indptr.shape[0])
        self.kv_indptr = kv_indptr
        self.kv_indices = kv_indices
        self.kv_slots = kv_slots
        self.q_indptr = q_indptr
        self.q_indices = q_indices
        self.q_slots = q_slots
        self.bits_pbw = bits_pbw
        self.perm_hn = perm_hn
        self.inv_perm_hn = inv_perm_hn
        self._counts_h = counts_h  # (H, 4): elements, tiles, full tiles, tiles unpermuted

    # --- constructors -----------------------------------------------------------------------
    @classmethod
    def from_pattern(
        cls,
        pattern: Pattern,
        step: int | None = None,
        *,
        block: int = 64,
        heads: int | None = None,
        mode: str | None = None,
        permute: Any = None,
        max_bytes: int = MEMORY_LIMIT_BYTES,
    ) -> SparseMask:
        """A mask from a :class:`flowgraph.Pattern`.

        Parameters
        ----------
        pattern : the pattern.
        step : the step every query uses (default 0); one head, applied to every head of q.
        block : tile size, one of 16, 32, 64, 128.
        heads, mode : ``mode="heads"`` gives ``heads`` heads (default: one per step), head h
            using step h mod p; ``mode="merged"`` gives one head, the union of the steps.
            ``"interleave"`` lays steps over layers: build one mask per layer with
            ``step=i % pattern.num_steps``.
        permute : None (natural order), ``"auto"`` (per head, the strided transpose with the
            pattern's ``stride`` when it lowers the block count), or explicit positions,
            shape (n,) or (heads, n): see the class fields.
        max_bytes : a build that would need more memory is refused (ValueError) up front.

        Raises
        ------
        TypeError, ValueError : with the argument, its value and what was expected.
        """
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
        block = _block(block)
        if mode is not None and mode not in _MODES:
            hint = (
                "; interleave lays steps over layers: build one mask per layer with "
                "step=i % pattern.num_steps"
                if mode == "interleave"
                else ""
            )
            raise ValueError(f"mode must be None, 'merged' or 'heads', got mode={mode!r}{hint}")
        if heads is not None and mode != "heads":
            raise ValueError(f"heads is only used with mode='heads', got heads={heads}")
        if step is not None and mode is not None:
            raise ValueError(
                f"step is only used without a mode, got step={step} with mode={mode!r}"
            )
        max_bytes = _validate.byte_limit("max_bytes", max_bytes)
        p = pattern.num_steps
        if mode == "heads":
            heads = p if heads is None else _int("heads", heads)
            if heads < 1:
                raise ValueError(f"heads must be ≥ 1, got heads={heads}")
            distinct = [pattern.steps[key] for key in range(min(heads, p))]  # head h: h mod p
        elif mode == "merged":
            heads, distinct = 1, [pattern.merged().steps[0]]
        else:
            step = 0 if step is None else _int("step", step)
            if not 0 <= step < p:
                raise ValueError(
                    f"step must be in 0..{p - 1} (the pattern has {p} steps), got step={step}"
                )
            heads, distinct = 1, [pattern.steps[step]]
        n = pattern.n
        if isinstance(permute, str) and permute != "auto":
            raise ValueError(f'permute must be None, "auto" or an array, got permute={permute!r}')
        auto = isinstance(permute, str)  # "auto", the only string allowed
        explicit = permute is not None and not auto
        perms, shared = _permutations(permute, heads, n) if explicit else (None, True)
        if not shared:  # one permutation per head: every head builds its own tiles
            distinct = [
                pattern.steps[h % p] if mode == "heads" else distinct[0] for h in range(heads)
            ]
        entries = sum(int(s.nnz) for s in distinct)
        _validate.memory(
            f"SparseMask.from_pattern(n={n}, block={block}) with {entries:,} allowed pairs",
            entries * BUILD_BYTES_PER_ENTRY * (2 if auto else 1),
            max_bytes,
        )
        if auto:
            stride = pattern.params.get("stride")
            stride = stride if isinstance(stride, numbers.Integral) else None
            built = [_auto_head(s, n, block, stride, max_bytes) for s in distinct]
        else:
            built = [
                _build_head(*_entries(s), n, block, None if perms is None else perms[i], max_bytes)
                for i, s in enumerate(distinct)
            ]
        # head h uses distinct[h mod len(distinct)]: heads that share a step share its tiles
        return cls._from_heads(built, n, block, heads, max_bytes)

    @classmethod
    def from_masks(
        cls,
        masks_hqk: Any,
        *,
        block: int = 64,
        permute: Any = None,
        max_bytes: int = MEMORY_LIMIT_BYTES,
    ) -> SparseMask:
        """A mask from dense boolean masks of shape (H, n, n): H heads, or 1 for every head.

        ``masks_hqk[h, q, k]`` is True iff query q of head h attends key k. Accepts a numpy array
        or a torch tensor (any device). ``permute``: None or explicit positions, shape (n,) or
        (H, n), as in :meth:`from_pattern`.
        """
        masks = _as_numpy_bool(masks_hqk, "masks_hqk")
        if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
            raise ValueError(
                f"masks_hqk must be (heads, n, n), got shape {masks.shape}"
                + ("; add a head axis with masks[None]" if masks.ndim == 2 else "")
            )
        heads, n = masks.shape[0], masks.shape[1]
        if heads == 0 or n == 0:
            raise ValueError(f"masks_hqk must have heads ≥ 1 and n ≥ 1, got shape {masks.shape}")
        block = _block(block)
        max_bytes = _validate.byte_limit("max_bytes", max_bytes)
        if isinstance(permute, str):
            raise ValueError(
                f"permute must be None or an array of positions for from_masks, got {permute!r} "
                '(permute="auto" needs a pattern\'s stride: use from_pattern)'
            )
        perms = None if permute is None else _permutations(permute, heads, n)[0]
        _validate.positions("n", n)
        entries = int(np.count_nonzero(masks))
        _validate.memory(
            f"SparseMask.from_masks(n={n}, block={block}) with {entries:,} allowed pairs",
            entries * BUILD_BYTES_PER_ENTRY,
            max_bytes,
        )
        built = []
        for h in range(heads):
            q, k = np.nonzero(masks[h])
            perm = None if perms is None else perms[h]
            built.append(
                _build_head(q.astype(np.int64), k.astype(np.int64), n, block, perm, max_bytes)
            )
        return cls._from_heads(built, n, block, heads, max_bytes)

    @classmethod
    def _from_heads(
        cls, distinct: list[_Head], n: int, block: int, heads: int, max_bytes: int
    ) -> SparseMask:
        """Concatenate ``heads`` heads, head h being ``distinct[h % len(distinct)]``: indptrs
        become global offsets, slots index one shared bits array."""
        nb = -(-n // block)

        def head_bytes(hd: _Head) -> int:  # uint32 words: concatenated, cast, made a tensor
            perm = 24 * n if hd.perm is not None else 0
            return hd.kv_indices.size * _TILE_BYTES + hd.bits.size * 12 + 24 * (nb + 1) + perm

        full, rest = divmod(heads, len(distinct))
        need = sum(head_bytes(hd) * (full + (i < rest)) for i, hd in enumerate(distinct))
        _validate.memory(f"a SparseMask of {heads:,} heads at n={n}", need, max_bytes)
        built = [distinct[h % len(distinct)] for h in range(heads)]
        nnz = np.array([0] + [hd.kv_indices.size for hd in built], dtype=np.int64).cumsum()
        npart = np.array([0] + [hd.bits.shape[0] for hd in built], dtype=np.int64).cumsum()
        if nnz[-1] >= 2**31 or npart[-1] * block >= 2**31:
            raise ValueError(f"the mask holds {nnz[-1]} tiles, beyond int32 indexing")

        def shift(slots: np.ndarray, h: int) -> np.ndarray:
            return np.where(slots >= 0, slots + npart[h], -1)

        def i32(parts: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(parts).astype(np.int32))

        words = -(-block // 32)
        bits = np.concatenate([hd.bits for hd in built]) if built else np.zeros((0, block, words))
        permuted = any(hd.perm is not None for hd in built)
        perm_hn = inv_hn = None
        if permuted:
            perm = np.stack([np.arange(n) if hd.perm is None else hd.perm for hd in built])
            inv = np.empty_like(perm)
            np.put_along_axis(inv, perm, np.arange(n)[None].repeat(len(built), 0), axis=1)
            perm_hn = torch.from_numpy(perm.astype(np.int32))
            inv_hn = torch.from_numpy(inv.astype(np.int32))
        return cls(
            n=n,
            block=block,
            kv_indptr=torch.stack([i32([hd.kv_indptr + nnz[h]]) for h, hd in enumerate(built)]),
            kv_indices=i32([hd.kv_indices for hd in built]),
            kv_slots=i32([shift(hd.kv_slots, h) for h, hd in enumerate(built)]),
            q_indptr=torch.stack([i32([hd.q_indptr + nnz[h]]) for h, hd in enumerate(built)]),
            q_indices=i32([hd.q_indices for hd in built]),
            q_slots=i32([shift(hd.q_slots, h) for h, hd in enumerate(built)]),
            bits_pbw=torch.from_numpy(bits.astype(np.uint32).view(np.int32)),
            perm_hn=perm_hn,
            inv_perm_hn=inv_hn,
            counts_h=np.array(
                [
                    (hd.elements, hd.kv_slots.size, (hd.kv_slots < 0).sum(), hd.blocks_unpermuted)
                    for hd in built
                ],
                dtype=np.int64,
            ),
        )

    # --- fields -----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return self._n

    @property
    def block(self) -> int:
        return self._block

    @property
    def heads(self) -> int:
        return self._heads

    @property
    def num_blocks(self) -> int:
        """nb = ⌈n/block⌉ query (and key) blocks per head."""
        return -(-self._n // self._block)

    @property
    def words(self) -> int:
        """W = ⌈block/32⌉ uint32 words per bitmask row."""
        return -(-self._block // 32)

    @property
    def device(self) -> torch.device:
        return self.kv_indptr.device

    @property
    def permuted(self) -> bool:
        return self.perm_hn is not None

    # --- inspection -------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> SparseMask:
        """A copy with every tensor on ``device`` (the kernels need the mask beside q)."""
        return type(self)(
            n=self._n,
            block=self._block,
            kv_indptr=self.kv_indptr.to(device),
            kv_indices=self.kv_indices.to(device),
            kv_slots=self.kv_slots.to(device),
            q_indptr=self.q_indptr.to(device),
            q_indices=self.q_indices.to(device),
            q_slots=self.q_slots.to(device),
            bits_pbw=self.bits_pbw.to(device),
            perm_hn=None if self.perm_hn is None else self.perm_hn.to(device),
            inv_perm_hn=None if self.inv_perm_hn is None else self.inv_perm_hn.to(device),
            counts_h=self._counts_h,
        )

    def _head(self, head: int | None) -> slice:
        if head is None:
            return slice(None)
        head = _int("head", head)
        if not 0 <= head < self._heads:
            raise ValueError(
                f"head must be in 0..{self._heads - 1} (the mask has {self._heads} heads), "
                f"got head={head}"
            )
        return slice(head, head + 1)

    def density(self, head: int | None = None) -> Density:
        """Element and block density over all heads (or of ``head``), with and without the
        permutation; see :class:`Density`."""
        sel = self._head(head)
        heads = len(range(self._heads)[sel])
        counts = self._counts_h[sel].sum(axis=0)  # host-side counts: no device copy
        elements, tiles, full, unpermuted = (int(c) for c in counts)
        nb2 = heads * self.num_blocks**2
        return Density(
            element=elements / (heads * self._n**2),
            block=tiles / nb2,
            block_unpermuted=unpermuted / nb2,
            full=full / tiles if tiles else 0.0,
        )

    def block_layout(self) -> torch.Tensor:
        """(heads, nb, nb) bool, in the stored order: tile (i, j) is non-empty."""
        nb = self.num_blocks
        indptr = self.kv_indptr.cpu().long()
        rows = torch.repeat_interleave(
            torch.arange(self._heads * nb), (indptr[:, 1:] - indptr[:, :-1]).reshape(-1)
        )
        layout = torch.zeros(self._heads * nb * nb, dtype=torch.bool)
        layout[rows * nb + self.kv_indices.cpu().long()] = True
        return layout.reshape(self._heads, nb, nb).to(self.device)

    def unpacked_bits(self, slots: torch.Tensor | None = None) -> torch.Tensor:
        """The bitmasks of ``slots`` (default: all) as bool (…, block, block) tiles."""
        if slots is not None and (
            not isinstance(slots, torch.Tensor)
            or slots.dtype == torch.bool
            or slots.is_floating_point()
            or slots.is_complex()
        ):
            what = slots.dtype if isinstance(slots, torch.Tensor) else type(slots).__name__
            raise TypeError(f"slots must be an integer tensor of slot indices, got {what}")
        words = self.bits_pbw if slots is None else self.bits_pbw[slots.long()]
        shifts = torch.arange(32, device=words.device, dtype=torch.int32)
        bits = (words[..., None] >> shifts) & 1  # arithmetic shift: bit 31 reads right after & 1
        return bits.bool().flatten(-2)[..., : self._block]

    def to_dense(
        self, *, stored_order: bool = False, max_bytes: int = DENSE_LIMIT_BYTES
    ) -> torch.Tensor:
        """(heads, n, n) bool: entry [h, q, k] is True iff query q of head h attends key k.

        In token order, the permutation undone (default), or in the stored order the tiles
        describe (``stored_order=True``). Refuses above ``max_bytes`` of memory.
        """
        max_bytes = _validate.byte_limit("max_bytes", max_bytes)
        nb, block, heads = self.num_blocks, self._block, self._heads
        need = heads * (nb * block) ** 2
        if need > max_bytes:
            raise MemoryError(
                f"to_dense would need {need} bytes for heads={heads}, n={self._n}, above "
                f"max_bytes={max_bytes}; pass a larger max_bytes"
            )
        indptr = self.kv_indptr.cpu().long()
        head_q = torch.repeat_interleave(
            torch.arange(heads * nb), (indptr[:, 1:] - indptr[:, :-1]).reshape(-1)
        )
        slots = self.kv_slots.cpu().long()
        tiles = torch.ones(slots.numel(), block, block, dtype=torch.bool)
        partial = slots >= 0
        tiles[partial] = self.to("cpu").unpacked_bits(slots[partial])
        dense = torch.zeros(heads, nb, nb, block, block, dtype=torch.bool)
        dense[head_q // nb, head_q % nb, self.kv_indices.cpu().long()] = tiles
        dense = dense.permute(0, 1, 3, 2, 4).reshape(heads, nb * block, nb * block)
        dense = dense[:, : self._n, : self._n]
        if self.inv_perm_hn is not None and not stored_order:
            inv = self.inv_perm_hn.cpu().long()
            dense = dense.gather(1, inv[:, :, None].expand(-1, -1, self._n))
            dense = dense.gather(2, inv[:, None, :].expand(-1, self._n, -1))
        return dense.contiguous().to(self.device)

    def __repr__(self) -> str:
        def shape(t: torch.Tensor | None) -> str:
            return "None" if t is None else str(tuple(t.shape))

        return (
            f"SparseMask(heads={self._heads}, n={self._n}, block={self._block}, "
            f"kv_indptr={shape(self.kv_indptr)}, kv_indices={shape(self.kv_indices)}, "
            f"bits_pbw={shape(self.bits_pbw)}, perm_hn={shape(self.perm_hn)}, "
            f"device={self.device})"
        )
