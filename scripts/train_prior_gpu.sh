#!/usr/bin/env bash
# Trains the shipped diffusion prior (data/prior) as it was trained: on one GPU, in whole-image
# mode (256 x 256 canvas at 1.5 mm = 384 mm field of view, no position channels), by
# `scripts/train_prior_gpu.py --preset shipped` (the GPU recipe; its default preset trains the
# larger prior on all training data).
#
# Data: ../shared/data/train/dicom only (9 patients, 213 slices incl. coronal/sagittal reformats;
# never dev/), packed first at the prior's pixel size so that it can be copied to the GPU machine
# (scripts/pack_training_slices.py; the trainer then skips resampling, same slices).
# Model and schedule: 4.3 M-parameter diffusers UNet ("small"), linear DDPM schedule T=1000,
# Gaussian-skip output (docs/prior.md), HU window [-1000, 2000].
# Optimisation: AdamW 2e-4 constant after 200 warm-up steps, batch 32, EMA <= 0.999, seed 0,
# bf16 autocast. The shipped run had a 6-minute budget on one NVIDIA H200 (all the device time a
# session had) and stopped at step 3037 (8.4 steps/s); data/prior/prior.json records the steps.
# With a constant learning rate, `--steps 3037` without the time budget gives the same schedule.
#
# Usage: scripts/train_prior_gpu.sh [OUT] [MINUTES]; follow OUT/train.log. Afterwards:
#   python -m tomo.priors.export OUT data/prior --force
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TOMO_SHARED_DATA:-$(cd .. && pwd)/shared/data}
OUT=${1:-runs/prior_gpu}
MIN=${2:-6}
PACKED=${PACKED:-runs/train_packed_1.5mm}
[ -d "$PACKED" ] || python scripts/pack_training_slices.py "$DATA/train/dicom" --out "$PACKED"
mkdir -p "$OUT"
python scripts/train_prior_gpu.py --preset shipped --data "$PACKED" --out "$OUT" --minutes "$MIN" \
    --shard-mb 0 --log-every 50 > "$OUT/train.log" 2>&1
tail -3 "$OUT/train.log"
