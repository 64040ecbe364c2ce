"""Hyper-parameter grids for the tuning modes of the benchmarks (train/ slices only).

``parse_grid(["eta=0.5,0.85", "bf16=true"])`` -> ``{"eta": [0.5, 0.85], "bf16": [True]}``;
:func:`settings_grid` yields every combination over fixed settings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

__all__ = ["parse_value", "parse_grid", "settings_grid"]


def parse_value(text: str):
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"true"``/``"false"``/``"none"`` -> True/False/None, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_grid(items) -> dict[str, list]:
    """``["key=v1,v2", ...]`` (None: no items) -> ``{key: [v1, v2]}`` with :func:`parse_value`."""
    grid = {}
    for item in items or ():
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise ValueError(f"grid items are key=v1,v2,..., got {item!r}")
        grid[key] = [parse_value(v) for v in values.split(",")]
    return grid


def settings_grid(grid: dict[str, list], fixed: dict | None = None) -> Iterator[dict]:
    """Every combination of ``grid``'s values (last key fastest) on top of ``fixed``."""
    for values in itertools.product(*grid.values()):
        yield {**(fixed or {}), **dict(zip(grid, values))}
