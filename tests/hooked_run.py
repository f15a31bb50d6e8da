"""Run `vimpac.pretrain` / `vimpac.finetune` in a subprocess with test hooks injected (production code reads none
from the environment).

    python tests/hooked_run.py pretrain [--step-sleep S] [--nan-steps 2,4] [--sleep-before-swap S]
        [--inf-activation-steps 2] [--inf-grad-steps 2] [--hostnames h1,h2] [--log-shard-checks FILE] -- TRAINER FLAGS

--inf-activation-steps: the input of the model's first BatchNorm is +Inf in those steps' forwards (the loss
follows); --inf-grad-steps: the loss stays finite but its gradient is Inf. --hostnames: what
`scontrol show hostnames` would answer for any node list (--slurm-multinode-dist without SLURM);
--log-shard-checks: each shard whose SHA-256 this process checks at start-up is appended to FILE (one path per
line), then checked as usual.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from video2token.store import verify_file  # noqa: E402
from vimpac.train.hooks import LoopHooks  # noqa: E402


class _InfGrad(torch.autograd.Function):
    """Identity forward; an Inf gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _steps(text: str) -> set[int]:
    return {int(x) for x in text.split(",") if x.strip()}


def _inf_activation(steps: set[int]):
    """before_forward hook: on `steps`, multiply the first BatchNorm's input by +Inf; print the buffers'
    checksum before each step's first forward ("[buffers] step 3: ..." = the state after step 2)."""
    current = {"step": 0, "hooked": False}

    def pre_hook(module, args):
        return (args[0] * float("inf"),) if current["step"] in steps else None

    def before_forward(step: int, model) -> None:
        if step != current["step"]:
            total = sum(float(b.double().sum()) for b in model.buffers())
            print(f"[buffers] step {step}: {total!r}", flush=True)
        current["step"] = step
        if not current["hooked"]:
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
            bn.register_forward_pre_hook(pre_hook)
            current["hooked"] = True

    return before_forward


def hooks_from(a: argparse.Namespace) -> LoopHooks:
    nan_steps = _steps(a.nan_steps)
    inf_grad = _steps(a.inf_grad_steps)

    def loss_at_boundary(step, loss):
        if step in nan_steps:
            return loss * float("nan")
        return _InfGrad.apply(loss) if step in inf_grad else loss

    def before_swap(tmp: str) -> None:
        print(f"[test hook] sleeping {a.sleep_before_swap}s before swapping in {tmp}", flush=True)
        time.sleep(a.sleep_before_swap)

    def check_shard(path: str) -> None:
        with open(a.log_shard_checks, "a", encoding="utf-8") as f:
            f.write(path + "\n")
        verify_file(path)

    return LoopHooks(
        check_shard=check_shard if a.log_shard_checks else None,
        after_step=(lambda step: time.sleep(a.step_sleep)) if a.step_sleep else None,
        loss_at_boundary=loss_at_boundary if nan_steps or inf_grad else None,
        before_checkpoint_swap=before_swap if a.sleep_before_swap else None,
        before_forward=_inf_activation(_steps(a.inf_activation_steps)) if a.inf_activation_steps else None)


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("entry", choices=("pretrain", "finetune"))
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--nan-steps", default="")
    ap.add_argument("--sleep-before-swap", type=float, default=0.0)
    ap.add_argument("--inf-activation-steps", default="")
    ap.add_argument("--inf-grad-steps", default="")
    ap.add_argument("--hostnames", default="")
    ap.add_argument("--log-shard-checks", default="")
    a = ap.parse_args(argv[:cut])
    entry = importlib.import_module(f"vimpac.{a.entry}")
    hostnames = (lambda nodelist: a.hostnames.split(",")) if a.hostnames else None
    return entry.main(argv[cut + 1:], hooks=hooks_from(a), hostnames=hostnames)


if __name__ == "__main__":
    sys.exit(main())
