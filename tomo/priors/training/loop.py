"""Training loop of the diffusion prior (``tomo train``): one script for 1 CPU, 1 GPU or many (torchrun).

Loss: masked epsilon MSE, ``|| m * (eps_theta([m * x_t, pos], t) - eps) ||^2 / sum(m)``, where
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (diffusers ``DDPMScheduler.add_noise``), ``m``
masks the zero padding outside the slice and ``pos`` are the x/y position channels.

Reproducibility: every random draw of step ``k`` on rank ``r`` (slices, crops, flips, noise,
time steps) comes from a generator seeded with ``(seed, r, k)``, so the random state of a run
is its step counter, and ``--resume`` from a checkpoint continues bit for bit as if the run
had not stopped (same process count and hardware).

Files in the output folder (each written atomically, every ``checkpoint_every`` steps):

- ``prior.safetensors``  EMA weights (what :func:`tomo.priors.load_prior` reads)
- ``prior.json``         configuration + training and data record
- ``train_state.safetensors`` raw weights, EMA, AdamW moments, step, wall time (for resume)
- ``log.csv``            step, loss, lr, grad_norm, patches_per_s, elapsed_s
- ``samples.png``, ``loss.png`` at the end
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import (CONFIG_NAME, TRAIN_STATE_NAME, WEIGHTS_NAME, PriorCheckpointError,
                         atomic_write_text, check_state_dict, load_config, load_tensors, save_config,
                         save_tensors)
from ..config import ARCHITECTURES, DEFAULT_HU_WINDOW, DEFAULT_PIXEL_SIZE_MM, default_schedule, make_config
from ..training_data import SliceSampler, collect_slices, pixel_statistics
from ..prior import DiffusionPrior, build_scheduler, build_unet, combine_output, skip_coefficients
from ..sampling import sample_grid   # imported up front: a long run must not pick up later edits

LOG_NAME = "log.csv"
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "patches_per_s", "elapsed_s"]
#: configuration keys that must agree between a checkpoint and a resumed run
MODEL_KEYS = ("architecture", "schedule", "hu_window", "pixel_size_mm", "patch_size", "image_size",
              "position_channels")


@dataclass
class TrainOptions:
    """Everything ``tomo train`` needs; see ``tomo train --help`` for the meaning of each."""
    data: list[str]
    out: str
    steps: int = 4000
    batch_size: int = 16               # per process
    lr: float = 2e-4
    lr_schedule: str = "cosine"        # "cosine" (to 10 % of lr) or "constant", after warm-up
    warmup_steps: int = 200
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    checkpoint_minutes: float | None = 10.0   # also checkpoint when this much wall time passed since the last
    init_from: str | None = None       # prior folder whose weights (and model config) start a new run
    log_every: int = 10
    # model (None: default for a new run, the checkpoint's value when resuming)
    arch: str | None = None            # "small", "tiny" or a JSON file of UNet2DModel arguments
    patch_size: int | None = None      # 0 -> whole-image mode
    image_size: int | None = None
    pixel_size_mm: float | None = None
    hu_window: tuple[float, float] | None = None
    beta_schedule: str | None = None
    gaussian_skip: bool | None = None  # network predicts the residual of the Gaussian-pixel estimate (default on)
    # data augmentation
    hflip: bool = True
    vflip: bool = False
    balance: str = "sqrt"
    # run
    resume: bool = False
    device: str = "auto"
    amp: bool = True                   # mixed precision on CUDA (bf16 where supported, else fp16)
    cpu_bf16: bool = False             # bf16 autocast on CPU (about 1.6x faster with AVX512-BF16/AMX)
    samples: int = 8                   # unconditional samples drawn at the end (0: none)
    sample_steps: int = 50
    sample_size: int | None = None     # default: image_size
    max_minutes: float | None = None   # stop (with a checkpoint) once the run's total wall time exceeds this
    threads: int | None = None         # torch CPU threads per process (default: torch's choice)
    progress: bool = True


# ----------------------------------------------------------------------------- distributed

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str, threads: int | None = None) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for CUDA, which is not available")
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if not use_cuda and not threads:   # share the CPU cores between the local processes
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if use_cuda:
        dev = torch.device(f"cuda:{local_rank}") if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    rank = int(os.environ.get("RANK", "0"))
    return _Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def _all_mean(value: float, d: _Dist) -> float:
    if d.world == 1:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t) / d.world


def _barrier(d: _Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist
        dist.barrier()


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of every random draw at ``step`` on ``rank`` (see module docstring)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ----------------------------------------------------------------------------- config

def _architecture(name: str | None) -> dict:
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


def _requested_config(opts: TrainOptions) -> dict:
    """The model configuration of a new run (defaults filled in)."""
    patch = 64 if opts.patch_size is None else (opts.patch_size or None)
    return make_config(
        architecture=_architecture(opts.arch),
        schedule=default_schedule(opts.beta_schedule or "linear"),
        hu_window=opts.hu_window or DEFAULT_HU_WINDOW,
        pixel_size_mm=opts.pixel_size_mm or DEFAULT_PIXEL_SIZE_MM,
        patch_size=patch, image_size=opts.image_size or 256)


def _init_config(prior_dir: str) -> dict:
    """Model configuration of a run that starts from the weights of an existing prior."""
    folder = Path(prior_dir)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"--init-from {folder}: no {WEIGHTS_NAME} there")
    return {k: v for k, v in load_config(folder / CONFIG_NAME).items() if k not in ("training", "data")}


def _load_initial_weights(model: torch.nn.Module, prior_dir: str) -> None:
    """Start from a prior's (EMA) weights: fine-tuning rather than training from scratch."""
    path = Path(prior_dir) / WEIGHTS_NAME
    tensors, _ = load_tensors(path)
    check_state_dict(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors)


