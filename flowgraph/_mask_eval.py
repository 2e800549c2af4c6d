"""Reading a FlexAttention ``mask_mod`` without evaluating all n² of it.

FlexAttention's ``create_mask`` calls the mask_mod on every (query, key) pair. Most mask_mods are
index arithmetic — comparisons, +, −, ×, //, %, &, |, ~, ``torch.where``, lookups into captured
tensors such as document ids — and for those a whole tile of pairs can be decided at once: the
mask_mod is run on *intervals* (each index tensor replaced by the range of a tile's positions)
with sound rules for every operation, giving per tile "all True", "all False" or "unknown".
Unknown tiles are split in four and decided again; tiles of 32×32 or smaller that stay unknown
are evaluated exactly, with real index tensors. A sliding window at n = 65,536 then costs about
10⁷ exact evaluations instead of 4·10⁹.

The interval rules over-approximate (an "unknown" tile may turn out uniform) but never decide a
tile wrongly. An operation they do not know (``torch.sin``, Python ``if`` on a tensor, indexing
with two ranges) makes the reader fall back to exact evaluation of every tile left, so any
mask_mod FlexAttention accepts is read exactly; it is then only slower.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ArgumentUsed", "MaskModError", "Rows", "read_mask"]

LEAF = 16  # tiles at most this wide on both axes are evaluated exactly
ROOT_CELLS = 64  # the first grid has at most this many tiles per axis
EXACT_ELEMENTS = 1 << 21  # (query, key) pairs evaluated exactly per batch of tiles


class _Unsupported(Exception):
    """The interval rules cannot follow an operation: evaluate the remaining tiles exactly."""


class ArgumentUsed(Exception):
    """The mask_mod read an argument it was told not to depend on (h without ``heads=``)."""

    def __init__(self, arg: str) -> None:
        super().__init__(arg)
        self.arg = arg


class MaskModError(ValueError):
    """The mask_mod failed or returned something that is not a boolean mask."""


# --- abstract values -----------------------------------------------------------------------------
class _Forbidden:
    """Stands for an argument the mask_mod must not use; any use raises ArgumentUsed."""

    def __init__(self, arg: str) -> None:
        self._arg = arg

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        for a in (*args, *(kwargs or {}).values()):
            if isinstance(a, _Forbidden):
                raise ArgumentUsed(a._arg)
        raise ArgumentUsed("?")  # pragma: no cover - one argument is always the sentinel

    def _use(self, *_: object) -> Any:
        raise ArgumentUsed(self._arg)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _use
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __truediv__ = __rtruediv__ = _use
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _use  # type: ignore[assignment]
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _use
    __neg__ = __abs__ = __invert__ = __bool__ = __index__ = __int__ = __getitem__ = _use
    __hash__ = None  # type: ignore[assignment]


def _const_int(x: object) -> torch.Tensor | None:
    """A scalar integer constant (int or one-element integer tensor) as an int64 0-d tensor."""
    if isinstance(x, _Forbidden):
        x._use()
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.int64)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point():
        if x.dtype == torch.bool:
            return None
        return x.reshape(()).to(torch.int64)
    return None


def _const_bool(x: object) -> torch.Tensor | None:
    if isinstance(x, _Forbidden):
        x._use()
    if isinstance(x, bool):
        return torch.tensor(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.dtype == torch.bool:
        return x.reshape(())
    return None


class _Abstract:
    """Base of the interval values: routes torch functions to the rules below."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        for a in (*args, *(kwargs or {}).values()):
            if isinstance(a, _Forbidden):
                a._use()
        name = getattr(func, "__name__", "")
        rule = _TORCH_RULES.get(name)
        if rule is None or kwargs:
            raise _Unsupported(name)
        return rule(*args)

    def __getattr__(self, name: str) -> Any:  # a tensor method the rules do not know
        if name.startswith("__"):
            raise AttributeError(name)
        raise _Unsupported(f".{name}()")

    def __bool__(self) -> bool:  # Python control flow on a tensor: decided per element only
        raise _Unsupported("bool")

    def __index__(self) -> int:
        raise _Unsupported("index")

    def __getitem__(self, _: object) -> Any:
        raise _Unsupported("getitem of an index")

    def to(self, *_: object, **__: object) -> _Abstract:  # dtype casts keep the values
        return self

    def long(self) -> _Abstract:
        return self

    def int(self) -> _Abstract:
        return self

    def clone(self) -> _Abstract:
        return self

    __hash__ = None  # type: ignore[assignment]


