#!/usr/bin/env bash
# VIMPAC analysis pre-training (paper table 4, "pre-train analysis"): Small model (6x512),
# T=5 clips at 128 px (16x16 DALL-E codes), 10 epochs, lr 1e-3, warm-up 0.1, batch 1024.
#
#   bash scripts/pretrain/small.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/pretrain/small.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo)
#
# Extra flags come last and win (e.g. --train-tokens STORE --bs-per-gpu 8). The script and
# the command line are copied to $SNAP_ROOT/small/ (default snap/pretrain) and the log is teed there;
# with an extra --output, into that directory instead. DRY_RUN=1 prints the command only.
set -euo pipefail
SCRIPT=$(realpath "$0")
NAME=small
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "$0")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/pretrain}
OUTPUT=$SNAP_ROOT/$NAME
vimpac_launcher "$DEVICES" vimpac.pretrain

ARGS=(
    --dataset-name howto100m --frame-size 128 --clip-len 5 --frame-rate 1
    --config small --model "efflayoutT,H|W" --pos-emb hw_separation
    --mlm-weight 1.0 --nce-weight 1.0 --nce-proj-layers 2 --nce-proj-hid-dim 2048
    --mask-blocks 5
    --lr 1e-3 --beta1 0.9 --beta2 0.98 --weight-decay 0.05 --clip-grad-norm 1.0
    --lr-scheduler linear --warm-up 0.1 --epochs 10
    --batch-size 1024 --bs-per-gpu 32
    --num-workers 4 --save-steps 2000 --output "$OUTPUT"
)

vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
