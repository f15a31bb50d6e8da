#!/usr/bin/env bash
# Shared tail of the fine-tuning scripts (sourced, not run): expects NAME, LOAD and the ARGS array.
#
#   bash scripts/finetune/<script>.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/finetune/<script>.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo); cpu:1 = plain python
#
# Extra flags come last and win (e.g. --split-id 2, or --different-shape --clip-len 10 --frame-rate 4
# --frame-size 256 --bs-per-gpu 2). PRETRAIN=DIR overrides the pre-trained checkpoint, SNAP_ROOT
# (default snap/finetune) the output root. The script and command line are copied to the output
# directory (the --output of an extra flag, when given) and the log is teed there. PYTHON: see
# scripts/lib/launch.sh (default .venv/bin/python); DRY_RUN=1 prints the command only.
set -euo pipefail
SCRIPT=$(realpath "$0")
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
source "$(dirname "${BASH_SOURCE[0]}")/../lib/launch.sh"
SNAP_ROOT=${SNAP_ROOT:-snap/finetune}
OUTPUT=$SNAP_ROOT/$NAME
LOAD=${PRETRAIN:-$LOAD}
vimpac_launcher "$DEVICES" vimpac.finetune
ARGS+=(--load "$LOAD" --output "$OUTPUT")
vimpac_run "$OUTPUT" "${ARGS[@]}" "$@"
