"""The evaluation simulation of ``evaluation.md``: real HU slices -> noisy sinograms, no inverse crime.

Protocol, for a HU slice on its own fine grid (e.g. 512 x 512 DICOM at its pixel spacing ``s``):

1. HU are clipped to ``[-1024, 3071]`` and converted to attenuation
   ``mu = 0.0192 / mm * (1 + HU / 1000)`` (:func:`tomo.evaluation.scores.hu_to_mu`).
2. The field of view is ``FOV = N s`` and the reconstruction grid ``grid x grid``
   (default 256) with pixel ``FOV / grid``. The geometry is defined on that coarse grid
   (:func:`protocol_geometry`):

   - parallel beam: angles ``linspace(0, pi, views, endpoint=False)``, ``1.5 grid`` (384) bins
     one coarse pixel wide;
   - fan beam, flat detector: angles ``linspace(0, 2 pi, views, endpoint=False)``,
     source-to-centre ``2 FOV``, centre-to-detector ``1 FOV``, ``2 grid`` (512) bins of one coarse
     pixel times the magnification (1.5).
3. The slice is projected **on its fine grid** with that detector (the same geometry with the
   fine image grid; ASTRA CPU projector of :class:`operators.CTProjector`), so reconstructing on
   the coarse grid does not commit the inverse crime.
4. Transmission Poisson noise with ``I0`` photons per bin:
   ``y = -log(max(Poisson(I0 exp(-p)), 1) / I0)`` (:class:`operators.PoissonTransmissionNoise`);
   ``i0=None`` keeps the noiseless line integrals.
5. Ground truth: the (clipped) HU slice resized to ``grid x grid`` with anti-aliasing
   (``skimage.transform.resize(..., anti_aliasing=True)``).

Non-square slices are padded symmetrically with air (-1000 HU, mu = 0) to a square of the larger
side, so the FOV is the larger side times the spacing and nothing of the image is cut. Pixels must
be square (row and column spacing within 0.1 %); anisotropic pixels are refused.

Determinism: slice ``k`` of a call draws its noise from a generator seeded with
``seed * 1_000_003 + k``, so results depend only on the seed and the slice's position.

Public API: :data:`CONFIGS` (the standard configurations), :class:`SimulationConfig`,
:func:`protocol_geometry`, :func:`simulate_slice`, :func:`simulate_volume`,
:func:`default_grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from operators.geometry import FanBeam2D, ParallelBeam2D
from operators.units import HU_MAX, HU_MIN, hu_to_mu
from tomo.io.sinogram import SinogramFile

__all__ = [
    "SimulationConfig",
    "CONFIGS",
    "protocol_geometry",
    "default_grid",
    "simulate_slice",
    "simulate_volume",
    "AIR_HU",
]

#: HU used to pad non-square slices (air: mu = 0 exactly)
AIR_HU = -1000.0


@dataclass(frozen=True)
class SimulationConfig:
    """One acquisition setting of the protocol.

    Attributes
    ----------
    geometry : {"parallel", "fanbeam"}
    views : int
        Number of projection angles.
    i0 : float or None
        Photons per detector bin (None: noiseless).
    """

    geometry: str
    views: int
    i0: float | None

    def __post_init__(self):
        if self.geometry not in ("parallel", "fanbeam"):
            raise ValueError(f"geometry must be 'parallel' or 'fanbeam', got {self.geometry!r}")
        if not isinstance(self.views, (int, np.integer)) or self.views < 1:
            raise ValueError(f"views must be a positive integer, got {self.views!r}")
        if self.i0 is not None and not (math.isfinite(self.i0) and self.i0 > 0):
            raise ValueError(f"i0 must be a positive number of photons or None, got {self.i0!r}")

    def describe(self) -> str:
        beam = "parallel beam" if self.geometry == "parallel" else "fan beam"
        noise = "noiseless" if self.i0 is None else f"I0={self.i0:.0e}"
        return f"{beam}, {self.views} views, {noise}"


#: the standard configurations of evaluation.md
CONFIGS: dict[str, SimulationConfig] = {
    "parallel-30": SimulationConfig("parallel", 30, 1e6),
    "parallel-8": SimulationConfig("parallel", 8, 1e6),
    "fanbeam-60": SimulationConfig("fanbeam", 60, 1e5),
}


def default_grid(fine_size: int) -> int:
    """Reconstruction grid for a fine slice of ``fine_size`` pixels: 256 for >= 512, else half."""
    return 256 if fine_size >= 512 else max(1, fine_size // 2)


def protocol_geometry(kind: str, views: int, fov_mm: float, grid: int = 256) -> ParallelBeam2D | FanBeam2D:
    """The protocol's geometry on the ``grid x grid`` reconstruction grid of a square FOV.

    Parameters
    ----------
    kind : {"parallel", "fanbeam"}
    views : int
        Number of angles (``[0, pi)`` parallel, ``[0, 2 pi)`` fan beam, endpoint excluded).
    fov_mm : float
        Side of the square field of view [mm].
    grid : int
        Reconstruction grid size (pixel = ``fov_mm / grid``).

    Returns
    -------
    ParallelBeam2D or FanBeam2D
    """
    if not (fov_mm > 0 and math.isfinite(fov_mm)):
        raise ValueError(f"fov_mm must be a positive length, got {fov_mm!r}")
    if not isinstance(grid, (int, np.integer)) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    pixel = fov_mm / grid
    if kind == "parallel":
        angles = np.linspace(0.0, np.pi, views, endpoint=False)
        return ParallelBeam2D(
            image_shape=(grid, grid),
            pixel_spacing_mm=pixel,
            angles=angles,
            detector_count=(3 * grid) // 2,
            detector_spacing_mm=pixel,
        )
    if kind == "fanbeam":
        angles = np.linspace(0.0, 2.0 * np.pi, views, endpoint=False)
        so, od = 2.0 * fov_mm, 1.0 * fov_mm
        return FanBeam2D(
            image_shape=(grid, grid),
            pixel_spacing_mm=pixel,
            angles=angles,
            detector_count=2 * grid,
            detector_spacing_mm=pixel * (so + od) / so,
            source_origin_mm=so,
            origin_detector_mm=od,
        )
    raise ValueError(f"geometry must be 'parallel' or 'fanbeam', got {kind!r}")


def _square_pixel(pixel_spacing_mm) -> float:
    sp = np.asarray(pixel_spacing_mm, dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, 2)
    if sp.size != 2 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"pixel_spacing_mm must be a positive number or (row, col) pair, got {pixel_spacing_mm!r}")
    if abs(sp[0] - sp[1]) > 1e-3 * sp.max():
        raise ValueError(f"pixels must be square for the protocol, got spacing {tuple(sp)} mm (row, col)")
    return float(sp.mean())


def _pad_square(hu: np.ndarray) -> np.ndarray:
    h, w = hu.shape[-2:]
    n = max(h, w)
    if h == w:
        return hu
    top, left = (n - h) // 2, (n - w) // 2
    pad = [(0, 0)] * (hu.ndim - 2) + [(top, n - h - top), (left, n - w - left)]
    return np.pad(hu, pad, mode="constant", constant_values=AIR_HU)


def _prepare(hu) -> np.ndarray:
    arr = np.asarray(hu)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"hu must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"hu must be [H, W] or [slices, H, W], got shape {arr.shape}")
    if min(arr.shape[-2:]) < 2:
        raise ValueError(f"hu slices must be at least 2 x 2 pixels, got {arr.shape[-2:]}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("hu contains NaN or Inf values")
    return _pad_square(np.clip(arr, HU_MIN, HU_MAX))


def _resize_reference(hu_fine: np.ndarray, grid: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(hu_fine, (grid, grid), anti_aliasing=True, preserve_range=True).astype(np.float32)


def _noise_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(index))


def simulate_volume(
    hu,
    pixel_spacing_mm,
    config: SimulationConfig | str,
    *,
    grid: int | None = None,
    seed: int = 0,
    progress: bool = True,
    description: str | None = None,
) -> SinogramFile:
    """Simulate the protocol for one slice ``[H, W]`` or a stack ``[slices, H, W]`` of HU.

    Parameters
    ----------
    hu : array_like, [H, W] or [slices, H, W]
        HU on the fine grid (clipped to [-1024, 3071]; non-square slices padded with air).
    pixel_spacing_mm : float or (float, float)
        Fine-grid pixel size [mm] (row, col; must be equal).
    config : SimulationConfig or str
        The acquisition, or a key of :data:`CONFIGS`.
    grid : int, optional
        Reconstruction grid size; default :func:`default_grid` of the (padded) fine size.
    seed : int
        Noise seed (see the module docstring).
    progress : bool
        tqdm progress bar over slices.
    description : str, optional
        Provenance text for the file; a summary of the protocol is used by default.

    Returns
    -------
    SinogramFile
        ``sinogram`` float32 [views, det] or [slices, views, det] (line integrals),
        ``geometry`` on the coarse grid, ``i0``, ``hu_reference`` float32 [grid, grid] or
        [slices, grid, grid] (HU), ``description``.
    """
    from operators import CTProjector

    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown configuration {config!r}; choose from {sorted(CONFIGS)}")
        config = CONFIGS[config]
    spacing = _square_pixel(pixel_spacing_mm)
    fine = _prepare(hu)
    single = fine.ndim == 2
    stack = fine[None] if single else fine
    n = stack.shape[-1]
    grid = default_grid(n) if grid is None else int(grid)
    fov = n * spacing
    geometry = protocol_geometry(config.geometry, config.views, fov, grid)
    fine_geometry = replace(geometry, image_shape=(n, n), pixel_spacing_mm=spacing)
    # One ASTRA call per slice: the fine-grid system matrix would be large and used once.
    projector = CTProjector(fine_geometry, backend="astra")
    noise = _noise_model(config.i0)
    sinos, refs = [], []
    for k in tqdm(range(stack.shape[0]), desc="simulate", disable=None if progress else True, leave=False):
        mu = torch.from_numpy(hu_to_mu(stack[k]))
        p = projector(mu)
        if noise is not None:
            p = noise.sample(p, generator=_noise_generator(seed, k))
        sinos.append(p.numpy().astype(np.float32))
        refs.append(_resize_reference(stack[k], grid))
    sino, ref = np.stack(sinos), np.stack(refs)
    if single:
        sino, ref = sino[0], ref[0]
    if description is None:
        description = (
            f"tomo simulate: {config.describe()}; fine grid {n}x{n} at {spacing:.4g} mm projected "
            f"onto the {grid}x{grid} protocol detector (FOV {fov:.4g} mm); seed {seed}"
        )
    return SinogramFile(sino, geometry, i0=config.i0, hu_reference=ref, description=description)


def simulate_slice(hu, pixel_spacing_mm, config: SimulationConfig | str, **kwargs) -> SinogramFile:
    """:func:`simulate_volume` for one ``[H, W]`` slice (same parameters)."""
    if np.ndim(hu) != 2:
        raise ValueError(f"simulate_slice expects one [H, W] slice, got shape {np.shape(hu)}")
    return simulate_volume(hu, pixel_spacing_mm, config, **kwargs)


def _noise_model(i0: float | None):
    if i0 is None:
        return None
    from operators import PoissonTransmissionNoise

    return PoissonTransmissionNoise(i0)
