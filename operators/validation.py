"""Argument checks shared by the operator modules (geometries, image operators, phantoms).

Each check returns the value converted to a plain Python type and raises ``ValueError`` with
the argument's name and what is expected. Values may come from NumPy (e.g. 0-d or one-element
arrays read from a ``.npz`` file), so NumPy scalars are accepted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["positive_float", "positive_int", "positive_shape"]


def positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite ``float`` > 0 (>= 0 with ``allow_zero``), else ``ValueError``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
        v = float(arr.reshape(-1)[0]) if arr.size == 1 else None  # 0-d or 1-element arrays from .npz files
    except (TypeError, ValueError):
        v = None
    if v is None:
        raise ValueError(f"{name} must be a single number, got {value!r}")
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return v


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` > 0 (integral floats such as ``32.0`` are accepted), else ``ValueError``."""
    arr = np.asarray(value)
    if arr.ndim != 0 or not (
        np.issubdtype(arr.dtype, np.integer) or (np.issubdtype(arr.dtype, np.floating) and float(arr) == int(arr))
    ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    v = int(arr)
    if v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v}")
    return v


def positive_shape(value: Any, name: str, ndim: int) -> tuple:
    """``value`` as a tuple of ``ndim`` positive ints (e.g. an image shape ``(H, W)`` in pixels)."""
    try:
        items = tuple(np.asarray(value).reshape(-1).tolist())
    except Exception as exc:
        raise ValueError(f"{name} must be a sequence of {ndim} positive integers, got {value!r}") from exc
    if len(items) != ndim:
        raise ValueError(f"{name} must have {ndim} entries, got {value!r}")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(items))
