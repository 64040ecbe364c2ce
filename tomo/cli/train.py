"""``tomo train``: train a diffusion prior on CT slices (DICOM folders, HU .npz volumes).

Single process: ``tomo train DATA... --out DIR``. Several processes or machines: the same
arguments under ``torchrun --nproc_per_node N -m tomo.cli.main train ...`` (DistributedDataParallel;
gloo on CPU, NCCL on GPUs). ``--resume`` continues a stopped run exactly.
"""

from __future__ import annotations

import argparse
import json
import sys

#: the presets of tomo.priors.config.ARCHITECTURES, named here so that --help imports no torch
#: (tests/test_prior_train.py checks that the two lists agree)
ARCH_PRESETS = ("small", "tiny", "large", "shuffle-default", "shuffle-large", "shuffle-tiny")

#: one-line summary shown by ``tomo --help``
HELP = "train a diffusion prior on CT slices"


def _hu_window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LO,HI in HU (e.g. -1000,2000), got {text!r}") from exc
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"HU window needs LO < HI, got {text!r}")
    return lo, hi


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="DICOM folders/files and .npz HU volumes (folders searched recursively)")
    p.add_argument("--out", required=True, help="output folder for checkpoints, log.csv, samples.png")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly where it stopped")
    p.add_argument(
        "--init-from",
        metavar="PRIOR_DIR",
        default=None,
        help="start a new run from this prior's weights and model configuration (fine-tuning)",
    )
    g = p.add_argument_group("schedule of the run")
    g.add_argument("--steps", type=int, default=4000, help="total optimiser steps (default 4000)")
    g.add_argument("--batch-size", type=int, default=16, help="patches (or images) per step per process (16)")
    g.add_argument("--lr", type=float, default=2e-4, help="AdamW peak learning rate (2e-4)")
    g.add_argument(
        "--lr-schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="after warm-up: cosine decay to 10%% of --lr, or constant (cosine)",
    )
    g.add_argument("--warmup-steps", type=int, default=200)
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (1.0)")
    g.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay (warm-up 1-(1+step)^-2/3)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (250)")
    g.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=10.0,
        help="also checkpoint once this many minutes passed since the last one (10), so a "
        "kill loses at most that much work",
    )
    g.add_argument("--log-every", type=int, default=10, help="steps per log.csv row (10)")
    m = p.add_argument_group("model (defaults for a new run; on --resume they must match the checkpoint)")
    m.add_argument(
        "--arch",
        default=None,
        help=f"a network preset ({', '.join(ARCH_PRESETS)}; default 'small', diffusers' UNet of 4.3 M "
        "parameters; the 'shuffle-*' presets are tomo's ShuffleUNet, fast on CPUs and GPUs, docs/prior.md) "
        "or a JSON file of network arguments",
    )
    m.add_argument(
        "--patch-size", type=int, default=None, help="patch side in pixels (default 64); 0 = whole-image mode (GPUs)"
    )
    m.add_argument(
        "--image-size", type=int, default=None, help="whole-image canvas / sample size in pixels (default 256)"
    )
    m.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        dest="pixel_size_mm",
        help="pixel size slices are resampled to, mm (default 1.5)",
    )
    m.add_argument(
        "--hu-window",
        type=_hu_window,
        default=None,
        help="HU mapped linearly to [-1, 1], as LO,HI (default -1000,2000)",
    )
    m.add_argument(
        "--beta-schedule",
        choices=("linear", "squaredcos_cap_v2"),
        default=None,
        help="DDPM beta schedule, T=1000 (default linear; squaredcos_cap_v2 = cosine)",
    )
    m.add_argument(
        "--no-gaussian-skip",
        dest="gaussian_skip",
        action="store_false",
        default=None,
        help="network predicts eps directly instead of the residual of the Gaussian-pixel "
        "MMSE estimate (see docs/prior.md)",
    )
    a = p.add_argument_group("data")
    a.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random left-right flips")
    a.add_argument("--vflip", action="store_true", help="also random up-down flips (off: patients lie one way up)")
    a.add_argument(
        "--balance",
        choices=("slice", "sqrt", "group"),
        default="sqrt",
        help="slice sampling weight: uniform, 1/sqrt(group size) (default), 1/group size",
    )
    a.add_argument(
        "--rotate-deg",
        type=float,
        default=0.0,
        metavar="DEG",
        help="random rotation about the slice centre by an angle uniform in [-DEG, +DEG] degrees, "
        "at most 180 (default 0: none)",
    )
    a.add_argument(
        "--scale-jitter",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="random isotropic scaling about the slice centre by a factor uniform in "
        "[1 - FRACTION, 1 + FRACTION], FRACTION < 0.5, e.g. 0.1 for +-10%% (default 0: none)",
    )
    a.add_argument(
        "--hu-jitter",
        type=float,
        default=0.0,
        metavar="HU",
        help="random intensity offset uniform in [-HU, +HU] HU added inside the slice (default 0: none)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    r.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    r.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="bf16 autocast on CPU (weights stay float32; ~1.6x faster on CPUs with AVX512-BF16)",
    )
    r.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last (NHWC) memory format for the UNet and its input (faster on GPUs)",
    )
    r.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (compiled at the first step; for long GPU runs)",
    )
    r.add_argument(
        "--shard-mb",
        type=float,
        default=None,
        metavar="MIB",
        help="write the EMA weights as safetensors shards of at most MIB MiB plus an index "
        "(default: one prior.safetensors)",
    )
    r.add_argument("--samples", type=int, default=8, help="unconditional samples drawn at the end (0: none)")
    r.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for the samples (50)")
    r.add_argument("--sample-size", type=int, default=None, help="sample side in pixels (default: image size)")
    r.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop with a checkpoint once the run's total wall time exceeds this (with "
        "--lr-schedule constant the result equals a run of --steps <steps reached>)",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: torch's choice; 1 is faster on a busy machine)",
    )
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from tomo.io.outputs import OutputPlan
    from tomo.priors.training import TrainOptions, train

    fields = TrainOptions.__dataclass_fields__
    opts = TrainOptions(**{k: v for k, v in vars(args).items() if k in fields})
    if int(__import__("os").environ.get("RANK", "0")) == 0:  # one claim per run: rank 0's
        plan = OutputPlan([*opts.data, opts.init_from], overwrite=True)
        plan.workdir(opts.out, "--out folder")
        plan.claim()  # one run per folder: a second one is refused at once (tomo.io.outputs)
    summary = train(opts)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "data"}), file=sys.stdout)
    return 0
