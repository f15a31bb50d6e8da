#!/usr/bin/env bash
# The pipeline end to end on generated demo videos, on any machine (2 CPU cores are enough),
# with the method's effect measured: what `make demo` runs. ~7 minutes on 2 AMX cores (bf16), ~14 on AVX2-only ones (fp32).
#   bash scripts/demo.sh                 data -> tokenizer -> stores -> pre-train -> fine-tune -> report
#   bash scripts/demo.sh --ablation      + block vs i.i.d. masking, MP-only vs MP+CL (adds <= 26 min)
#   bash scripts/demo.sh --profile varied   every video its own looks, crf 28, 512 codes (make demo-varied)
#   bash scripts/demo.sh --help          every option (python -m vimpac.demo)
# Each step skips work already done, so a rerun after an interruption continues.
# Outputs: data/demo/ (videos, lists), snap/demo/ (tokenizer, stores, runs, logs/, report.md);
# another --profile P: data/demo_P/, snap/demo_P/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m vimpac.demo "$@"
