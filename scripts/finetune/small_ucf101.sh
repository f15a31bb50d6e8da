#!/usr/bin/env bash
# UCF101 (split 1; --split-id 2/3 for the others), Small model of the analysis (T=5, 128 px), 50 epochs, 2 FPS.
#
#   bash scripts/finetune/small_ucf101.sh 0,1,2,3 [extra flags]   |   bash scripts/finetune/small_ucf101.sh cpu:1 [extra flags]
#
# Paper table 4 (fine-tuning): lr 1e-4, warm-up 0.1, linear decay, batch 128, weight decay 0.01,
# Adam betas (0.9, 0.999), grad clip 1.0, dropout 0.1 (classifier 0.0). Test: 10 clips x the test crops.
set -euo pipefail
NAME=small_ucf101
LOAD=snap/pretrain/small/last
ARGS=(
    --dataset-name ucf101 --frame-size 128 --clip-len 5 --frame-rate 1 --fps 2
    --lr 1e-4 --beta1 0.9 --beta2 0.999 --weight-decay 0.01 --clip-grad-norm 1.0 --dropout 0.1
    --lr-scheduler linear --warm-up 0.1 --epochs 50
    --batch-size 128 --bs-per-gpu 16
    --num-test-clips 10 --last-test-clips 2,5,10 --num-workers 4
)
source "$(dirname "$0")/_common.sh"
