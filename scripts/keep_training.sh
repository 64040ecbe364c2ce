#!/usr/bin/env bash
# Training of the CPU prior that keeps going across sessions: start it in the background at the
# start of a session; it resumes the run folder's last checkpoint (a kill loses at most
# --checkpoint-minutes of work), trains in chunks of CHUNK minutes on one thread at low priority,
# and after every chunk measures denoising on a validation split of *train/* patients (never dev/).
# Whenever that improves, the EMA weights are copied to RUN/best (export them with
# `python -m tomo.priors.export RUN/best data/prior --force` after checking them on dev/).
#
# Usage: nohup scripts/keep_training.sh [RUN] > /dev/null 2>&1 &     (follow RUN/keep_training.log)
# Environment: CHUNK (minutes, 30), BATCH (4), LR (5e-5), INIT (data/prior: fine-tune from it),
# or ARCH (a network preset such as shuffle-default, or a JSON file: a new whole-image network
# trained from scratch on CROP px crops, 128 by default; INIT is then ignored), THREADS (1).
set -uo pipefail
cd "$(dirname "$0")/.."
# this checkout's code, not whatever `tomo` is installed: a long run must not pick up later edits
# (run it from a `git worktree` of a fixed commit while you keep working in the main one)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA=${TOMO_SHARED_DATA:-$(cd .. && pwd)/shared/data}
RUN=${1:-$HOME/tomo-runs/prior-cpu}
CHUNK=${CHUNK:-30}
BATCH=${BATCH:-4}
LR=${LR:-5e-5}
INIT=${INIT:-data/prior}
ARCH=${ARCH:-}
CROP=${CROP:-128}
THREADS=${THREADS:-1}
# validation patients, held out of training: one lung (LungFCP-01-0006) and one kidney (KiTS-00072) CT
VAL=("$DATA/train/ct-1.5mm/Lung-Fused-CT-Pathology_LungFCP-01-0006.npz" "$DATA/train/ct-1.5mm/C4KC-KiTS_KiTS-00072.npz")
TRAIN=("$DATA/train/dicom")
for f in "$DATA"/train/ct-1.5mm/*.npz; do
    case " ${VAL[*]} " in *" $f "*) ;; *) TRAIN+=("$f") ;; esac
done
mkdir -p "$RUN"
LOG="$RUN/keep_training.log"
log() { echo "$(date '+%F %T') $*" >> "$LOG"; }
val_score() {  # sum of the validation eps MSE over the evaluated time steps
    python -c "import json;r=json.load(open('$1/eval_dev.json'));print(sum(x['eps_mse'] for x in r['eval']['rows']))"
}
evaluate() {  # evaluate PRIOR_DIR into OUT_DIR on the validation patients
    nice -n 19 python scripts/eval_prior.py --prior "$1" --data "${VAL[@]}" --t 10 50 100 250 \
        --baseline-data "$DATA/train/dicom" --threads 1 --out "$2" >> "$LOG" 2>&1
}
best_score() { [ -f "$RUN/best/score.txt" ] && cat "$RUN/best/score.txt" || echo inf; }
if [ -n "$ARCH" ]; then
    # a new network: nothing to compare with before its first chunk
    [ -f "$RUN/best/score.txt" ] || { mkdir -p "$RUN/best" && echo inf > "$RUN/best/score.txt"; }
elif [ ! -f "$RUN/best/score.txt" ] && [ ! -f "$RUN/train_state.safetensors" ]; then
    evaluate "$INIT" "$RUN/eval_init" && mkdir -p "$RUN/best" && val_score "$RUN/eval_init" > "$RUN/best/score.txt" \
        && cp "$INIT/prior.safetensors" "$INIT/prior.json" "$RUN/best/" && log "starting prior $INIT: $(cat "$RUN/best/score.txt")"
fi
while true; do
    if [ -f "$RUN/train_state.safetensors" ]; then
        done_min=$(python -c "import json;print(json.load(open('$RUN/prior.json'))['training']['wall_time_s']/60)")
        ARGS=(--resume)
    elif [ -n "$ARCH" ]; then
        done_min=0
        ARGS=(--arch "$ARCH" --patch-size 0 --image-size "$CROP")
    else
        done_min=0
        ARGS=(--init-from "$INIT")
    fi
    limit=$(python -c "print($done_min + $CHUNK)")
    log "training from minute $done_min to $limit"
    nice -n 19 python -m tomo.cli.main train "${TRAIN[@]}" --out "$RUN" "${ARGS[@]}" --device cpu --threads "$THREADS" \
        --batch-size "$BATCH" --lr "$LR" --lr-schedule constant --warmup-steps 50 --ema-decay 0.995 \
        --steps 10000000 --max-minutes "$limit" --checkpoint-every 1000000 --checkpoint-minutes 10 \
        --log-every 5 --samples 0 --no-progress >> "$LOG" 2>&1 || { log "tomo train failed"; sleep 60; continue; }
    evaluate "$RUN" "$RUN/eval_latest" || { log "evaluation failed"; continue; }
    score=$(val_score "$RUN/eval_latest") || score=inf
    best=$(best_score)
    log "validation sum of eps MSE over t=10,50,100,250: $score (best $best)"
    if python -c "import sys;sys.exit(0 if float('$score') < float('$best') else 1)"; then
        rm -rf "$RUN/best.tmp" && mkdir -p "$RUN/best.tmp"
        cp "$RUN/prior.safetensors" "$RUN/prior.json" "$RUN/log.csv" "$RUN/best.tmp/" && echo "$score" > "$RUN/best.tmp/score.txt"
        rm -rf "$RUN/best" && mv "$RUN/best.tmp" "$RUN/best"
        log "exported to $RUN/best"
    fi
done
