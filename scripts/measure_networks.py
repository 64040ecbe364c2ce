#!/usr/bin/env python
"""Candidate networks for the diffusion prior: cost on one CPU core, FLOPs per level, and denoising
per training FLOP.

Cost (default mode), for each candidate in whole-image mode (1 input channel, 256 x 256):

- parameters (millions) and the fp32 weight size (MiB);
- GFLOPs of one 256 x 256 evaluation, in total and per resolution level, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2 FLOPs, the convention of
  issue 22: "one FLOP is half a multiply-add"; convolutions, matrix products, attention);
- seconds per evaluation on ONE CPU thread in fp32, channels-last input and weights (as
  ``load_prior`` runs it): the minimum CPU time (``time.process_time``) of ``--runs`` repeats,
  the least disturbed run on a shared machine.

Comparison (``--compare``): each candidate trains on the CPU from scratch for the same budget
of training FLOPs (``--budget-tflop``, counted as 3 x forward FLOPs per training crop) on small
whole-image crops (``--crop`` px) of the training slices, then its EMA weights denoise whole
held-out slices (``--val``: train/ patients kept out of ``--data``; never dev/) at the time steps
``--t`` (6 / 37 / 97 = 50 / 200 / 500 HU of noise on x0): eps MSE and the HU RMSE of Tweedie's
x0 estimate, one line per candidate and a markdown table at the end.

    python scripts/measure_networks.py --runs 5
    nice -n 10 python scripts/measure_networks.py --compare --data PACKED --val PACKED_VAL \\
        --budget-tflop 6 --out /work/runs/compare
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import torch

from tomo.priors.config import ARCHITECTURES, make_config, shuffle_architecture
from tomo.priors.networks import level_flops
from tomo.priors.prior import build_unet
from tomo.priors.training import cpu_model

REPO = Path(__file__).resolve().parents[1]


def _diffusers_arch(blocks, attn_levels, layers=1, groups=None, head=32) -> dict:
    """UNet2DModel arguments: ``attn_levels`` are indices into ``blocks`` (0 = full resolution)."""
    n = len(blocks)
    down = ["AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(n)]
    return {
        "class": "UNet2DModel",
        "block_out_channels": list(blocks),
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": [b.replace("Down", "Up") for b in down[::-1]],
        "norm_num_groups": groups or min(32, blocks[0]),
        "attention_head_dim": head,
    }


#: name -> (network arguments, what it tries)
CANDIDATES = {
    "small (shipped)": (ARCHITECTURES["small"](), "diffusers [32,64,128,128] at 256-32 px, attention at 32 px"),
    "lean4": (_diffusers_arch([16, 32, 64, 128], {3}, groups=16), "diffusers [16,32,64,128], attention at 32 px"),
    "large (diffusers)": (ARCHITECTURES["large"](), "diffusers [32,64,128,192,256], attention at 32 and 16 px"),
    "s4": (shuffle_architecture(), "unshuffle 4; [64,128,256] at 64/32/16 px, 2 blocks, attention at 16 px"),
    "s4-lean": (
        shuffle_architecture(channels=(64, 128, 192), blocks=(1, 2, 2)),
        "unshuffle 4; [64,128,192], blocks [1,2,2], attention at 16 px",
    ),
    "s8": (
        shuffle_architecture(patch=8, channels=(128, 256, 256), attention=(False, True, True)),
        "unshuffle 8; [128,256,256] at 32/16/8 px, 2 blocks, attention at 16 and 8 px",
    ),
    "s2": (
        shuffle_architecture(patch=2, channels=(64, 128, 192, 256), blocks=(1, 1, 2, 2), attention=(0, 0, 0, 1)),
        "unshuffle 2; [64,128,192,256] at 128/64/32/16 px, blocks [1,1,2,2], attention at 16 px",
    ),
    "s4-init1": (
        shuffle_architecture(residual_init=1.0),
        "s4 with residual branches at torch's default initialisation instead of zero",
    ),
    "s4-init1-mod1": (
        shuffle_architecture(residual_init=1.0, modulation_init=1.0),
        "s4-init1 with the time-step modulation at torch's default initialisation too",
    ),
    "s4-fr16": (
        shuffle_architecture(full_res=16),
        "s4 plus a thin full-resolution refinement (16 channels, two 3 x 3 convolutions)",
    ),
    "s4-fr32": (
        shuffle_architecture(full_res=32),
        "s4 plus a full-resolution refinement of 32 channels",
    ),
    "s4-192-fr16": (
        shuffle_architecture(channels=(64, 128, 192), full_res=16),
        "unshuffle 4; [64,128,192], 2 blocks, attention at 16 px, full-resolution refinement of 16 channels",
    ),
    "s4-192": (
        shuffle_architecture(channels=(64, 128, 192)),
        "unshuffle 4; [64,128,192] at 64/32/16 px, 2 blocks, attention at 16 px",
    ),
    "shuffle-large": (
        ARCHITECTURES["shuffle-large"](),
        "unshuffle 4; [128,128,192], blocks [2,2,1], attention at 16 px, full-resolution refinement of 16 channels (GPU preset)",
    ),
}


def build(arch: dict, size: int = 256) -> torch.nn.Module:
    config = make_config(architecture=arch, patch_size=None, image_size=size)
    return build_unet(config).eval()


def seconds_per_eval(model, runs: int, size: int = 256) -> float:
    """Minimum CPU time of one fp32 evaluation, channels-last, over ``runs`` repeats.

    CPU time (``time.process_time``) of the one thread equals the wall time on an idle core and
    does not count the waits for a core that other processes hold (cache and memory contention
    still count), so the minimum is a fair figure on a shared machine."""
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, size, size).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500])
    times = []
    with torch.no_grad():
        model(x, t)  # warm-up (allocations, kernel selection)
        for _ in range(runs):
            t0 = time.process_time()
            model(x, t)
            times.append(time.process_time() - t0)
    return min(times)


def cost_table(names, runs: int) -> None:
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores (shared), 1 torch thread, torch {torch.__version__}; "
        f"load average at start {os.getloadavg()[0]:.2f}; minimum of {runs} runs; fp32, channels-last; "
        "256 x 256 input, 1 channel (whole-image mode); FLOPs: a multiply-add counts 2\n"
    )
    print("| network | what | parameters (M) | fp32 MiB | GFLOPs / eval | GFLOPs by level | CPU s / eval |")
    print("|---|---|---:|---:|---:|---|---:|")
    for name in names:
        arch, what = CANDIDATES[name]
        model = build(arch)
        params = sum(p.numel() for p in model.parameters())
        levels = level_flops(model)
        by_level = ", ".join(f"{lvl} {g:.2f}" for lvl, g in levels[1:])
        row = [
            name,
            what,
            f"{params / 1e6:.2f}",
            f"{params * 4 / 2**20:.1f}",
            f"{levels[0][1]:.1f}",
            by_level,
            f"{seconds_per_eval(model, runs):.3f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


def _eval_module():
    spec = importlib.util.spec_from_file_location("eval_prior", REPO / "scripts" / "eval_prior.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(args) -> None:
    """Train each candidate for the same FLOP budget, then denoise the held-out slices."""
    from tomo.priors import load_prior
    from tomo.priors.training import TrainOptions, read_log, train

    ev = _eval_module()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    images = None
    for name in args.only or [n for n in CANDIDATES if n != "large (diffusers)"]:
        arch, what = CANDIDATES[name]
        if name in results:
            print(f"{name}: already measured, skipped", flush=True)
            continue
        fwd = level_flops(build(arch, args.crop), args.crop)[0][1]  # GFLOPs of one training crop
        steps = max(1, math.ceil(args.budget_tflop * 1e3 / (3 * fwd * args.batch)))
        run = out / name.split(" ")[0]
        arch_file = out / f"{run.name}.json"
        arch_file.write_text(json.dumps(arch))
        opts = TrainOptions(
            data=args.data,
            out=str(run),
            steps=steps,
            batch_size=args.batch,
            lr=args.lr,
            lr_schedule="constant",
            warmup_steps=min(100, steps // 10 + 1),
            ema_decay=0.999,
            seed=0,
            checkpoint_every=10**9,
            checkpoint_minutes=10.0,
            log_every=20,
            arch=str(arch_file),
            patch_size=0,
            image_size=args.crop,
            device="cpu",
            threads=1,
            samples=0,
            progress=False,
            resume=(run / "train_state.safetensors").is_file(),
        )
        print(f"{name}: {steps} steps x batch {args.batch} of {args.crop} px ({fwd:.3f} GFLOPs forward)", flush=True)
        t0 = time.process_time()
        summary = train(opts)
        cpu_s = time.process_time() - t0
        prior = load_prior(run)
        if images is None:
            images, _ = ev.load_slices(args.val, prior, args.max_slices)
            gauss = ev.pixel_moments(ev.load_slices(args.data, prior, 200)[0])
        rows = ev.denoising_eval(prior, images, args.t, 0, gauss)
        log = read_log(run / "log.csv")
        results[name] = {
            "what": what,
            "steps": summary["steps"],
            "images": summary["steps"] * args.batch,
            "train_tflop": 3 * fwd * summary["steps"] * args.batch / 1e3,
            "train_cpu_s": cpu_s,
            "final_loss": log[-1]["loss"] if log else None,
            "rows": rows,
        }
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    ts = args.t
    head = " | ".join(f"x0 RMSE HU t={t}" for t in ts) + " | " + " | ".join(f"eps MSE t={t}" for t in ts)
    print(f"\n| network | training TFLOP | images of {args.crop} px | CPU s | {head} |")
    print("|---|---:|---:|---:|" + "---:|" * (2 * len(ts)))
    for name, r in results.items():
        by_t = {row["t"]: row for row in r["rows"]}
        cells = [f"{by_t[t]['x0_rmse_hu']:.1f}" for t in ts] + [f"{by_t[t]['eps_mse']:.4f}" for t in ts]
        print(
            f"| {name} | {r['train_tflop']:.2f} | {r['images']} | {r['train_cpu_s']:.0f} | " + " | ".join(cells) + " |"
        )
    any_rows = next(iter(results.values()))["rows"] if results else []
    gauss = " / ".join(f"{row['x0_rmse_hu_gauss']:.1f}" for row in any_rows)
    print(f"\nGaussian-pixel baseline x0 RMSE (HU) at t={ts}: {gauss}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (minimum)")
    ap.add_argument("--only", nargs="*", default=None, help=f"candidates (default: all): {', '.join(CANDIDATES)}")
    ap.add_argument("--compare", action="store_true", help="train each candidate for --budget-tflop and evaluate")
    ap.add_argument("--data", nargs="+", help="training slices (--compare), e.g. packed train/ data")
    ap.add_argument("--val", nargs="+", help="held-out train/ patients (--compare; never dev/)")
    ap.add_argument("--budget-tflop", type=float, default=6.0, help="training FLOPs per candidate, TFLOP")
    ap.add_argument("--crop", type=int, default=64, help="training crop side, px (--compare)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--t", nargs="+", type=int, default=[6, 37, 97], help="time steps of the denoising test")
    ap.add_argument("--max-slices", type=int, default=16, help="held-out slices evaluated (evenly spread)")
    ap.add_argument("--out", default="/tmp/compare_networks", help="run folders and results.json (--compare)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unknown = [n for n in args.only or [] if n not in CANDIDATES]
    if unknown:
        ap.error(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    if args.compare:
        if not args.data or not args.val:
            ap.error("--compare needs --data and --val")
        compare(args)
    else:
        cost_table(args.only or list(CANDIDATES), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
