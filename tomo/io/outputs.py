"""The output layer of every command that writes: plan the outputs, check them, lock them.

A command lists every path it will write (the outputs, previews, std maps, DICOM and NIfTI
companions, scratch folders such as ``OUT.partial``) in an :class:`OutputPlan`, with its inputs,
and calls :meth:`OutputPlan.claim` **before any work**. The claim

1. takes an exclusive lock on each planned path (a hidden ``.NAME.lock`` beside it, ``flock``; a
   folder the run writes into is locked itself):
   a second run writing any of the same paths is refused at once with :class:`OutputBusyError`
   naming the other run, so a final file always comes from exactly one run; the kernel drops the
   lock when its process ends, even by SIGKILL, so a killed run never blocks the next one;
2. checks every planned path against every input: an output that *is* an input (however spelled:
   ``../``, a symlink, a hard link) or a folder the run replaces or removes that *holds* an input
   is refused (:class:`OutputConflictError`);
3. checks what would otherwise fail only after the work: an existing output without
   ``overwrite``, a file output that is an existing folder, a missing or read-only folder, a name
   too long for the file system once the atomic writer's temporary suffix is added.

The locks are released by :meth:`Claim.release` (or leaving its ``with`` block); a claim taken as
a plain statement is released when the ``tomo`` command returns (:func:`release_all`, called by
:func:`tomo.cli.main.main`).

:func:`shown` renders a path for a message: file names are bytes on Linux, and one that is not
UTF-8 must not turn a finished run into an encoding error.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Claim",
    "OutputBusyError",
    "OutputConflictError",
    "OutputPlan",
    "lock_path",
    "release_all",
    "shown",
]

#: the longest temporary name :mod:`tomo.io.atomic` adds to a name: ``.`` + ``.tmp-`` + PID (at most
#: 7 digits on Linux) + ``-`` + 8 hex digits; the suffix is repeated after it
_TMP_OVERHEAD = 1 + 5 + 7 + 1 + 8


class OutputConflictError(ValueError):
    """An output is an input, or a folder the run replaces holds an input (exit code 2)."""


class OutputBusyError(OSError):
    """Another run holds the lock of an output (exit code 2)."""


def shown(path: str | os.PathLike | bytes) -> str:
    """``path`` as printable text: bytes that are not UTF-8 become ``\\xNN`` escapes.

    Python decodes such bytes of a file name to lone surrogates, which a strict UTF-8 stream
    (a log file, ``--quiet``'s sink, ``LANG=en_US.UTF-8``) refuses to encode.
    """
    text = os.fsdecode(os.fspath(path))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def lock_path(path: Path) -> Path:
    """The hidden lock file of ``path`` (beside it: the lock outlives a replaced folder)."""
    return path.parent / f".{path.name}.lock"


@dataclass(frozen=True)
class _Planned:
    path: Path
    what: str  # for messages: "output", "preview", "DICOM series", "partial results" ...
    kind: str  # "file"; "folder" (replaced or removed as a whole); "workdir" (files written into it)
    scratch: bool = False  # existence is the caller's business (partial results and --resume)


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (``../``, symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare where they would point
        return a.resolve() == b.resolve()


def _inside(inner: Path, folder: Path) -> bool:
    folder = folder.resolve()
    return folder in inner.resolve().parents


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


class OutputPlan:
    """Every path one run will write, and the inputs none of them may touch.

    Parameters
    ----------
    inputs : iterable of path-like or None
        The run's input files and folders (None and paths that do not exist, such as a shipped
        prior's name, are skipped).
    overwrite : bool
        Existing outputs may be replaced (``--overwrite``).

    Examples
    --------
    >>> plan = OutputPlan([scan], overwrite=False)        # doctest: +SKIP
    >>> plan.file(out); plan.file(out.with_suffix(".png"), "preview")  # doctest: +SKIP
    >>> with plan.claim():                                # doctest: +SKIP
    ...     work_and_write()
    """

    def __init__(self, inputs, *, overwrite: bool = False):
        self.inputs = [Path(os.fsdecode(p)) for p in inputs if p is not None and os.path.lexists(p)]
        self.overwrite = overwrite
        self.planned: list[_Planned] = []

    def file(self, path: str | os.PathLike, what: str = "output") -> Path:
        """Plan a file the run writes (atomically replacing it with ``overwrite``)."""
        return self._add(path, what, "file")

    def folder(self, path: str | os.PathLike, what: str, *, scratch: bool = False) -> Path:
        """Plan a folder the run replaces or removes as a whole (a DICOM series, ``OUT.partial``).

        ``scratch``: the folder may exist (the caller resumes or discards it); no input may lie in it.
        """
        return self._add(path, what, "folder", scratch)

    def workdir(self, path: str | os.PathLike, what: str = "output folder") -> Path:
        """Plan a folder the run writes its files into (``tomo demo --out``, ``tomo train --out``);
        the files themselves are planned with :meth:`file` / :meth:`folder` where known."""
        return self._add(path, what, "workdir")

    def _add(self, path, what: str, kind: str, scratch: bool = False) -> Path:
        path = Path(os.fsdecode(os.fspath(path)))
        self.planned.append(_Planned(path, what, kind, scratch))
        return path

    # ----- checks ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse the plan if any path conflicts with an input or could not be written.

        Raises
        ------
        OutputConflictError
            An output is an input, or a folder the run replaces holds one.
        FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError
            What writing would meet after the work (one line each, naming the path).
        """
        for item in self.planned:
            self._check_inputs(item)
        for item in self.planned:
            self._check_writable(item)

    def _check_inputs(self, item: _Planned) -> None:
        for source in self.inputs:
            if _same(item.path, source):
                raise OutputConflictError(
                    f"the {item.what} {shown(item.path)} is the input {shown(source)}; refusing to "
                    "overwrite an input: choose another output name"
                )
            if item.kind == "folder" and _inside(source, item.path):
                action = "removes" if item.scratch else "replaces"
                raise OutputConflictError(
                    f"the input {shown(source)} lies inside {shown(item.path)}, the {item.what} "
                    f"folder this run {action}: move the input out of it, or choose another output name"
                )

    def _check_writable(self, item: _Planned) -> None:
        path, parent = item.path, item.path.parent
        if item.kind == "workdir":
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(f"the {item.what} {shown(path)} exists and is not a folder")
            if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(f"cannot write in the {item.what} {shown(path)}")
            return
        if not parent.is_dir():
            raise FileNotFoundError(f"folder {shown(parent)} does not exist (for the {item.what} {shown(path)})")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write in folder {shown(parent)} (for the {item.what} {shown(path)})")
        limit = _name_max(parent)
        longest = len(os.fsencode(path.name)) + _TMP_OVERHEAD + len(os.fsencode(path.suffix))
        if longest > limit:
            room = limit - _TMP_OVERHEAD - len(os.fsencode(path.suffix))
            raise OSError(
                f"the {item.what} name {shown(path.name)} is too long: {len(os.fsencode(path.name))} bytes, "
                f"this file system allows {room} for an output (its temporary name adds {_TMP_OVERHEAD})"
            )
        if item.kind == "file":
            if path.is_dir():
                raise IsADirectoryError(f"the {item.what} {shown(path)} is an existing folder; give a file name")
            if (path.exists() or path.is_symlink()) and not self.overwrite:
                raise FileExistsError(f"{shown(path)} exists; pass --overwrite to replace it")
        elif not item.scratch and (path.exists() or path.is_symlink()):
            if not path.is_dir():
                raise NotADirectoryError(f"the {item.what} {shown(path)} exists and is not a folder")
            if not self.overwrite and any(path.iterdir()):
                raise FileExistsError(f"{shown(path)} exists and is not empty; pass --overwrite to replace it")

    # ----- locks ----------------------------------------------------------------------------------
    def claim(self) -> Claim:
        """Lock every planned path, then :meth:`check` (under the locks); returns the held claim.

        Raises
        ------
        OutputBusyError
            Another run holds one of the locks (nothing was locked by this call then).
        """
        claim = Claim()
        try:
            for item in self.planned:
                if item.kind == "workdir" and not os.path.lexists(item.path):
                    claim.make_folder(item.path)  # the lock and the files live in it or beside it
            for item in sorted(self.planned, key=lambda item: str(lock_path(item.path))):  # one order: no deadlock
                if item.kind == "workdir":
                    claim.lock_folder(item.path, item.what)
                elif item.path.parent.is_dir():  # else check() names the missing folder
                    claim.lock(item.path, item.what)
            self.check()
        except BaseException:
            claim.release()
            raise
        _HELD.append(claim)
        return claim


class Claim(contextlib.AbstractContextManager):
    """The locks one run holds on its outputs; :meth:`release` (or ``with``) gives them back."""

    def __init__(self) -> None:
        self._held: list[tuple[Path | None, int]] = []  # (lock file to remove, or None: a folder), fd
        self._made: list[Path] = []  # folders this claim created, removed on release if still empty

    def make_folder(self, path: Path) -> None:
        """Create the folder ``path`` and its missing parents (removed again if left empty)."""
        missing = [p for p in [path, *path.parents] if not os.path.lexists(p)]
        path.mkdir(parents=True, exist_ok=True)
        self._made.extend(reversed(missing))

    def lock(self, path: Path, what: str = "output") -> None:
        """Take the exclusive lock of ``path`` (a second lock on a path this claim holds is a no-op)."""
        target = lock_path(path)
        if any(held is not None and _same(held, target) for held, _ in self._held):
            return
        while True:
            fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise OutputBusyError(
                    f"the {what} {shown(path)} is being written by another tomo run ({holder}); wait "
                    "for it to finish, or choose another output name"
                ) from None
            except (ImportError, OSError):  # no flock on this file system (or platform): unlocked
                os.close(fd)
                return
            try:
                current = os.stat(target)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the file now at that name
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        self._held.append((target, fd))

    def lock_folder(self, path: Path, what: str = "output folder") -> None:
        """Take the exclusive lock of the folder ``path`` itself (``flock`` on the folder: no lock
        file is left in a folder that may be read as data, e.g. ``tomo train DATA --out DATA/run``)."""
        try:
            import fcntl

            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (ImportError, OSError):  # check() explains a path that is not a folder
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"the {what} {shown(path)} is being written by another tomo run; wait for it to "
                "finish, or choose another output folder"
            ) from None
        except OSError:  # no flock on this file system: unlocked
            os.close(fd)
            return
        self._held.append((None, fd))

    def release(self) -> None:
        """Remove the lock files and drop the locks (removed first, so no one locks a dead file);
        folders the claim made and nothing was written into are removed before their locks go."""
        folders = [fd for target, fd in self._held if target is None]
        for target, fd in self._held:
            if target is not None:
                with contextlib.suppress(OSError):
                    os.unlink(target)
                os.close(fd)
        self._held.clear()
        while self._made:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self._made.pop().rmdir()
        for fd in folders:
            os.close(fd)
        with contextlib.suppress(ValueError):
            _HELD.remove(self)

    def __exit__(self, *exc) -> None:
        self.release()


#: claims taken as plain statements; the ``tomo`` command releases them when it returns
_HELD: list[Claim] = []


def release_all() -> None:
    """Release every claim this process holds (the end of a ``tomo`` command)."""
    for claim in list(_HELD):
        claim.release()
