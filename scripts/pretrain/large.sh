#!/usr/bin/env bash
# VIMPAC final pre-training, stage 1 of 2 (paper table 4, "pre-train final"): Large-half
# (24x1024), T=10 clips at 128 px, lr 3e-4, warm-up 0.05, batch 1024, on a 100-epoch schedule
# of which this run trains the first 90 (--interval 90); large_frame256cont.sh trains the last
# 10 at 256 px into the same $SNAP_ROOT/large output, continuing the schedule and optimizer.
#
#   bash scripts/pretrain/large.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/pretrain/large.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo)
#
# Extra flags come last and win (e.g. --train-tokens STORE --bs-per-gpu 8). The script and
# the command line are copied to $SNAP_ROOT/large/ (default snap/pretrain) and the log is teed there;
# with an extra --output, into that directory instead. DRY_RUN=1 prints the command only.
set -euo pipefail
SCRIPT=$(realpath "$0")
NAME=large
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "$0")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/pretrain}
OUTPUT=$SNAP_ROOT/$NAME
vimpac_launcher "$DEVICES" vimpac.pretrain

ARGS=(
    --dataset-name howto100m --frame-size 128 --clip-len 10 --frame-rate 1
    --config large_half --model "efflayoutT,H|W" --pos-emb hw_separation
    --mlm-weight 1.0 --nce-weight 1.0 --nce-proj-layers 3 --nce-proj-hid-dim 4096
    --mask-blocks 5
    --lr 3e-4 --beta1 0.9 --beta2 0.98 --weight-decay 0.05 --clip-grad-norm 1.0
    --lr-scheduler linear --warm-up 0.05 --epochs 100 --interval 90
    --batch-size 1024 --bs-per-gpu 16 --zero-stage 1
    --num-workers 4 --save-steps 2000 --output "$OUTPUT"
)

vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
