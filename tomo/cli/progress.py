"""Progress of a long command without flooding logs.

On a terminal a tqdm bar; when stderr is not a terminal (a log file, a pipe, a batch job) a plain
line at most every ``interval`` seconds and one at the end, so a log of a long run holds a few
readable lines instead of thousands of carriage-return updates.
"""

from __future__ import annotations

import sys
import time

__all__ = ["SliceProgress", "library_bars"]


def library_bars(args) -> bool:
    """Whether library code (reconstruction, solvers, simulation) may draw tqdm bars.

    Only on a terminal and without ``--quiet``: a bar drawn into a log or a pipe is thousands of
    carriage-return updates, whatever the library's own setting.
    """
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


class SliceProgress:
    """Count finished slices of ``total``; use as a context manager.

    Parameters
    ----------
    total : int
    label : str
        Shown before the counts, e.g. ``"tomo reconstruct --method tv"``.
    enabled : bool
        False (``--quiet``): nothing at all.
    done : int
        Slices already finished (a resumed run).
    interval : float
        Seconds between plain lines when stderr is not a terminal.
    """

    def __init__(self, total: int, label: str, *, enabled: bool = True, done: int = 0, interval: float = 30.0):
        self.total, self.label, self.enabled, self.interval = total, label, enabled, interval
        self.done = self.start_done = done
        self._bar = None
        self._t0 = self._last = time.monotonic()

    def __enter__(self) -> SliceProgress:
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.label, unit="slice", leave=False)
        return self

    def update(self, n: int) -> None:
        """``n`` more slices finished."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self._line(now)

    def set_done(self, done: int) -> None:
        """``done`` slices finished in all (several processes share the work: count what is on disk)."""
        if done > self.done:
            self.update(done - self.done)

    def _line(self, now: float) -> None:
        elapsed = now - self._t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = f", about {(self.total - self.done) / rate:.0f} s left" if rate > 0 and self.done < self.total else ""
        print(f"{self.label}: {self.done}/{self.total} slices, {elapsed:.0f} s{left}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total > 1 and time.monotonic() - self._t0 >= self.interval:
            self._line(time.monotonic())  # a long run ends its log with the final count
