#!/usr/bin/env bash
# BEVT mode, stage 1 of 2 (Wang et al., CVPR 2022): the image stream alone. The Small transformer reads
# single frames (128 px, patches of 8 px = the tokenizer's stride) and predicts the DALL-E codes of
# masked patches (BEiT-style rectangles, masked prediction only). Every stored frame of the stores is
# an image; the stores must keep their frames (extract with --keep-frames).
#
#   bash scripts/pretrain/bevt_image.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/pretrain/bevt_image.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo)
#
# Then scripts/pretrain/bevt_joint.sh starts from this run's weights. --image-tokens STORE takes
# another image source (e.g. a list of images extracted as 1-frame videos). Extra flags come last and
# win; the script, command line and log go to $SNAP_ROOT/bevt_image/ (default snap/pretrain).
set -euo pipefail
SCRIPT=$(realpath "$0")
NAME=bevt_image
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "$0")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/pretrain}
OUTPUT=$SNAP_ROOT/$NAME
vimpac_launcher "$DEVICES" vimpac.pretrain

ARGS=(
    --dataset-name howto100m --frame-size 128 --clip-len 5 --frame-rate 1
    --input pixels --stream image --image-mask-blocks 6
    --config small --model "efflayoutT,H|W" --pos-emb hw_separation
    --nce-weight 0
    --lr 1e-3 --beta1 0.9 --beta2 0.98 --weight-decay 0.05 --clip-grad-norm 1.0
    --lr-scheduler linear --warm-up 0.1 --epochs 10
    --batch-size 1024 --bs-per-gpu 64
    --num-workers 4 --save-steps 2000 --output "$OUTPUT"
)

vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
