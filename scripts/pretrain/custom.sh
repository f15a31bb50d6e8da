#!/usr/bin/env bash
# Pre-train on your own token stores (made by python -m video2token.extract; labels are not read).
#
#   bash scripts/pretrain/custom.sh DEVICES TRAIN_STORES VALID_STORES OUTPUT [extra flags]
#   bash scripts/pretrain/custom.sh cpu:2 data/video_tokens/mine_train data/video_tokens/mine_val snap/pretrain/mine
#
# DEVICES: GPU ids (0,1,2,3; deepspeed launcher) or cpu:N. TRAIN_STORES / VALID_STORES: one store,
# or several joined by commas (any unlabelled store can be added to the training ones). OUTPUT: the
# run directory; the script copy, command.sh and log.log go there. These four are taken relative to
# where you call from; paths in extra flags are relative to the repository root.
#
# The recipe is VIMPAC's (Small model, block masking, masked prediction + contrastive loss, T=5,
# 10 epochs): in README's ablation over three data regimes, none of the background-robust options
# beat it by more than the seeds' spread. Where every video has its own background and motion is
# what you classify, the options to try first: --reverse-negatives, or --fgbg-merge 1 --static-frac
# 0.75 --reverse-negatives --mp-change-weight 4 (best on the 512-code varied regime's motion, lower
# on shape). Extra flags come last and win (e.g. --epochs 30 --frame-size 256). DRY_RUN=1 prints the
# command only.
set -euo pipefail
SCRIPT=$(realpath "$0")
usage="usage: bash $0 DEVICES TRAIN_STORES VALID_STORES OUTPUT [extra flags]"
[[ $# -ge 4 ]] || { echo "$usage   (e.g. cpu:2 or 0,1,2,3; stores comma-separated)" >&2; exit 2; }
DEVICES=$1
source "$(dirname "$0")/../lib/stores.sh"
mapfile -t TRAIN < <(vimpac_stores "$2")
mapfile -t VALID < <(vimpac_stores "$3")
OUTPUT=$(realpath -m -- "$4")
shift 4
vimpac_require "$usage" "${TRAIN[@]}" "${VALID[@]}"

source "$(dirname "$0")/../lib/launch.sh"
vimpac_launcher "$DEVICES" vimpac.pretrain
ARGS=(
    --train-tokens "${TRAIN[@]}" --valid-tokens "${VALID[@]}"
    --config small --clip-len 5 --epochs 10
    --output "$OUTPUT"
)
vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
