"""An embedding table where only chosen rows train, and a vectorised vocabulary remap.

Scope: the problem of the forum thread in ``seeds/001``. A pre-trained (V, D) table must keep
most rows exactly as they are while a chosen few (say the out-of-vocabulary words) train, with
the vocabulary in its original order and without doubling the step time.
:class:`PartiallyFrozenEmbedding` makes only the trainable rows a parameter, (T, D). The frozen
table is a buffer, so frozen rows get no gradient and no optimizer state, and no optimizer
(weight decay, momentum and all) can move them. :func:`remap` renumbers ids into a new
vocabulary order in two tensor operations, for users who do want a sorted vocabulary.

Caveats: the eager forward finds the positions that read a trainable row with ``nonzero``,
which synchronises with the device on CUDA (so does the check of the ids' range). Under
``torch.compile`` the forward switches to a static-shape formulation with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartiallyFrozenEmbedding", "remap"]

_ID_DTYPES = (torch.int64, torch.int32)  # what index_select and F.embedding accept


class PartiallyFrozenEmbedding(nn.Module):
    """``nn.Embedding`` over a fixed (V, D) table of which only the ``trainable`` rows train.

    State: the buffer ``frozen_vd`` (the table as given; it is never written), the parameter
    ``trainable_td`` (row ``rows_t[i]`` of the table lives in ``trainable_td[i]``; ``rows_t`` is
    sorted), and the index ``slot_v`` (a row's slot in ``trainable_td``, or −1). ``parameters()``
    yields ``trainable_td`` alone.

    Parameters
    ----------
    weight_vd:
        (V, D) floating-point table; copied, so later writes to it do not reach the module.
        The trainable rows start from its values.
    trainable:
        a (V,) bool mask, or a 1-D tensor/sequence of distinct row ids in any order.
    padding_idx:
        as in ``nn.Embedding`` (negative counts from the end): that row keeps its given value
        forever and gets no gradient. It is frozen even when ``trainable`` lists it. It is not
        zeroed (``nn.Embedding.from_pretrained`` does not zero it either).
    dtype, device:
        where the module's tensors go (default: those of ``weight_vd``).

    Raises
    ------
    TypeError, ValueError:
        for a bad ``weight_vd``, ``trainable``, ``padding_idx`` or ``dtype``, naming it.

    Examples
    --------
    >>> weight_vd = torch.arange(12.0).view(4, 3)
    >>> emb = PartiallyFrozenEmbedding(weight_vd, trainable=[3, 1])
    >>> emb
    PartiallyFrozenEmbedding(4, 3, trainable=2)
    >>> [tuple(p.shape) for p in emb.parameters()]
    [(2, 3)]
    >>> emb(torch.tensor([[1, 0], [3, 3]])).shape
    torch.Size([2, 2, 3])
    """

    frozen_vd: torch.Tensor
    rows_t: torch.Tensor
    slot_v: torch.Tensor

    def __init__(
        self,
        weight_vd: torch.Tensor,
        trainable: torch.Tensor | Sequence[int] | Sequence[bool],
        padding_idx: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_weight(weight_vd, dtype)
        device = _check_device(device)
        num_embeddings, embedding_dim = weight_vd.shape
        padding = _check_padding_idx(padding_idx, num_embeddings)
        rows_t = _trainable_rows(trainable, num_embeddings)
        if padding is not None:
            rows_t = rows_t[rows_t != padding]
        frozen_vd = weight_vd.detach().to(device=device, dtype=dtype, copy=True)
        rows_t = rows_t.to(frozen_vd.device)
        slot_v = torch.full((num_embeddings,), -1, dtype=torch.int64, device=frozen_vd.device)
        slot_v[rows_t] = torch.arange(rows_t.numel(), device=frozen_vd.device)

        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding
        self.register_buffer("frozen_vd", frozen_vd)
        self.trainable_td = nn.Parameter(frozen_vd.index_select(0, rows_t))
        self.register_buffer("rows_t", rows_t)
        # Derived from rows_t, so checkpoints do not carry it.
        self.register_buffer("slot_v", slot_v, persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        weight: torch.Tensor,
        trainable: torch.Tensor | Sequence[int] | Sequence[bool],
        padding_idx: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> PartiallyFrozenEmbedding:
        """The module over a pre-trained (V, D) ``weight``, in the spelling of
        ``nn.Embedding.from_pretrained``; the arguments are those of the constructor."""
        return cls(weight, trainable, padding_idx, dtype=dtype, device=device)

    @property
    def num_trainable(self) -> int:
        """T, the number of trainable rows (``padding_idx`` never counts)."""
        return self.rows_t.numel()

    @property
    def trainable_mask(self) -> torch.Tensor:
        """(V,) bool: True where a row trains."""
        return self.slot_v >= 0

    @property
    def weight(self) -> torch.Tensor:
        """The current full (V, D) table, as a fresh tensor.

        Writing to it changes nothing in the module. It is differentiable with respect to the
        trainable rows, so ``logits = h @ emb.weight.T`` ties an output layer correctly. Each
        access copies the whole table (V·D values).
        """
        return self.frozen_vd.index_copy(0, self.rows_t, self.trainable_td)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for integer ``ids`` of any shape: (*ids.shape, D), as nn.Embedding.

        Raises ``TypeError`` for a non-integer ``ids``, and ``ValueError`` for ids on another
        device or outside [0, V). Under ``torch.compile`` the range is not checked here.
        """
        _check_ids_kind(ids, "ids", self.frozen_vd.device)
        if torch.compiler.is_compiling():
            return self._forward_select(ids)
        _check_ids_range(ids, "ids", self.num_embeddings)
        return self._forward_scatter(ids)

    def _forward_scatter(self, ids: torch.Tensor) -> torch.Tensor:
        """Eager path: gather every id from the frozen table once, then overwrite the positions
        that read a trainable row. Work beyond the plain gather scales with those positions
        only, and so does the backward: a gather of their gradients and an index_add into a
        (T, D) gradient."""
        ids_n = ids.reshape(-1)
        out_nd = self.frozen_vd.index_select(0, ids_n)
        slot_n = self.slot_v.index_select(0, ids_n)
        hit_k = (slot_n >= 0).nonzero().view(-1)
        slot_k = slot_n.index_select(0, hit_k)
        # In place on a fresh gather, so nothing (V, D) or (N, D) is copied again; autograd
        # sends the output's gradient at hit_k, and nowhere else, to trainable_td.
        out_nd.index_copy_(0, hit_k, self.trainable_td.index_select(0, slot_k))
        return out_nd.view(*ids.shape, self.embedding_dim)

    def _forward_select(self, ids: torch.Tensor) -> torch.Tensor:
        """Static-shape path (``torch.compile``, no ``nonzero``): gather from both tables and
        select. Inductor fuses it; eagerly it is slower than ``_forward_scatter``."""
        frozen_nd = F.embedding(ids, self.frozen_vd)
        if self.num_trainable == 0:  # slot 0 does not exist
            return frozen_nd
        slot_n = self.slot_v[ids]
        trained_nd = F.embedding(slot_n.clamp(min=0), self.trainable_td)
        return torch.where((slot_n >= 0).unsqueeze(-1), trained_nd, frozen_nd)

    def extra_repr(self) -> str:
        text = f"{self.num_embeddings}, {self.embedding_dim}, trainable={self.num_trainable}"
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        return text

    def _load_from_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Without this check a checkpoint with as many trainable rows but other ones would
        # load "successfully" and put its trained values into the wrong rows.
        rows_t = state_dict.get(prefix + "rows_t")
        if rows_t is not None and not (
            rows_t.shape == self.rows_t.shape and torch.equal(rows_t.cpu(), self.rows_t.cpu())
        ):
            error_msgs.append(
                f"{prefix}rows_t: the checkpoint trains {rows_t.numel()} rows "
                f"({_preview(rows_t)}), this module trains {self.num_trainable} "
                f"({_preview(self.rows_t)}); build the module with the checkpoint's rows, "
                f"e.g. PartiallyFrozenEmbedding(weight, trainable=state_dict['{prefix}rows_t'])"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def remap(
    ids: torch.Tensor, order: torch.Tensor | Sequence[int], *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Renumber ``ids`` into a new vocabulary order: ``order[new] == old``.

    ``order`` is a permutation of 0..V−1 (new id → old id). The result has the shape, dtype
    and device of ``ids`` and holds each id's new number. It is fully vectorised: one scatter
    builds the inverse permutation (old → new), one gather applies it. This replaces the
    thread's ``ids.apply_(dict.get)``, which calls Python once per id. ``out``, a tensor like
    ``ids`` that does not overlap it, receives the result instead of a new tensor (for
    remapping batch after batch into one buffer). A new CPU result is allocated with huge
    pages (see ``_empty_hugepages``); its storage cannot be resized in place.

    To sort a vocabulary frozen rows first and trainable rows last, as the seed's
    ``PartiallyFixedEmbedding`` needs: ``order = torch.argsort(trainable_v, stable=True)``.

    Raises ``TypeError`` for non-integer ``ids`` or ``order``, and ``ValueError`` when ``order``
    is not a 1-D permutation, ``ids`` holds values outside [0, V) or ``out`` does not fit.

    >>> remap(torch.tensor([[0, 1], [2, 2]]), order=[2, 0, 1])
    tensor([[1, 2],
            [0, 0]])
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor of int64 or int32, got {type(ids).__name__}")
    _no_meta(ids, "ids")
    order_v = _check_order(order, ids.device)
    _check_ids_kind(ids, "ids", ids.device)
    out = _check_out(out, ids)
    size = order_v.numel()
    if not ids.is_cpu:  # an out-of-range id would end in a device-side assert there
        _check_ids_range(ids, "ids", size)
    arange_v = torch.arange(size, device=ids.device, dtype=ids.dtype)
    new_of_old_v = torch.empty_like(arange_v).scatter_(0, order_v, arange_v)
    if out is None:
        out = _empty_hugepages(ids) if ids.is_cpu else torch.empty_like(ids)
    try:
        torch.index_select(new_of_old_v, 0, ids.reshape(-1), out=out.view(-1))
    except IndexError:
        # The CPU gather checks every id as it reads it, which spares a pass over the ids
        # up front; the pass is made only to word the error.
        _check_ids_range(ids, "ids", size)
        raise
    return out


def _empty_hugepages(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor shaped and typed like ``like``, allocated by numpy.

    numpy asks Linux for transparent huge pages (madvise) for arrays of 4 MiB and more; torch
    does not. Writing a fresh 60 MB result then costs a few hundred page faults instead of
    about 15,000. Where faults are costly, as on the VM of docs/embedding.md's benchmark, that
    was a third of remap's time for 7.5 million ids. The one difference from ``torch.empty``:
    the storage cannot be resized in place (``resize_``).
    """
    dtype = {torch.int64: np.int64, torch.int32: np.int32}[like.dtype]
    return torch.from_numpy(np.empty(tuple(like.shape), dtype=dtype))


# --- validation --------------------------------------------------------------------------------
def _preview(values: torch.Tensor, limit: int = 6) -> str:
    """The first few values of a 1-D tensor, as text: ``[3, 7, 9, …]``."""
    items = [str(v) for v in values[:limit].tolist()]
    return "[" + ", ".join(items) + (", …" if values.numel() > limit else "") + "]"


def _check_weight(weight_vd: object, dtype: torch.dtype | None) -> None:
    if not isinstance(weight_vd, torch.Tensor):
        raise TypeError(f"weight_vd must be a torch.Tensor, got {type(weight_vd).__name__}")
    if weight_vd.dim() != 2:
        raise ValueError(
            f"weight_vd must be 2-D (num_embeddings, embedding_dim), got shape "
            f"{tuple(weight_vd.shape)}"
        )
    if not weight_vd.is_floating_point():
        raise TypeError(f"weight_vd must be floating point, got dtype {weight_vd.dtype}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}")


def _check_device(device: object) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as exc:
        message = f"device must be a torch.device or a name like 'cpu', got {device!r}"
        raise ValueError(message) from exc


def _no_meta(t: torch.Tensor, name: str) -> None:
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device, which holds no values to read")


def _check_padding_idx(padding_idx: object, num_embeddings: int) -> int | None:
    """``padding_idx`` as a row id in [0, V), or None."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
        raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx must be in [-{num_embeddings}, {num_embeddings}) "
            f"(num_embeddings={num_embeddings}), got {padding_idx}"
        )
    return padding_idx % num_embeddings


def _trainable_rows(trainable: object, num_embeddings: int) -> torch.Tensor:
    """Sorted distinct int64 row ids (on the CPU) from a (V,) bool mask or a 1-D list of ids."""
    if isinstance(trainable, torch.Tensor):
        _no_meta(trainable, "trainable")
        t = trainable.detach().cpu()
    elif isinstance(trainable, Sequence) and len(trainable) == 0:
        t = torch.empty(0, dtype=torch.int64)  # torch.as_tensor([]) would be float
    else:
        try:
            t = torch.as_tensor(trainable).cpu()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "trainable must be a (V,) bool mask or a 1-D sequence of row ids, "
                f"got {type(trainable).__name__}: {exc}"
            ) from None
    if t.dtype == torch.bool:
        if tuple(t.shape) != (num_embeddings,):
            raise ValueError(
                f"trainable as a bool mask must have shape ({num_embeddings},), "
                f"got {tuple(t.shape)}"
            )
        return t.nonzero().view(-1)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"trainable must be a bool mask or integer row ids, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"trainable as row ids must be 1-D, got shape {tuple(t.shape)}")
    rows_t = t.to(torch.int64).sort().values
    outside = rows_t[(rows_t < 0) | (rows_t >= num_embeddings)]
    if outside.numel():
        raise ValueError(
            f"trainable holds row ids outside [0, {num_embeddings}): {_preview(outside)}"
        )
    repeated = rows_t[1:][rows_t[1:] == rows_t[:-1]].unique()
    if repeated.numel():
        raise ValueError(
            f"trainable lists row ids more than once: {_preview(repeated)}; "
            "expected distinct row ids"
        )
    return rows_t


def _check_ids_kind(ids: object, name: str, device: torch.device) -> None:
    """Type, dtype and device of an id tensor (static properties: safe under torch.compile)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 or int32, got {type(ids)}")
    if ids.dtype not in _ID_DTYPES:
        raise TypeError(f"{name} must be an int64 or int32 tensor, got dtype {ids.dtype}")
    if ids.device != device:
        raise ValueError(f"expected {name} on {device} (where the table is), got {ids.device}")


def _check_ids_range(ids: torch.Tensor, name: str, num_embeddings: int) -> None:
    """Every id in [0, V); one reduction (and, on CUDA, one synchronisation)."""
    if ids.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(ids))
    if lo < 0 or hi >= num_embeddings:
        raise ValueError(
            f"{name} must lie in [0, {num_embeddings}) (num_embeddings={num_embeddings}), "
            f"got values from {lo} to {hi}"
        )


def _check_out(out: object, ids: torch.Tensor) -> torch.Tensor | None:
    """``out`` for :func:`remap`: None, or a contiguous tensor like ``ids`` apart from it."""
    if out is None:
        return None
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
    if (out.shape, out.dtype, out.device) != (ids.shape, ids.dtype, ids.device):
        raise ValueError(
            f"out must have the shape, dtype and device of ids, {tuple(ids.shape)} {ids.dtype} "
            f"{ids.device}; got {tuple(out.shape)} {out.dtype} {out.device}"
        )
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.numel() and out.untyped_storage().data_ptr() == ids.untyped_storage().data_ptr():
        raise ValueError("out must not share memory with ids: remap reads ids while writing out")
    return out


def _check_order(order: object, device: torch.device) -> torch.Tensor:
    """``order`` as an int64 tensor on ``device``, after checking it is a permutation."""
    if isinstance(order, torch.Tensor):
        _no_meta(order, "order")
        order_v = order.detach()
    elif isinstance(order, Sequence) and len(order) == 0:
        order_v = torch.empty(0, dtype=torch.int64)
    else:
        try:
            order_v = torch.as_tensor(order)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"order must be a 1-D integer tensor or sequence, got {type(order).__name__}: {exc}"
            ) from None
    if order_v.is_floating_point() or order_v.is_complex() or order_v.dtype == torch.bool:
        raise TypeError(f"order must hold integer ids, got dtype {order_v.dtype}")
    if order_v.dim() != 1:
        raise ValueError(f"order must be 1-D (new id → old id), got shape {tuple(order_v.shape)}")
    order_v = order_v.to(device=device, dtype=torch.int64)
    size = order_v.numel()
    outside = order_v[(order_v < 0) | (order_v >= size)]
    if outside.numel():
        raise ValueError(
            f"order must be a permutation of 0..{size - 1}, but holds values outside "
            f"[0, {size}): {_preview(outside)}"
        )
    counts_v = torch.bincount(order_v, minlength=size)
    repeated = (counts_v > 1).nonzero().view(-1)
    if repeated.numel():
        raise ValueError(
            f"order must be a permutation of 0..{size - 1}, but repeats {_preview(repeated)} "
            f"(and so misses {_preview((counts_v == 0).nonzero().view(-1))})"
        )
    return order_v
