#!/usr/bin/env bash
# GPU check (issues 16, 21): install the carried wheels, then CUDA tests (among them the dtype inside the DeepSpeed
# engine per precision), DALL-E extraction (encoder-only, decode-only and job frames/s), pre-training (auto with a
# torch.profiler summary, the loader alone, Large, three layouts, --compile, fp16 + ZeRO-2), the bare step against
# the original code, fine-tuning + predict, kill -9 + resume, in about 8 minutes on one GPU without network.
# Writes OUTDIR/report.json, report.md and logs.tar.gz.
#
#   make gpu-wheels                                  # here, where pip works: gpu_wheels/ (~53 MiB)
#   git clone --depth 1 https://github.com/airsplay/vimpac gpu_wheels/vimpac-original   # optional: the original
#                                                    # code for the bare-step comparison (~2 MiB), after make
#   bash scripts/gpu_check.sh OUTDIR --commit SHA    # on the GPU machine (python3 = its torch)
#   bash scripts/gpu_check.sh OUTDIR --cpu-dry-run --commit SHA   # here: every step on CPU, tiny sizes
#                                                    # (~6 min on 2 loaded cores)
#
# With the device tool (repo root, carry ["gpu_wheels"], timeout_s 570), naming the commit measured:
#   bash scripts/gpu_check.sh $OUT --commit SHA      # SHA: `git rev-parse HEAD` here, tracked files committed
#
# The device machine gets a copy of the working tree without git refs: without --commit (or
# GPU_CHECK_COMMIT=SHA) the report says "unknown (pass --commit)" unless this is a git checkout
# whose tracked files are unchanged, never a stale commit.
# Extra flags go to scripts/gpu_check/run.py (--only STEP..., --budget-s S, --work DIR, --wheels DIR,
# --original-repo DIR, --commit SHA; a --commit flag wins over GPU_CHECK_COMMIT). PYTHON picks the interpreter
# (default: python3; .venv/bin/python for the dry run when it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?"usage: bash scripts/gpu_check.sh OUTDIR [--cpu-dry-run] [--commit SHA] [run.py flags]"}
shift
PY=${PYTHON:-python3}
if [[ -z ${PYTHON:-} && " $* " == *" --cpu-dry-run "* && -x .venv/bin/python ]]; then
    PY=.venv/bin/python
fi
exec "$PY" scripts/gpu_check/run.py --out "$OUTDIR" ${GPU_CHECK_COMMIT:+--commit "$GPU_CHECK_COMMIT"} "$@"
