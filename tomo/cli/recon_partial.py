"""``tomo reconstruct``'s resumable partial results: the folder ``OUT.partial``, one file per chunk.

A killed run leaves its finished chunks here; ``--resume`` continues a run whose manifest (input
digest, method, options, chunk size) matches, and the output is assembled from the chunks.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from tomo.cli.main import CommandError
from tomo.io.outputs import shown


def partial_folder(out: Path) -> Path:
    return out.parent / f"{out.name}.partial"


def file_digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class PartialRun:
    """The partial-results folder ``OUT.partial`` of a run: one file per finished chunk of slices.

    Each chunk file (``hu``, and ``std_hu``, ``psnr``, ``ssim`` when there are) is written
    atomically, so after a kill every chunk present is complete; ``manifest.json`` names the
    input (size and SHA-256), the method, its options and the chunk size, and ``--resume``
    continues only a run that matches all of them. Several processes may fill one folder (each
    its own chunks).
    """

    VERSION = 2  # 2: chunks carry std_hu
    #: written just before the outputs: a run killed while writing them left outputs of its own
    FINISHING = "finishing"

    def __init__(self, folder: Path, manifest: dict, created: bool = False):
        self.folder, self.manifest = folder, manifest
        self.created = created  # by this run (so a run failing before its first chunk removes it)

    @staticmethod
    def was_finishing(folder: Path) -> bool:
        """Whether the run of ``folder`` was killed while writing its outputs (they are its own)."""
        return (folder / PartialRun.FINISHING).is_file()

    @staticmethod
    def leftover_message(folder: Path) -> str:
        return (
            f"{shown(folder)} holds partial results of an earlier run: pass --resume to "
            "continue it, or --overwrite to start again"
        )

    def mark_finishing(self) -> None:
        from tomo.io.atomic import atomic_file

        with atomic_file(self.folder / self.FINISHING, "w", overwrite=True) as fh:
            fh.write("outputs being written\n")

    @classmethod
    def open(cls, folder: Path, args, options: dict, batch: int, source) -> PartialRun:
        from tomo.io.atomic import atomic_file

        manifest = {
            "version": cls.VERSION,
            "input_size": args.file.stat().st_size,
            "input_sha256": file_digest(args.file),
            "method": args.method,
            "options": json.loads(json.dumps(options, sort_keys=True)),
            "chunk": batch,
            "slices": source.num_slices,
        }
        if folder.exists():
            if args.overwrite and not args.resume:
                remove_partial(folder)
                if folder.exists():
                    foreign = ", ".join(sorted(shown(p.name) for p in folder.iterdir())[:3])
                    raise FileExistsError(
                        f"{shown(folder)} holds files tomo did not write ({foreign}); move them out of it"
                    )
            elif not args.resume:
                raise FileExistsError(cls.leftover_message(folder))
            else:
                try:
                    old = json.loads((folder / "manifest.json").read_text())
                except (OSError, ValueError):
                    old = None
                if old != manifest:
                    raise CommandError(
                        f"--resume: {folder} was made from another input, method, options, "
                        "--batch-size or tomo version; pass --overwrite (without --resume) to "
                        "start again"
                    )
                return cls(folder, manifest)
        folder.mkdir()
        with atomic_file(folder / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=1)
        return cls(folder, manifest, created=True)

    @classmethod
    def join(cls, folder: Path, manifest: dict) -> PartialRun:
        """The folder another process (rank 0) opened; refuse one this process cannot see."""
        try:
            seen = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            seen = None
        if seen != manifest:
            raise CommandError(
                f"cannot read {folder / 'manifest.json'} as rank 0 wrote it: the output folder must "
                "be on a file system every node shares"
            )
        return cls(folder, manifest)

    def chunk_path(self, start: int) -> Path:
        return self.folder / f"slices-{start:06d}.npz"

    def done(self, start: int) -> bool:
        return self.chunk_path(start).is_file()

    def save(self, start: int, hu: np.ndarray, psnr=None, ssim=None, std: np.ndarray | None = None) -> None:
        """Store one chunk: ``hu`` [n, H, W] HU, optional scores [n], optional ``std`` [n, H, W] HU."""
        from tomo.io.atomic import atomic_file

        arrays: dict[str, Any] = {"hu": hu}
        if psnr is not None:
            arrays.update(psnr=np.atleast_1d(psnr).astype(np.float64), ssim=np.atleast_1d(ssim).astype(np.float64))
        if std is not None:
            arrays["std_hu"] = np.asarray(std, dtype=np.float32)
        with atomic_file(self.chunk_path(start), overwrite=True) as fh:
            np.savez(fh, **arrays)

    def starts(self) -> range:
        return range(0, self.manifest["slices"], self.manifest["chunk"])

    def slices_done(self) -> int:
        """Slices in the chunk files present (by all processes)."""
        n, chunk = self.manifest["slices"], self.manifest["chunk"]
        return sum(min(chunk, n - s) for s in self.starts() if self.done(s))

    def read(self, start: int, key: str = "hu") -> np.ndarray:
        with np.load(self.chunk_path(start), allow_pickle=False) as d:
            return d[key]

    def has_std(self) -> bool:
        """Whether the chunks hold a posterior standard deviation (all or none of them do)."""
        with np.load(self.chunk_path(0), allow_pickle=False) as d:
            return "std_hu" in d.files

    def volume(self, key: str = "hu") -> np.ndarray:
        """All slices of ``key`` [slices, H, W], in order."""
        return np.concatenate([self.read(s, key) for s in self.starts()])

    def scores(self) -> tuple[float, float]:
        p = np.concatenate([self.read(s, "psnr") for s in self.starts()])
        q = np.concatenate([self.read(s, "ssim") for s in self.starts()])
        return float(np.mean(p)), float(np.mean(q))

    def remove(self) -> None:
        remove_partial(self.folder)


#: the files a run writes in ``OUT.partial`` (and their atomic temporaries): the only ones it removes
_OWN = re.compile(r"\.?(manifest\.json|finishing|slices-\d{6}\.npz)(\.tmp-\d+-[0-9a-f]{8}(\.json|\.npz)?)?")


def remove_partial(folder: Path) -> None:
    """Remove the files a run wrote in ``folder``, then the folder if that left it empty.

    Never a whole tree: anything else in it (an input, a user's file) stays, and so does the folder.
    """
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in folder.iterdir():
        if _OWN.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: what is left is not ours
        folder.rmdir()
