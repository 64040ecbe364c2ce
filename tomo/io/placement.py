"""Where the slices of a sinogram file lie in patient space: its optional placement keys.

``slice_spacing_mm`` (distance between slice planes, mm), ``orientation`` (DICOM
ImageOrientationPatient: LPS direction cosines of a row, then of a column) and ``positions_mm``
(DICOM ImagePositionPatient, LPS mm, of each slice's first pixel centre on the reconstruction
grid). ``tomo simulate`` writes them from a volume with patient geometry, so that ``tomo
reconstruct`` places NIfTI and DICOM output without ``--reference`` (docs/reconstruction.md).
:mod:`tomo.io.sinogram` reads and writes them; this module checks them and turns them into the
reference volume the writers take.
"""

from __future__ import annotations

import math

import numpy as np

from .volume_types import CTVolume

__all__ = ["PLACEMENT_KEYS", "check_placement", "placement_volume"]

#: optional keys placing the slices in patient space (for NIfTI and DICOM output)
PLACEMENT_KEYS = ("slice_spacing_mm", "orientation", "positions_mm")


def check_placement(
    slice_spacing_mm, orientation, positions_mm, num_slices: int
) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """The placement keys checked and normalised: (float mm, float64 [6], float64 [slices, 3]).

    Each may be None (absent); ``orientation`` and ``positions_mm`` go together.

    Raises
    ------
    ValueError
        A spacing that is not a positive distance, cosines that are not two perpendicular unit
        vectors, positions that are not one finite point per slice, or only one of the pair.
    """
    spacing = slice_spacing_mm
    if spacing is not None:
        try:
            spacing = float(np.asarray(spacing).item())
        except (TypeError, ValueError):
            raise ValueError(f"slice_spacing_mm must be a single number of mm, got {slice_spacing_mm!r}") from None
        if not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"slice_spacing_mm must be a finite distance > 0 mm, got {spacing}")
    if (orientation is None) != (positions_mm is None):
        raise ValueError("orientation and positions_mm go together: give both or neither")
    if orientation is None:
        return spacing, None, None
    o = np.asarray(orientation)
    if o.dtype.kind not in "fiu" or o.shape != (6,) or not np.isfinite(o).all():
        raise ValueError(f"orientation must be 6 finite direction cosines, got {o.dtype} shape {o.shape}")
    o = o.astype(np.float64)
    row, col = o[:3], o[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise ValueError(f"orientation {o.tolist()} is not two perpendicular unit vectors")
    pos = np.asarray(positions_mm)
    if pos.dtype.kind not in "fiu" or pos.shape != (num_slices, 3) or not np.isfinite(pos).all():
        raise ValueError(
            f"positions_mm must be finite [{num_slices}, 3] mm (one per slice), got {pos.dtype} {pos.shape}"
        )
    return spacing, o, pos.astype(np.float64)


def placement_volume(
    slice_spacing_mm: float | None,
    orientation: np.ndarray | None,
    positions_mm: np.ndarray | None,
    pixel_spacing_mm: float,
    image_shape,
) -> CTVolume | None:
    """The reference volume of checked placement keys on the reconstruction grid, or None.

    Returns
    -------
    CTVolume or None
        None without ``orientation``/``positions_mm``. Otherwise a volume of the grid's shape
        [slices, rows, cols] holding no data (``hu`` is a read-only broadcast zero), with the
        grid's pixel spacing, the orientation and positions, and ``slice_spacing_mm`` (given, else
        the median plane distance of the positions); no DICOM header.
    """
    if orientation is None or positions_mm is None:
        return None
    positions = np.asarray(positions_mm, dtype=np.float64)
    o = np.asarray(orientation, dtype=np.float64)
    spacing = slice_spacing_mm
    if spacing is None and len(positions) > 1:
        normal = np.cross(o[:3], o[3:])
        spacing = float(np.median(np.abs(np.diff(positions @ normal)))) or None
    p = float(pixel_spacing_mm)
    rows, cols = (int(v) for v in image_shape)
    return CTVolume(
        hu=np.broadcast_to(np.float32(0), (len(positions), rows, cols)),
        pixel_spacing_mm=(p, p),
        slice_spacing_mm=spacing,
        positions=positions,
        orientation=tuple(float(v) for v in o),
    )
