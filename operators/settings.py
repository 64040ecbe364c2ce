"""The process-wide settings of the operators package, in one documented object.

``operators.settings`` is the only mutable configuration of the package:

``threads`` (default 1)
    CPU threads for :class:`operators.CTProjector` (input checks and sparse products) and
    :class:`operators.FBP`. An int ``n >= 1`` runs each call under ``torch.set_num_threads(n)``
    and restores torch's setting afterwards (process-wide while the call runs); ``None`` leaves
    torch's own setting alone, so ``torch.set_num_threads`` in the application reaches the
    operators. Set it with :func:`set_threads`; one operator can override it with its
    ``num_threads`` argument. Why 1 by default: on the shared 2-core project machine torch's
    2-thread kernels waited for the busy second core and were slower
    (docs/benchmarks_operators.md); on an idle many-core machine more threads can pay off.
``max_matrix_bytes`` (default 2 GiB)
    Largest cached system-matrix pair: a :class:`~operators.CTProjector` whose pair would be
    bigger uses per-slice ASTRA calls (CPU) or ASTRA's CUDA kernels instead.
``max_total_bytes`` (default 4 GiB)
    Bound of the whole matrix cache (least recently used geometries are evicted first).
    Set both with :func:`operators.set_matrix_cache_limits`.

>>> import operators
>>> old = operators.set_threads(None)     # follow torch.set_num_threads from now on
>>> operators.settings.threads is None
True
>>> _ = operators.set_threads(old)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["OperatorSettings", "settings", "set_threads", "torch_threads", "all_threads"]

_GiB = 1024**3


def _check_threads(n) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be None (leave torch's setting alone) or an int >= 1, got {n!r}")
    return n


def _check_bytes(n, name: str) -> int:
    if isinstance(n, bool) or int(n) != n or int(n) < 0:
        raise ValueError(f"{name} must be a number of bytes >= 0, got {n!r}")
    return int(n)


class OperatorSettings:
    """Threads and memory bounds of the operators (see the module docstring); values are
    checked on assignment."""

    __slots__ = ("_max_matrix_bytes", "_max_total_bytes", "_threads")

    def __init__(self, threads: int | None = 1, max_matrix_bytes: int = 2 * _GiB, max_total_bytes: int = 4 * _GiB):
        self.threads = threads
        self.max_matrix_bytes = max_matrix_bytes
        self.max_total_bytes = max_total_bytes

    @property
    def threads(self) -> int | None:
        """CPU threads of CTProjector and FBP calls, ``None`` = torch's own setting."""
        return self._threads

    @threads.setter
    def threads(self, n: int | None) -> None:
        self._threads = _check_threads(n)

    @property
    def max_matrix_bytes(self) -> int:
        """Largest cached system-matrix pair (bytes)."""
        return self._max_matrix_bytes

    @max_matrix_bytes.setter
    def max_matrix_bytes(self, n: int) -> None:
        self._max_matrix_bytes = _check_bytes(n, "max_matrix_bytes")

    @property
    def max_total_bytes(self) -> int:
        """Bound of the whole matrix cache (bytes)."""
        return self._max_total_bytes

    @max_total_bytes.setter
    def max_total_bytes(self, n: int) -> None:
        self._max_total_bytes = _check_bytes(n, "max_total_bytes")

    def as_dict(self) -> dict:
        return {
            "threads": self.threads,
            "max_matrix_bytes": self.max_matrix_bytes,
            "max_total_bytes": self.max_total_bytes,
        }

    def __repr__(self) -> str:
        return "OperatorSettings(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


#: the package's one settings object
settings = OperatorSettings()


def set_threads(n: int | None) -> int | None:
    """Set ``settings.threads`` (CPU threads of CTProjector and FBP; ``None`` = leave torch's
    setting alone) and return the previous value."""
    old = settings.threads
    settings.threads = n
    return old


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (process-wide; restored afterwards).

    ``None`` (or ``n`` equal to torch's current setting) changes nothing.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def all_threads(n: int | None):
    """Run the block with ``n`` CPU threads for torch and for the operators (``settings.threads``);
    ``None``: torch's own setting for both, the operators following it. Both are restored afterwards.

    This is ``tomo reconstruct --threads`` (0 there means ``None``).
    """
    old = set_threads(n)
    try:
        with torch_threads(n):
            yield
    finally:
        set_threads(old)
