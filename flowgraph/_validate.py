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
