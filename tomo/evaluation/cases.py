"""The evaluation cases: which real CT slices are evaluated, and their simulated scans.

* :func:`load_dev_slices` -- every file of ``dev/dicom`` under the shared data root (18 slices:
  3 patients x axial/coronal/sagittal x 2 studies), the held-out set the project reports on.
* :func:`load_dev_axial_slices` -- the axial slices of all five dev patients (the 6 axial
  ``dev/dicom`` files and :data:`NATIVE_SLICES` of each ``dev/ct-native`` volume);
  :func:`load_dev_reformats` -- the 12 coronal and sagittal ``dev/dicom`` files, reported apart.
* :func:`load_train_slices` / :func:`read_slices` -- train/ slices for tuning (never dev/);
  :func:`load_ct_tune_slices` -- :data:`CT_TUNE_SLICES`, train/ slices the shipped prior never saw.
* :func:`build_cases` -- the protocol simulation of :mod:`tomo.evaluation.simulation` of each
  slice for one standard configuration (noise seed ``seed + index``), with a shared
  :class:`~tomo.methods.ReconProblem` per case so a geometry's projector is built once.
* :func:`task_reference` -- the reference image of the image-restoration tasks.

Loaders take the data root (the folder holding ``dev/`` and ``train/``) and raise
:class:`FileNotFoundError` when it lacks the slices, so tests can skip without the data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from tomo.io.sinogram import SinogramFile
from tomo.methods.registry import ReconProblem

from .simulation import simulate_volume

__all__ = [
    "Slice",
    "Case",
    "DEFAULT_DATA_ROOT",
    "DEV_DICOM",
    "TV_TUNE_SLICES",
    "DIFFUSION_TUNE_SLICES",
    "CT_TUNE_SLICES",
    "load_ct_tune_slices",
    "load_dev_slices",
    "load_dev_axial_slices",
    "load_dev_reformats",
    "DEV_NATIVE",
    "NATIVE_SLICES",
    "load_train_slices",
    "read_slices",
    "build_cases",
    "build_operators",
    "task_reference",
]

#: the shared data folder next to the repository (``../shared/data``)
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
#: the evaluation slices, relative to the data root
DEV_DICOM = "dev/dicom"
#: the two native-grid dev volumes (32 contiguous axial slices each), relative to the data root
DEV_NATIVE = "dev/ct-native"
#: slices of each dev/ct-native volume in the axial evaluation set: two per patient, a quarter and
#: three quarters into the block, fixed before any result was seen
NATIVE_SLICES = (8, 24)

#: train/dicom slices for tuning the classical methods: (path under train/dicom, slice index or
#: None = first file of the folder). One per patient (8 of the 9; A072894 left out), mixing axial,
#: coronal and sagittal reformats and the two non-COVID series, chosen before seeing any result.
TV_TUNE_SLICES = (
    ("covid-ny-sbu-A002304/axial/19001231-076.dcm", 0),
    ("covid-ny-sbu-A027284/coronal/19000925-058.dcm", 0),
    ("covid-ny-sbu-A048383/sagittal/19001231-065.dcm", 0),
    ("covid-ny-sbu-A058062/axial", None),
    ("covid-ny-sbu-A062055/coronal", None),
    ("covid-ny-sbu-A098752/sagittal", None),
    ("thorax-philips-01", 70),
    ("lung-pet-ct-dx-a0002", 15),
)

#: train/ slices for tuning the diffusion solvers and the image tasks (relative to the data root):
#: 2 axial, 1 coronal, 1 sagittal from 4 different patients; never dev/.
DIFFUSION_TUNE_SLICES = (
    "train/dicom/covid-ny-sbu-A002304/axial/19001231-076.dcm",
    "train/dicom/covid-ny-sbu-A058062/axial/19001231-084.dcm",
    "train/dicom/covid-ny-sbu-A062055/coronal/19001228-41.dcm",
    "train/dicom/covid-ny-sbu-A027284/sagittal/19001231-081.dcm",
)

#: (file under train/ct-1.5mm, slice index): chest, abdomen, lung, kidney of 4 patients from 4
#: scanners. Still train/ data, but the shipped prior was trained on train/dicom only, so these are
#: unseen by it, closer to what dev/ asks of it than :data:`DIFFUSION_TUNE_SLICES` (which it saw)
CT_TUNE_SLICES = (
    ("COVID-CT-MD_normal002.npz", 40),
    ("CPTAC-PDA_C3L-00189.npz", 17),
    ("Lung-Fused-CT-Pathology_LungFCP-01-0001.npz", 16),
    ("C4KC-KiTS_KiTS-00072.npz", 4),
)


class Slice(NamedTuple):
    """One real CT slice: ``name``, ``hu`` float32 [H, W] (HU), ``pixel_spacing_mm`` (row, col) mm."""

    name: str
    hu: np.ndarray
    pixel_spacing_mm: tuple


@dataclass
class Case:
    """One simulated slice of one configuration.

    Attributes
    ----------
    name : str
        The slice's name (path relative to its set).
    config : str
        Standard configuration (key of :data:`tomo.evaluation.simulation.CONFIGS`).
    index : int
        Position of the slice in its set (its noise seed offset; the diffusion solvers' seed).
    data : SinogramFile
        Sinogram [views, detectors], geometry on the reconstruction grid, ``i0`` and
        ``hu_reference`` [grid, grid] (HU).
    problem : ReconProblem
        Geometry, device and dose for the registry's methods; caches the projector.
    """

    name: str
    config: str
    index: int
    data: SinogramFile
    problem: ReconProblem

    @property
    def geometry(self):
        return self.data.geometry


def _read(path: Path, index: int, name: str) -> Slice:
    from tomo.io.volume import read_volume

    vol = read_volume(path)
    return Slice(name, vol.hu[index], vol.pixel_spacing_mm)


def load_dev_slices(data_root: str | Path = DEFAULT_DATA_ROOT, limit: int | None = None) -> list[Slice]:
    """Every ``dev/dicom`` file (first slice of each) sorted by path, named by its path under dev/dicom.

    Parameters
    ----------
    data_root : str or Path
        Shared data folder (holds ``dev/dicom``).
    limit : int, optional
        Only the first ``limit`` slices (reports must use all).
    """
    root = Path(data_root) / DEV_DICOM
    files = sorted(root.rglob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no DICOM files under {root}; pass the shared data folder (--data)")
    return [_read(f, 0, str(f.relative_to(root))) for f in files[: limit or None]]


def load_dev_axial_slices(data_root: str | Path = DEFAULT_DATA_ROOT, native_slices=NATIVE_SLICES) -> list[Slice]:
    """The axial dev slices of all five dev patients: the ``axial`` files of ``dev/dicom`` (3 patients x
    2 studies) and slices ``native_slices`` of each ``dev/ct-native`` volume (2 patients), named
    ``dev/dicom/...`` and ``dev/ct-native/FILE[index]``."""
    root = Path(data_root)
    dicom = [s for s in load_dev_slices(root) if "/axial/" in f"/{s.name}"]
    volumes = sorted((root / DEV_NATIVE).glob("*.npz"))
    if not volumes:
        raise FileNotFoundError(f"no .npz volumes under {root / DEV_NATIVE}; pass the shared data folder (--data)")
    native = [_read(f, k, f"{DEV_NATIVE}/{f.name}[{k}]") for f in volumes for k in native_slices]
    return [s._replace(name=f"{DEV_DICOM}/{s.name}") for s in dicom] + native


def load_dev_reformats(data_root: str | Path = DEFAULT_DATA_ROOT) -> list[Slice]:
    """The coronal and sagittal reformats of ``dev/dicom`` (12 slices), reported apart from the axial ones."""
    return [
        s._replace(name=f"{DEV_DICOM}/{s.name}")
        for s in load_dev_slices(data_root)
        if "/coronal/" in f"/{s.name}" or "/sagittal/" in f"/{s.name}"
    ]


def load_train_slices(data_root: str | Path = DEFAULT_DATA_ROOT, entries=TV_TUNE_SLICES) -> list[Slice]:
    """train/dicom slices ``(path under train/dicom, index or None)``, named ``"path[index]"``.

    A folder with index None stands for its first file (one file per study).
    """
    root = Path(data_root) / "train" / "dicom"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found; pass the shared data folder (--data)")
    out = []
    for rel, index in entries:
        path = root / rel
        if path.is_dir() and index is None:
            path = sorted(path.glob("*.dcm"))[0]
        k = 0 if index is None else index
        out.append(_read(path, k, f"{rel}[{k}]"))
    return out


def load_ct_tune_slices(
    data_root: str | Path = DEFAULT_DATA_ROOT, entries=CT_TUNE_SLICES, upsample: int = 1
) -> list[Slice]:
    """train/ct-1.5mm slices ``(file, slice index)``, named ``"file[index]"``.

    ``upsample`` > 1 interpolates each slice linearly onto a grid that many times finer (pixel
    spacing divided by it), e.g. 2 for the CT protocol, whose simulation projects on a grid finer
    than the 256 x 256 reconstruction grid (no inverse crime), as for the 512 x 512 DICOM of dev/.
    """
    from skimage.transform import rescale

    root = Path(data_root) / "train" / "ct-1.5mm"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found; pass the shared data folder (--data)")
    out = []
    for name, index in entries:
        with np.load(root / name) as z:
            hu, spacing = z["hu"][index].astype(np.float32), float(z["spacing_mm"][0])
        if upsample > 1:
            hu = rescale(hu, upsample, order=1, mode="edge", preserve_range=True, anti_aliasing=False)
        out.append(Slice(f"{name}[{index}]", hu.astype(np.float32), (spacing / upsample, spacing / upsample)))
    return out


def read_slices(data_root: str | Path = DEFAULT_DATA_ROOT, paths=DIFFUSION_TUNE_SLICES) -> list[Slice]:
    """The first slice of each file ``paths`` (relative to the data root, train/ only), named by path."""
    out = []
    for rel in paths:
        if not rel.startswith("train/"):
            raise ValueError(f"tuning must use train/ slices only, got {rel}")
        path = Path(data_root) / rel
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; pass the shared data folder (--data)")
        out.append(_read(path, 0, rel))
    return out


def build_cases(slices, config: str, seed: int = 0, device: str = "cpu", progress: bool = False) -> list[Case]:
    """Simulate each slice for one configuration; slice ``k`` uses noise seed ``seed + k``.

    Parameters
    ----------
    slices : sequence of Slice or (name, hu [H, W], pixel spacing) tuples
    config : str
        A standard configuration (``parallel-30``, ``parallel-8``, ``fanbeam-60``).
    seed : int
        Noise seed of the first slice.
    device : str
        Where the methods compute.
    progress : bool
        Let the methods show progress bars.
    """
    cases = []
    for k, (name, hu, spacing) in enumerate(slices):
        sf = simulate_volume(hu, spacing, config, seed=seed + k, progress=False)
        problem = ReconProblem(sf.geometry, torch.device(device), sf.i0, progress)
        cases.append(Case(name, config, k, sf, problem))
    return cases


def build_operators(cases: list[Case]) -> list[float]:
    """Build (and cache) each case's projector, so that method timings exclude it; seconds per case."""
    seconds = []
    for case in cases:
        t0 = time.perf_counter()
        case.problem.operator(torch.zeros(case.geometry.image_shape, device=case.problem.device))
        seconds.append(time.perf_counter() - t0)
    return seconds


def task_reference(hu: np.ndarray, size: int = 256, multiple: int = 4) -> np.ndarray:
    """Reference of the image tasks: HU clipped to [-1024, 3071], resized (anti-aliased) so that the
    longer side is ``size`` pixels and both sides divide by ``multiple``; float32 [h, w] (HU)."""
    from operators.units import HU_MAX, HU_MIN
    from tomo.methods.image_tasks import resize_to_task_grid

    return resize_to_task_grid(np.clip(hu, HU_MIN, HU_MAX).astype(np.float32), size, multiple)
