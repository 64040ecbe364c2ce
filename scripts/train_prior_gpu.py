#!/usr/bin/env python
"""Train a whole-image diffusion prior on one GPU for a fixed number of minutes, at high utilisation.

Preset ``large`` (the default) trains or continues the ``large`` prior (``data/prior-large``,
``load_prior("large")``) with the device-resident loop
(:func:`tomo.priors.training.device_loop.train_on_device`): the packed training slices live on
the GPU, crops, flips and noise are drawn there, no host synchronisation per step, bf16 autocast,
channels-last, optionally ``torch.compile`` (its compile time counted in ``--minutes``).
``--init-from DIR`` continues from the EMA weights in DIR (a fresh optimiser); without it a new
network (``--arch``) starts. At the end it prints

    throughput: N training images/s, X TFLOP/s achieved (3 x G GFLOPs per forward pass ...)

(images/s: the median of the ``log.csv`` rows after the first, which holds the data upload and
compilation; FLOPs of one forward pass counted by ``torch.utils.flop_counter.FlopCounterMode``,
a multiply-add counting 2; training ~ 3 x forward), evaluates the EMA weights on held-out
*train/* patients (``--val``; x0 RMSE in HU at 50 / 200 / 500 HU of noise, t = 6 / 37 / 97),
and, with ``--card``, appends a row to the model card's training log. ``--export DIR`` copies
what ``load_prior`` needs (shards of <= ``--shard-mb`` MiB, index, ``prior.json``) plus
``log.csv``, ``samples.png`` and the card.

Preset ``shipped`` repeats the run of the shipped ``default`` prior with ``tomo train``'s loop
(small diffusers UNet, batch 32, 6 minutes; ``scripts/train_prior_gpu.sh``).

Data: training slices packed at the prior's pixel size by ``scripts/pack_training_slices.py``
(the GPU machine has no DICOM folders); ``scripts/gpu_train.sh`` prepares and runs all of it.
Runs on the CPU too (``--device cpu``), which the tests use with a tiny network.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRESETS = {
    "large": {"arch": "shuffle-large", "batch_size": 128, "minutes": 8.0, "channels_last": True, "loop": "device"},
    "shipped": {"arch": "small", "batch_size": 32, "minutes": 6.0, "channels_last": False, "loop": "tomo-train"},
}
#: time steps of the held-out test: 50 / 200 / 500 HU of noise on x0 (linear schedule, 1500 HU per unit)
VAL_T = (6, 37, 97)


def forward_gflops(config: dict) -> float:
    """GFLOPs of one forward pass of the configuration's network on one training canvas (CPU count)."""
    from tomo.priors.prior import build_unet
    from tomo.priors.training.device_loop import forward_gflops as count

    return count(build_unet(config).eval(), config, "cpu")


def throughput(log_path: Path, gflops: float) -> tuple[float, float]:
    """(training images/s, achieved TFLOP/s) from ``log.csv``: median of the rows after the first."""
    from tomo.priors.training import read_log

    rates = [r["patches_per_s"] for r in read_log(log_path)]
    rates = rates[1:] or rates
    ips = statistics.median(rates)
    return ips, ips * 3 * gflops / 1e3


#: besides the weights: what comes back from the GPU machine (at most 8 files of 16 MiB there;
#: loss.png is left out since `tomo.priors.training.plot_loss` redraws it from log.csv)
EXPORTED = ("prior.json", "log.csv", "samples.png", "MODEL_CARD.md")


def export(run: Path, dest: Path) -> list[Path]:
    """Copy what ``load_prior`` needs (shards, index, config) plus the log, samples and card,
    then check that the copy loads."""
    from tomo.priors import load_prior
    from tomo.priors.checkpoint import atomic_write_bytes, weight_files

    written = []
    for src in [*weight_files(run)[::-1], *(run / n for n in EXPORTED if (run / n).is_file())]:
        atomic_write_bytes(dest / src.name, src.read_bytes())  # shards before their index
        written.append(dest / src.name)
    load_prior(dest)
    return written


