"""Options of ``tomo train``: :class:`TrainOptions`, their validation, the model configuration
they ask for, and the learning-rate schedule."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import CONFIG_NAME, PriorCheckpointError, has_weights, load_config
from ..config import ARCHITECTURES, DEFAULT_HU_WINDOW, DEFAULT_PIXEL_SIZE_MM, default_schedule, make_config
from ..training_data import check_augmentation


@dataclass
class TrainOptions:
    """Everything ``tomo train`` needs; see ``tomo train --help`` for the meaning of each."""

    data: list[str]
    out: str
    steps: int = 4000
    batch_size: int = 16  # per process
    lr: float = 2e-4
    lr_schedule: str = "cosine"  # "cosine" (to 10 % of lr) or "constant", after warm-up
    warmup_steps: int = 200
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    checkpoint_minutes: float | None = 10.0  # also checkpoint when this much wall time passed since the last
    init_from: str | None = None  # prior folder whose weights (and model config) start a new run
    log_every: int = 10
    # model (None: default for a new run, the checkpoint's value when resuming)
    arch: str | None = None  # "small", "tiny" or a JSON file of UNet2DModel arguments
    patch_size: int | None = None  # 0 -> whole-image mode
    image_size: int | None = None
    pixel_size_mm: float | None = None
    hu_window: tuple[float, float] | None = None
    beta_schedule: str | None = None
    gaussian_skip: bool | None = None  # network predicts the residual of the Gaussian-pixel estimate (default on)
    # data augmentation
    hflip: bool = True
    vflip: bool = False
    balance: str = "sqrt"
    rotate_deg: float = 0.0  # random rotation in [-rotate_deg, +rotate_deg], degrees (0: none)
    scale_jitter: float = 0.0  # random scale factor in [1 - j, 1 + j], a fraction (0: none)
    hu_jitter: float = 0.0  # random offset in [-hu_jitter, +hu_jitter] HU inside the slice (0: none)
    # run
    resume: bool = False
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    cpu_bf16: bool = False  # bf16 autocast on CPU (about 1.6x faster with AVX512-BF16/AMX)
    channels_last: bool = False  # NHWC memory format for the UNet and its input (faster convs on GPUs)
    compile: bool = False  # torch.compile the training forward/backward
    shard_mb: float | None = None  # write the EMA weights as safetensors shards of at most this many MiB
    samples: int = 8  # unconditional samples drawn at the end (0: none)
    sample_steps: int = 50
    sample_size: int | None = None  # default: image_size
    max_minutes: float | None = None  # stop (with a checkpoint) once the run's total wall time exceeds this
    threads: int | None = None  # torch CPU threads per process (default: torch's choice)
    progress: bool = True
    command: str | None = None  # command line recorded in prior.json (default: this process's argv)


def validate(opts: TrainOptions) -> None:
    """Raise ``ValueError`` for options no run can use."""
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if getattr(opts, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(opts, name)}")
    if opts.lr <= 0 or opts.grad_clip <= 0 or not 0 < opts.ema_decay < 1:
        raise ValueError("lr and grad_clip must be > 0 and ema_decay in (0, 1)")
    if opts.max_minutes is not None and opts.max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {opts.max_minutes}")
    if opts.shard_mb is not None and opts.shard_mb <= 0:
        raise ValueError(f"shard_mb must be > 0, got {opts.shard_mb}")
    if opts.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {opts.lr_schedule!r}")
    if not opts.data:
        raise ValueError("no training data given")
    check_augmentation(opts.rotate_deg, opts.scale_jitter, opts.hu_jitter)


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up, then constant or cosine decay to 10 % of ``lr`` at ``opts.steps``."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    if opts.lr_schedule == "constant":
        return opts.lr
    frac = min(1.0, (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps))
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def architecture(name: str | None) -> dict:
    """``UNet2DModel`` arguments of a preset name or a JSON file (default: "small")."""
    name = name or "small"
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]()
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"--arch {name!r}: neither a preset ({', '.join(ARCHITECTURES)}) nor a JSON file")
    try:
        arch = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--arch {path}: not valid JSON ({exc})") from exc
    arch.setdefault("class", "UNet2DModel")
    return arch


def requested_config(opts: TrainOptions) -> dict:
    """The model configuration of a new run (defaults filled in)."""
    patch = 64 if opts.patch_size is None else (opts.patch_size or None)
    return make_config(
        architecture=architecture(opts.arch),
        schedule=default_schedule(opts.beta_schedule or "linear"),
        hu_window=opts.hu_window or DEFAULT_HU_WINDOW,
        pixel_size_mm=opts.pixel_size_mm or DEFAULT_PIXEL_SIZE_MM,
        patch_size=patch,
        image_size=opts.image_size or 256,
    )


def init_config(prior_dir: str) -> dict:
    """Model configuration of a run that starts from the weights of an existing prior."""
    folder = Path(prior_dir)
    if not has_weights(folder):
        raise FileNotFoundError(f"--init-from {folder}: no prior weights there")
    return {k: v for k, v in load_config(folder / CONFIG_NAME).items() if k not in ("training", "data")}


def check_resume_options(opts: TrainOptions, config: dict, where: Path) -> None:
    """Options given explicitly on --resume must agree with the checkpoint's configuration."""
    given = {
        "patch_size": opts.patch_size if opts.patch_size is None else (opts.patch_size or None),
        "image_size": opts.image_size,
        "pixel_size_mm": opts.pixel_size_mm,
        "hu_window": list(map(float, opts.hu_window)) if opts.hu_window else None,
    }
    if opts.patch_size is None:
        given.pop("patch_size")
    conflicts = [f"{k}={v} (checkpoint: {config[k]})" for k, v in given.items() if v is not None and v != config[k]]
    if opts.gaussian_skip is not None and opts.gaussian_skip != (config.get("gaussian_skip") is not None):
        conflicts.append(f"gaussian_skip={opts.gaussian_skip} (checkpoint: {config.get('gaussian_skip')})")
    if opts.beta_schedule and opts.beta_schedule != config["schedule"].get("beta_schedule"):
        conflicts.append(f"beta_schedule={opts.beta_schedule} (checkpoint: {config['schedule'].get('beta_schedule')})")
    if opts.arch is not None:
        arch = dict(
            architecture(opts.arch),
            in_channels=config["architecture"]["in_channels"],
            sample_size=config["architecture"]["sample_size"],
        )
        if arch != config["architecture"]:
            conflicts.append(f"--arch {opts.arch} differs from the checkpoint's architecture")
    if conflicts:
        raise PriorCheckpointError(f"cannot resume from {where}: incompatible config: " + "; ".join(conflicts))


#: augmentation options of a run and their value in checkpoints written before they existed
AUGMENTATION_DEFAULTS = {"hflip": True, "vflip": False, "rotate_deg": 0.0, "scale_jitter": 0.0, "hu_jitter": 0.0}


def check_resume_augmentation(opts: TrainOptions, training: dict | None, where: Path) -> None:
    """A resumed run must draw its images as the checkpoint's run did: the augmentation options must
    equal those recorded in ``prior.json`` (``training.augmentation``), or the continuation is no
    longer the run that was stopped. Pass them again on --resume (or start a new run with
    --init-from to fine-tune with other ones)."""
    recorded = ((training or {}).get("augmentation")) or {}
    conflicts = [
        f"{name}={getattr(opts, name)} (checkpoint: {recorded.get(name, default)})"
        for name, default in AUGMENTATION_DEFAULTS.items()
        if getattr(opts, name) != recorded.get(name, default)
    ]
    if conflicts:
        raise PriorCheckpointError(
            f"cannot resume from {where}: other augmentation than the checkpoint's run: "
            + "; ".join(conflicts)
            + " (repeat the run's options, or fine-tune with --init-from into a new --out)"
        )