class Box(_Abstract):
    """Integers per tile in [lo, hi] (int64 tensors broadcastable to the tiles)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.lo, self.hi = lo, hi

    # arithmetic
    def __add__(self, o: object) -> Box:
        b = _as_box(o)
        return Box(self.lo + b.lo, self.hi + b.hi)

    __radd__ = __add__

    def __sub__(self, o: object) -> Box:
        b = _as_box(o)
        return Box(self.lo - b.hi, self.hi - b.lo)

    def __rsub__(self, o: object) -> Box:
        return _as_box(o) - self

    def __neg__(self) -> Box:
        return Box(-self.hi, -self.lo)

    def __mul__(self, o: object) -> Box:
        b = _as_box(o)
        products = torch.stack(
            torch.broadcast_tensors(self.lo * b.lo, self.lo * b.hi, self.hi * b.lo, self.hi * b.hi)
        )
        return Box(products.amin(0), products.amax(0))

    __rmul__ = __mul__

    def __floordiv__(self, o: object) -> Box:
        c = _positive_const(o)
        return Box(torch.div(self.lo, c, rounding_mode="floor"),
                   torch.div(self.hi, c, rounding_mode="floor"))  # fmt: skip

    def __rfloordiv__(self, o: object) -> Box:
        raise _Unsupported("division by an index")

    def __mod__(self, o: object) -> Box:
        c = _positive_const(o)
        same = torch.div(self.lo, c, rounding_mode="floor") == torch.div(
            self.hi, c, rounding_mode="floor"
        )
        zero = torch.zeros((), dtype=torch.int64)
        return Box(torch.where(same, self.lo % c, zero), torch.where(same, self.hi % c, c - 1))

    def __rmod__(self, o: object) -> Box:
        raise _Unsupported("remainder by an index")

    def __abs__(self) -> Box:
        lo = torch.where(self.lo >= 0, self.lo, torch.where(self.hi <= 0, -self.hi, 0))
        return Box(lo, torch.maximum(self.lo.abs(), self.hi.abs()))

    def __truediv__(self, o: object) -> Box:
        raise _Unsupported("true division")

    __rtruediv__ = __truediv__

    # comparisons → Tri
    def __ge__(self, o: object) -> Tri:  # type: ignore[override]
        b = _as_box(o)
        return Tri(self.hi >= b.lo, self.lo >= b.hi)

    def __gt__(self, o: object) -> Tri:  # type: ignore[override]
        b = _as_box(o)
        return Tri(self.hi > b.lo, self.lo > b.hi)

    def __le__(self, o: object) -> Tri:  # type: ignore[override]
        return _as_box(o) >= self

    def __lt__(self, o: object) -> Tri:  # type: ignore[override]
        return _as_box(o) > self

    def __eq__(self, o: object) -> Tri:  # type: ignore[override]
        b = _as_box(o)
        may = (self.lo <= b.hi) & (b.lo <= self.hi)
        must = (self.lo == self.hi) & (b.lo == b.hi) & (self.lo == b.lo)
        return Tri(may, must)

    def __ne__(self, o: object) -> Tri:  # type: ignore[override]
        return ~(self == o)

    def __and__(self, o: object) -> Any:
        raise _Unsupported("bitwise and of integers")

    __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __and__

    def __invert__(self) -> Any:
        raise _Unsupported("bitwise not of integers")


class Tri(_Abstract):
    """Booleans per tile: ``may`` (some pair True) and ``must`` (every pair True)."""

    def __init__(self, may: torch.Tensor, must: torch.Tensor) -> None:
        self.may, self.must = may, must

    def __and__(self, o: object) -> Tri:
        t = _as_tri(o)
        return Tri(self.may & t.may, self.must & t.must)

    __rand__ = __and__

    def __or__(self, o: object) -> Tri:
        t = _as_tri(o)
        return Tri(self.may | t.may, self.must | t.must)

    __ror__ = __or__

    def __xor__(self, o: object) -> Tri:
        t = _as_tri(o)
        # decided only where both sides are
        must = (self.must & ~t.may) | (~self.may & t.must)
        may = ~((self.must & t.must) | (~self.may & ~t.may))
        return Tri(may, must)

    __rxor__ = __xor__

    def __invert__(self) -> Tri:
        return Tri(~self.must, ~self.may)

    def __eq__(self, o: object) -> Tri:  # type: ignore[override]
        return ~(self ^ o)

    def __ne__(self, o: object) -> Tri:  # type: ignore[override]
        return self ^ o

    def __add__(self, o: object) -> Any:
        raise _Unsupported("arithmetic on booleans")

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __add__


def _as_box(x: object) -> Box:
    if isinstance(x, Box):
        return x
    c = _const_int(x)
    if c is None:
        raise _Unsupported(f"operand {type(x).__name__}")
    return Box(c, c)


def _as_tri(x: object) -> Tri:
    if isinstance(x, Tri):
        return x
    c = _const_bool(x)
    if c is None:
        raise _Unsupported(f"boolean operand {type(x).__name__}")
    return Tri(c, c)


def _positive_const(x: object) -> torch.Tensor:
    c = _const_int(x)
    if c is None or int(c) <= 0:
        raise _Unsupported("division by a non-constant or non-positive value")
    return c


def _where(cond: object, a: object, b: object) -> _Abstract:
    c = _as_tri(cond)
    undecided = c.may & ~c.must
    if isinstance(a, Tri) or isinstance(b, Tri) or _const_bool(a) is not None:
        x, y = _as_tri(a), _as_tri(b)
        may = torch.where(c.must, x.may, torch.where(undecided, x.may | y.may, y.may))
        must = torch.where(c.must, x.must, torch.where(undecided, x.must & y.must, y.must))
        return Tri(may, must)
    x, y = _as_box(a), _as_box(b)
    lo = torch.where(c.must, x.lo, torch.where(undecided, torch.minimum(x.lo, y.lo), y.lo))
    hi = torch.where(c.must, x.hi, torch.where(undecided, torch.maximum(x.hi, y.hi), y.hi))
    return Box(lo, hi)


def _minimum(a: object, b: object) -> Box:
    x, y = _as_box(a), _as_box(b)
    return Box(torch.minimum(x.lo, y.lo), torch.minimum(x.hi, y.hi))


def _maximum(a: object, b: object) -> Box:
    x, y = _as_box(a), _as_box(b)
    return Box(torch.maximum(x.lo, y.lo), torch.maximum(x.hi, y.hi))


def _clamp(a: object, lo: object = None, hi: object = None) -> Box:
    out = _as_box(a)
    if lo is not None:
        out = _maximum(out, lo)
    if hi is not None:
        out = _minimum(out, hi)
    return out


class _RangeTable:
    """Range minimum and maximum of a 1-D tensor in O(1) per query (a sparse table)."""

    def __init__(self, data: torch.Tensor) -> None:
        values = data.to(torch.int64)
        self.size = int(values.numel())
        self.mins, self.maxs = [values], [values]
        width = 1
        while 2 * width <= self.size:
            a, b = self.mins[-1], self.maxs[-1]
            self.mins.append(torch.minimum(a[:-width], a[width:]))
            self.maxs.append(torch.maximum(b[:-width], b[width:]))
            width *= 2

    def query(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = hi - lo + 1
        level = torch.floor(torch.log2(length.to(torch.float64))).to(torch.int64)
        level = torch.clamp(level, 0, len(self.mins) - 1)
        out_min = torch.empty_like(lo)
        out_max = torch.empty_like(lo)
        for k in torch.unique(level).tolist():  # a few levels per evaluation
            sel = level == k
            a, b = lo[sel], hi[sel] - (1 << k) + 1
            out_min[sel] = torch.minimum(self.mins[k][a], self.mins[k][b])
            out_max[sel] = torch.maximum(self.maxs[k][a], self.maxs[k][b])
        return out_min, out_max


_TABLES: dict[int, tuple[torch.Tensor, _RangeTable]] = {}


def _getitem(data: object, index: object) -> _Abstract:
    if not isinstance(data, torch.Tensor) or data.is_floating_point() or data.is_complex():
        raise _Unsupported("lookup into a non-integer tensor")
    if isinstance(index, tuple):  # constants first, then one range: data[h, q_idx]
        *consts, index = index
        for c in consts:
            value = _const_int(c)
            if value is None:
                raise _Unsupported("lookup with several ranges")
            data = data[int(value)]
    if not isinstance(index, Box) or data.ndim != 1:
        raise _Unsupported("lookup")
    lo, hi = torch.broadcast_tensors(index.lo, index.hi)
    if int(lo.min()) < 0 or int(hi.max()) >= data.numel():
        raise _Unsupported("lookup out of range")  # the exact evaluation names the error
    entry = _TABLES.get(id(data))
    if entry is None or entry[0] is not data:
        entry = (data, _RangeTable(data))
        _TABLES[id(data)] = entry
    mn, mx = entry[1].query(lo.reshape(-1), hi.reshape(-1))
    mn, mx = mn.reshape(lo.shape), mx.reshape(lo.shape)
    if data.dtype == torch.bool:
        return Tri(mx > 0, mn > 0)
    return Box(mn, mx)


def _reflect(rule: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda a, b: rule(b, a)


_TORCH_RULES: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: _as_box(a) + b,
    "__add__": lambda a, b: _as_box(a) + b,
    "__radd__": lambda a, b: _as_box(b) + a,
    "sub": lambda a, b: _as_box(a) - b,
    "subtract": lambda a, b: _as_box(a) - b,
    "__sub__": lambda a, b: _as_box(a) - b,
    "__rsub__": lambda a, b: _as_box(b) - a,
    "rsub": lambda a, b: _as_box(b) - a,
    "mul": lambda a, b: _as_box(a) * b,
    "multiply": lambda a, b: _as_box(a) * b,
    "__mul__": lambda a, b: _as_box(a) * b,
    "__rmul__": lambda a, b: _as_box(b) * a,
    "floor_divide": lambda a, b: _as_box(a) // b,
    "__floordiv__": lambda a, b: _as_box(a) // b,
    "remainder": lambda a, b: _as_box(a) % b,
    "__mod__": lambda a, b: _as_box(a) % b,
    "neg": lambda a: -_as_box(a),
    "negative": lambda a: -_as_box(a),
    "__neg__": lambda a: -_as_box(a),
    "abs": lambda a: abs(_as_box(a)),
    "__abs__": lambda a: abs(_as_box(a)),
    "minimum": _minimum,
    "maximum": _maximum,
    "min": _minimum,
    "max": _maximum,
    "clamp": _clamp,
    "clip": _clamp,
    "ge": lambda a, b: _as_box(a) >= b,
    "greater_equal": lambda a, b: _as_box(a) >= b,
    "__ge__": lambda a, b: _as_box(a) >= b,
    "gt": lambda a, b: _as_box(a) > b,
    "greater": lambda a, b: _as_box(a) > b,
    "__gt__": lambda a, b: _as_box(a) > b,
    "le": lambda a, b: _as_box(a) <= b,
    "less_equal": lambda a, b: _as_box(a) <= b,
    "__le__": lambda a, b: _as_box(a) <= b,
    "lt": lambda a, b: _as_box(a) < b,
    "less": lambda a, b: _as_box(a) < b,
    "__lt__": lambda a, b: _as_box(a) < b,
    "eq": lambda a, b: _eq(a, b),
    "__eq__": lambda a, b: _eq(a, b),
    "ne": lambda a, b: ~_eq(a, b),
    "not_equal": lambda a, b: ~_eq(a, b),
    "__ne__": lambda a, b: ~_eq(a, b),
    "logical_and": lambda a, b: _as_tri(a) & b,
    "bitwise_and": lambda a, b: _as_tri(a) & b,
    "__and__": lambda a, b: _as_tri(a) & b,
    "__rand__": lambda a, b: _as_tri(b) & a,
    "logical_or": lambda a, b: _as_tri(a) | b,
    "bitwise_or": lambda a, b: _as_tri(a) | b,
    "__or__": lambda a, b: _as_tri(a) | b,
    "__ror__": lambda a, b: _as_tri(b) | a,
    "logical_xor": lambda a, b: _as_tri(a) ^ b,
    "bitwise_xor": lambda a, b: _as_tri(a) ^ b,
    "__xor__": lambda a, b: _as_tri(a) ^ b,
    "logical_not": lambda a: ~_as_tri(a),
    "bitwise_not": lambda a: ~_as_tri(a),
    "__invert__": lambda a: ~_as_tri(a),
    "where": _where,
    "__getitem__": _getitem,
}


def _eq(a: object, b: object) -> Tri:
    if isinstance(a, Tri) or isinstance(b, Tri):
        return ~(_as_tri(a) ^ _as_tri(b))
    return _as_box(a) == b


# --- the tiled reader ------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """The mask as merged runs: run r is row ``row_r[r]``, keys ``lo_r[r]..hi_r[r]``, sorted by
    row then key; ``exact_pairs`` is how many (query, key) pairs were evaluated one by one, and
    ``fallback`` names the operation that stopped the interval rules (None if none did)."""

    row_r: np.ndarray
    lo_r: np.ndarray
    hi_r: np.ndarray
    exact_pairs: int
    fallback: str | None


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _call(mask_mod: Callable[..., Any], b: Any, h: Any, q: Any, kv: Any, name: str) -> Any:
    try:
        return mask_mod(b, h, q, kv)
    except (_Unsupported, ArgumentUsed):
        raise
    except RuntimeError as exc:
        if "ambiguous" in str(exc):
            raise MaskModError(
                f"mask_mod {name} uses Python control flow on its index tensors (`if`, `and`, "
                "`or`, `not`): write it with tensor operations (&, |, ~, torch.where) as "
                "FlexAttention requires"
            ) from exc
        raise MaskModError(f"mask_mod {name} raised RuntimeError: {exc}") from exc
    except IndexError as exc:
        raise MaskModError(
            f"mask_mod {name} indexes a tensor out of range ({exc}): the data it reads must "
            "cover every query and key position it is asked about"
        ) from exc
    except Exception as exc:  # the user's code: name it, keep the cause
        raise MaskModError(f"mask_mod {name} raised {type(exc).__name__}: {exc}") from exc


def _records(
    q0_c: np.ndarray, q1_c: np.ndarray, k0_c: np.ndarray, k1_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs for tiles that are all True: every row of tile c holds keys k0..k1−1."""
    rows_c = q1_c - q0_c
    total = int(rows_c.sum())
    cell_r = np.repeat(np.arange(q0_c.size), rows_c)
    first = np.zeros(q0_c.size, np.int64)
    np.cumsum(rows_c[:-1], out=first[1:])
    row_r = q0_c[cell_r] + np.arange(total) - first[cell_r]
    return row_r, k0_c[cell_r], k1_c[cell_r] - 1


