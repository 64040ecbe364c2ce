#!/usr/bin/env bash
# CPU training recipe (patch mode). It trained the first shipped prior (1800 steps, 47 min on one
# CPU thread, samples without body outlines); the prior shipped now was trained on a GPU by
# scripts/train_prior_gpu.sh. Use this one where no GPU is available.
#
# Data: ../shared/data/train/dicom only (9 patients, 213 slices incl. coronal/sagittal reformats;
# never dev/). Patch mode (64 px patches + x/y position channels) at 1.5 mm pixels, HU window
# [-1000, 2000], 4.3 M-parameter diffusers UNet, linear DDPM schedule T=1000, AdamW 2e-4 constant
# after 200 warm-up steps, batch 16, EMA <= 0.999, seed 0, bf16 autocast on the CPU (1.6x faster
# than float32 on this AVX512-BF16 CPU; weights stay float32), one CPU thread (the machine is shared:
# two threads are 3x slower than one when another process holds a core). The network predicts
# the residual of the Gaussian-pixel noise estimate (default; docs/prior.md "Gaussian skip"):
# a plain epsilon network trained for 700 steps this way gave pure-noise samples because its
# large-t predictions were still worse than that trivial estimate.
#
# The run stops at a wall-time budget (--max-minutes); with a constant learning rate, every step
# depends only on (seed, step), so the result equals `--steps <steps reached>` without the
# budget (the number is in data/prior/prior.json, "training.steps").
# Runs in the background, surviving the shell; follow runs/prior/train.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TOMO_SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=${1:-runs/prior}
mkdir -p "$OUT"
setsid nohup nice -n 10 tomo train "$DATA/train/dicom" --out "$OUT" \
    --arch small --patch-size 64 --pixel-size 1.5 --hu-window=-1000,2000 --beta-schedule linear \
    --batch-size 16 --lr 2e-4 --lr-schedule constant --warmup-steps 200 --ema-decay 0.999 \
    --seed 0 --steps 100000 --max-minutes 62 --threads 1 --cpu-bf16 \
    --checkpoint-every 100 --log-every 10 --samples 8 --sample-steps 50 \
    > "$OUT/train.log" 2>&1 < /dev/null &
echo "training PID $! -> $OUT/train.log"
