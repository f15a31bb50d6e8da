#!/usr/bin/env bash
# UCF101, Large-half model (24x1024) pre-trained at 128 px (snap/pretrain/large after stage 1), T=10, 128 px, 2 FPS.
#
#   bash scripts/finetune/large_frame128_ucf101.sh 0,1,2,3 [extra flags]   |   bash scripts/finetune/large_frame128_ucf101.sh cpu:1 [extra flags]
#
# Paper table 4 (fine-tuning): lr 5e-5, warm-up 0.1, linear decay, batch 128, weight decay 0.01,
# Adam betas (0.9, 0.999), grad clip 1.0, dropout 0.1 (classifier 0.0). Test: 10 clips x the test crops.
set -euo pipefail
NAME=large_frame128_ucf101
LOAD=snap/pretrain/large/last
ARGS=(
    --dataset-name ucf101 --frame-size 128 --clip-len 10 --frame-rate 1 --fps 2
    --lr 5e-5 --beta1 0.9 --beta2 0.999 --weight-decay 0.01 --clip-grad-norm 1.0 --dropout 0.1
    --lr-scheduler linear --warm-up 0.1 --epochs 50
    --batch-size 128 --bs-per-gpu 8 --zero-stage 1
    --num-test-clips 10 --last-test-clips 2,5,10 --num-workers 4
)
source "$(dirname "$0")/_common.sh"
