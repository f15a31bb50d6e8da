"""Run `vimpac.pretrain` / `vimpac.finetune` in a subprocess with test hooks injected (production code reads none
from the environment).

    python tests/hooked_run.py pretrain [--step-sleep S] [--nan-steps 2,4] [--sleep-before-swap S] -- TRAINER FLAGS
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vimpac.train.hooks import LoopHooks  # noqa: E402


def hooks_from(a: argparse.Namespace) -> LoopHooks:
    nan_steps = {int(x) for x in a.nan_steps.split(",") if x.strip()}

    def before_swap(tmp: str) -> None:
        print(f"[test hook] sleeping {a.sleep_before_swap}s before swapping in {tmp}", flush=True)
        time.sleep(a.sleep_before_swap)

    return LoopHooks(
        after_step=(lambda step: time.sleep(a.step_sleep)) if a.step_sleep else None,
        loss_at_boundary=(lambda step, loss: loss * float("nan") if step in nan_steps else loss) if nan_steps else None,
        before_checkpoint_swap=before_swap if a.sleep_before_swap else None)


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("entry", choices=("pretrain", "finetune"))
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--nan-steps", default="")
    ap.add_argument("--sleep-before-swap", type=float, default=0.0)
    a = ap.parse_args(argv[:cut])
    entry = importlib.import_module(f"vimpac.{a.entry}")
    return entry.main(argv[cut + 1:], hooks=hooks_from(a))


if __name__ == "__main__":
    sys.exit(main())
