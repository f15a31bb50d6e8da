#!/usr/bin/env bash
# BEVT mode, stage 2 of 2 (Wang et al., CVPR 2022): image and video streams jointly through the same
# weights, starting from stage 1 (scripts/pretrain/bevt_image.sh). Each micro-step holds a video
# micro-batch (two T=5 clips per video, tube masks: one set of masked patches through every frame)
# and --image-ratio image micro-batches (single frames, rectangles); both predict the DALL-E codes of
# their masked patches, and metrics.jsonl logs the two streams' losses apart (mp_loss / image_mp_loss).
# BEVT has no contrastive loss (--nce-weight 0); VIMPAC's can be added back with --nce-weight 1.
#
#   bash scripts/pretrain/bevt_joint.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/pretrain/bevt_joint.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo)
#
# PRETRAIN=DIR overrides stage 1's checkpoint ($SNAP_ROOT/bevt_image/last). Fine-tune the result
# like any run (scripts/finetune/*.sh with PRETRAIN=$SNAP_ROOT/bevt_joint/last): the checkpoint records
# that it reads pixels, and predict then needs no tokenizer.
set -euo pipefail
SCRIPT=$(realpath "$0")
NAME=bevt_joint
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "$0")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/pretrain}
OUTPUT=$SNAP_ROOT/$NAME
LOAD=${PRETRAIN:-$SNAP_ROOT/bevt_image/last}
vimpac_launcher "$DEVICES" vimpac.pretrain

ARGS=(
    --dataset-name howto100m --frame-size 128 --clip-len 5 --frame-rate 1
    --input pixels --stream joint --image-ratio 1.0 --image-mask-blocks 6
    --masking tube --mask-blocks 6
    --config small --model "efflayoutT,H|W" --pos-emb hw_separation
    --nce-weight 0 --load "$LOAD"
    --lr 1e-3 --beta1 0.9 --beta2 0.98 --weight-decay 0.05 --clip-grad-norm 1.0
    --lr-scheduler linear --warm-up 0.1 --epochs 10
    --batch-size 1024 --bs-per-gpu 32
    --num-workers 4 --save-steps 2000 --output "$OUTPUT"
)

vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
