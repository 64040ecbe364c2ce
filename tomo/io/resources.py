"""Memory budget: refuse work that cannot fit before allocating it, with the reason and the figure.

:func:`available_memory_bytes` is the memory this process may still use: the smallest of the
machine's available memory (``MemAvailable``), the container's limit (cgroup v2/v1) and the
process's address-space limit (``RLIMIT_AS``/``RLIMIT_DATA``), minus what it already uses. The
environment variable ``TOMO_MEMORY_LIMIT`` (bytes, or with a unit: ``8G``, ``512M``) caps it
further, e.g. on a shared machine.

:func:`check_memory` raises :class:`MemoryBudgetError` (a ``ValueError``, so the ``tomo``
command prints it as one line) when an estimate exceeds that budget.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

__all__ = ["MemoryBudgetError", "available_memory_bytes", "check_memory", "format_bytes", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryBudgetError(ValueError):
    """An operation whose estimated memory exceeds what is available; the message gives both."""


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units, as ``free -h`` and ``top`` show)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def parse_bytes(text: str) -> int:
    """``'8G'`` -> 8 GiB in bytes; plain digits are bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 8G, 512M, 1000000)") from None
    if not value > 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value * _UNITS[unit])


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _self_status(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_room() -> int | None:
    """Bytes left under the container's memory limit, if there is one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(int(limit) - usage, 0)
    return None


def _rlimit_room() -> int | None:
    rooms = []
    for which, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            rooms.append(max(soft - _self_status(used), 0))
    return min(rooms) if rooms else None


def available_memory_bytes() -> int:
    """Bytes this process can still allocate (see the module docstring for the sources)."""
    candidates = [_meminfo("MemAvailable"), _cgroup_room(), _rlimit_room()]
    env = os.environ.get("TOMO_MEMORY_LIMIT")
    if env:
        candidates.append(max(parse_bytes(env) - _self_status("VmRSS"), 0))
    known = [c for c in candidates if c is not None]
    if not known:  # not Linux: physical memory as the only bound
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 2**62
    return min(known)


def check_memory(needed_bytes: float, what: str, hint: str = "") -> None:
    """Refuse ``what`` when it needs more than :func:`available_memory_bytes`.

    Parameters
    ----------
    needed_bytes : float
        The estimate, bytes.
    what : str
        What needs it, e.g. ``"reading 300 slices of 512 x 512"``.
    hint : str
        How to need less (e.g. ``"use --slices or --batch-size 1"``), appended to the message.

    Raises
    ------
    MemoryBudgetError
    """
    available = available_memory_bytes()
    if needed_bytes > available:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(needed_bytes)} of memory but "
            f"{format_bytes(available)} is available" + (f"; {hint}" if hint else "")
        )
