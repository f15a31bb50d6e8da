#!/usr/bin/env bash
# Fine-tune on your own token stores (made by python -m video2token.extract with a labelled list).
#
#   bash scripts/finetune/custom.sh DEVICES PRETRAINED TRAIN_STORES TEST_STORES OUTPUT [extra flags]
#   bash scripts/finetune/custom.sh cpu:1 snap/pretrain/mine/last data/tokens/mine_train data/tokens/mine_test snap/finetune/mine
#
# DEVICES: GPU ids (0,1,2,3; deepspeed launcher) or cpu:N. PRETRAINED: a pre-training checkpoint
# directory (OUT/last or OUT/best) or its model.safetensors. TRAIN_STORES / TEST_STORES: one store,
# or several views (e.g. a flipped extraction) joined by commas. OUTPUT: the run directory; the
# script copy, command.sh and log.log go there. These five are taken relative to where you call
# from; paths in extra flags are relative to the repository root (the scripts run from there).
# Optimisation follows the paper's fine-tuning recipe (the finetune defaults: lr 1e-4, warm-up
# 0.1, linear decay, weight decay 0.01, dropout 0.1); the batch is capped by the training set.
# Extra flags come last and win (e.g. --epochs 20 --clip-len 8 --different-shape). DRY_RUN=1
# prints the command only.
set -euo pipefail
SCRIPT=$(realpath "$0")
usage="usage: bash $0 DEVICES PRETRAINED TRAIN_STORES TEST_STORES OUTPUT [extra flags]"
[[ $# -ge 5 ]] || { echo "$usage   (e.g. cpu:1 or 0,1,2,3; stores comma-separated)" >&2; exit 2; }
DEVICES=$1

source "$(dirname "$0")/../lib/stores.sh"
LOAD=$(realpath -m -- "$2")
mapfile -t TRAIN < <(vimpac_stores "$3")
mapfile -t TEST < <(vimpac_stores "$4")
OUTPUT=$(realpath -m -- "$5")
shift 5
vimpac_require "$usage" "$LOAD" "${TRAIN[@]}" "${TEST[@]}"

source "$(dirname "$0")/../lib/launch.sh"
vimpac_launcher "$DEVICES" vimpac.finetune
ARGS=(--dataset-name custom --train-tokens "${TRAIN[@]}" --valid-tokens "${TEST[@]}"
      --load "$LOAD" --output "$OUTPUT")
vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
