#!/usr/bin/env bash
# Shared launcher of the fine-tuning scripts (sourced, not run): expects NAME, LOAD and the ARGS array.
#
#   bash scripts/finetune/<script>.sh 0,1,2,3 [extra flags]   # GPUs 0-3 (deepspeed launcher)
#   bash scripts/finetune/<script>.sh cpu:2 [extra flags]     # 2 CPU ranks (gloo); cpu:1 = plain python
#
# Extra flags come last and win (e.g. --split-id 2, or --different-shape --clip-len 10 --frame-rate 4
# --frame-size 256 --bs-per-gpu 2). PRETRAIN=DIR overrides the pre-trained checkpoint, SNAP_ROOT
# (default snap/finetune) the output root. The script and command line are copied to the output
# directory and the log is teed there.
set -euo pipefail
DEVICES=${1:?"usage: bash $0 GPU_IDS|cpu:N [extra flags]   (e.g. 0,1,2,3 or cpu:2)"}
shift
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SNAP_ROOT=${SNAP_ROOT:-snap/finetune}
OUTPUT=$SNAP_ROOT/$NAME
LOAD=${PRETRAIN:-$LOAD}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
PORT=${MASTER_PORT:-$((29500 + RANDOM % 1000))}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ $DEVICES == cpu:* ]]; then
    RANKS=${DEVICES#cpu:}
    export DS_ACCELERATOR=cpu
    if [[ $RANKS == 1 ]]; then
        LAUNCH=("$PYTHON" -m vimpac.finetune)
    else
        LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --num_nodes 1 --num_gpus "$RANKS" --master_port "$PORT"
                --module vimpac.finetune)
    fi
else
    LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --include "localhost:$DEVICES" --master_port "$PORT"
            --module vimpac.finetune)
fi
ARGS+=(--load "$LOAD" --output "$OUTPUT")

mkdir -p "$OUTPUT"
cp "$0" "$OUTPUT/run.sh"
printf '%q ' "${LAUNCH[@]}" "${ARGS[@]}" "$@" > "$OUTPUT/command.sh"
echo >> "$OUTPUT/command.sh"
"${LAUNCH[@]}" "${ARGS[@]}" "$@" 2>&1 | tee -a "$OUTPUT/log.log"
