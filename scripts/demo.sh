#!/usr/bin/env bash
# The pipeline end to end on generated demo videos, on any machine (2 CPU cores are enough), with the method's
# effect measured on a held-out test split (val chooses the learning rates, test reports): what `make demo` runs.
#   bash scripts/demo.sh --profile default varied   both regimes, one combined report (make demo)
#   bash scripts/demo.sh                            the default regime only (shared looks, 128 codes)
#   bash scripts/demo.sh --profile varied           every video its own looks, crf 28, 512 codes (make demo-varied)
#   bash scripts/demo.sh --variants fgbg reverse    those pre-training variants beside the main one
#   bash scripts/demo.sh --ablation                 every variant + the all-labels ceiling (make demo-ablation)
#   bash scripts/demo.sh --help                     every option (python -m vimpac.demo)
# Each step skips work already done, so a rerun after an interruption continues.
# Outputs: data/demo/ (videos, lists), snap/demo/ (tokenizer, stores, runs, logs/, report.md); another
# --profile P: data/demo_P/, snap/demo_P/; several profiles: also snap/demo_report.md (all regimes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m vimpac.demo "$@"
