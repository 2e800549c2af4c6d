"""YLG's 2-D patterns: a 1-D pattern laid over an image grid in the anti-diagonal order.

"Your Local GAN" (Daras et al. 2020; ``giannisdaras/ylg``, ``ylg/masks.py``) makes its image
masks from 1-D ones: it enumerates the cells of a rows × cols grid by distance i + j from the
top-left corner (ties by row), so that positions close in the 1-D order are close on the grid,
and applies the 1-D mask to those numbers: query cell x attends key cell y when the 1-D mask
has (number of x, number of y). Positions here are the cells' row-major flat indices
i · cols + j, as YLG's tensors hold them.

The grid is a relabelling of the positions, so :func:`flowgraph.check` reports the same number of
missing pairs as for the 1-D pattern (the witness is relabelled too). Only bidirectional patterns
are laid on a grid: a causal 1-D pattern would be causal in the enumeration order, which is not
the k ≤ q of the flat indices that ``check`` uses. YLG's down-sampled attention (queries on the
full image, keys on the pooled one) is not square and is described in ``docs/upstream.md``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from flowgraph import _validate
from flowgraph.pattern import STEP_BYTES_PER_ENTRY, Pattern
from flowgraph.patterns import ltr, rtl

__all__ = ["grid", "grid_ltr", "grid_order", "grid_rtl"]


def grid_order(rows: int, cols: int) -> np.ndarray:
    """(rows·cols,) int64: ``order_n[t]`` is the flat index i·cols + j of the t-th cell in YLG's
    enumeration (cells sorted by i + j, then by i).

    Examples
    --------
    >>> grid_order(2, 3).tolist()   # (0,0) (0,1) (1,0) (0,2) (1,1) (1,2)
    [0, 1, 3, 2, 4, 5]
    """
    rows = _validate.positive_int("rows", rows)
    cols = _validate.positive_int("cols", cols)
    _validate.positions("rows·cols", rows * cols)
    i_n, j_n = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    return np.lexsort((i_n, i_n + j_n)).astype(np.int64)  # last key sorts first


def grid(
    pattern: Pattern, rows: int, cols: int, *, max_bytes: int = _validate.MEMORY_LIMIT_BYTES
) -> Pattern:
    """``pattern`` (bidirectional, n = rows·cols) laid over a rows × cols grid in YLG's order:
    step s has cell ``order[q]`` attend cell ``order[k]`` where ``pattern`` has q attend k at
    step s (``order = grid_order(rows, cols)``). The steps are CSR (a relabelling keeps no
    arithmetic progression); more than ``max_bytes`` for them is refused (ValueError)."""
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    order_n = grid_order(rows, cols)
    if pattern.n != order_n.size:
        raise ValueError(
            f"pattern has n={pattern.n} positions but the grid {rows}×{cols} has "
            f"{order_n.size}; expected n = rows·cols"
        )
    if pattern.causal:
        raise ValueError(
            f"grid lays bidirectional patterns only, got the causal {pattern.name!r}: its order "
            "would be the enumeration's, not the k ≤ q of the flat cells that check uses"
        )
    if pattern.compressed:
        raise ValueError(f"grid needs a pattern over tokens, {pattern.name!r} has compressed keys")
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    _validate.memory(
        f"grid({pattern.name!r}, {rows}, {cols}) with {sum(pattern.edges()):,} entries",
        sum(pattern.edges()) * STEP_BYTES_PER_ENTRY * 2,  # the steps and their relabelled copy
        max_bytes,
    )
    inverse_n = np.empty_like(order_n)
    inverse_n[order_n] = np.arange(order_n.size)  # cell → its number in the enumeration
    steps = [sp.csr_array(m[inverse_n][:, inverse_n]) for m in pattern.steps]
    params = {**pattern.params, "rows": rows, "cols": cols, "order": "anti-diagonal"}
    return Pattern(f"{pattern.name}/grid{rows}x{cols}", pattern.n, False, steps, params)


def grid_ltr(
    rows: int,
    cols: int,
    stride: int | None = None,
    *,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Pattern:
    """YLG's 2-D LTR: :func:`flowgraph.ltr` over rows·cols positions (stride ⌊√(rows·cols)⌋ by
    default, as YLG's ``compute_stride``) laid on the grid; equal to YLG's
    ``LeftFloorMask`` / ``LeftRepetitiveMask.get_grid_mask_from_1d``."""
    n = _validate.positive_int("rows", rows) * _validate.positive_int("cols", cols)
    return grid(ltr(n, stride, max_bytes=max_bytes), rows, cols, max_bytes=max_bytes)


def grid_rtl(
    rows: int,
    cols: int,
    stride: int | None = None,
    *,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Pattern:
    """YLG's 2-D RTL: :func:`flowgraph.rtl` laid on the grid. Equal to YLG's
    ``RightFloorMask`` / ``RightRepetitiveMask.get_grid_mask_from_1d`` when the stride divides
    rows·cols; otherwise YLG's step 2 lacks the relay of the last, partial block, which this
    keeps (see ``docs/upstream.md``)."""
    n = _validate.positive_int("rows", rows) * _validate.positive_int("cols", cols)
    return grid(rtl(n, stride, max_bytes=max_bytes), rows, cols, max_bytes=max_bytes)
