"""Read CT volumes stored as ``.npz`` files in the OpenKBP layout (the project's shared data).

A file holds ``hu`` [slices, H, W] (HU, axial slices) and ``spacing_mm`` [3] voxel size (x, y, z)
in mm; optional string arrays (``patient_id``, ``collection``, ``licence``) are not needed here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import CTVolume, VolumeReadError

__all__ = ["read_npz_volume"]


def read_npz_volume(path: str | os.PathLike) -> CTVolume:
    """Read an OpenKBP-style ``.npz`` CT volume.

    Parameters
    ----------
    path : str or Path
        ``.npz`` holding ``hu`` [slices, H, W] (HU) and ``spacing_mm`` [3] (x, y, z) in mm.

    Returns
    -------
    CTVolume
        Pixel spacing (y, x), slice spacing z, positions (0, 0, k z), axial orientation, no
        header.

    Raises
    ------
    FileNotFoundError
        No such file.
    VolumeReadError
        Missing arrays, wrong shapes, non-finite values, or not an ``.npz`` archive.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"hu", "spacing_mm"} - set(data.files)
            if missing:
                raise VolumeReadError(f"{path}: missing arrays {sorted(missing)} (has {data.files})")
            hu = np.asarray(data["hu"])
            spacing = np.asarray(data["spacing_mm"], dtype=float).ravel()
    except (OSError, ValueError) as exc:
        if isinstance(exc, VolumeReadError):
            raise
        raise VolumeReadError(f"{path}: not a readable .npz ({exc})") from exc
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or spacing.shape != (3,) or not np.all(spacing > 0):
        raise VolumeReadError(f"{path}: expected hu [slices, H, W] and spacing_mm (x, y, z) > 0, got "
                             f"hu {hu.shape}, spacing_mm {spacing.tolist()}")
    if not np.issubdtype(hu.dtype, np.number) or not np.all(np.isfinite(hu)):
        raise VolumeReadError(f"{path}: hu must be finite numbers (dtype {hu.dtype})")
    n = hu.shape[0]
    positions = np.zeros((n, 3))
    positions[:, 2] = np.arange(n) * spacing[2]
    return CTVolume(
        hu=hu.astype(np.float32), pixel_spacing_mm=(float(spacing[1]), float(spacing[0])),
        slice_spacing_mm=float(spacing[2]) if n > 1 else None, positions=positions,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), files=[path] * n)
