#!/usr/bin/env bash
# GPU check (issue 16): install the carried wheels, then CUDA tests, DALL-E extraction, pre-training
# (bf16/fp16 x ZeRO 0/2, three attention layouts), fine-tuning + predict, kill -9 + resume, in under
# 8 minutes on one GPU without network. Writes OUTDIR/report.json, report.md and logs.tar.gz.
#
#   make gpu-wheels                                  # here, where pip works: gpu_wheels/ (~53 MiB)
#   bash scripts/gpu_check.sh OUTDIR                 # on the GPU machine (python3 = its torch)
#   bash scripts/gpu_check.sh OUTDIR --cpu-dry-run   # here: every step on CPU, tiny sizes (~5 min on 2 cores)
#
# With the device tool (repo root, carry ["gpu_wheels"], timeout_s 560):
#   bash scripts/gpu_check.sh $OUT
#
# Extra flags go to scripts/gpu_check/run.py (--only STEP..., --budget-s S, --work DIR, --wheels DIR).
# PYTHON picks the interpreter (default: python3; .venv/bin/python for the dry run when it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?"usage: bash scripts/gpu_check.sh OUTDIR [--cpu-dry-run] [run.py flags]"}
shift
PY=${PYTHON:-python3}
if [[ -z ${PYTHON:-} && " $* " == *" --cpu-dry-run "* && -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
exec "$PY" scripts/gpu_check/run.py --out "$OUTDIR" "$@"
