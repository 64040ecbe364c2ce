"""Checkpoints of a training run: the resumable training state, the exported EMA weights and
the ``prior.json`` record (configuration, training, data, hardware)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from ..checkpoint import (
    CONFIG_NAME,
    TRAIN_STATE_NAME,
    PriorCheckpointError,
    check_state_dict,
    load_tensors,
    load_weights,
    save_config,
    save_tensors,
    save_weights,
)
from .distributed import Dist
from .ema import EMA
from .options import TrainOptions


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


def load_initial_weights(model: torch.nn.Module, prior_dir: str) -> None:
    """Start from a prior's (EMA) weights: fine-tuning rather than training from scratch."""
    tensors, _ = load_weights(prior_dir)
    check_state_dict(model.state_dict(), tensors, str(prior_dir))
    model.load_state_dict(tensors)


def load_train_state(out: Path, model, ema: EMA, opt, scaler) -> dict:
    """Restore raw weights, EMA, optimiser (and fp16 scaler) from ``out``; returns the state record."""
    path = out / TRAIN_STATE_NAME
    tensors, metadata = load_tensors(path)
    if metadata.get("format") != "tomo-prior-train-state":
        raise PriorCheckpointError(f"{path} is not a tomo training state")
    meta = json.loads(metadata["state"])
    raw = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_sd = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
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


def save_checkpoint(
    out: Path,
    model,
    ema: EMA,
    opt,
    scaler,
    config: dict,
    step: int,
    wall: float,
    opts: TrainOptions,
    data_record: dict,
    d: Dist,
    amp: str,
) -> None:
    """Write the training state, then the EMA weights, then ``prior.json`` (each atomically)."""
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    names = [n for n, _ in model.named_parameters()]
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{n}": s for n, s in zip(names, ema.shadow_params)})
    tensors.update(opt_tensors)
    meta = {
        "step": step,
        "wall_time_s": wall,
        "seed": opts.seed,
        "world_size": d.world,
        "target_steps": opts.steps,
        "ema": ema.meta(),
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    # training state first, exported weights + config last: the config never claims more
    # steps than the weights next to it hold
    save_tensors(out / TRAIN_STATE_NAME, tensors, {"format": "tomo-prior-train-state", "state": json.dumps(meta)})
    save_weights(out, ema.state_dict_of(model), opts.shard_mb)
    record = dict(config)
    record["training"] = training_record(opts, step, wall, d, amp)
    record["data"] = data_record
    save_config(out / CONFIG_NAME, record)


def training_record(opts: TrainOptions, step: int, wall: float, d: Dist, amp: str) -> dict:
    """The ``training`` section of ``prior.json``."""
    return {
        "steps": step,
        "target_steps": opts.steps,
        "wall_time_s": round(wall, 1),
        "batch_size_per_process": opts.batch_size,
        "processes": d.world,
        "patches_seen": step * opts.batch_size * d.world,
        "optimizer": {
            "name": "AdamW",
            "lr": opts.lr,
            "lr_schedule": opts.lr_schedule,
            "warmup_steps": opts.warmup_steps,
            "weight_decay": opts.weight_decay,
            "grad_clip": opts.grad_clip,
        },
        "ema": {"max_decay": opts.ema_decay, "decay_at_update_k": "min(max_decay, 1 - k^(-2/3))"},
        "augmentation": {
            "hflip": opts.hflip,
            "vflip": opts.vflip,
            "random_crops": True,
            "balance": opts.balance,
            "rotate_deg": opts.rotate_deg,
            "scale_jitter": opts.scale_jitter,
            "hu_jitter": opts.hu_jitter,
        },
        "seed": opts.seed,
        "mixed_precision": amp,
        "initialised_from": opts.init_from,
        "channels_last": opts.channels_last,
        "compiled": opts.compile,
        "hardware": hardware(d),
        "software": software(),
        "command": opts.command or command_line(),
    }


def command_line() -> str:
    """This process's command line, with the ``tomo`` entry point or module spelled as typed."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    if argv0.name == "tomo":
        head = "tomo"
    elif argv0.name == "main.py" and argv0.parent.name == "cli":
        head = "python -m tomo.cli.main"
    else:
        head = f"python {sys.argv[0]}"
    return " ".join([head, shlex.join(sys.argv[1:])]).strip()


def hardware(d: Dist) -> str:
    if d.device.type == "cuda":
        return f"{d.world} x {torch.cuda.get_device_name(d.device)}"
    return (
        f"{d.world} process(es) on {os.cpu_count()} CPU cores ({cpu_model()}), {torch.get_num_threads()} thread(s) each"
    )


def cpu_model() -> str:
    """The CPU model name (Linux /proc/cpuinfo), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}
