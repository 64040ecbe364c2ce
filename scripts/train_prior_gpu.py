#!/usr/bin/env python
"""Train a whole-image diffusion prior on one GPU for a fixed number of minutes, at high utilisation.

The recipe of the ``large`` prior (``data/prior-large``, loaded with ``load_prior("large")``):
bf16 autocast, channels-last memory format, large batches, optionally ``torch.compile``; the
EMA weights are written as safetensors shards of at most ``--shard-mb`` MiB plus an index, so
that they can leave a machine whose output files are limited in size. At the end it prints the
throughput: training images/s (median of the ``log.csv`` rows after the first, which holds
the warm-up and compilation) and the achieved TFLOP/s, counted as 3 x the FLOPs of one forward
pass (``torch.utils.flop_counter.FlopCounterMode``; backward ~ 2 x forward).

Data: training slices packed at the prior's pixel size by ``scripts/pack_training_slices.py``
(the GPU machine has no DICOM folders), e.g. all training data at <= 1.5 mm, grouped by patient::

    python scripts/pack_training_slices.py ../shared/data/train/dicom ../shared/data/train/ct-1.5mm \\
        --out packed --compression lzma --quantize-hu 8 --max-mb 40
    python scripts/train_prior_gpu.py --data packed --out /tmp/run --export "$OUT" --minutes 8

``--preset shipped`` repeats the run of the shipped ``default`` prior (small UNet, batch 32,
6 minutes, no channels-last or compilation; its data were ``train/dicom`` only).
Runs on the CPU too (``--device cpu``), which the tests use with a tiny network.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's tomo, installed or not

PRESETS = {
    "large": {"arch": "large", "batch_size": 64, "minutes": 8.0, "channels_last": True},
    "shipped": {"arch": "small", "batch_size": 32, "minutes": 6.0, "channels_last": False},
}


def forward_gflops(config: dict) -> float:
    """GFLOPs of one forward pass of the configuration's UNet on one training canvas (CPU count)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tomo.priors.prior import build_unet

    model = build_unet(config).eval()
    size = config["patch_size"] or config["image_size"]
    x = torch.zeros(1, config["architecture"]["in_channels"], size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500]))
    return counter.get_total_flops() / 1e9


def throughput(log_path: Path, gflops: float) -> tuple[float, float]:
    """(training images/s, achieved TFLOP/s) from ``log.csv``: median of the rows after the first."""
    from tomo.priors.training import read_log

    rates = [r["patches_per_s"] for r in read_log(log_path)]
    rates = rates[1:] or rates
    ips = statistics.median(rates)
    return ips, ips * 3 * gflops / 1e3


#: besides the weights: what comes back from the GPU machine (at most 8 files of 16 MiB there;
#: loss.png is left out since `tomo.priors.training.plot_loss` redraws it from log.csv)
EXPORTED = ("prior.json", "log.csv", "samples.png")


def export(run: Path, dest: Path) -> list[Path]:
    """Copy what ``load_prior`` needs (shards, index, config) plus ``log.csv`` and ``samples.png``,
    then check that the copy loads."""
    from tomo.priors import load_prior
    from tomo.priors.checkpoint import atomic_write_bytes, weight_files

    written = []
    for src in [*weight_files(run)[::-1], *(run / n for n in EXPORTED if (run / n).is_file())]:
        atomic_write_bytes(dest / src.name, src.read_bytes())  # shards before their index
        written.append(dest / src.name)
    load_prior(dest)
    return written


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="packed training slices (folders of .npz)")
    ap.add_argument("--out", required=True, help="run folder (checkpoints, log.csv, samples.png)")
    ap.add_argument("--export", default=None, help="also copy the prior (shards, config, log, loss plot) here")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="large")
    ap.add_argument("--minutes", type=float, default=None, help="training wall-time budget (preset: 8 / 6)")
    ap.add_argument("--arch", default=None, help="network preset or JSON file (preset: large / small)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per step (preset: 64 / 32)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256, help="training canvas, px (256 = 384 mm at 1.5 mm)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument(
        "--shard-mb", type=float, default=16.0, help="largest weight shard, MiB (16; 0: one prior.safetensors)"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10_000_000, help="step limit (the time budget stops it first)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--samples", type=int, default=8, help="unconditional samples at the end (0: none)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("minutes", "arch", "batch_size", "channels_last"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from tomo.priors.training import TrainOptions, train

    command = "python scripts/train_prior_gpu.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    opts = TrainOptions(
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule="constant",
        warmup_steps=args.warmup_steps,
        ema_decay=0.999,
        seed=0,
        checkpoint_every=1_000_000,
        checkpoint_minutes=5.0,
        log_every=args.log_every,
        arch=args.arch,
        patch_size=0,
        image_size=args.image_size,
        pixel_size_mm=1.5,
        hu_window=(-1000.0, 2000.0),
        beta_schedule="linear",
        device=args.device,
        channels_last=args.channels_last,
        compile=args.compile,
        shard_mb=args.shard_mb or None,
        samples=args.samples,
        sample_steps=args.sample_steps,
        max_minutes=args.minutes,
        threads=args.threads,
        progress=False,
        resume=args.resume,
        command=command,
    )
    summary = train(opts)
    from tomo.priors.checkpoint import CONFIG_NAME, load_config

    config = load_config(Path(args.out) / CONFIG_NAME)
    gflops = forward_gflops(config)
    ips, tflops = throughput(Path(args.out) / "log.csv", gflops)
    print(
        f"throughput: {ips:.1f} training images/s, {tflops:.2f} TFLOP/s achieved "
        f"(3 x {gflops:.2f} GFLOPs per forward pass of one {config['image_size']} px image); "
        f"{summary['steps']} steps x batch {args.batch_size} in {summary['wall_time_s'] / 60:.1f} min, "
        f"last loss {summary['last_loss']}",
        flush=True,
    )
    if args.export:
        for path in export(Path(args.out), Path(args.export)):
            print(f"exported {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
