#!/usr/bin/env bash
# VIMPAC final pre-training, stage 2 of 2: continue large.sh's run at 256 px (32x32 codes) for the
# last 10 epochs of the same 100-epoch schedule. Run it right after large.sh, unchanged:
#
#   bash scripts/pretrain/large.sh 0,1,2,3          # epochs 0-89 at 128 px, stops (--interval 90)
#   bash scripts/pretrain/large_frame256cont.sh 0,1,2,3   # epochs 90-99 at 256 px
#
# --resume loads $SNAP_ROOT/large/last: weights (positional tables interpolated from 16x16 to
# 32x32), AdamW state (moments of the tables interpolated with them), step, schedule and RNG.
# Extra flags come last and win; this stage's log and script copy go to $SNAP_ROOT/large_frame256cont/
# (with an extra --output DIR: stage 1's run is DIR, the log goes to large_frame256cont/ beside it).
set -euo pipefail
SCRIPT=$(realpath "$0")
NAME=large_frame256cont
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "$0")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/pretrain}
SNAP=$SNAP_ROOT/$NAME                # this stage's script copy and log
OUTPUT=$SNAP_ROOT/large              # stage 1's run: checkpoint, metrics and schedule continue there
vimpac_launcher "$DEVICES" vimpac.pretrain

ARGS=(
    --dataset-name howto100m --frame-size 256 --clip-len 10 --frame-rate 1
    --config large_half --model "efflayoutT,H|W" --pos-emb hw_separation
    --mlm-weight 1.0 --nce-weight 1.0 --nce-proj-layers 3 --nce-proj-hid-dim 4096
    --mask-blocks 5
    --lr 3e-4 --beta1 0.9 --beta2 0.98 --weight-decay 0.05 --clip-grad-norm 1.0
    --lr-scheduler linear --warm-up 0.05 --epochs 100
    --batch-size 1024 --bs-per-gpu 4 --zero-stage 1 --grad-checkpointing
    --num-workers 4 --save-steps 2000 --output "$OUTPUT" --resume
)

STAGE1=$(vimpac_last_output "${ARGS[@]}" "$@")   # an extra --output names stage 1's run elsewhere
if [[ ! -d $STAGE1/last && ${DRY_RUN:-0} != 1 ]]; then
    echo "error: no stage-1 checkpoint in $STAGE1/last; run scripts/pretrain/large.sh first" >&2
    exit 2
fi
vimpac_run "$SNAP" "${ARGS[@]}" "$@"
