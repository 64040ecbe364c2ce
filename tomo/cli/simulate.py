"""``tomo simulate SOURCE --out FILE.npz``: a sinogram file from CT slices or a phantom.

Follows the evaluation protocol (``docs/evaluation.md``, :mod:`tomo.evaluation.simulation`):
the slice is projected on its own fine grid with the detector of the coarser reconstruction grid,
transmission Poisson noise is added at ``--i0`` photons per bin, and the anti-aliased ground
truth on the reconstruction grid is stored as ``hu_reference`` for scoring.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tomo.cli.main import CommandError
from tomo.cli.progress import library_bars
from tomo.io.resources import check_memory

#: built-in phantoms usable as SOURCE
PHANTOMS = ("shepp-logan",)


#: one-line summary shown by ``tomo --help``
HELP = "simulate a (noisy) sinogram file from CT slices or a phantom"


def register(subparsers) -> None:
    from tomo.evaluation.simulation import CONFIGS

    configs = ", ".join(f"{k} ({c.describe()})" for k, c in CONFIGS.items())
    parser = subparsers.add_parser(
        "simulate",
        help=HELP,
        description="Simulate a sinogram exchange file (.npz, see evaluation.md) following the evaluation "
        "protocol: HU -> attenuation (0.0192/mm water), projection on the slice's own fine grid "
        "with the detector of the reconstruction grid (no inverse crime), transmission Poisson "
        "noise, and the anti-aliased ground truth on the reconstruction grid as hu_reference.",
        epilog=f"Standard configurations (--config): {configs}. Example: tomo simulate series/ --config "
        "parallel-30 --slices 40:44 --out scan.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="DICOM series folder or file, an .npz HU volume (OpenKBP: 'hu' [slices, H, W] "
        f"and 'spacing_mm'), or a phantom name: {', '.join(PHANTOMS)}",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="sinogram file to write")
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        help="a standard configuration (geometry, views, I0); --i0 may override its dose",
    )
    parser.add_argument(
        "--geometry",
        choices=("parallel", "fanbeam"),
        help="parallel beam over [0, pi) or flat-detector fan beam over [0, 2 pi)",
    )
    parser.add_argument("--views", type=int, metavar="N", help="number of projection angles")
    parser.add_argument(
        "--i0",
        type=float,
        metavar="PHOTONS",
        help="photons per detector bin for Poisson noise (default: the --config's, else noiseless line integrals)",
    )
    parser.add_argument(
        "--slices",
        default="all",
        metavar="SPEC",
        help="slices of a volume: 'all' (default), an index '12', a list '3,7,9' or a "
        "range 'START:STOP[:STEP]' (0-based, STOP excluded)",
    )
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID when SOURCE holds several series")
    parser.add_argument(
        "--stack-series",
        action="store_true",
        help="read every series in SOURCE as one scan (exports that store each slice as a series of its "
        "own; they must share frame of reference, orientation, size and pixel spacing)",
    )
    parser.add_argument(
        "--grid",
        type=int,
        metavar="N",
        help="reconstruction grid N x N (default 256 for slices of 512 px or more, else half "
        "the slice size); pixel = field of view / N",
    )
    parser.add_argument(
        "--phantom-size",
        type=int,
        default=None,
        metavar="PX",
        help="phantom fine-grid size in pixels (default 2 x grid, i.e. 512)",
    )
    parser.add_argument(
        "--phantom-fov", type=float, default=256.0, metavar="MM", help="phantom field of view in mm (default 256)"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0); slice k uses its own stream")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no information lines")
    parser.set_defaults(func=run)


def parse_slices(spec: str, count: int) -> list[int]:
    """Indices selected by ``spec`` ('all', '5', '1,4,6', '10:20', '10:20:2') among ``count`` slices."""
    spec = spec.strip()
    if spec == "all":
        return list(range(count))
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3 or (len(parts) == 3 and parts[2] == 0):
                raise ValueError
            idx = list(range(count))[slice(*parts)]
        else:
            idx = [int(p) for p in spec.split(",")]
    except ValueError:
        raise CommandError(f"--slices {spec!r} is not 'all', an index, a comma list or START:STOP[:STEP]") from None
    bad = [i for i in idx if not 0 <= i < count]
    if bad:
        raise CommandError(f"--slices {spec!r}: index {bad[0]} outside the {count} slices (0..{count - 1})")
    if not idx:
        raise CommandError(f"--slices {spec!r} selects no slice of the {count}")
    return idx


def _config(args):
    from tomo.evaluation.simulation import CONFIGS, SimulationConfig

    if args.config is not None:
        if args.geometry is not None or args.views is not None:
            raise CommandError("use either --config or --geometry/--views, not both")
        base = CONFIGS[args.config]
        i0 = base.i0 if args.i0 is None else args.i0
        return SimulationConfig(base.geometry, base.views, i0)
    if args.geometry is None or args.views is None:
        raise CommandError("give --config NAME, or both --geometry and --views")
    if args.views < 1:
        raise CommandError(f"--views must be >= 1, got {args.views}")
    if args.i0 is not None and not args.i0 > 0:
        raise CommandError(f"--i0 must be a positive number of photons, got {args.i0}")
    return SimulationConfig(args.geometry, args.views, args.i0)


def _load_source(args) -> tuple[np.ndarray, float, str, tuple | None]:
    """HU ``[slices, H, W]``, pixel spacing (mm), a provenance string and (volume, slice indices)."""
    from operators.units import mu_to_hu

    if args.source in PHANTOMS:
        from operators import shepp_logan

        size = args.phantom_size or 2 * (args.grid or 256)
        if size < 4 or not args.phantom_fov > 0:
            raise CommandError("--phantom-size must be >= 4 and --phantom-fov > 0")
        check_memory(_PHANTOM_COPIES * 4 * size * size, f"a {size} x {size} phantom", "use a smaller --phantom-size")
        spacing = args.phantom_fov / size
        hu = mu_to_hu(shepp_logan((size, size), spacing).numpy())[None]
        return hu, spacing, f"phantom {args.source} {size}x{size} at {spacing:.4g} mm", None
    path = Path(args.source)
    if not path.exists():
        raise FileNotFoundError(f"SOURCE {path} is neither a file/folder nor a phantom ({', '.join(PHANTOMS)})")
    from tomo.io.dicom_read import SeveralSeriesError
    from tomo.io.volume import read_volume

    try:
        vol = read_volume(path, series_uid=args.series, stack_series=args.stack_series)
    except SeveralSeriesError as exc:  # name the command's options, not the Python arguments
        raise CommandError(exc.message("--series UID", "--stack-series")) from None
    rows, cols = vol.pixel_spacing_mm
    if abs(rows - cols) > 1e-3 * max(rows, cols):
        raise CommandError(f"{path}: pixels are not square ({rows} x {cols} mm); the protocol needs square pixels")
    idx = parse_slices(args.slices, vol.hu.shape[0])
    what = f"{path} slices {args.slices}" if args.slices != "all" else f"{path} ({len(idx)} slices)"
    return vol.hu[idx], float(rows), what, (vol, idx)


def record_placement(sf, volume, indices: list[int]) -> None:
    """Record where the simulated slices lie in patient space in the sinogram file ``sf``.

    Sets ``sf.orientation`` (the volume's), ``sf.positions_mm`` (the first pixel centre of each
    slice on the reconstruction grid, LPS mm) and ``sf.slice_spacing_mm`` (the plane distance of
    the selected slices; the volume's for one slice), so that ``tomo reconstruct`` writes NIfTI
    or DICOM in place with no ``--reference`` (docs/reconstruction.md, "Sinogram file").

    The reconstruction grid covers the slice padded with air to a square (symmetrically, as
    :func:`tomo.evaluation.simulation.simulate_volume` pads it) and shares its centre.
    """
    o = np.asarray(volume.orientation, dtype=float)
    row_dir, col_dir = o[:3], o[3:]
    h, w = volume.hu.shape[1:]
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    ps_row, ps_col = volume.pixel_spacing_mm
    positions = np.asarray(volume.positions, dtype=float)[indices]
    # centre of the padded square: (n - 1) / 2 pixels from its first pixel, which lies
    # ``top`` rows and ``left`` columns before the slice's first pixel
    centre = positions + ((n - 1) / 2 - left) * ps_col * row_dir + ((n - 1) / 2 - top) * ps_row * col_dir
    g = sf.geometry
    rows, cols = g.image_shape
    p = g.pixel_spacing_mm
    sf.orientation = o
    sf.positions_mm = centre - (cols - 1) / 2 * p * row_dir - (rows - 1) / 2 * p * col_dir
    spacing = volume.slice_spacing_mm
    if len(indices) > 1:
        steps = np.abs(np.diff(positions @ volume.normal))
        spacing = float(np.median(steps)) if np.median(steps) > 0 else None
    sf.slice_spacing_mm = spacing


#: float32/float64 copies of a phantom while it is made and converted
_PHANTOM_COPIES = 6


def simulation_memory(shape: tuple[int, int, int], config, grid: int | None) -> int:
    """Bytes :func:`tomo.evaluation.simulation.simulate_volume` needs for HU slices of ``shape``.

    Parameters
    ----------
    shape : (slices, H, W)
    config : SimulationConfig
    grid : int or None
        Reconstruction grid (None: the protocol's default for the padded slice size).

    Returns
    -------
    int
        A clipped float32 copy of the input, the sinograms and references (kept per slice, then
        stacked: twice), and one slice's fine-grid work (padded image, attenuation, projection).
    """
    from tomo.evaluation.simulation import default_grid

    s, h, w = shape
    n = max(h, w)
    g = default_grid(n) if grid is None else grid
    detectors = 2 * g if config.geometry == "fanbeam" else (3 * g) // 2
    outputs = 4 * s * (config.views * detectors + g * g)
    return 4 * s * n * n + 2 * outputs + 8 * 8 * n * n


def _check_simulation_memory(shape, config, grid) -> None:
    s, h, w = shape
    check_memory(
        simulation_memory(shape, config, grid),
        f"simulating {s} slice{'s' if s > 1 else ''} of {h} x {w} ({config.describe()})",
        "select fewer slices with --slices",
    )


def run(args: argparse.Namespace) -> int:
    from tomo.evaluation.simulation import simulate_volume
    from tomo.io.outputs import OutputPlan
    from tomo.io.sinogram import save_sinogram

    out: Path = args.out
    if out.suffix != ".npz":
        raise CommandError(f"--out must end in .npz, got {out}")
    plan = OutputPlan([args.source], overwrite=args.overwrite)
    plan.file(out, "sinogram file")
    plan.claim()  # locked and checked against the input before any work (tomo.io.outputs)
    if args.grid is not None and args.grid < 2:
        raise CommandError(f"--grid must be >= 2, got {args.grid}")
    config = _config(args)
    hu, spacing, what, located = _load_source(args)
    _check_simulation_memory(hu.shape, config, args.grid)
    single = hu.shape[0] == 1
    sf = simulate_volume(
        hu[0] if single else hu,
        spacing,
        config,
        grid=args.grid,
        seed=args.seed,
        progress=library_bars(args),
        description=None,
    )
    sf.description = f"tomo simulate {what}: {sf.description}"
    if located is not None:
        record_placement(sf, *located)
    save_sinogram(out, sf, overwrite=args.overwrite)
    g = sf.geometry
    print(
        f"wrote {out}: sinogram {'x'.join(map(str, sf.sinogram.shape))} ({config.describe()}), "
        f"grid {g.image_shape[0]}x{g.image_shape[1]} at {g.pixel_spacing_mm:.4g} mm, hu_reference included"
    )
    return 0