def heldout_denoising(run: Path, val: list[str], device: str, max_slices: int = 32) -> list[dict]:
    """x0 RMSE (HU) and eps MSE of the run's EMA prior on held-out slices at :data:`VAL_T`."""
    from tomo.priors import load_prior

    spec = importlib.util.spec_from_file_location("eval_prior", REPO / "scripts" / "eval_prior.py")
    assert spec is not None and spec.loader is not None
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    prior = load_prior(run, device=device)
    images, _ = ev.load_slices(val, prior, max_slices)
    skip = prior.config.get("gaussian_skip") or {"mean": 0.0, "variance": 1.0}
    return ev.denoising_eval(prior, images, list(VAL_T), 0, (skip["mean"], skip["variance"]))


LOG_HEADING = "## Training log"
LOG_HEADER = (
    "| date (UTC) | steps | images seen | GPU minutes | images/s | TFLOP/s | held-out train/ x0 RMSE (HU) "
    "at 50 / 200 / 500 HU noise | hardware |\n|---|---:|---:|---:|---:|---:|---|---|"
)


def append_training_log(card: Path | None, dest: Path, record: dict, heldout: list[dict] | None) -> Path:
    """Write ``dest`` = ``card`` (or a stub) with a row for the last burst of ``record`` appended
    to its "Training log" table (created at the end when missing)."""
    burst = record["bursts"][-1]
    rmse = " / ".join(f"{r['x0_rmse_hu']:.1f}" for r in heldout) if heldout else "not measured"
    row = (
        f"| {burst['date']} | {burst['steps']} (total {record['steps']}) | {burst['images']} "
        f"(total {record['patches_seen']}) | {burst['minutes']:.1f} | {burst['images_per_s']:.0f} | "
        f"{burst['tflops']:.1f} | {rmse} | {burst['hardware']} |"
    )
    text = card.read_text(encoding="utf-8") if card and card.is_file() else "# Model card: `large` prior\n"
    if LOG_HEADING not in text:
        text = (
            text.rstrip("\n") + f"\n\n{LOG_HEADING}\nOne row per GPU burst (`scripts/gpu_train.sh`).\n\n{LOG_HEADER}\n"
        )
    head, tail = text.split(LOG_HEADING, 1)
    lines = tail.split("\n")
    end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))  # the next section
    rows = [i for i, line in enumerate(lines[:end]) if line.startswith("|")]
    if not rows:  # a heading without its table: start one
        lines[end:end] = [LOG_HEADER, ""]
        rows = [end + 1]
    lines.insert(rows[-1] + 1, row)
    dest.write_text(head + LOG_HEADING + "\n".join(lines), encoding="utf-8")
    return dest


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="packed training slices (folders of .npz)")
    ap.add_argument("--out", required=True, help="run folder (weights, prior.json, log.csv, samples.png)")
    ap.add_argument("--export", default=None, help="also copy the prior (shards, config, log, card) here")
    ap.add_argument("--preset", choices=tuple(PRESETS), default="large")
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget, data upload and compile included")
    ap.add_argument("--arch", default=None, help="network preset or JSON file (preset: shuffle-large / small)")
    ap.add_argument("--init-from", default=None, help="continue from the EMA weights of this prior folder")
    ap.add_argument("--val", nargs="+", default=None, help="held-out train/ slices for the denoising test")
    ap.add_argument("--card", default=None, help="model card to append the training-log row to (copied)")
    ap.add_argument("--batch-size", type=int, default=None, help="images per step (preset: 128 / 32)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256, help="training canvas, px (256 = 384 mm at 1.5 mm)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss (time counted in --minutes)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    ap.add_argument("--shard-mb", type=float, default=16.0, help="largest weight shard, MiB (0: one file)")
    ap.add_argument(
        "--weights-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="dtype of the exported EMA weights (float16 halves the file; load_prior computes in float32)",
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10_000_000, help="step limit (the time budget stops it first)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--samples", type=int, default=8, help="unconditional samples at the end (0: none)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (preset shipped)")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("minutes", "arch", "batch_size", "channels_last"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.loop = preset["loop"]
    if args.loop == "device" and args.resume:
        ap.error("--resume applies to --preset shipped; continue a large prior with --init-from")
    return args


def _samples(run: Path, args) -> None:
    """samples.png of the run's EMA prior (skipped, with a note, where diffusers is missing)."""
    try:
        import diffusers  # noqa: F401 - DDIM sampling uses its scheduler
    except ImportError:
        print("samples: diffusers is not installed here; no samples.png", file=sys.stderr)
        return
    from tomo.priors import load_prior
    from tomo.priors.sampling import sample_grid

    prior = load_prior(run, device=args.device)
    size = (prior.config["image_size"],) * 2
    sample_grid(prior, run / "samples.png", n=args.samples, steps=args.sample_steps, seed=0, size=size, progress=False)


def run_device_loop(args, command: str) -> dict:
    """The ``large`` preset: train or continue with the device-resident loop."""
    import torch

    from tomo.priors.checkpoint import CONFIG_NAME, load_config
    from tomo.priors.training.device_loop import DeviceTrainOptions, train_on_device
    from tomo.priors.training.options import TrainOptions, init_config, requested_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init_from:
        config = init_config(args.init_from)
        previous = load_config(Path(args.init_from) / CONFIG_NAME).get("training") or {}
    else:
        base = TrainOptions(data=args.data, out=args.out, arch=args.arch, patch_size=0, image_size=args.image_size)
        config, previous = requested_config(base), {}
        config["gaussian_skip"] = None  # computed from the training slices
    opts = DeviceTrainOptions(
        data=args.data,
        out=args.out,
        config=config,
        init_from=args.init_from,
        minutes=args.minutes,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        device=args.device,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        shard_mb=args.shard_mb or None,
        weights_dtype=args.weights_dtype,
        log_every=args.log_every,
        command=command,
        previous=previous,
    )
    summary = train_on_device(opts)
    run = Path(args.out)
    print(
        f"throughput: {summary['images_per_s']:.1f} training images/s, {summary['tflops']:.2f} TFLOP/s achieved "
        f"(3 x {summary['gflops_forward']:.2f} GFLOPs per forward pass of one {config['image_size']} px image); "
        f"{summary['steps']} steps x batch {args.batch_size} in {summary['wall_s'] / 60:.1f} min "
        f"(total {summary['total_steps']} steps), last loss {summary['last_loss']:.5f}",
        flush=True,
    )
    heldout = None
    if args.val:
        heldout = heldout_denoising(run, args.val, args.device)
        rmse = " / ".join(f"{r['x0_rmse_hu']:.1f}" for r in heldout)
        print(f"held-out train/ denoising: x0 RMSE {rmse} HU at 50 / 200 / 500 HU of noise (t = {VAL_T})")
        record = json.loads((run / CONFIG_NAME).read_text())
        record["training"]["bursts"][-1]["heldout_x0_rmse_hu"] = [round(r["x0_rmse_hu"], 2) for r in heldout]
        (run / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
    if args.card is not None:
        record = json.loads((run / CONFIG_NAME).read_text())["training"]
        append_training_log(Path(args.card), run / "MODEL_CARD.md", record, heldout)
    if args.samples > 0:
        _samples(run, args)
    return summary


def run_tomo_train(args, command: str) -> None:
    """The ``shipped`` preset: ``tomo train``'s resumable loop, as the shipped prior was trained."""
    from tomo.priors.checkpoint import CONFIG_NAME, load_config
    from tomo.priors.training import TrainOptions, train

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


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.time()
    command = "python scripts/train_prior_gpu.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.loop == "device":
        run_device_loop(args, command)
    else:
        run_tomo_train(args, command)
    if args.export:
        for path in export(Path(args.out), Path(args.export)):
            print(f"exported {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    print(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
