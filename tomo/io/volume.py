"""Read a CT volume from any source: :func:`read_volume` picks the reader by path.

Readers live in one module per format (:mod:`tomo.io.dicom_read`, :mod:`tomo.io.npz_volume`,
:mod:`tomo.io.nifti`); each returns a :class:`CTVolume` and refuses bad input with a
:class:`VolumeReadError`. Those shared types live in :mod:`tomo.io.volume_types` (so a reader
never imports this dispatcher back) and are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from .volume_types import CTVolume, VolumeReadError, spacing_pair

__all__ = ["CTVolume", "VolumeReadError", "read_volume", "spacing_pair"]


def read_volume(path: str | os.PathLike, series_uid: str | None = None, *, stack_series: bool = False) -> CTVolume:
    """Read a CT volume from DICOM (folder or file) or an OpenKBP-style ``.npz``.

    Parameters
    ----------
    path : str or Path
        DICOM folder/file, ``.npz`` (see :func:`tomo.io.npz_volume.read_npz_volume`) or
        ``.nii``/``.nii.gz`` (see :func:`tomo.io.nifti.read_nifti_volume`; needs nibabel).
    series_uid : str, optional
        For DICOM input, as in :func:`tomo.io.dicom_read.read_series`.
    stack_series : bool
        For DICOM input: read every series under ``path`` as one scan (series of one slice
        each), as in :func:`tomo.io.dicom_read.read_series`.

    Returns
    -------
    CTVolume
    """
    path = Path(path)
    is_volume_file = path.name.lower().endswith((".nii", ".nii.gz", ".npz"))
    if (series_uid is not None or stack_series) and is_volume_file:
        raise ValueError(f"{path}: series_uid and stack_series apply to DICOM input only")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        from .nifti import read_nifti_volume  # nibabel is optional: import only for NIfTI

        return read_nifti_volume(path)
    if path.suffix.lower() == ".npz":
        from .npz_volume import read_npz_volume

        return read_npz_volume(path)
    from .dicom_read import read_series

    return read_series(path, series_uid, stack_series=stack_series)
