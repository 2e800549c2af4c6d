"""Small named checks shared by the constructors; each raises with the argument, its value and
what was expected, so a caller sees the fix in the message."""

from __future__ import annotations

import math
import numbers

import numpy as np

MODES = ("interleave", "merged", "heads")


def positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise when it is not a whole number ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be ≥ 1, got {name}={value}")
    return int(value)


def int_in_range(name: str, value: object, low: int, high: int, why: str = "") -> int:
    """Return ``value`` as an int, or raise when it lies outside ``low..high`` (inclusive)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        suffix = f" ({why})" if why else ""
        raise ValueError(f"{name} must be in {low}..{high}{suffix}, got {name}={value}")
    return int(value)


def stride_for(n: int, stride: object | None) -> int:
    """The stride l: ⌊√n⌋ when not given, else an int in 1..n."""
    if stride is None:
        return max(1, math.isqrt(n))
    return int_in_range("stride", stride, 1, n, f"1 ≤ stride ≤ n, n={n}")


def mode(value: object) -> str:
    if value not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got mode={value!r}")
    return str(value)


def flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# --- memory ----------------------------------------------------------------------------------
MEMORY_LIMIT_BYTES = 8 * 2**30  # what one call may allocate before it is refused up front
MAX_POSITIONS = 2**31 - 1  # keys and positions are stored as int32 (here and in the kernels)


def fmt_bytes(num: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num < 1024 or unit == "PiB":
            return f"{num:.1f} {unit}"
        num /= 1024
    raise AssertionError("unreachable")


def byte_limit(name: str, value: object) -> int:
    """A ``max_bytes``-style argument: an int ≥ 1."""
    return positive_int(name, value)


def positions(name: str, value: object) -> int:
    """A number of positions: an int in 1..2³¹−1 (positions are stored as int32)."""
    value = positive_int(name, value)
    if value > MAX_POSITIONS:
        raise ValueError(
            f"{name} must be ≤ 2**31 − 1 = {MAX_POSITIONS} (positions are stored as int32), "
            f"got {name}={value}"
        )
    return value


def memory(what: str, need: int, max_bytes: int, fix: str = "pass a larger max_bytes") -> None:
    """Refuse, before allocating anything, a call that would need more than ``max_bytes``."""
    if need > max_bytes:
        raise ValueError(
            f"{what} would need about {fmt_bytes(need)} of memory, above the limit "
            f"max_bytes={fmt_bytes(max_bytes)}; use a smaller size or {fix}"
        )
