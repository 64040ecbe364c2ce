"""Hyper-parameter grids for the tuning modes of the benchmarks (train/ slices only).

``parse_grid(["eta=0.5,0.85", "bf16=true"])`` -> ``{"eta": [0.5, 0.85], "bf16": [True]}``;
:func:`settings_grid` yields every combination over fixed settings.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

__all__ = ["parse_value", "parse_grid", "parse_settings", "settings_grid", "append_json_line"]


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


def parse_settings(text: str) -> dict:
    """``"steps=25,dds_tv=3e-4"`` -> ``{"steps": 25, "dds_tv": 0.0003}`` ("" -> {}: the defaults)."""
    settings = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"settings are key=value,..., got {item!r}")
        settings[key.strip()] = parse_value(value.strip())
    return settings


def append_json_line(path, row: dict) -> None:
    """Print ``row`` as JSON and, when ``path`` is given, append it to that JSON-lines file."""
    line = json.dumps(row)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def settings_grid(grid: dict[str, list], fixed: dict | None = None) -> Iterator[dict]:
    """Every combination of ``grid``'s values (last key fastest) on top of ``fixed``."""
    for values in itertools.product(*grid.values()):
        yield {**(fixed or {}), **dict(zip(grid, values))}
