"""Training loop of the diffusion prior (``tomo train``): one script for 1 CPU, 1 GPU or many (torchrun).

Loss: masked epsilon MSE, ``|| m * (eps_theta([m * x_t, pos], t) - eps) ||^2 / sum(m)``, where
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (diffusers ``DDPMScheduler.add_noise``), ``m``
masks the zero padding outside the slice and ``pos`` are the x/y position channels.

Reproducibility: every random draw of step ``k`` on rank ``r`` (slices, crops, flips, noise,
time steps) comes from a generator seeded with ``(seed, r, k)``, so the random state of a run
is its step counter, and ``--resume`` from a checkpoint continues bit for bit as if the run
had not stopped (same process count and hardware).

Files in the output folder (each written atomically, every ``checkpoint_every`` steps):

- ``prior.safetensors``  EMA weights (what :func:`tomo.priors.load_prior` reads); with
  ``shard_mb``, ``prior.safetensors.index.json`` and its shards instead
- ``prior.json``         configuration + training and data record
- ``train_state.safetensors`` raw weights, EMA, AdamW moments, step, wall time (for resume)
- ``log.csv``            step, loss, lr, grad_norm, patches_per_s, elapsed_s
- ``samples.png``, ``loss.png`` at the end

The other modules of this package: :mod:`.options` (options, validation, learning rate),
:mod:`.distributed` (process group), :mod:`.ema`, :mod:`.state` (checkpoints), :mod:`.log`.
"""

from __future__ import annotations

import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CONFIG_NAME, TRAIN_STATE_NAME, has_weights, load_config
from ..prior import DiffusionPrior, build_scheduler, build_unet, combine_output, skip_coefficients
from ..sampling import sample_grid  # imported up front: a long run must not pick up later edits
from ..training_data import SliceSampler, collect_slices, pixel_statistics
from . import distributed as dist_
from .ema import EMA
from .log import LOG_NAME, append_row, plot_loss, read_log, start_log, truncate_log
from .options import (
    TrainOptions,
    check_resume_augmentation,
    check_resume_options,
    init_config,
    lr_at,
    requested_config,
    validate,
)
from .state import load_initial_weights, load_train_state, save_checkpoint


def _run_config(opts: TrainOptions, out: Path) -> dict:
    """The model configuration: the checkpoint's (--resume), the init prior's, or a new one."""
    has_ckpt = (out / TRAIN_STATE_NAME).exists()
    if opts.resume:
        if not has_ckpt:
            raise FileNotFoundError(f"--resume: no {TRAIN_STATE_NAME} in {out}")
        saved = load_config(out / CONFIG_NAME)
        config = {k: v for k, v in saved.items() if k not in ("training", "data")}
        check_resume_options(opts, config, out)
        check_resume_augmentation(opts, saved.get("training"), out)
        return config
    if has_ckpt or has_weights(out):
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    return requested_config(opts) if not opts.init_from else init_config(opts.init_from)


def _load_data(opts: TrainOptions, config: dict, d: dist_.Dist) -> tuple[SliceSampler, dict]:
    """The slice sampler and the data record; fills in the Gaussian-skip statistics of a new run."""
    with warnings.catch_warnings():
        if not d.main:
            warnings.simplefilter("ignore")
        records, report = collect_slices(opts.data, config["hu_window"])
    sampler = SliceSampler(
        records,
        config,
        hflip=opts.hflip,
        vflip=opts.vflip,
        balance=opts.balance,
        rotate_deg=opts.rotate_deg,
        scale_jitter=opts.scale_jitter,
        hu_jitter=opts.hu_jitter,
    )
    if not opts.resume and not opts.init_from and opts.gaussian_skip is not False:
        mean, var = pixel_statistics(sampler)
        config["gaussian_skip"] = {"mean": mean, "variance": var}
    if d.main:
        print(f"tomo train: {report.summary()}", file=sys.stderr)
    return sampler, report.as_dict()


def _amp_dtype(opts: TrainOptions, device: torch.device):
    if opts.amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if opts.cpu_bf16 and device.type == "cpu":
        return torch.bfloat16
    return None