def _check_resume_options(opts: TrainOptions, config: dict, where: Path) -> None:
    """Options given explicitly on --resume must agree with the checkpoint's configuration."""
    given = {"patch_size": opts.patch_size if opts.patch_size is None else (opts.patch_size or None),
             "image_size": opts.image_size, "pixel_size_mm": opts.pixel_size_mm,
             "hu_window": list(map(float, opts.hu_window)) if opts.hu_window else None}
    if opts.patch_size is None:
        given.pop("patch_size")
    conflicts = [f"{k}={v} (checkpoint: {config[k]})" for k, v in given.items()
                 if v is not None and v != config[k]]
    if opts.gaussian_skip is not None and opts.gaussian_skip != (config.get("gaussian_skip") is not None):
        conflicts.append(f"gaussian_skip={opts.gaussian_skip} (checkpoint: {config.get('gaussian_skip')})")
    if opts.beta_schedule and opts.beta_schedule != config["schedule"].get("beta_schedule"):
        conflicts.append(f"beta_schedule={opts.beta_schedule} (checkpoint: {config['schedule'].get('beta_schedule')})")
    if opts.arch is not None:
        arch = dict(_architecture(opts.arch), in_channels=config["architecture"]["in_channels"],
                    sample_size=config["architecture"]["sample_size"])
        if arch != config["architecture"]:
            conflicts.append(f"--arch {opts.arch} differs from the checkpoint's architecture")
    if conflicts:
        raise PriorCheckpointError(f"cannot resume from {where}: incompatible config: " + "; ".join(conflicts))


# ----------------------------------------------------------------------------- state (de)serialisation

def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


