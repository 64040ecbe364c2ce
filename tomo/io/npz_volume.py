"""Read CT volumes stored as ``.npz`` files in the OpenKBP layout (the project's shared data).

A file holds ``hu`` [slices, H, W] (HU, axial slices) and ``spacing_mm`` [3] voxel size (x, y, z)
in mm; optional string arrays (``patient_id``, ``collection``, ``licence``) are not needed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .npzfile import NpzArchive
from .volume_types import CTVolume, VolumeReadError

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
        Missing arrays, wrong shapes, non-finite values, not an ``.npz`` archive (or an empty or
        damaged one), or an array larger than the available memory.
    """
    path = Path(path)
    with NpzArchive(path, error=VolumeReadError) as data:
        missing = {"hu", "spacing_mm"} - set(data.files)
        if missing:
            raise VolumeReadError(f"{path}: missing arrays {sorted(missing)} (has {data.files})")
        m = data.members["hu"]
        if m.dtype.kind not in "biuf":
            raise VolumeReadError(f"{path}: hu must be finite numbers (dtype {m.dtype})")
        if data.members["spacing_mm"].nbytes > 1024:
            raise VolumeReadError(
                f"{path}: spacing_mm must be 3 numbers, got shape {list(data.members['spacing_mm'].shape)}"
            )
        # the stored array, then its float32 copy
        data.check_memory(m.nbytes + 4 * int(np.prod(m.shape)), f"hu {list(m.shape)} {m.dtype}")
        hu = data.read("hu")
        try:
            spacing = np.asarray(data.read("spacing_mm"), dtype=float).ravel()
        except (TypeError, ValueError):
            raise VolumeReadError(f"{path}: spacing_mm must be 3 numbers (x, y, z) in mm") from None
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3 or 0 in hu.shape or spacing.shape != (3,) or not np.all(spacing > 0):
        raise VolumeReadError(
            f"{path}: expected hu [slices, H, W] and spacing_mm (x, y, z) > 0, got "
            f"hu {hu.shape}, spacing_mm {spacing.tolist()}"
        )
    if not np.issubdtype(hu.dtype, np.number) or not np.all(np.isfinite(hu)):
        raise VolumeReadError(f"{path}: hu must be finite numbers (dtype {hu.dtype})")
    n = hu.shape[0]
    positions = np.zeros((n, 3))
    positions[:, 2] = np.arange(n) * spacing[2]
    return CTVolume(
        hu=hu.astype(np.float32),
        pixel_spacing_mm=(float(spacing[1]), float(spacing[0])),
        slice_spacing_mm=float(spacing[2]) if n > 1 else None,
        positions=positions,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        files=[path] * n,
    )
