"""A training loop for short GPU windows: the whole training set lives on the device.

``tomo train`` (:mod:`.loop`) draws every batch on the host from a per-step generator, which makes
runs resumable bit for bit but keeps a GPU waiting on Python and host-to-device copies. This loop
is built for throughput instead (issue 22, "a training loop that uses the GPU"):

- the packed training slices are uploaded once, as int16 HU in one padded tensor
  ``[N, H_max, W_max]`` (1,076 slices of at most 600 x 600 px are < 1 GB);
- slice choice (weights ``1 / sqrt(slices of the patient)``, by inverse CDF), crops, flips, the
  optional rotation / scaling (one ``grid_sample``) and HU offset, noise and time steps are all
  drawn on the device from one device generator;
- nothing waits for the host inside a step: losses stay on the device until a log row (every
  ``log_every`` steps), the gradient clipping and AdamW (``fused`` on CUDA) never synchronise,
  the EMA is one ``torch._foreach_lerp_``;
- bf16 autocast (CUDA; weights and optimiser in fp32), channels-last, optional ``torch.compile``
  of the loss (noising + network + Gaussian skip + masked MSE), with its compile time counted
  in the time budget, which starts before the data upload.

It continues a prior (its EMA weights, a fresh optimiser) or starts a new one, and writes what
``load_prior`` reads: EMA weights (optionally sharded), ``prior.json`` with the cumulative
``training`` record (and one ``training.bursts`` entry per run of this loop) and ``log.csv``.
It is not bit-for-bit resumable (one device generator, seeded per run); a run that is killed
loses the steps since its last export (``export_minutes``).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import CONFIG_NAME, check_state_dict, load_weights, save_config, save_weights
from ..patches import position_grid
from ..prior import build_unet, combine_output, schedule_alphas_cumprod, skip_coefficients
from ..training_data import check_augmentation, collect_slices, resample
from .log import LOG_NAME, append_row, start_log


@dataclass
class DeviceTrainOptions:
    """Options of :func:`train_on_device` (the units and meaning of ``tomo train``'s)."""

    data: list[str]
    out: str
    config: dict  # model configuration (no "training"/"data"); gaussian_skip None -> computed
    init_from: str | None = None  # prior folder whose EMA weights start the run
    minutes: float = 8.0  # wall-time budget from the start of the call (upload, compile included)
    max_steps: int = 10**9
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 200
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = 0.0
    scale_jitter: float = 0.0
    hu_jitter: float = 0.0
    device: str = "cuda"
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    shard_mb: float | None = 16.0
    weights_dtype: str = "float32"  # of the exported EMA weights: "float16" halves the files
    log_every: int = 50
    export_minutes: float | None = 3.0  # write the EMA weights this often (a kill loses less)
    command: str = ""
    previous: dict = field(default_factory=dict)  # training record of the prior continued


@dataclass
class DeviceData:
    """The training slices on the device: int16 HU, zero padded, with their sizes and weights."""

    hu: torch.Tensor  # int16 [N, H_max, W_max]
    sizes: torch.Tensor  # long [N, 2]: rows, cols
    cdf: torch.Tensor  # float32 [N]: cumulative sampling weights, last = 1
    report: dict


def upload_slices(paths, config: dict, device: torch.device, balance_power: float = 0.5) -> DeviceData:
    """Read the training slices (packed ``.npz`` or any ``tomo train`` data), resample them to the
    prior's pixel size (a no-op for packed slices) and upload them as one padded int16 tensor."""
    records, report = collect_slices(paths, config["hu_window"])
    lo, hi = config["hu_window"]
    images = [
        np.clip(np.rint(resample(r.hu, r.spacing_mm, config["pixel_size_mm"])), lo, hi).astype(np.int16)
        for r in records
    ]
    hmax, wmax = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    hu = torch.zeros(len(images), hmax, wmax, dtype=torch.int16)
    for k, img in enumerate(images):
        hu[k, : img.shape[0], : img.shape[1]] = torch.from_numpy(img)
    counts = Counter(r.group for r in records)
    w = torch.tensor([counts[r.group] ** -balance_power for r in records], dtype=torch.float64)
    cdf = (w.cumsum(0) / w.sum()).to(torch.float32)
    cdf[-1] = 1.0
    sizes = torch.tensor([img.shape for img in images], dtype=torch.long)
    return DeviceData(hu.to(device), sizes.to(device), cdf.to(device), report.as_dict())


def pixel_moments(data: DeviceData, config: dict) -> tuple[float, float]:
    """Mean and variance (model range) of the training pixels, slices weighted as sampled."""
    lo, hi = config["hu_window"]
    w = torch.diff(data.cdf, prepend=data.cdf.new_zeros(1)).double()
    m1 = torch.zeros_like(w)
    m2 = torch.zeros_like(w)
    for k in range(data.hu.shape[0]):
        h, wd = (int(v) for v in data.sizes[k])
        x = 2 * (data.hu[k, :h, :wd].double() - lo) / (hi - lo) - 1
        m1[k], m2[k] = x.mean(), x.square().mean()
    mean = float((w * m1).sum())
    return mean, float((w * m2).sum()) - mean**2


class DeviceSampler:
    """Training crops drawn on the device (the semantics of :class:`tomo.priors.training_data.SliceSampler`:
    a random window of a random slice, zero outside the slice and masked there; patch crops may
    hang half a patch over the border)."""

    def __init__(self, data: DeviceData, config: dict, opts: DeviceTrainOptions):
        check_augmentation(opts.rotate_deg, opts.scale_jitter, opts.hu_jitter)
        self.data, self.opts = data, opts
        self.crop = int(config["patch_size"] or config["image_size"])
        self.patch_mode = config["patch_size"] is not None
        self.position_channels = bool(config["position_channels"])
        self.lo, self.hi = (float(v) for v in config["hu_window"])
        self.affine = opts.rotate_deg > 0 or opts.scale_jitter > 0

    def _offsets(self, n: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Uniform integer crop starts for axes of ``n`` pixels (inclusive ranges as SliceSampler)."""
        c = self.crop
        if self.patch_mode:
            lo = torch.full_like(n, -(c // 2))
            hi = torch.clamp(n - c + c // 2, min=-(c // 2))
        else:
            lo = torch.clamp(n - c, max=0)
            hi = torch.clamp(n - c, min=0)
        return lo + torch.floor(u * (hi - lo + 1)).long().clamp(max=hi - lo)

    def sample(self, batch: int, g: torch.Generator):
        """``x0`` [B, 1, C, C] (model range, 0 outside the slice), ``mask`` [B, 1, C, C], ``pos`` or None."""
        d, c, dev = self.data, self.crop, self.data.hu.device
        idx = torch.searchsorted(d.cdf, torch.rand(batch, generator=g, device=dev)).clamp(max=d.cdf.numel() - 1)
        rows, cols = d.sizes[idx, 0], d.sizes[idx, 1]
        u = torch.rand(batch, 4, generator=g, device=dev)
        top, left = self._offsets(rows, u[:, 0]), self._offsets(cols, u[:, 1])
        ar = torch.arange(c, device=dev)
        if self.affine:
            x0, inside = self._affine_crop(idx, rows, cols, top, left, g)
        else:
            r = top[:, None] + ar  # [B, C]
            q = left[:, None] + ar
            inside = ((r >= 0) & (r < rows[:, None]))[:, :, None] & ((q >= 0) & (q < cols[:, None]))[:, None, :]
            r_c = r.clamp(0, d.hu.shape[1] - 1)[:, :, None]
            q_c = q.clamp(0, d.hu.shape[2] - 1)[:, None, :]
            hu = d.hu[idx[:, None, None], r_c, q_c].float()
            x0 = torch.where(inside, (2 * (hu - self.lo) / (self.hi - self.lo) - 1).clamp(-1, 1), 0.0)
        mask = inside.float()
        if self.opts.hflip:  # flipping the crop = cropping the flipped slice at the mirrored offset
            flip = u[:, 2, None, None] < 0.5
            x0, mask = torch.where(flip, x0.flip(-1), x0), torch.where(flip, mask.flip(-1), mask)
            left = torch.where(flip[:, 0, 0], cols - left - c, left)
        if self.opts.vflip:
            flip = u[:, 3, None, None] < 0.5
            x0, mask = torch.where(flip, x0.flip(-2), x0), torch.where(flip, mask.flip(-2), mask)
            top = torch.where(flip[:, 0, 0], rows - top - c, top)
        if self.opts.hu_jitter > 0:
            shift = (2 * torch.rand(batch, 1, 1, generator=g, device=dev) - 1) * (
                2 * self.opts.hu_jitter / (self.hi - self.lo)
            )
            x0 = torch.where(mask > 0, (x0 + shift).clamp(-1, 1), x0)
        pos = position_grid(top, left, c, rows, cols, device=dev) if self.position_channels else None
        return x0[:, None], mask[:, None], pos

    def _affine_crop(self, idx, rows, cols, top, left, g):
        """Crops of rotated / scaled slices: one bilinear ``grid_sample`` of the chosen slices."""
        d, c, dev = self.data, self.crop, self.data.hu.device
        b = idx.numel()
        ang = (2 * torch.rand(b, generator=g, device=dev) - 1) * math.radians(self.opts.rotate_deg)
        scale = 1 + (2 * torch.rand(b, generator=g, device=dev) - 1) * self.opts.scale_jitter
        ar = torch.arange(c, device=dev, dtype=torch.float32)
        yy = (top[:, None, None] + ar[None, :, None]).float().expand(b, c, c)  # canvas pixel -> slice pixel
        xx = (left[:, None, None] + ar[None, None, :]).float().expand(b, c, c)
        cy, cx = ((rows.float() - 1) / 2)[:, None, None], ((cols.float() - 1) / 2)[:, None, None]
        cos, sin, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None], scale[:, None, None]
        dy, dx = yy - cy, xx - cx  # output offset from the centre -> input offset (inverse of s * R)
        sy = cy + (cos * dy + sin * dx) / s
        sx = cx + (-sin * dy + cos * dx) / s
        hmax, wmax = d.hu.shape[1], d.hu.shape[2]
        grid = torch.stack([(2 * sx + 1) / wmax - 1, (2 * sy + 1) / hmax - 1], dim=-1)
        # interpolate x0 + 1 with 0 (air) outside each slice, so pixels rotated in from outside
        # the slice are air (as SliceSampler fills them) and the slice edges blend into air
        on_slice = (torch.arange(hmax, device=dev)[None, :, None] < rows[:, None, None]) & (
            torch.arange(wmax, device=dev)[None, None, :] < cols[:, None, None]
        )
        src = torch.where(on_slice, 2 * (d.hu[idx].float() - self.lo) / (self.hi - self.lo), 0.0)[:, None]
        x0 = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] - 1
        in_canvas = (yy >= 0) & (yy < rows[:, None, None]) & (xx >= 0) & (xx < cols[:, None, None])
        return torch.where(in_canvas, x0.clamp(-1, 1), 0.0), in_canvas


def forward_gflops(model: torch.nn.Module, config: dict, device) -> float:
    """GFLOPs of one forward pass on one training crop (FlopCounterMode: a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = config["patch_size"] or config["image_size"]
    x = torch.zeros(1, config["architecture"]["in_channels"], size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500], device=device))
    return counter.get_total_flops() / 1e9


def _software() -> dict:
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:  # a GPU machine without diffusers trains ShuffleUNet all the same
        version = None
    return {"torch": torch.__version__, "diffusers": version, "python": platform.python_version()}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"1 x {torch.cuda.get_device_name(device)}"
    from .state import cpu_model

    return f"CPU ({cpu_model()}), {torch.get_num_threads()} thread(s)"


def train_on_device(opts: DeviceTrainOptions) -> dict:
    """Train for ``opts.minutes`` (or ``max_steps``) and write the prior into ``opts.out``.

    Returns
    -------
    dict
        ``steps`` (this run), ``images``, ``images_per_s`` (log rows after the first, which
        holds the upload and compilation), ``tflops`` (3 x forward FLOPs per image x images/s),
        ``gflops_forward``, ``wall_s``, ``last_loss``, ``out``.
    """
    t_start = time.time()
    device = torch.device(opts.device)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in opts.config.items() if k not in ("training", "data")}
    data = upload_slices(opts.data, config, device)
    if config.get("gaussian_skip") is None and not opts.init_from:
        mean, var = pixel_moments(data, config)
        config["gaussian_skip"] = {"mean": mean, "variance": var}
    print(
        f"train_on_device: {data.report['n_slices']} slices of {len(data.report['groups'])} patients on {device} "
        f"({data.hu.numel() * 2 / 2**20:.0f} MiB)",
        file=sys.stderr,
        flush=True,
    )
    torch.manual_seed(opts.seed)
    model = build_unet(config).to(device)
    if opts.init_from:
        tensors, _ = load_weights(opts.init_from)
        check_state_dict(model.state_dict(), tensors, str(opts.init_from))
        model.load_state_dict(tensors)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    params = [p for p in model.parameters()]
    ema = [p.detach().clone().float() for p in params]
    prev_steps = int(opts.previous.get("steps", 0))
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay, fused=cuda)
    gflops = forward_gflops(model, config, device)

    abar = schedule_alphas_cumprod(config)
    c_skip, c_out, mu = skip_coefficients(config, abar)
    c_skip, c_out = c_skip.to(device), c_out.to(device)
    sqrt_abar, sqrt_1m = abar.sqrt().to(device), (1 - abar).sqrt().to(device)
    T = abar.numel()
    memory = torch.channels_last if opts.channels_last else torch.contiguous_format
    amp = opts.amp and cuda

    def loss_fn(x0, mask, pos, noise, t):
        shape = (-1, 1, 1, 1)
        x_t = (sqrt_abar[t].float().reshape(shape) * x0 + sqrt_1m[t].float().reshape(shape) * noise) * mask
        inp = torch.cat([x_t, pos], dim=1) if pos is not None else x_t
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            net = model(inp.contiguous(memory_format=memory), t).sample
        pred = combine_output(net.float(), x_t, t, c_skip, c_out, sqrt_abar, mu)
        return ((pred - noise) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)

    step_fn = torch.compile(loss_fn, mode=opts.compile_mode) if opts.compile else loss_fn
    sampler = DeviceSampler(data, config, opts)
    g = torch.Generator(device=device)
    g.manual_seed(opts.seed * 1_000_003 + prev_steps)
    log_path = out / LOG_NAME
    previous_log = Path(opts.init_from) / LOG_NAME if opts.init_from else None
    if previous_log is not None and previous_log.is_file() and not log_path.exists():
        log_path.write_bytes(previous_log.read_bytes())  # one log across bursts (steps are cumulative)
    start_log(log_path)

    step, last_loss = 0, float("nan")
    losses: list[torch.Tensor] = []
    rates: list[float] = []
    t_int, n_int, last_export = time.time(), 0, time.time()
    deadline = t_start + 60 * opts.minutes

    def export() -> None:
        named = [n for n, _ in model.named_parameters()]
        sd = dict(model.state_dict())
        sd.update({n: e for n, e in zip(named, ema)})
        dtype = {"float32": torch.float32, "float16": torch.float16}[opts.weights_dtype]
        sd = {k: v.detach().to("cpu", torch.float32).to(dtype).contiguous() for k, v in sd.items()}
        save_weights(out, sd, opts.shard_mb)
        record = dict(config)
        record["training"] = _record(opts, prev_steps + step, step, time.time() - t_start, device, rates, gflops)
        record["data"] = data.report
        save_config(out / CONFIG_NAME, record)

    while step < opts.max_steps and time.time() < deadline:
        x0, mask, pos = sampler.sample(opts.batch_size, g)
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, T, (opts.batch_size,), generator=g, device=device)
        for group in opt.param_groups:
            group["lr"] = opts.lr * min(1.0, (step + 1) / max(1, opts.warmup_steps))
        loss = step_fn(x0, mask, pos, noise, t)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        k = prev_steps + step + 1  # EMA updates so far: a continued prior keeps its long average
        decay = min(opts.ema_decay, 1.0 - k ** (-2.0 / 3.0))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - decay)
        losses.append(loss.detach())
        step += 1
        n_int += opts.batch_size
        if step % opts.log_every == 0:
            values = torch.stack(losses).tolist()  # the one host synchronisation, once per log row
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(
                    f"loss became {values[bad[0]]} at step {step - len(values) + bad[0]}; lower --lr"
                )
            now = time.time()
            rate = n_int / max(now - t_int, 1e-9)
            rates.append(rate)
            last_loss = float(np.mean(values))
            append_row(
                log_path,
                {
                    "step": prev_steps + step,
                    "loss": f"{last_loss:.6f}",
                    "lr": f"{opt.param_groups[0]['lr']:.3e}",
                    "grad_norm": f"{float(grad_norm):.4f}",
                    "patches_per_s": f"{rate:.2f}",
                    "elapsed_s": f"{now - t_start:.1f}",
                },
            )
            losses, t_int, n_int = [], now, 0
            print(
                f"step {prev_steps + step}: loss {last_loss:.5f}, {rate:.1f} images/s, "
                f"{rate * 3 * gflops / 1e3:.2f} TFLOP/s, {(now - t_start) / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )
            if opts.export_minutes and now - last_export >= 60 * opts.export_minutes:
                export()
                last_export = time.time()
    if cuda:
        torch.cuda.synchronize(device)
    if losses:
        values = torch.stack(losses).tolist()
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError("non-finite loss in the last steps; nothing saved; lower --lr")
        last_loss = float(np.mean(values))
    export()
    ips = _steady_rate(rates, step, opts.batch_size, time.time() - t_start)
    return {
        "out": str(out),
        "steps": step,
        "total_steps": prev_steps + step,
        "images": step * opts.batch_size,
        "images_per_s": ips,
        "tflops": ips * 3 * gflops / 1e3,
        "gflops_forward": gflops,
        "wall_s": time.time() - t_start,
        "last_loss": last_loss,
    }


def _steady_rate(rates: list[float], steps: int, batch: int, wall: float) -> float:
    """Images/s: the median of the log rows after the first (upload and compilation), else overall."""
    if len(rates) > 1:
        return float(np.median(rates[1:]))
    return rates[0] if rates else steps * batch / max(wall, 1e-9)


def _record(opts: DeviceTrainOptions, total_steps: int, steps: int, wall: float, device, rates, gflops) -> dict:
    """The cumulative ``training`` section of ``prior.json``, with one entry per burst."""
    prev = opts.previous
    ips = _steady_rate(rates, steps, opts.batch_size, wall)
    burst = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": steps,
        "images": steps * opts.batch_size,
        "minutes": round(wall / 60, 2),
        "images_per_s": round(ips, 1),
        "tflops": round(ips * 3 * gflops / 1e3, 2),
        "hardware": _hardware(device),
        "compiled": opts.compile,
    }
    return {
        "loop": "device",
        "steps": total_steps,
        "target_steps": total_steps,
        "wall_time_s": round(float(prev.get("wall_time_s", 0)) + wall, 1),
        "batch_size_per_process": opts.batch_size,
        "processes": 1,
        "patches_seen": int(prev.get("patches_seen", 0)) + steps * opts.batch_size,
        "optimizer": {
            "name": "AdamW",
            "lr": opts.lr,
            "lr_schedule": "constant",
            "warmup_steps": opts.warmup_steps,
            "weight_decay": opts.weight_decay,
            "grad_clip": opts.grad_clip,
            "fresh_each_burst": True,
        },
        "ema": {
            "max_decay": opts.ema_decay,
            "decay_at_update_k": "min(max_decay, 1 - k^(-2/3)), k counted across bursts",
        },
        "augmentation": {
            "hflip": opts.hflip,
            "vflip": opts.vflip,
            "random_crops": True,
            "balance": "sqrt",
            "rotate_deg": opts.rotate_deg,
            "scale_jitter": opts.scale_jitter,
            "hu_jitter": opts.hu_jitter,
        },
        "seed": opts.seed,
        "mixed_precision": "bfloat16" if (opts.amp and device.type == "cuda") else "off",
        "initialised_from": opts.init_from,
        "channels_last": opts.channels_last,
        "compiled": opts.compile,
        "hardware": _hardware(device),
        "software": _software(),
        "command": opts.command,
        "bursts": [*prev.get("bursts", []), burst],
    }
