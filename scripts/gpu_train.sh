#!/usr/bin/env bash
# Continue the `large` prior (data/prior-large) on whatever GPU machine is at hand, in one command.
#
# Two steps (docs/prior.md, "Continuing the large prior on a GPU"):
#
#   scripts/gpu_train.sh pack      # here, once: packs the training data into packed/ (ignored by
#                                  # git) and checks that everything that travels fits in 64 MiB
#   scripts/gpu_train.sh check     # here, just before the GPU call: the size check alone
#   scripts/gpu_train.sh           # there (the device tool's `run`, carry ["packed"]): trains for
#                                  # MINUTES, evaluates, exports into $OUT
#
# The run continues from the EMA weights in data/prior-large (a fresh optimiser) or, when none are
# there yet, starts the `shuffle-large` network afresh; it trains with the device-resident loop
# (scripts/train_prior_gpu.py, tomo.priors.training.device_loop), evaluates the EMA weights on the
# held-out train/ patients (packed/val; never dev/), appends a row to the model card's training log
# and writes into $OUT at most 8 files of at most 16 MiB: the float16 weights (index + shards),
# prior.json, log.csv, MODEL_CARD.md, samples.png (when diffusers is there) and train.log.
# Afterwards, here: copy them into data/prior-large (docs/prior.md says how) and commit.
#
# Environment: OUT (required when training: where the results go), MINUTES (8: wall-time budget of
# the training, data upload and compilation included; the whole command takes about one minute
# more), DEVICE (cuda), PRIOR (data/prior-large), PACKED (packed), BATCH (128), ARCH (shuffle-large;
# a fresh start only), COMPILE (0; 1 adds --compile), PYTHON (python3), DATA (../shared/data, for
# `pack`). Extra arguments after `--` go to scripts/train_prior_gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# this checkout's tomo, installed or not: the GPU machine has no install of it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
PACKED=${PACKED:-packed}
PRIOR=${PRIOR:-data/prior-large}
# held-out train/ patients (as scripts/keep_training.sh): one lung and one kidney CT
HELDOUT=("Lung-Fused-CT-Pathology_LungFCP-01-0006.npz" "C4KC-KiTS_KiTS-00072.npz")
LIMIT_MIB=64

travel_mib() {  # what the device tool sends: tracked + untracked-not-ignored files, plus $PACKED
    { git ls-files -z --cached --others --exclude-standard; find "$PACKED" -type f -print0 2>/dev/null; } |
        xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {printf "%.1f", s / 1048576}'
}

check_size() {
    size=$(travel_mib)
    echo "gpu_train.sh: $size MiB would travel (limit $LIMIT_MIB MiB: tracked and untracked files + $PACKED)"
    awk -v s="$size" -v l="$LIMIT_MIB" 'BEGIN {exit !(s <= l)}' ||
        { echo "gpu_train.sh: over the $LIMIT_MIB MiB limit: raise QUANTIZE_HU or remove untracked files" >&2; exit 1; }
}

if [ "${1:-}" = "check" ]; then
    check_size
    exit 0
fi
if [ "${1:-}" = "pack" ]; then
    DATA=${DATA:-$(cd .. && pwd)/shared/data}
    [ -e "$PACKED" ] && { echo "gpu_train.sh pack: $PACKED exists; remove it first" >&2; exit 2; }
    TRAIN=("$DATA/train/dicom")
    VAL=()
    for f in "$DATA"/train/ct-1.5mm/*.npz; do
        case " ${HELDOUT[*]} " in *" $(basename "$f") "*) VAL+=("$f") ;; *) TRAIN+=("$f") ;; esac
    done
    # HU step 16 (error <= 8 HU, standard deviation 4.6 HU; the slices' own noise is 10-30 HU):
    # the set must fit beside the repository and the weights in the 64 MiB that travel
    "$PYTHON" scripts/pack_training_slices.py "${TRAIN[@]}" --out "$PACKED/train" --compression lzma \
        --quantize-hu "${QUANTIZE_HU:-16}"
    "$PYTHON" scripts/pack_training_slices.py "${VAL[@]}" --out "$PACKED/val" --compression lzma \
        --quantize-hu "${QUANTIZE_HU:-16}"
    check_size
    exit 0
fi

: "${OUT:?set OUT to the folder for the results (the device machine sets it)}"
for d in "$PACKED/train" "$PACKED/val"; do
    [ -d "$d" ] || { echo "gpu_train.sh: no $d: run 'scripts/gpu_train.sh pack' first and carry $PACKED" >&2; exit 2; }
done
mkdir -p "$OUT"
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gpu_train.XXXXXX")
START=()
if [ -f "$PRIOR/prior.safetensors.index.json" ] || [ -f "$PRIOR/prior.safetensors" ]; then
    START=(--init-from "$PRIOR")
    echo "gpu_train.sh: continuing $PRIOR"
else
    START=(--arch "${ARCH:-shuffle-large}")
    echo "gpu_train.sh: no weights in $PRIOR: a new ${ARCH:-shuffle-large} network"
fi
EXTRA=()
[ "${COMPILE:-0}" = 1 ] && EXTRA+=(--compile)
[ "${1:-}" = "--" ] && shift
"$PYTHON" scripts/train_prior_gpu.py --preset large --data "$PACKED/train" --val "$PACKED/val" \
    --out "$RUN" --export "$OUT" --minutes "${MINUTES:-8}" --device "${DEVICE:-cuda}" \
    --batch-size "${BATCH:-128}" --card "$PRIOR/MODEL_CARD.md" --weights-dtype float16 --shard-mb 16 \
    "${START[@]}" "${EXTRA[@]}" "$@" 2>&1 | tee "$OUT/train.log"
n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
big=$(find "$OUT" -maxdepth 1 -type f -size +16M | wc -l)
echo "gpu_train.sh: $n files in $OUT ($big over 16 MiB)"
[ "$n" -le 8 ] && [ "$big" -eq 0 ] || { echo "gpu_train.sh: more than the device tool brings back" >&2; exit 1; }
