#!/usr/bin/env bash
# GPU check (issue 16): install the carried wheels, then CUDA tests, DALL-E extraction, pre-training
# (bf16/fp16 x ZeRO 0/2, three attention layouts), fine-tuning + predict, kill -9 + resume, in under
# 8 minutes on one GPU without network. Writes OUTDIR/report.json, report.md and logs.tar.gz.
#
#   make gpu-wheels                                  # here, where pip works: gpu_wheels/ (~53 MiB)
#   bash scripts/gpu_check.sh OUTDIR                 # on the GPU machine (python3 = its torch)
#   bash scripts/gpu_check.sh OUTDIR --cpu-dry-run   # here: every step on CPU, tiny sizes (~5 min on 2 cores)
#
# With the device tool (repo root, carry ["gpu_wheels"], timeout_s 560), naming the commit measured:
#   bash scripts/gpu_check.sh $OUT --commit SHA      # SHA: `git rev-parse HEAD` here, tracked files committed
#
# The device machine gets a copy of the working tree without git refs: without --commit (or
# GPU_CHECK_COMMIT=SHA) the report says "unknown (pass --commit)" unless this is a git checkout
# whose tracked files are unchanged, never a stale commit.
# Extra flags go to scripts/gpu_check/run.py (--only STEP..., --budget-s S, --work DIR, --wheels DIR,
# --commit SHA; a --commit flag wins over GPU_CHECK_COMMIT). PYTHON picks the interpreter (default:
# python3; .venv/bin/python for the dry run when it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?"usage: bash scripts/gpu_check.sh OUTDIR [--cpu-dry-run] [--commit SHA] [run.py flags]"}
shift
PY=${PYTHON:-python3}
if [[ -z ${PYTHON:-} && " $* " == *" --cpu-dry-run "* && -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
exec "$PY" scripts/gpu_check/run.py --out "$OUTDIR" ${GPU_CHECK_COMMIT:+--commit "$GPU_CHECK_COMMIT"} "$@"
