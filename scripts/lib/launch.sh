#!/usr/bin/env bash
# Shared by scripts/pretrain/*.sh and scripts/finetune/*.sh (sourced, not run).
#
#   vimpac_launcher DEVICES MODULE   sets the LAUNCH array: DEVICES "0,1,2,3" = those GPUs through
#                                    the deepspeed launcher; "cpu:N" = N CPU ranks (gloo; the
#                                    deepspeed launcher runs N local processes when asked for N
#                                    "GPUs"), "cpu:1" = plain python
#   vimpac_run SNAP_DIR ARGS...      copies the calling script and the command line to SNAP_DIR,
#                                    runs "${LAUNCH[@]}" ARGS... and tees the log to SNAP_DIR/log.log
#
# Also: cd to the repository root, PYTHON (default .venv/bin/python), MASTER_PORT, PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

vimpac_launcher() {
    local devices=$1 module=$2
    local port=${MASTER_PORT:-$((29500 + RANDOM % 1000))}
    if [[ $devices == cpu:* ]]; then
        local ranks=${devices#cpu:}
        export DS_ACCELERATOR=cpu
        if [[ $ranks == 1 ]]; then
            LAUNCH=("$PYTHON" -m "$module")
        else
            LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --num_nodes 1 --num_gpus "$ranks" --master_port "$port"
                    --module "$module")
        fi
    else
        LAUNCH=("$PYTHON" -m deepspeed.launcher.runner --include "localhost:$devices" --master_port "$port"
                --module "$module")
    fi
}

vimpac_run() {
    local snap=$1
    shift
    mkdir -p "$snap"
    cp "$SCRIPT" "$snap/run.sh"
    printf '%q ' "${LAUNCH[@]}" "$@" > "$snap/command.sh"
    echo >> "$snap/command.sh"
    "${LAUNCH[@]}" "$@" 2>&1 | tee -a "$snap/log.log"
}