def _draw_batch(sampler: SliceSampler, opts: TrainOptions, rank: int, step: int, T: int, pin: bool):
    """Everything random of one step, from that step's generator (order fixed: crops, noise, t)."""
    g = dist_.step_generator(opts.seed, rank, step)
    x0, mask, pos = sampler.sample(opts.batch_size, g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, T, (opts.batch_size,), generator=g)
    batch = (x0, mask, noise, t, pos)
    return tuple(v.pin_memory() if pin and v is not None else v for v in batch)


def _batches(sampler: SliceSampler, opts: TrainOptions, d: dist_.Dist, start: int, T: int):
    """Batches of steps ``start, start + 1, ...``. On CUDA the next one is drawn in a thread
    while the GPU works on the current one (same batches: each step has its own generator)."""
    if d.device.type != "cuda":
        step = start
        while True:
            yield _draw_batch(sampler, opts, d.rank, step, T, pin=False)
            step += 1
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_draw_batch, sampler, opts, d.rank, start, T, True)
        step = start
        while True:
            batch = pending.result()
            step += 1
            pending = pool.submit(_draw_batch, sampler, opts, d.rank, step, T, True)
            yield batch


def _check_finite(losses: list[torch.Tensor], first_step: int) -> list[float]:
    """The losses as floats; ``FloatingPointError`` naming the first non-finite step.

    Losses stay on the device until a log row or checkpoint needs them, so a GPU step never
    waits for the host."""
    values = torch.stack(losses).tolist() if losses else []
    for k, v in enumerate(values):
        if not np.isfinite(v):
            raise FloatingPointError(f"loss became {v} at step {first_step + k}; lower --lr")
    return values


