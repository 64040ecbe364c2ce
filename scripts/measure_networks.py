#!/usr/bin/env python
"""Cost of candidate UNets for the diffusion prior: parameters, FLOPs, CPU time, training speed.

For each candidate diffusers ``UNet2DModel`` (whole-image mode: 1 input channel, a 256 x 256
image at 1.5 mm) this measures

- parameters (millions) and the fp32 weight size (MiB);
- GFLOPs of one 256 x 256 evaluation, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (multiply-adds count 2; convolutions, matrix products and attention);
- seconds per evaluation on ONE CPU thread, fp32 and bf16 autocast (median of ``--runs``);
- training images/s on one CPU thread (forward + backward + AdamW step, fp32, batch ``--batch``).

Times are the process's CPU time (``time.process_time``), which on one thread equals the wall
time on an idle core and, unlike wall time, does not grow when other processes share the core
(cache and memory-bandwidth contention still count). The table (markdown, stdout) names the CPU
and the load average.

    python scripts/measure_networks.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tomo

from tomo.priors.config import ARCHITECTURES, make_config
from tomo.priors.prior import build_unet
from tomo.priors.training import cpu_model


def _arch(blocks, attn_levels, layers=1, groups=None, head=32) -> dict:
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


#: name -> (UNet2DModel arguments, what it tries)
CANDIDATES = {
    "small (shipped)": (ARCHITECTURES["small"](), "[32,64,128,128], attention at 32 px"),
    "lean4": (_arch([16, 32, 64, 128], {3}, groups=16), "[16,32,64,128], attention at 32 px"),
    "lean5": (_arch([16, 32, 64, 128, 256], {3, 4}, groups=16), "[16,32,64,128,256], attention at 32 and 16 px"),
    "wide5": (_arch([16, 64, 128, 256, 256], {3, 4}, groups=16), "[16,64,128,256,256], attention at 32 and 16 px"),
    "large": (ARCHITECTURES["large"](), "[32,64,128,192,256], attention at 32 and 16 px (GPU preset)"),
}


def cpu_has_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); without them torch's
    bf16 convolutions fall back to slow kernels (161 s for one "small" evaluation on an AVX2 EPYC)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def build(arch: dict) -> torch.nn.Module:
    config = make_config(architecture=arch, patch_size=None, image_size=256)
    return build_unet(config).eval()


def gflops(model: torch.nn.Module, size: int = 256) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.zeros(1, 1, size, size), torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() / 1e9


def seconds_per_eval(model, runs: int, bf16: bool, size: int = 256) -> float:
    x, t = torch.randn(1, 1, size, size), torch.tensor([500])
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x, t)  # warm-up (allocations, kernel selection)
        for _ in range(runs):
            t0 = time.process_time()
            model(x, t)
            times.append(time.process_time() - t0)
    return statistics.median(times)


def train_images_per_s(arch: dict, runs: int, batch: int, size: int = 256) -> float:
    model = build(arch).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, noise = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size)
    t = torch.randint(0, 1000, (batch,))
    times = []
    for k in range(runs + 1):
        t0 = time.process_time()
        loss = (model(x, t).sample - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:  # the first step is the warm-up
            times.append(time.process_time() - t0)
    return batch / statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--batch", type=int, default=2, help="training batch for images/s")
    ap.add_argument("--only", nargs="*", default=None, help="candidate names to measure (default: all)")
    ap.add_argument("--no-train", action="store_true", help="skip the training speed")
    ap.add_argument(
        "--bf16",
        choices=("auto", "yes", "no"),
        default="auto",
        help="measure bf16 autocast (auto: only on CPUs with AVX512-BF16 or AMX)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = args.only or list(CANDIDATES)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and cpu_has_bf16())
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}; "
        f"load average at start {os.getloadavg()[0]:.2f}; median of {args.runs} runs; "
        f"256 x 256 input, 1 channel (whole-image mode)\n"
    )
    print(
        "| network | what | parameters (M) | fp32 MiB | GFLOPs / eval | CPU s / eval fp32 | CPU s / eval bf16 | "
        "training images/s fp32 (per CPU s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        arch, what = CANDIDATES[name]
        model = build(arch)
        params = sum(p.numel() for p in model.parameters())
        row = [
            name,
            what,
            f"{params / 1e6:.2f}",
            f"{params * 4 / 2**20:.1f}",
            f"{gflops(model):.1f}",
            f"{seconds_per_eval(model, args.runs, False):.3f}",
            f"{seconds_per_eval(model, args.runs, True):.3f}" if bf16 else "not measured",
            "-" if args.no_train else f"{train_images_per_s(arch, args.runs, args.batch):.2f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if not bf16:
        print(
            "bf16 not measured: this CPU has no AVX512-BF16 or AMX (torch's bf16 kernels are then far "
            "slower than fp32); pass --bf16 yes to measure anyway"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