def _join_rectangles(
    q0_c: np.ndarray, q1_c: np.ndarray, k0_c: np.ndarray, k1_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Join all-True tiles that cover the same rows and touch along the keys, so a row's run
    over many tiles becomes one record before the tiles are cut into rows."""
    order = np.lexsort((k0_c, q1_c, q0_c))
    q0_c, q1_c, k0_c, k1_c = q0_c[order], q1_c[order], k0_c[order], k1_c[order]
    new = np.ones(q0_c.size, bool)
    new[1:] = (q0_c[1:] != q0_c[:-1]) | (q1_c[1:] != q1_c[:-1]) | (k0_c[1:] != k1_c[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, q0_c.size - 1)
    return q0_c[first], q1_c[first], k0_c[first], k1_c[last]


def read_mask(
    mask_mod: Callable[..., Any],
    n: int,
    m: int,
    b: Any,
    h: Any,
    name: str,
    *,
    intervals: bool = True,
) -> Rows:
    """Evaluate ``mask_mod(b, h, q, kv)`` for 0 ≤ q < n, 0 ≤ kv < m, as merged row runs.

    ``intervals=False`` skips the interval rules (every pair evaluated exactly: the reference
    the tests compare with). Raises :class:`MaskModError` when the mask_mod fails or returns a
    non-boolean, ArgumentUsed when it reads an argument given as forbidden.
    """
    _TABLES.clear()
    size_q = _pow2_at_least(-(-n // ROOT_CELLS))
    size_k = _pow2_at_least(-(-m // ROOT_CELLS))
    gq, gk = np.meshgrid(np.arange(0, n, size_q), np.arange(0, m, size_k), indexing="ij")
    q0_c, k0_c = gq.ravel().astype(np.int64), gk.ravel().astype(np.int64)
    full: list[tuple[np.ndarray, ...]] = []
    exact: list[tuple[np.ndarray, np.ndarray, int, int]] = []
    fallback = None if intervals else "intervals=False"
    while q0_c.size:
        q1_c, k1_c = np.minimum(q0_c + size_q, n), np.minimum(k0_c + size_k, m)
        leaf = size_q <= LEAF and size_k <= LEAF
        if fallback is None:
            try:
                out = mask_mod(
                    b, h,
                    Box(torch.from_numpy(q0_c), torch.from_numpy(q1_c - 1)),
                    Box(torch.from_numpy(k0_c), torch.from_numpy(k1_c - 1)),
                )  # fmt: skip
                if not isinstance(out, Tri):
                    out = _as_tri(out)
                may = np.broadcast_to(out.may.numpy(), q0_c.shape)
                must = np.broadcast_to(out.must.numpy(), q0_c.shape)
            except ArgumentUsed:
                raise
            except _Unsupported as exc:
                fallback = str(exc)
            except Exception as exc:  # the exact evaluation names user errors
                fallback = f"{type(exc).__name__}: {exc}"
        if fallback is not None:  # no rule for some operation: every tile left is unknown
            may = must = None
            if not leaf:
                q0_c, k0_c, size_q, size_k = _split_to_leaves(q0_c, k0_c, size_q, size_k, n, m)
                continue
        if must is not None:
            done = must
            if done.any():
                full.append((q0_c[done], q1_c[done], k0_c[done], k1_c[done]))
            unknown = may & ~must
            q0_c, k0_c = q0_c[unknown], k0_c[unknown]
        if leaf:
            exact.append((q0_c, k0_c, size_q, size_k))
            break
        q0_c, k0_c, size_q, size_k = _split(q0_c, k0_c, size_q, size_k, n, m)
    pieces = []
    if full:
        rects = (np.concatenate([f[i] for f in full]) for i in range(4))
        pieces.append(_records(*_join_rectangles(*rects)))
    exact_pairs = 0
    for q0_e, k0_e, sq, sk in exact:
        for rows in _evaluate_leaves(mask_mod, b, h, q0_e, k0_e, sq, sk, n, m, name):
            pieces.append(rows)
        exact_pairs += int(q0_e.size) * sq * sk
    if pieces:
        row_r = np.concatenate([p[0] for p in pieces])
        lo_r = np.concatenate([p[1] for p in pieces])
        hi_r = np.concatenate([p[2] for p in pieces])
    else:
        row_r = lo_r = hi_r = np.zeros(0, np.int64)
    row_r, lo_r, hi_r = _merge(row_r, lo_r, hi_r, m)
    _TABLES.clear()
    return Rows(row_r, lo_r, hi_r, exact_pairs, fallback if fallback != "intervals=False" else None)


def _bad_result(out: object, name: str) -> Tri:
    what = f"a tensor of dtype {out.dtype}" if isinstance(out, torch.Tensor) else (
        "integers" if isinstance(out, Box) else type(out).__name__
    )  # fmt: skip
    raise MaskModError(f"mask_mod {name} must return a bool tensor, got {what}")


def _split(
    q0_c: np.ndarray, k0_c: np.ndarray, size_q: int, size_k: int, n: int, m: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Each tile into its halves along every axis wider than a leaf (dropping empty ones)."""
    dq = [0, size_q // 2] if size_q > LEAF else [0]
    dk = [0, size_k // 2] if size_k > LEAF else [0]
    size_q = size_q // 2 if size_q > LEAF else size_q
    size_k = size_k // 2 if size_k > LEAF else size_k
    qs = np.concatenate([q0_c + d for d in dq for _ in dk])
    ks = np.concatenate([k0_c + d for _ in dq for d in dk])
    keep = (qs < n) & (ks < m)
    return qs[keep], ks[keep], size_q, size_k


def _split_to_leaves(
    q0_c: np.ndarray, k0_c: np.ndarray, size_q: int, size_k: int, n: int, m: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    lq, lk = min(size_q, LEAF), min(size_k, LEAF)
    oq, ok = np.arange(0, size_q, lq), np.arange(0, size_k, lk)
    qs = (q0_c[:, None, None] + oq[None, :, None] + 0 * ok[None, None, :]).ravel()
    ks = (k0_c[:, None, None] + 0 * oq[None, :, None] + ok[None, None, :]).ravel()
    keep = (qs < n) & (ks < m)
    return qs[keep], ks[keep], lq, lk


def _evaluate_leaves(
    mask_mod: Callable[..., Any],
    b: Any,
    h: Any,
    q0_c: np.ndarray,
    k0_c: np.ndarray,
    size_q: int,
    size_k: int,
    n: int,
    m: int,
    name: str,
):
    """Exact evaluation of tiles (in batches), yielding their row runs."""
    per_batch = max(1, EXACT_ELEMENTS // (size_q * size_k))
    oq = torch.arange(size_q, dtype=torch.int64)
    ok = torch.arange(size_k, dtype=torch.int64)
    for i in range(0, q0_c.size, per_batch):
        q0_t = torch.from_numpy(q0_c[i : i + per_batch])
        k0_t = torch.from_numpy(k0_c[i : i + per_batch])
        q_cq = q0_t[:, None] + oq[None, :]
        k_ck = k0_t[:, None] + ok[None, :]
        valid_cqk = (q_cq < n)[:, :, None] & (k_ck < m)[:, None, :]
        # positions past n or m are clamped in range (their result is discarded)
        q_idx = torch.clamp(q_cq, max=n - 1).to(torch.int32)[:, :, None]
        kv_idx = torch.clamp(k_ck, max=m - 1).to(torch.int32)[:, None, :]
        out = _call(mask_mod, b, h, q_idx, kv_idx, name)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.bool:
            _bad_result(out, name)
        try:
            out = torch.broadcast_to(out, valid_cqk.shape)
        except RuntimeError as exc:
            raise MaskModError(
                f"mask_mod {name} returned shape {tuple(out.shape)} for index tensors of "
                f"shapes {tuple(q_idx.shape)} and {tuple(kv_idx.shape)}: it must broadcast "
                "them (elementwise operations only)"
            ) from exc
        hit_cqk = (out & valid_cqk).numpy()
        yield _tile_runs(hit_cqk, q0_c[i : i + per_batch], k0_c[i : i + per_batch])


def _tile_runs(
    hit_cqk: np.ndarray, q0_c: np.ndarray, k0_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True keys in each row of each tile."""
    c, sq, sk = hit_cqk.shape
    padded = np.zeros((c, sq, sk + 2), np.int8)
    padded[:, :, 1:-1] = hit_cqk
    edge = np.diff(padded, axis=2)
    cs, rs, ks = np.nonzero(edge == 1)
    ce, re_, ke = np.nonzero(edge == -1)
    # starts and ends pair up in order within each row
    assert cs.size == ce.size
    del ce, re_
    return q0_c[cs] + rs, k0_c[cs] + ks, k0_c[cs] + ke - 1


def _merge(
    row_r: np.ndarray, lo_r: np.ndarray, hi_r: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort runs by (row, key) and join the ones that touch or overlap."""
    if row_r.size == 0:
        return row_r, lo_r, hi_r
    n = int(row_r.max()) + 1
    row_r, lo_r, hi_r = (np.ascontiguousarray(a, dtype=np.int64) for a in (row_r, lo_r, hi_r))
    return _merge_kernel()(row_r, lo_r, hi_r, n)


@functools.cache
def _merge_kernel() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    import numba as nb  # compiled on first use, cached on disk

    @nb.njit(cache=True)
    def merge(row_r, lo_r, hi_r, n):
        # a counting sort by row, then each row's few runs sorted by key and joined
        count_n = np.zeros(n + 1, np.int64)
        for r in row_r:
            count_n[r + 1] += 1
        for q in range(n):
            count_n[q + 1] += count_n[q]
        fill = count_n[:-1].copy()
        lo_s = np.empty_like(lo_r)
        hi_s = np.empty_like(hi_r)
        for i in range(row_r.size):
            j = fill[row_r[i]]
            lo_s[j] = lo_r[i]
            hi_s[j] = hi_r[i]
            fill[row_r[i]] += 1
        out_row = np.empty_like(row_r)
        out_lo = np.empty_like(lo_r)
        out_hi = np.empty_like(hi_r)
        k = 0
        for q in range(n):
            a, b = count_n[q], count_n[q + 1]
            if a == b:
                continue
            order = np.argsort(lo_s[a:b], kind="mergesort")
            cur_lo, cur_hi = lo_s[a + order[0]], hi_s[a + order[0]]
            for t in range(1, b - a):
                lo, hi = lo_s[a + order[t]], hi_s[a + order[t]]
                if lo <= cur_hi + 1:
                    cur_hi = max(cur_hi, hi)
                else:
                    out_row[k], out_lo[k], out_hi[k] = q, cur_lo, cur_hi
                    k += 1
                    cur_lo, cur_hi = lo, hi
            out_row[k], out_lo[k], out_hi[k] = q, cur_lo, cur_hi
            k += 1
        return out_row[:k].copy(), out_lo[:k].copy(), out_hi[:k].copy()

    return merge
