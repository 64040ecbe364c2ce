"""``tomo reconstruct``'s command line: the method options of the registry as flags.

Every option a registered method declares (:mod:`tomo.methods.registry`) becomes one flag; a flag
shared by several methods must be declared the same way by each. :func:`chosen_options` turns the
parsed flags back into the chosen method's keywords and refuses flags of other methods.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tomo.cli.main import CommandError


def method_options():
    """All registered methods, and each distinct option flag with the methods that use it."""
    from tomo.methods.registry import available_methods

    methods = available_methods()
    flags: dict[str, tuple] = {}
    for name, entry in methods.items():
        for opt in entry.options:
            if opt.flag in flags:
                known, users = flags[opt.flag]
                if (known.dest, known.type, known.choices) != (opt.dest, opt.type, opt.choices):
                    raise RuntimeError(f"method {name!r} declares {opt.flag} differently from {users[0]!r}")
                users.append(name)
            else:
                flags[opt.flag] = (opt, [name])
    return methods, flags


def arg_dest(flag: str) -> str:
    return "opt_" + flag.lstrip("-").replace("-", "_")


def add_parser(subparsers, help_line: str, methods: dict, flags: dict) -> argparse.ArgumentParser:
    """Add the ``reconstruct`` parser with every flag (``func`` is set by the caller)."""
    listing = "; ".join(f"{n}: {m.help}" for n, m in methods.items())
    parser = subparsers.add_parser(
        "reconstruct",
        help=help_line,
        description="Reconstruct a sinogram exchange file (.npz, evaluation.md) on its grid and write HU: "
        "OUT.npz ('hu' float32 [H, W] or [slices, H, W]) with a PNG preview OUT.png beside it, "
        "a NIfTI volume OUT.nii[.gz], or a derived DICOM series in the folder OUT with --reference. "
        "With --samples N >= 2 (dds, dps) the posterior standard deviation in HU is written too "
        "('std_hu', OUT_std.nii[.gz], the DICOM series OUT_std, OUT_std.png). "
        "Under torchrun the slices are shared among the processes (docs/cluster.md).",
        epilog=f"Methods: {listing}. Example: tomo reconstruct scan.npz --method tv --out rec.npz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE.npz", help="sinogram exchange file")
    parser.add_argument("--method", default="fbp", choices=sorted(methods), help="reconstruction method (default fbp)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help="OUT.npz (plus OUT.png), OUT.nii or OUT.nii.gz, or a folder for a DICOM series (with --reference)",
    )
    group = parser.add_argument_group("method options (each applies only to the methods named)")
    for flag, (opt, users) in flags.items():
        kwargs = dict(
            type=opt.type,
            default=None,
            dest=arg_dest(flag),
            metavar=flag.lstrip("-").upper().replace("-", "_"),
            help=f"{opt.help} [{', '.join(users)}]",
        )
        if opt.choices:
            kwargs["choices"] = opt.choices
        group.add_argument(flag, **kwargs)
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="slices reconstructed together (bounds memory; default per method)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda (under torchrun: each process its LOCAL_RANK's GPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads of the network, the projector and FBP (default 0: torch's choice, one per "
        "core; 1 is fastest on a busy 2-core machine)",
    )
    parser.add_argument(
        "--reference",
        "--dicom-reference",
        type=Path,
        metavar="VOLUME",
        dest="dicom_reference",
        help="the volume the sinogram was simulated from (DICOM series or file, or NIfTI): with "
        "--out DIR a DICOM series is written into the folder DIR, deriving patient/study/"
        "positions from it; with --out OUT.nii[.gz] its position and orientation are kept (without "
        "it, those tomo simulate recorded in the sinogram file)",
    )
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID in --reference, if it holds several")
    parser.add_argument(
        "--window",
        type=window_arg,
        default="reference",
        metavar="NAME|CENTRE,WIDTH",
        help="display window (WindowCenter/WindowWidth) of a DICOM series written: 'reference' (default: "
        "--reference's window, else soft tissue), 'soft-tissue' (40,400 HU), 'lung' (-600,1500), 'bone' "
        "(400,1800), 'brain' (40,80), or CENTRE,WIDTH in HU; a std series gets its own range",
    )
    parser.add_argument(
        "--stack-series",
        action="store_true",
        help="read every series in --reference as one scan (series of one slice each, as tomo simulate "
        "--stack-series read them)",
    )
    parser.add_argument(
        "--slice-spacing",
        type=float,
        metavar="MM",
        help="NIfTI output: distance between slices in mm (default: --reference's, else the one the "
        "sinogram file records, as tomo simulate writes it)",
    )
    parser.add_argument("--no-preview", action="store_true", help="do not write the PNG previews")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (and discard an earlier run's partial results)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run from its partial results (OUT.partial), skipping the slices already reconstructed",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no information lines")
    return parser


def window_arg(value: str) -> str | tuple[float, float]:
    """``--window``: a preset name or ``CENTRE,WIDTH`` in HU (checked by :func:`tomo.io.dicom_write.window_values`)."""
    from tomo.io.dicom_write import window_values

    text = value.strip().lower()
    window: str | tuple[float, float] = text
    if "," in text:
        try:
            centre, width = (float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"CENTRE,WIDTH must be two numbers in HU, got {value!r}") from None
        window = (centre, width)
    try:
        window_values(window, None, hu=[0.0])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return window


def chosen_options(args, entry, flags) -> dict:
    """Options the user gave, as the method's keywords; refuse flags of other methods."""
    options = {}
    allowed = {o.flag for o in entry.options}
    for flag, (opt, users) in flags.items():
        value = getattr(args, arg_dest(flag))
        if value is None:
            continue
        if flag not in allowed:
            raise CommandError(f"{flag} does not apply to --method {entry.name} (it is for {', '.join(users)})")
        options[opt.dest] = value
    return options
