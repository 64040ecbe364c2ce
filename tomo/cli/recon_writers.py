"""``tomo reconstruct``'s writers: the ``.npz``, NIfTI and DICOM outputs and the PNG previews.

Each reads the finished chunks of :class:`tomo.cli.recon_partial.PartialRun` and writes
atomically (:mod:`tomo.io.atomic`): a kill leaves no output or the complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tomo.io.outputs import shown

if TYPE_CHECKING:
    from tomo.cli.recon_outputs import Outputs, Setup
    from tomo.cli.recon_partial import PartialRun


def save_preview(
    path: Path,
    hu: np.ndarray,
    reference: np.ndarray | None = None,
    title: str = "",
    scores: tuple[float, float] | None = None,
    window: tuple[float, float] = (-1000.0, 1000.0),
) -> None:
    """PNG of one slice in the ``window`` (default [-1000, 1000] HU), beside the reference when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(hu, title or "reconstruction")]
    if reference is not None:
        label = "reference" if scores is None else f"reference (PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.3f})"
        panels.append((reference, label))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (img, label) in zip(axes[0], panels):
        ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_std_preview(path: Path, hu: np.ndarray, std_hu: np.ndarray, title: str = "") -> None:
    """PNG of one slice's posterior standard deviation (colour bar in HU) beside the image.

    Parameters
    ----------
    path : Path
    hu, std_hu : np.ndarray [H, W]
        The image (posterior mean) and its pixel-wise standard deviation, HU.
    title : str
        Title of the image panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = float(np.percentile(std_hu, 99.5)) or float(std_hu.max()) or 1.0  # a few hot pixels do not set the scale
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.2 + 0.8, 4.6))
    axes[0].imshow(hu, cmap="gray", vmin=-1000, vmax=1000, interpolation="nearest")
    axes[0].set_title(title or "reconstruction (posterior mean)", fontsize=9)
    shown = axes[1].imshow(std_hu, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
    axes[1].set_title(f"posterior standard deviation (median {float(np.median(std_hu)):.1f} HU)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    bar.set_label("HU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(sf) -> str:
    g = sf.geometry
    from operators.geometry import ParallelBeam2D

    beam = "parallel beam" if isinstance(g, ParallelBeam2D) else "fan beam"
    dose = "I0 unknown" if sf.i0 is None else f"I0={sf.i0:.0e}"
    return f"{beam} {g.num_views} views, {dose}"


def hu_shape(source) -> tuple:
    return (source.num_slices, *source.geometry.image_shape) if source.is_volume else tuple(source.geometry.image_shape)


def std_mu_to_hu(std_mu: np.ndarray) -> np.ndarray:
    """Standard deviation of mu [1/mm] -> standard deviation in HU (float32, same shape).

    ``HU = 1000 (mu / mu_water - 1)`` is affine in mu, so a spread scales by the slope
    ``1000 / mu_water`` alone (mu_water = :data:`operators.units.MU_WATER_PER_MM`).
    """
    from operators.units import MU_WATER_PER_MM

    return np.asarray(std_mu, dtype=np.float32) * np.float32(1000.0 / MU_WATER_PER_MM)


def save_npz(path: Path, partial: PartialRun, shape: tuple, meta: dict, overwrite: bool, units: str = "hu") -> None:
    """Stream the chunks into ``path`` atomically: a kill leaves no file or the complete one.

    ``units="mu_per_mm"`` (a sinogram file that is not human CT): the arrays are attenuation in
    1/mm and are written as ``mu_per_mm`` (and ``std_mu_per_mm``) instead of ``hu``/``std_hu``."""
    from tomo.io.atomic import atomic_file
    from tomo.io.npzfile import NpzStreamWriter

    keys = ("hu", "std_hu") if partial.has_std() else ("hu",)
    with atomic_file(path, overwrite=overwrite) as fh, NpzStreamWriter(fh) as writer:
        for key in keys:
            name = key if units == "hu" else key.replace("hu", "mu_per_mm")
            with writer.array(name, shape, np.float32) as put:
                for start in partial.starts():
                    block = partial.read(start, key)
                    put(block if len(shape) == 3 else block[0])
        for key, value in meta.items():
            writer.write(key, np.str_(value) if isinstance(value, str) else value)


def write_previews(outputs: Outputs, partial: PartialRun, source, args, has_std: bool, overwrite: bool) -> list[str]:
    """The middle slice's PNG (beside the reference and its scores) and its std figure."""
    from tomo.evaluation.scores import psnr, ssim
    from tomo.io.atomic import atomic_path

    n, chunk = source.num_slices, partial.manifest["chunk"]
    k = n // 2
    start = (k // chunk) * chunk
    hu = partial.read(start)[k - start]
    title = f"{args.method.upper()} ({describe(source)})" + (f", slice {k}" if n > 1 else "")
    written = []
    if outputs.preview is not None:
        ref = None
        if source.has_reference:
            ((_, _, ref),) = source.iter_slices(k, k + 1, 1)
            ref = ref[0]
        window = (-1000.0, 1000.0)
        if getattr(source, "units", "hu") == "mu_per_mm":  # attenuation: windowed on the data, no HU scores
            ref, window = None, (0.0, max(float(np.percentile(hu, 99.5)), 1e-6))
            title += ", mu [1/mm]"
        with atomic_path(outputs.preview, overwrite=overwrite) as tmp:
            save_preview(
                tmp,
                hu,
                ref,
                title=title,
                scores=None if ref is None else (float(psnr(hu, ref)), float(ssim(hu, ref))),
                window=window,
            )
        written.append(shown(outputs.preview))
    if has_std and outputs.std_preview is not None:
        with atomic_path(outputs.std_preview, overwrite=overwrite) as tmp:
            save_std_preview(tmp, hu, partial.read(start, "std_hu")[k - start], title=title)
        written.append(shown(outputs.std_preview))
    return written


def write_nifti(setup: Setup, overwrite: bool, has_std: bool) -> list[str]:
    from tomo.io.nifti import write_nifti_volume

    p = setup.source.geometry.pixel_spacing_mm
    written = []
    for key, path in (("hu", setup.outputs.main), ("std_hu", setup.outputs.std)):
        if path is not None and (key == "hu" or has_std):
            write_nifti_volume(
                path, setup.partial.volume(key), (p, p), setup.slice_spacing, setup.reference, overwrite=overwrite
            )
            written.append(shown(path))
    return written


def write_dicom(setup: Setup, summary: str, args, has_std: bool) -> list[str]:
    """The image series in ``OUT`` and, with a std, its standard-deviation series in ``OUT_std``."""
    import pydicom
    from pydicom.uid import generate_uid

    from tomo.io.dicom_write import write_series

    p = setup.source.geometry.pixel_spacing_mm
    name = args.method.upper()
    study = (generate_uid(), generate_uid())  # the two series' study when the reference has none (NIfTI)
    common: dict[str, Any] = dict(pixel_spacing_mm=(p, p), overwrite=setup.overwrite, study_uids=study)
    files = write_series(
        setup.partial.volume("hu"),
        setup.outputs.main,
        setup.reference,
        description=f"tomo {name} reconstruction",
        derivation=f"{summary} (tomo reconstruct)",
        window=getattr(args, "window", "reference"),
        **common,
    )
    written = [f"{len(files)} DICOM files to {shown(setup.outputs.main)}"]
    if has_std and setup.outputs.std is not None:
        image = pydicom.dcmread(files[0], stop_before_pixels=True)
        samples = setup.options.get("samples")
        std_files = write_series(
            setup.partial.volume("std_hu"),
            setup.outputs.std,
            setup.reference,
            description=f"tomo {name} posterior std (HU)",
            derivation=(
                f"pixel-wise posterior standard deviation in HU over {samples} samples of the {name} "
                f"reconstruction in series {image.SeriesInstanceUID}; {summary} (tomo reconstruct)"
            ),
            series_number=int(image.SeriesNumber) + 1,  # next to its image series
            window="auto",  # a std map in HU: its own range, not a body window
            hu_step=0.1,
            **common,
        )
        written.append(f"{len(std_files)} DICOM files (posterior std) to {shown(setup.outputs.std)}")
    return written
