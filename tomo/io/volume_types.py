"""The types every volume reader shares: :class:`CTVolume`, :class:`VolumeReadError` and
:func:`spacing_pair`.

They live apart from :mod:`tomo.io.volume` (the dispatcher that imports every reader) so that a
reader imports them without importing the dispatcher back: no import circle in :mod:`tomo.io`.
:mod:`tomo.io.volume` re-exports them, so ``from tomo.io.volume import CTVolume`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["CTVolume", "VolumeReadError", "spacing_pair"]


class VolumeReadError(ValueError):
    """A file or folder that cannot be read as a CT volume; the message says why."""


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units with its patient geometry.

    Attributes
    ----------
    hu : numpy.ndarray
        float32 [slices, rows, cols], HU.
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing), mm.
    slice_spacing_mm : float or None
        Median plane distance along the slice normal, mm; None for a single slice.
    positions : numpy.ndarray
        float64 [slices, 3], ImagePositionPatient (centre of the first pixel) of each slice, mm.
    orientation : tuple of float
        ImageOrientationPatient: row direction cosines then column direction cosines.
    gantry_tilt_deg : float
        Gantry tilt, degrees (0 when none).
    irregular_spacing : bool
        True when the slice planes are unevenly spaced (see ``positions`` for the truth).
    warnings : list of str
    header : pydicom.Dataset or None
        Header (no pixel data) of the first slice; a writer copies patient/study modules
        from it. None for volumes not read from DICOM.
    series_uid, study_uid : str or None
    transfer_syntaxes : list of str
    files : list of Path
        Source file of each slice (repeats for multi-frame files).
    """

    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float | None
    positions: np.ndarray
    orientation: tuple[float, ...]
    gantry_tilt_deg: float = 0.0
    irregular_spacing: bool = False
    warnings: list[str] = field(default_factory=list)
    header: Dataset | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    transfer_syntaxes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row cosines x column cosines)."""
        o = np.asarray(self.orientation, dtype=float)
        n = np.cross(o[:3], o[3:])
        return n / np.linalg.norm(n)


def spacing_pair(value: object, name: str) -> tuple[float, float]:
    """One or two positive pixel sizes in mm as ``(row, col)``; ``ValueError`` naming ``name`` otherwise."""
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be one or two positive mm values (row, col), got {value!r}")
    return float(arr[0]), float(arr[1])
