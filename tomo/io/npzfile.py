"""``.npz`` archives read safely: shapes first, bounded reads, streaming by slices, streaming writes.

``np.load`` reads an array in one piece and fails with whatever the damage raises (EOFError,
zlib.error, BadZipFile, a huge allocation). :class:`NpzArchive` reads each member's ``.npy``
header first, so a caller can check shapes, dtypes and the memory a read needs before any data is
decompressed; every failure is one error class chosen by the caller. :meth:`NpzArchive.iter_rows`
streams an array by blocks of its first axis (slices) in bounded memory, and
:class:`NpzStreamWriter` writes arrays into an archive block by block, so a long series is never
held whole.
"""

from __future__ import annotations

import ast
import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .resources import check_memory, format_bytes

__all__ = ["NpzArchive", "NpzMember", "NpzStreamWriter"]

#: what damaged archives raise inside zipfile/numpy; all become the caller's error class
_DAMAGE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    NotImplementedError,
    SyntaxError,
    TypeError,
    OverflowError,
)
_MAX_HEADER = 10_000


@dataclass(frozen=True)
class NpzMember:
    """Shape and dtype of one array of an archive, from its ``.npy`` header (no data read)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def _read_header(fp: IO) -> tuple[tuple[int, ...], bool, np.dtype]:
    magic = fp.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError("member is not a .npy array")
    major = magic[6]
    size_bytes = 2 if major == 1 else 4
    raw = fp.read(size_bytes)
    if len(raw) < size_bytes:
        raise ValueError("truncated .npy header")
    length = int.from_bytes(raw, "little")
    if length > _MAX_HEADER:
        raise ValueError(f".npy header of {length} bytes (at most {_MAX_HEADER})")
    text = fp.read(length)
    if len(text) < length:
        raise ValueError("truncated .npy header")
    header = ast.literal_eval(text.decode("utf-8" if major >= 3 else "latin1"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"malformed .npy header {header!r:.80}")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"malformed .npy shape {shape!r:.80}")
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which is never enabled")
    return shape, bool(header["fortran_order"]), dtype


class NpzArchive:
    """An ``.npz`` file opened for safe reading.

    Parameters
    ----------
    path : path-like
    error : type
        Exception class raised (with the path and the reason) for anything wrong with the file.

    Raises
    ------
    FileNotFoundError
        No such file.
    error
        Not a zip archive, an empty or damaged one, or a member that is not a plain ``.npy``.
    """

    def __init__(self, path: str | os.PathLike, error: type[Exception] = ValueError):
        self.path = Path(path)
        self.error = error
        if not self.path.is_file():
            raise FileNotFoundError(f"no such file: {self.path}")
        if self.path.stat().st_size == 0:
            raise error(f"{self.path}: empty file, not an .npz archive")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except _DAMAGE as exc:
            raise error(f"{self.path}: not a readable .npz archive ({_why(exc)})") from None
        self.members: dict[str, NpzMember] = {}
        try:
            for info in self._zip.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with self._zip.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp)
                self.members[name] = NpzMember(name, shape, dtype, fortran)
        except _DAMAGE as exc:
            self.close()
            raise error(f"{self.path}: damaged .npz archive ({_why(exc)})") from None

    @property
    def files(self) -> list[str]:
        return list(self.members)

    def __contains__(self, key: str) -> bool:
        return key in self.members

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()

    def member(self, key: str) -> NpzMember:
        try:
            return self.members[key]
        except KeyError:
            raise self.error(f"{self.path}: no array {key!r} (has {self.files})") from None

    def read(self, key: str, what: str | None = None) -> np.ndarray:
        """The whole array ``key``, after checking that it fits in memory."""
        m = self.member(key)
        self.check_memory(m.nbytes, what or f"array {key!r} {list(m.shape)} {m.dtype}")
        arr = np.empty(m.shape[::-1] if m.fortran_order else m.shape, dtype=m.dtype)
        try:
            with self._zip.open(key + ".npy") as fp:
                _read_header(fp)
                _read_into(fp, arr)
        except _DAMAGE as exc:
            raise self.error(f"{self.path}: array {key!r} is damaged ({_why(exc)})") from None
        return arr.transpose() if m.fortran_order else arr

    def iter_rows(
        self, key: str, start: int = 0, stop: int | None = None, rows: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``key[start:stop]`` in blocks of ``rows`` along the first axis.

        Yields ``(first index, block)``; memory is one block (C-order arrays; a Fortran-order
        array is read whole once).
        """
        m = self.member(key)
        if not m.shape:
            raise self.error(f"{self.path}: array {key!r} is a scalar, not a stack")
        n = m.shape[0]
        stop = n if stop is None else min(stop, n)
        if m.fortran_order:
            arr = self.read(key)
            for k in range(start, stop, rows):
                yield k, np.ascontiguousarray(arr[k : min(k + rows, stop)])
            return
        row_bytes = m.nbytes // n if n else 0
        try:
            with self._zip.open(key + ".npy") as fp:
                _read_header(fp)
                _skip(fp, start * row_bytes)
                for k in range(start, stop, rows):
                    block = np.empty((min(rows, stop - k),) + m.shape[1:], dtype=m.dtype)
                    _read_into(fp, block)
                    yield k, block
        except _DAMAGE as exc:
            raise self.error(f"{self.path}: array {key!r} is damaged ({_why(exc)})") from None

    def check_memory(self, nbytes: int, what: str) -> None:
        """Raise the archive's error class when reading ``nbytes`` would not fit in memory."""
        try:
            check_memory(nbytes, f"{self.path}: {what}")
        except ValueError as exc:
            raise self.error(str(exc)) from None