class _EMA:
    """EMA of the weights with ``torch.optim.swa_utils.AveragedModel``.

    Decay at update ``k`` (1-based): ``min(max_decay, 1 - k^(-2/3))`` -- the warm-up of
    diffusers' ``EMAModel(use_ema_warmup=True, power=2/3)``, so early weights fade fast.
    (torch's AveragedModel rather than diffusers' EMAModel: importing diffusers.training_utils
    costs several seconds per process.)
    """

    def __init__(self, model: torch.nn.Module, max_decay: float):
        from torch.optim.swa_utils import AveragedModel
        self.max_decay = max_decay

        def multi_avg_fn(ema_params, params, num_averaged):
            decay = min(max_decay, 1.0 - (1.0 + float(num_averaged)) ** (-2.0 / 3.0))
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)

        self.averaged = AveragedModel(model, multi_avg_fn=multi_avg_fn)
        self.averaged.requires_grad_(False)

    @property
    def shadow_params(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.averaged.module.parameters()]

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def step(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def meta(self) -> dict:
        return {"n_averaged": self.n_averaged, "max_decay": self.max_decay}

    def load(self, shadow: list[torch.Tensor], meta: dict) -> None:
        n = meta.get("n_averaged", meta.get("optimization_step"))   # (older files: diffusers EMAModel)
        with torch.no_grad():
            for p, v in zip(self.averaged.module.parameters(), shadow):
                p.copy_(v)
            self.averaged.n_averaged.fill_(int(n))


def _ema_state_dict(model: torch.nn.Module, ema) -> dict[str, torch.Tensor]:
    """UNet state dict holding the EMA weights (parameters) and the live buffers."""
    names = [n for n, _ in model.named_parameters()]
    sd = {k: v for k, v in model.state_dict().items()}
    for name, shadow in zip(names, ema.shadow_params):
        sd[name] = shadow
    return sd


def _load_train_state(out: Path, model, ema, opt, scaler) -> dict:
    path = out / TRAIN_STATE_NAME
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != "tomo-prior-train-state":
        raise PriorCheckpointError(f"{path} is not a tomo training state")
    meta = json.loads(metadata["state"])
    raw = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    params = dict(model.named_parameters())
    check_state_dict(model.state_dict(), raw, f"{path} (raw weights)")
    check_state_dict({k: p for k, p in params.items()}, ema_sd, f"{path} (EMA weights)")
    model.load_state_dict(raw)
    ema.load([ema_sd[n] for n in params], meta["ema"])
    try:
        opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PriorCheckpointError(f"{path}: optimiser state does not fit the model ({exc})") from exc
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def _save_checkpoint(out: Path, model, ema, opt, scaler, config: dict, step: int, wall: float,
                     opts: TrainOptions, data_record: dict, d: _Dist, amp: str) -> None:
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    ema_meta = ema.meta()
    names = [n for n, _ in model.named_parameters()]
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{n}": s for n, s in zip(names, ema.shadow_params)})
    tensors.update(opt_tensors)
    meta = {"step": step, "wall_time_s": wall, "seed": opts.seed, "world_size": d.world,
            "target_steps": opts.steps, "ema": ema_meta, "optimizer": opt_meta,
            "scaler": scaler.state_dict() if scaler is not None else None}
    # training state first, exported weights + config last: the config never claims more
    # steps than the weights next to it hold
    save_tensors(out / TRAIN_STATE_NAME, tensors,
                 {"format": "tomo-prior-train-state", "state": json.dumps(meta)})
    save_tensors(out / WEIGHTS_NAME, _ema_state_dict(model, ema), {"format": "tomo-diffusion-prior-weights"})
    record = dict(config)
    record["training"] = {
        "steps": step, "target_steps": opts.steps, "wall_time_s": round(wall, 1),
        "batch_size_per_process": opts.batch_size, "processes": d.world,
        "patches_seen": step * opts.batch_size * d.world,
        "optimizer": {"name": "AdamW", "lr": opts.lr, "lr_schedule": opts.lr_schedule,
                      "warmup_steps": opts.warmup_steps, "weight_decay": opts.weight_decay,
                      "grad_clip": opts.grad_clip},
        "ema": {"max_decay": opts.ema_decay, "decay_at_update_k": "min(max_decay, 1 - k^(-2/3))"},
        "augmentation": {"hflip": opts.hflip, "vflip": opts.vflip, "random_crops": True,
                         "balance": opts.balance},
        "seed": opts.seed, "mixed_precision": amp, "initialised_from": opts.init_from,
        "hardware": _hardware(d), "software": _software(),
    }
    record["data"] = data_record
    save_config(out / CONFIG_NAME, record)


def _hardware(d: _Dist) -> str:
    if d.device.type == "cuda":
        return f"{d.world} x {torch.cuda.get_device_name(d.device)}"
    return f"{d.world} process(es) on {os.cpu_count()} CPU cores ({cpu_model()}), " \
           f"{torch.get_num_threads()} thread(s) each"


def cpu_model() -> str:
    """The CPU model name (Linux /proc/cpuinfo), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _software() -> dict:
    import diffusers
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


# ----------------------------------------------------------------------------- log

def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_log(path) -> list[dict]:
    """Rows of a training ``log.csv`` as dicts of floats."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_loss(log_path, png_path, title: str = "training loss") -> Path:
    """PNG of the loss curve (log scale) from ``log.csv``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_log(log_path)
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label=f"mean over the logging interval")
    if len(loss) >= 20:
        k = max(5, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"running mean of {k} rows")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("masked eps MSE")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


# ----------------------------------------------------------------------------- main loop

def _lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warm-up, then constant or cosine decay to 10 % of ``lr`` at ``opts.steps``."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    if opts.lr_schedule == "constant":
        return opts.lr
    frac = min(1.0, (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps))
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def _validate(opts: TrainOptions) -> None:
    for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
        if getattr(opts, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(opts, name)}")
    if opts.lr <= 0 or opts.grad_clip <= 0 or not 0 < opts.ema_decay < 1:
        raise ValueError("lr and grad_clip must be > 0 and ema_decay in (0, 1)")
    if opts.max_minutes is not None and opts.max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {opts.max_minutes}")
    if opts.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {opts.lr_schedule!r}")
    if not opts.data:
        raise ValueError("no training data given")


def train(opts: TrainOptions) -> dict:
    """Train (or resume training) a diffusion prior; returns a summary dict.

    Run under ``torchrun --nproc_per_node N`` for data-parallel training (gloo on CPU, NCCL on
    GPUs); every process draws its own batches, gradients are averaged by DDP.
    """
    from tqdm import tqdm

    _validate(opts)
    out = Path(opts.out)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    d = _setup_distributed(opts.device, opts.threads)
    has_ckpt = (out / TRAIN_STATE_NAME).exists()
    if opts.resume:
        if not has_ckpt:
            raise FileNotFoundError(f"--resume: no {TRAIN_STATE_NAME} in {out}")
        config = {k: v for k, v in load_config(out / CONFIG_NAME).items() if k not in ("training", "data")}
        _check_resume_options(opts, config, out)
    else:
        if has_ckpt or (out / WEIGHTS_NAME).exists():
            raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or "
                                  f"choose another --out")
        config = _requested_config(opts) if not opts.init_from else _init_config(opts.init_from)

    import warnings
    with warnings.catch_warnings():
        if not d.main:
            warnings.simplefilter("ignore")
        records, report = collect_slices(opts.data, config["hu_window"])
    sampler = SliceSampler(records, config, hflip=opts.hflip, vflip=opts.vflip, balance=opts.balance)
    if not opts.resume and not opts.init_from and opts.gaussian_skip is not False:
        mean, var = pixel_statistics(sampler)
        config["gaussian_skip"] = {"mean": mean, "variance": var}
    data_record = report.as_dict()
    if d.main:
        print(f"tomo train: {report.summary()}", file=sys.stderr)

    torch.manual_seed(opts.seed)
    model = build_unet(config).to(d.device)
    if opts.init_from and not opts.resume:
        _load_initial_weights(model, opts.init_from)
    ema = _EMA(model, opts.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    amp_dtype = None
    if opts.amp and d.device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif opts.cpu_bf16 and d.device.type == "cpu":
        amp_dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype else "off"

    step, wall0 = 0, 0.0
    if opts.resume:
        meta = _load_train_state(out, model, ema, opt, scaler)
        step, wall0 = int(meta["step"]), float(meta["wall_time_s"])
        if meta.get("world_size", 1) != d.world and d.main:
            print(f"tomo train: warning: resuming a {meta['world_size']}-process run with {d.world} "
                  "processes; batches differ from the original run", file=sys.stderr)
        if d.main:
            _truncate_log(out / LOG_NAME, step)
            print(f"tomo train: resumed {out} at step {step}", file=sys.stderr)
    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    scheduler = build_scheduler(config)
    T = scheduler.config.num_train_timesteps
    c_skip, c_out, skip_mean = (v.to(d.device) if isinstance(v, torch.Tensor) else v
                                for v in skip_coefficients(config, scheduler.alphas_cumprod))
    sqrt_abar = scheduler.alphas_cumprod.to(torch.float64).sqrt().to(d.device)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME
    if d.main and not log_path.exists():
        atomic_write_text(log_path, ",".join(LOG_FIELDS) + "\n")

    t_start = time.time()
    start_step = step
    interval_losses: list[float] = []
    interval_t0 = time.time()
    last_row: dict = {}
    last_ckpt = time.time()
    bar = tqdm(total=opts.steps, initial=step, desc="training", unit="step", disable=not (d.main and opts.progress),
               mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    model.train()
    stop_early = False
    while step < opts.steps and not stop_early:
        g = _step_generator(opts.seed, d.rank, step)
        x0, mask, pos = sampler.sample(opts.batch_size, g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, T, (opts.batch_size,), generator=g)
        x0, mask, noise, t = (v.to(d.device) for v in (x0, mask, noise, t))
        x_t = scheduler.add_noise(x0, noise, t) * mask          # zero padding outside the slice
        inp = torch.cat([x_t, pos.to(d.device)], dim=1) if pos is not None else x_t
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, opts)
        with torch.autocast(device_type=d.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            pred = net(inp, t).sample
        pred = combine_output(pred.float(), x_t, t, c_skip, c_out, sqrt_abar, skip_mean)
        loss = ((pred - noise) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip))
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        ema.step(model)
        step += 1
        interval_losses.append(loss.item())

        if step % opts.log_every == 0 or step == opts.steps:
            mean_loss = _all_mean(float(np.mean(interval_losses)), d)
            now = time.time()
            rate = len(interval_losses) * opts.batch_size * d.world / max(now - interval_t0, 1e-9)
            last_row = {"step": step, "loss": f"{mean_loss:.6f}", "lr": f"{_lr_at(step - 1, opts):.3e}",
                        "grad_norm": f"{grad_norm:.4f}", "patches_per_s": f"{rate:.2f}",
                        "elapsed_s": f"{wall0 + now - t_start:.1f}"}
            if d.main:
                with open(log_path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=LOG_FIELDS).writerow(last_row)
                bar.set_postfix(loss=f"{mean_loss:.4f}", patches_s=f"{rate:.1f}", refresh=False)
            interval_losses, interval_t0 = [], now
        bar.update(1)
        if opts.max_minutes is not None:
            # all processes must agree to stop at the same step
            over = (wall0 + time.time() - t_start) / 60 >= opts.max_minutes
            stop_early = _all_mean(float(over), d) > 0

        due = opts.checkpoint_minutes is not None and (time.time() - last_ckpt) / 60 >= opts.checkpoint_minutes
        if d.world > 1:
            due = _all_mean(float(due), d) > 0
        if step % opts.checkpoint_every == 0 or step == opts.steps or stop_early or due:
            last_ckpt = time.time()
            if d.main:
                _save_checkpoint(out, model, ema, opt, scaler, config, step, wall0 + time.time() - t_start,
                                 opts, data_record, d, amp_name)
                if not sys.stderr.isatty():
                    print(f"tomo train: step {step}/{opts.steps} loss {last_row.get('loss', '?')} "
                          f"checkpoint saved ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
            _barrier(d)
    bar.close()
    _check_replicas_agree(model, d)

    summary = {"out": str(out), "steps": step, "steps_this_session": step - start_step,
               "wall_time_s": wall0 + time.time() - t_start, "world_size": d.world,
               "stopped_by_time_limit": stop_early,
               "last_loss": float(last_row["loss"]) if last_row else None, "data": data_record}
    if d.main:
        if log_path.exists() and len(read_log(log_path)) > 1:
            plot_loss(log_path, out / "loss.png",
                      title=f"{out.name}: {step} steps, batch {opts.batch_size} x {d.world}")
        if opts.samples > 0:
            prior = load_ema_prior(out, d.device)
            size = (opts.sample_size or config["image_size"],) * 2
            sample_grid(prior, out / "samples.png", n=opts.samples, steps=opts.sample_steps, seed=opts.seed,
                        size=size, progress=opts.progress)
            summary["samples"] = str(out / "samples.png")
    _barrier(d)
    if d.world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return summary


def _check_replicas_agree(model: torch.nn.Module, d: _Dist) -> None:
    """DDP sanity check: every process ends with the same weights."""
    if d.world == 1:
        return
    import torch.distributed as dist
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(local) for _ in range(d.world)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas disagree after training: {[float(g) for g in gathered]}")


def load_ema_prior(folder, device="cpu") -> DiffusionPrior:
    """The EMA prior of a training folder (same as :func:`tomo.priors.load_prior`)."""
    from ..prior import load_prior
    return load_prior(folder, device=device)