def train(opts: TrainOptions) -> dict:
    """Train (or resume training) a diffusion prior; returns a summary dict.

    Run under ``torchrun --nproc_per_node N`` for data-parallel training (gloo on CPU, NCCL on
    GPUs); every process draws its own batches, gradients are averaged by DDP.
    """
    from tqdm import tqdm

    validate(opts)
    out = Path(opts.out)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    d = dist_.setup(opts.device, opts.threads)
    config = _run_config(opts, out)
    sampler, data_record = _load_data(opts, config, d)

    torch.manual_seed(opts.seed)
    model = build_unet(config).to(d.device)
    if opts.init_from and not opts.resume:
        load_initial_weights(model, opts.init_from)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, opts.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    amp_dtype = _amp_dtype(opts, d.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype else "off"

    step, wall0 = 0, 0.0
    if opts.resume:
        meta = load_train_state(out, model, ema, opt, scaler)
        step, wall0 = int(meta["step"]), float(meta["wall_time_s"])
        if meta.get("world_size", 1) != d.world and d.main:
            print(
                f"tomo train: warning: resuming a {meta['world_size']}-process run with {d.world} "
                "processes; batches differ from the original run",
                file=sys.stderr,
            )
        if d.main:
            truncate_log(out / LOG_NAME, step)
            print(f"tomo train: resumed {out} at step {step}", file=sys.stderr)
    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    if opts.compile:
        net = torch.compile(net)

    scheduler = build_scheduler(config)
    T = scheduler.config.num_train_timesteps
    c_skip, c_out, skip_mean = (
        v.to(d.device) if isinstance(v, torch.Tensor) else v
        for v in skip_coefficients(config, scheduler.alphas_cumprod)
    )
    sqrt_abar = scheduler.alphas_cumprod.to(torch.float64).sqrt().to(d.device)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME
    if d.main:
        start_log(log_path)

    t_start = time.time()
    start_step = step
    interval_losses: list[torch.Tensor] = []
    interval_t0 = time.time()
    last_row: dict = {}
    last_ckpt = time.time()
    bar = tqdm(
        total=opts.steps,
        initial=step,
        desc="training",
        unit="step",
        disable=None if (d.main and opts.progress) else True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
    )
    model.train()
    stop_early = False
    batches = _batches(sampler, opts, d, step, T)
    memory = torch.channels_last if opts.channels_last else torch.contiguous_format
    while step < opts.steps and not stop_early:
        x0, mask, noise, t, pos = (v.to(d.device, non_blocking=True) if v is not None else None for v in next(batches))
        x_t = scheduler.add_noise(x0, noise, t) * mask  # zero padding outside the slice
        inp = torch.cat([x_t, pos], dim=1) if pos is not None else x_t
        for group in opt.param_groups:
            group["lr"] = lr_at(step, opts)
        with torch.autocast(device_type=d.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred = net(inp.contiguous(memory_format=memory), t).sample
        pred = combine_output(pred.float(), x_t, t, c_skip, c_out, sqrt_abar, skip_mean)
        loss = ((pred - noise) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        ema.step(model)
        step += 1
        interval_losses.append(loss.detach())

        if step % opts.log_every == 0 or step == opts.steps:
            values = _check_finite(interval_losses, step - len(interval_losses))
            mean_loss = dist_.all_mean(float(np.mean(values)), d)
            now = time.time()
            rate = len(values) * opts.batch_size * d.world / max(now - interval_t0, 1e-9)
            last_row = {
                "step": step,
                "loss": f"{mean_loss:.6f}",
                "lr": f"{lr_at(step - 1, opts):.3e}",
                "grad_norm": f"{float(grad_norm):.4f}",
                "patches_per_s": f"{rate:.2f}",
                "elapsed_s": f"{wall0 + now - t_start:.1f}",
            }
            if d.main:
                append_row(log_path, last_row)
                bar.set_postfix(loss=f"{mean_loss:.4f}", patches_s=f"{rate:.1f}", refresh=False)
            interval_losses, interval_t0 = [], now
        bar.update(1)
        if opts.max_minutes is not None:
            # all processes must agree to stop at the same step
            over = (wall0 + time.time() - t_start) / 60 >= opts.max_minutes
            stop_early = dist_.all_mean(float(over), d) > 0

        due = opts.checkpoint_minutes is not None and (time.time() - last_ckpt) / 60 >= opts.checkpoint_minutes
        if d.world > 1:
            due = dist_.all_mean(float(due), d) > 0
        if step % opts.checkpoint_every == 0 or step == opts.steps or stop_early or due:
            _check_finite(interval_losses, step - len(interval_losses))  # never save NaN weights
            last_ckpt = time.time()
            if d.main:
                save_checkpoint(
                    out,
                    model,
                    ema,
                    opt,
                    scaler,
                    config,
                    step,
                    wall0 + time.time() - t_start,
                    opts,
                    data_record,
                    d,
                    amp_name,
                )
                if not sys.stderr.isatty():
                    print(
                        f"tomo train: step {step}/{opts.steps} loss {last_row.get('loss', '?')} "
                        f"checkpoint saved ({time.strftime('%H:%M:%S')})",
                        file=sys.stderr,
                        flush=True,
                    )
            dist_.barrier(d)
    bar.close()
    batches.close()
    dist_.check_replicas_agree(model, d)

    summary = {
        "out": str(out),
        "steps": step,
        "steps_this_session": step - start_step,
        "wall_time_s": wall0 + time.time() - t_start,
        "world_size": d.world,
        "stopped_by_time_limit": stop_early,
        "last_loss": float(last_row["loss"]) if last_row else None,
        "data": data_record,
    }
    if d.main:
        _finish(out, opts, config, d, step, summary)
    dist_.barrier(d)
    dist_.shutdown(d)
    return summary


def _finish(out: Path, opts: TrainOptions, config: dict, d: dist_.Dist, step: int, summary: dict) -> None:
    """Loss curve and unconditional samples of the finished run (main process)."""
    log_path = out / LOG_NAME
    if log_path.exists() and len(read_log(log_path)) > 1:
        plot_loss(log_path, out / "loss.png", title=f"{out.name}: {step} steps, batch {opts.batch_size} x {d.world}")
    if opts.samples > 0:
        prior = load_ema_prior(out, d.device)
        size = (opts.sample_size or config["image_size"],) * 2
        sample_grid(
            prior,
            out / "samples.png",
            n=opts.samples,
            steps=opts.sample_steps,
            seed=opts.seed,
            size=size,
            progress=opts.progress,
        )
        summary["samples"] = str(out / "samples.png")


def load_ema_prior(folder, device="cpu") -> DiffusionPrior:
    """The EMA prior of a training folder (same as :func:`tomo.priors.load_prior`)."""
    from ..prior import load_prior

    return load_prior(folder, device=device)
