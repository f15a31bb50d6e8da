#!/usr/bin/env bash
# Shared by scripts/pretrain/*.sh and scripts/finetune/*.sh (sourced, not run).
#
#   vimpac_launcher DEVICES MODULE   sets the LAUNCH array: DEVICES "0,1,2,3" = those GPUs through
#                                    the deepspeed launcher; "cpu:N" = N CPU ranks (gloo; the
#                                    deepspeed launcher runs N local processes when asked for N
#                                    "GPUs"), "cpu:1" = plain python
#   vimpac_run SNAP_DIR ARGS...      copies the calling script and the command line to SNAP_DIR,
#                                    runs "${LAUNCH[@]}" ARGS... and tees the log to SNAP_DIR/log.log.
#                                    When ARGS end up with another --output than the script's
#                                    $OUTPUT (an extra flag), run.sh, command.sh and log.log go
#                                    there instead (a SNAP_DIR other than $OUTPUT: beside it).
#
# Also: cd to the repository root (relative paths in flags are relative to it), MASTER_PORT,
# PYTHONPATH, and the interpreter: $PYTHON when set, else the repository's .venv/bin/python
# (`make install` creates it), else an error saying how to set PYTHON. DRY_RUN=1 prints the
# command and where its log would go, and runs nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

vimpac_die() {
    echo "$(basename "${SCRIPT:-$0}"): error: $*" >&2
    exit 2
}

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then
        PYTHON=$PWD/.venv/bin/python
    else
        vimpac_die "no Python to run with: $PWD/.venv/bin/python does not exist (\`make install\` creates it)" \
                   "and PYTHON is not set; point PYTHON at an interpreter with the project's requirements," \
                   "e.g. PYTHON=/path/to/env/bin/python bash $0 ..."
    fi
fi
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    vimpac_die "PYTHON=$PYTHON cannot import torch; run \`make install\` (creates .venv) or point PYTHON at" \
               "an interpreter with the project's requirements"
fi
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

# the value of the last --output (or --output=) in the arguments; argparse keeps the last one too
vimpac_last_output() {
    local out="" prev=""
    for arg in "$@"; do
        if [[ $prev == --output ]]; then
            out=$arg
        elif [[ $arg == --output=* ]]; then
            out=${arg#--output=}
        fi
        prev=$arg
    done
    printf '%s' "$out"
}

vimpac_run() {
    local snap=$1
    shift
    local out
    out=$(vimpac_last_output "$@")
    if [[ -n $out && -n ${OUTPUT:-} && $out != "$OUTPUT" ]]; then
        if [[ $snap == "$OUTPUT" ]]; then
            snap=$out
        else
            snap=$(dirname "$out")/$(basename "$snap")
        fi
    fi
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        echo "log: $snap/log.log"
        printf '%q ' "${LAUNCH[@]}" "$@"
        echo
        return 0
    fi
    mkdir -p "$snap"
    cp "$SCRIPT" "$snap/run.sh"
    printf '%q ' "${LAUNCH[@]}" "$@" > "$snap/command.sh"
    echo >> "$snap/command.sh"
    "${LAUNCH[@]}" "$@" 2>&1 | tee -a "$snap/log.log"
}