def _read_into(fp: IO, arr: np.ndarray) -> None:
    """Fill the C-contiguous ``arr`` from the stream (no intermediate copy)."""
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = fp.readinto(view[got:])
        if not n:
            raise EOFError(f"array data ends after {format_bytes(got)} of {format_bytes(len(view))}")
        got += n


def _skip(fp: IO, nbytes: int, block: int = 2**24) -> None:
    while nbytes > 0:  # read and drop: a compressed stream cannot seek cheaply
        got = len(fp.read(min(block, nbytes)))
        if not got:
            raise EOFError("array data ends early")
        nbytes -= got


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NpzStreamWriter:
    """Write an ``.npz`` (zip64, deflate) array by array, or an array block by block.

    Parameters
    ----------
    fh : binary file object
        Where the archive goes (e.g. from :func:`tomo.io.atomic.atomic_file`).
    compress : bool
        Deflate the members (as ``np.savez_compressed``).

    Examples
    --------
    >>> with atomic_file(out) as fh, NpzStreamWriter(fh) as w:       # doctest: +SKIP
    ...     with w.array("hu", (300, 256, 256), np.float32) as put:
    ...         for block in blocks: put(block)
    ...     w.write("method", np.str_("tv"))
    """

    def __init__(self, fh: IO, compress: bool = True):
        self._zip = zipfile.ZipFile(
            fh, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED, allowZip64=True
        )

    def __enter__(self) -> NpzStreamWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def write(self, key: str, value) -> None:
        """One whole array (small ones: metadata)."""
        arr = np.asanyarray(value)
        with self._zip.open(key + ".npy", "w", force_zip64=True) as fp:
            np.lib.format.write_array(fp, arr, allow_pickle=False)

    def array(self, key: str, shape: tuple[int, ...], dtype) -> _BlockSink:
        """A sink taking C-order blocks of ``shape`` along the first axis, in order."""
        return _BlockSink(self._zip, key, tuple(int(n) for n in shape), np.dtype(dtype))


class _BlockSink:
    def __init__(self, zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype, self.rows = shape, dtype, 0
        self._fp = zf.open(key + ".npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(self._fp, header)

    def __enter__(self):
        return self.put

    def __exit__(self, exc_type, *exc) -> None:
        self._fp.close()
        if exc_type is None and self.rows != self.shape[0]:
            raise ValueError(f"wrote {self.rows} of {self.shape[0]} rows")

    def put(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + block.shape[0] > self.shape[0]:
            raise ValueError(f"block {block.shape} does not continue an array of shape {self.shape} at row {self.rows}")
        self._fp.write(block.tobytes())
        self.rows += block.shape[0]
