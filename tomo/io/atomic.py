"""Atomic writes: a file or a folder appears complete or not at all, even if the process is killed.

Everything is first written under a hidden temporary name in the destination's own folder (same
file system, so the final rename is atomic), flushed to disk, then renamed into place:

- :func:`atomic_file` -- a file object whose content replaces ``path`` on success;
- :func:`atomic_path` -- a temporary path, for writers that want a file name (``savefig``,
  ``Image.save``, ``np.save``);
- :func:`atomic_folder` -- a temporary folder that replaces the folder ``path`` on success (an
  existing folder is exchanged in one step where the kernel supports it, ``renameat2``).

A killed process leaves at most a hidden ``.NAME.tmp-PID-XXXX`` beside the destination; the next
atomic write to the same destination removes those whose process is gone. On an exception the
temporary is removed and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_file", "atomic_path", "atomic_folder", "remove_stale_temporaries"]

_TMP_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by killed processes; returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
        pid = p.name[len(f".{path.name}{_TMP_MARK}") :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _check_destination(path: Path, overwrite: bool, folder: bool) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
        if folder and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        if not folder and path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, not a file")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit_file(tmp: Path, path: Path, overwrite: bool) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # temporaries are private; the result gets the usual mode
    if overwrite:
        os.replace(tmp, path)
    else:
        try:  # link() refuses an existing destination: no race with another writer
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path} appeared while it was being written; not replaced") from None
        except OSError:  # file systems without hard links
            if path.exists():
                raise FileExistsError(f"{path} appeared while it was being written; not replaced") from None
            os.replace(tmp, path)
        else:
            tmp.unlink()
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path to write; on success it is renamed to ``path``.

    Parameters
    ----------
    path : path-like
        Destination file; its folder must exist.
    overwrite : bool
        Replace an existing file. Without it an existing ``path`` raises FileExistsError before
        anything is written.

    Yields
    ------
    Path
        Where to write, in the destination's folder; it keeps ``path``'s suffix so writers that
        choose a format by suffix work.
    """
    path = Path(path)
    _check_destination(path, overwrite, folder=False)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written for {path}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _commit_file(tmp, path, overwrite)
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
    finally:
        tmp.unlink(missing_ok=True)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with the destination as its file name when it names none (a full disk, an I/O
    error while writing: the user must learn which output failed)."""
    if exc.errno is None or exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))  # errno picks the subclass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, overwrite: bool = False, **open_kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path``.

    Parameters
    ----------
    path : path-like
        Destination file; its folder must exist.
    mode : str
        ``"wb"`` (default) or ``"w"`` (text; ``open_kwargs`` such as ``encoding`` pass through).
    overwrite : bool
        Replace an existing file (else FileExistsError before anything is written).
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_file writes whole files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder to fill; on success it becomes the folder ``path``.

    Parameters
    ----------
    path : path-like
        Destination folder; its parent must exist. An existing empty folder is replaced.
    overwrite : bool
        Replace an existing non-empty folder (the caller checks that it may, e.g. that it holds
        only outputs of an earlier run). Without it such a folder raises FileExistsError.

    Yields
    ------
    Path
        The temporary folder (created, empty).
    """
    path = Path(path)
    empty = path.is_dir() and not any(path.iterdir())
    _check_destination(path, overwrite or empty, folder=True)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir():
            if not _exchange(tmp, path):  # no atomic swap: move the old one aside first
                old = _temporary_name(path)
                path.rename(old)
                try:
                    tmp.rename(path)
                except BaseException:
                    old.rename(path)
                    raise
                tmp = old
        else:
            tmp.rename(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the failed temporary, or the replaced old folder
