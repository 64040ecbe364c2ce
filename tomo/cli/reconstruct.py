"""``tomo reconstruct FILE.npz --method M --out OUT``: reconstruct a sinogram file to HU.

Methods and their options come from the registry :func:`tomo.methods.default_registry` (see
:mod:`tomo.methods.registry` for how another package adds a method, e.g. ``dps``/``dds`` with
``--steps``, ``--prior``, ``--seed``): every registered option becomes a flag here, and a flag
that does not belong to the chosen method is refused.

Outputs, chosen by ``--out``:

* ``OUT.npz``: ``hu`` float32 [H, W] or [slices, H, W] (HU) and a PNG preview ``OUT.png``
  beside it (window [-1000, 1000] HU; side by side with ``hu_reference`` and the PSNR/SSIM when
  the file has one);
* ``OUT.nii`` / ``OUT.nii.gz``: a NIfTI volume (:func:`tomo.io.nifti.write_nifti_volume`) on the
  reconstruction grid, placed and oriented like ``--reference`` when given, and the same preview;
* a folder ``OUT`` with ``--reference`` (alias ``--dicom-reference``): a derived DICOM series.

Posterior uncertainty: a sampling method run with ``--samples N`` (N >= 2) also gives the
pixel-wise posterior standard deviation in HU (``1000 / mu_water`` times the std of mu, mu_water =
0.0192 /mm, since HU is affine in mu): the key ``std_hu`` in the ``.npz``, ``OUT_std.nii[.gz]`` beside a NIfTI, a
second DICOM series in ``OUT_std`` (same study and geometry), and the figure ``OUT_std.png``.

Long series: the input is streamed, one chunk of ``--batch-size`` slices at a time; each finished
chunk is saved (atomically) in the partial-results folder ``OUT.partial`` beside the output, and
the output is assembled from it by streaming and renamed into place at the end. Memory is bounded
by one chunk, checked before starting (:func:`estimate_memory`). A killed run leaves no output
(or the complete one) and its partial results; ``--resume`` continues it without redoing the
finished chunks.

Several processes (``torchrun``, docs/cluster.md): when ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` are set, rank 0 checks the request and prepares
``OUT.partial``, every rank reconstructs its share of the chunks into it, and rank 0 writes the
output, the same bytes of image as a single process writes (each chunk is reconstructed alone,
its seed included). Only rank 0 prints.

Where things live: this module registers the command and runs it (rank 0 prepares, every rank
reconstructs its chunks, rank 0 finishes); :mod:`tomo.cli.recon_args` the flags,
:mod:`tomo.cli.recon_outputs` the output plan and reference, :mod:`tomo.cli.recon_memory` the
memory check, :mod:`tomo.cli.recon_partial` the resumable ``OUT.partial``,
:mod:`tomo.cli.recon_ranks` the ``torchrun`` ranks, :mod:`tomo.cli.recon_writers` the writers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tomo.cli.main import CommandError
from tomo.cli.progress import library_bars
from tomo.cli.recon_args import add_parser, chosen_options, method_options
from tomo.cli.recon_memory import check_memory, estimate_memory
from tomo.cli.recon_outputs import Outputs, Setup, nifti_slice_spacing, output_plan, plan_outputs, read_reference
from tomo.cli.recon_partial import PartialRun, partial_folder
from tomo.cli.recon_ranks import DIST_TIMEOUT_S, Ranks, silent_unless
from tomo.cli.recon_writers import (
    describe,
    hu_shape,
    save_npz,
    save_preview,
    save_std_preview,
    std_mu_to_hu,
    write_dicom,
    write_nifti,
    write_previews,
)
from tomo.io.outputs import shown

# names other modules and tests import from here
__all__ = [
    "DIST_TIMEOUT_S",
    "HELP",
    "Outputs",
    "PartialRun",
    "Ranks",
    "estimate_memory",
    "register",
    "run",
    "save_preview",
    "save_std_preview",
    "std_mu_to_hu",
]

#: one-line summary shown by ``tomo --help``
HELP = "reconstruct a sinogram file (.npz) to HU (npz + PNG, NIfTI, or DICOM)"


def register(subparsers) -> None:
    methods, flags = method_options()
    add_parser(subparsers, HELP, methods, flags).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ranks = Ranks.from_environment(args.device)
    try:
        with silent_unless(ranks.is_main):
            return _run(args, ranks)
    finally:
        ranks.close()


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    methods, flags = method_options()
    entry = methods[args.method]
    setup, source, partial = None, None, None
    if ranks.is_main:
        shared = None
        try:
            setup = _prepare(args, entry, flags, ranks)
            shared = setup.shared()
        finally:
            ranks.share(shared)  # None tells the other ranks that the request was refused
        source, partial, options = setup.source, setup.partial, setup.options
    else:
        shared = ranks.share(None)
        if shared is None:
            raise SystemExit(2)  # rank 0 refused the request and printed why
        options = chosen_options(args, entry, flags)
    t0 = time.time()
    try:
        failure = None
        try:
            if source is None or partial is None:  # ranks other than 0: a failure here is reported like one in the work
                source, partial = _join(args, ranks, shared)
            with _threads(args):
                _reconstruct_chunks(source, partial, args, options, shared["todo"], ranks)
        except Exception as exc:  # noqa: BLE001  (reported to rank 0, which then writes nothing; raised below)
            failure = exc
        reports = ranks.gather(
            {
                "chunks": len(shared["todo"][ranks.rank :: ranks.world]),
                "seconds": time.time() - t0,
                "error": None if failure is None else f"{type(failure).__name__}: {failure}",
            }
        )
        if failure is not None:
            raise failure
        if not ranks.is_main:
            return 0
        assert setup is not None and partial is not None  # rank 0 prepared them
        _check_reports(reports, partial)
        return _finish(args, setup, time.time() - t0)
    except BaseException:
        if setup is not None and setup.partial.created and setup.partial.slices_done() == 0:
            setup.partial.remove()  # refused before any chunk (a bad option, a missing --prior): no leftover
        raise
    finally:
        if source is not None:
            source.close()
        if setup is not None:
            setup.claim.release()


def _check_reports(reports: list[dict], partial: PartialRun) -> None:
    """Rank 0: refuse to write when another rank failed; say how the work was shared."""
    for rank, report in enumerate(reports):
        if report["error"]:
            raise CommandError(
                f"rank {rank} failed ({report['error'].splitlines()[0]}); the finished chunks are "
                f"kept in {shown(partial.folder)}: rerun the same command with --resume"
            )
    if len(reports) > 1:
        print(
            "chunks per process: "
            + ", ".join(f"rank {r} {x['chunks']} in {x['seconds']:.1f} s" for r, x in enumerate(reports))
        )


def _prepare(args, entry, flags, ranks: Ranks) -> Setup:
    """Check the request, open the input and the partial results, list the chunks left (rank 0)."""
    from tomo.io.sinogram import open_sinogram

    options = chosen_options(args, entry, flags)
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads < 0:
        raise CommandError(f"--threads must be >= 0, got {args.threads}")
    if not args.file.is_file():
        raise FileNotFoundError(f"no sinogram file {args.file}")
    outputs = plan_outputs(args)
    folder = partial_folder(outputs.main)
    # --resume of a run killed while writing its outputs: those outputs are its own to replace
    overwrite = args.overwrite or (args.resume and PartialRun.was_finishing(folder))
    expects_std = int(options.get("samples") or 1) >= 2
    inputs = [args.file, args.dicom_reference, options.get("prior")]
    try:
        claim = output_plan(outputs, expects_std, inputs, overwrite).claim()  # locked and checked, before any work
    except FileExistsError:
        if folder.is_dir() and not args.resume:  # the outputs of a stopped run: say how to finish it
            raise FileExistsError(PartialRun.leftover_message(folder)) from None
        raise
    source = None
    try:
        source = open_sinogram(args.file)
        if source.units == "mu_per_mm" and outputs.kind in ("nifti", "dicom"):
            raise CommandError(
                f"{args.file} is in units mu_per_mm (not calibrated human CT): write --out OUT.npz "
                "(NIfTI and DICOM outputs hold HU)"
            )
        batch = args.batch_size or entry.batch_size
        check_memory(source, args.method, min(batch, source.num_slices), args.batch_size is None, ranks.local_world)
        reference = read_reference(args, source) if args.dicom_reference is not None else None
        if reference is None and outputs.kind in ("nifti", "dicom"):
            from tomo.io.sinogram import recorded_placement

            reference = recorded_placement(source)  # where tomo simulate recorded the slices, if it did
        spacing = nifti_slice_spacing(args, source, reference) if outputs.kind == "nifti" else None
        partial = PartialRun.open(folder, args, options, batch, source)
        todo = [s for s in partial.starts() if not partial.done(s)]
        if len(todo) < len(partial.starts()):
            print(
                f"resuming: {len(partial.starts()) - len(todo)} of {len(partial.starts())} chunks of "
                f"{partial.manifest['chunk']} slices already done in {shown(partial.folder)}"
            )
        if ranks.world > 1:
            print(f"{ranks.world} processes share {len(todo)} chunks of {partial.manifest['chunk']} slices")
    except BaseException:
        if source is not None:
            source.close()
        claim.release()
        raise
    return Setup(options, outputs, source, reference, spacing, partial, todo, overwrite, claim)


def _join(args, ranks: Ranks, shared: dict):
    """A rank other than 0: open the input and the partial results rank 0 prepared."""
    from tomo.io.sinogram import open_sinogram

    source = open_sinogram(args.file)
    try:
        chunk = shared["manifest"]["chunk"]
        check_memory(source, args.method, min(chunk, source.num_slices), False, ranks.local_world)
        return source, PartialRun.join(Path(shared["folder"]), shared["manifest"])
    except BaseException:
        source.close()
        raise


def _threads(args):
    """``--threads N`` for torch, the projector and FBP while the slices are reconstructed; 0 (the
    default): torch's choice for all three (one thread per core), the fastest on an idle machine
    (docs/benchmarks.md, section 7); both settings are restored afterwards."""
    from operators.settings import all_threads

    return all_threads(args.threads or None)


def _finish(args, setup: Setup, seconds: float) -> int:
    """Rank 0, every chunk done: scores, the outputs, then the partial results go."""
    source, partial, outputs = setup.source, setup.partial, setup.outputs
    scores = partial.scores() if source.has_reference else None
    if scores is not None:
        n = source.num_slices
        print(
            f"PSNR {scores[0]:.2f} dB, SSIM {scores[1]:.4f} (mean over {n} slice{'s' if n > 1 else ''}, "
            f"window [-1000, 1000] HU)"
        )
    summary = f"{args.method} reconstruction, {describe(source)}" + (
        f", options {setup.options}" if setup.options else ""
    )
    has_std = partial.has_std()
    partial.mark_finishing()  # killed from here on, --resume may replace the outputs written so far
    if outputs.kind == "dicom":
        written = write_dicom(setup, summary, args, has_std)
    elif outputs.kind == "nifti":
        written = write_nifti(setup, setup.overwrite, has_std)
    else:
        meta = dict(
            method=args.method,
            options=json.dumps(setup.options, sort_keys=True),
            source=str(args.file),
            pixel_spacing_mm=np.float64(source.geometry.pixel_spacing_mm),
            description=summary,
        )
        if scores is not None:
            meta.update(psnr=np.float64(scores[0]), ssim=np.float64(scores[1]))
        units = source.units
        meta["units"] = units
        save_npz(outputs.main, partial, hu_shape(source), meta, overwrite=setup.overwrite, units=units)
        key = "hu" if units == "hu" else "mu_per_mm"
        written = [
            f"{shown(outputs.main)} ({key}{', std_' + key if has_std else ''} {'x'.join(map(str, hu_shape(source)))})"
        ]
    written += write_previews(outputs, partial, source, args, has_std, setup.overwrite)
    partial.remove()
    print(f"wrote {', '.join(written)} in {seconds:.1f} s ({summary})")
    return 0


def _reconstruct_chunks(source, partial: PartialRun, args, options: dict, todo: list[int], ranks: Ranks) -> None:
    """Reconstruct this rank's share of the chunks ``todo`` (not yet in ``partial``), streaming the input."""
    from operators.units import mu_to_hu
    from tomo.cli.progress import SliceProgress
    from tomo.evaluation.scores import psnr, ssim
    from tomo.methods.registry import reconstruct

    chunk, n = partial.manifest["chunk"], source.num_slices
    device = ranks.device(args.device)
    bar = SliceProgress(
        n,
        f"tomo reconstruct --method {args.method}",
        enabled=ranks.is_main and not args.quiet,
        done=n - sum(min(chunk, n - s) for s in todo),
    )
    with bar:
        for start in todo[ranks.rank :: ranks.world]:
            ((_, sino, ref),) = source.iter_slices(start, start + chunk, chunk)
            mu, std = reconstruct(
                sino,
                source.geometry,
                args.method,
                i0=source.i0,
                device=device,
                batch_size=chunk,
                progress=library_bars(args) and ranks.is_main,
                out_device="cpu",
                return_std=True,
                **options,
            )
            if source.units == "mu_per_mm":  # not human CT: keep attenuation in 1/mm, no HU, no HU scores
                hu, ref = mu.numpy().astype(np.float32), None
                std_hu = None if std is None else std.numpy().astype(np.float32)
            else:
                hu = mu_to_hu(mu.numpy()).astype(np.float32)
                std_hu = None if std is None else std_mu_to_hu(std.numpy())
            if ref is None:
                partial.save(start, hu, std=std_hu)
            else:
                partial.save(start, hu, psnr(hu, ref), ssim(hu, ref), std=std_hu)
            if ranks.world > 1:
                bar.set_done(partial.slices_done())  # the other processes' chunks count too
            else:
                bar.update(hu.shape[0])
