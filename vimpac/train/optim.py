"""The optimizer (AdamW with decay groups; Adam and SGD as the original's `--optim`) and the epoch-based
learning-rate schedule (warm-up, then linear / cosine / constant)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")  # the original's --optim choices


class ScheduleError(ValueError):
    """A schedule flag out of range."""


def is_no_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Biases, norm weights (LayerNorm, BatchNorm: any 1-d tensor) and positional tables skip weight decay.

    Positional tables are left undecayed as in ViT/timm: decay would pull positions towards
    each other. The code embedding (tied to the masked-token decoder) is decayed, as in BERT.
    """
    leaf = name.rsplit(".", 1)[-1]
    return param.dim() <= 1 or leaf.startswith("pos_") or isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm))


def param_groups(model: nn.Module, *, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights and the no-decay rest (each group records parameter names)."""
    owners = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owners[f"{mod_name}.{p_name}" if mod_name else p_name] = mod
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = no_decay if is_no_decay(name, p, owners[name]) else decay
        group[0].append(p)
        group[1].append(name)
    return [{"params": decay[0], "names": decay[1], "weight_decay": weight_decay},
            {"params": no_decay[0], "names": no_decay[1], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
                    eps: float = 1e-6, kind: str = "adamw") -> torch.optim.Optimizer:
    """A torch optimizer as DeepSpeed's client optimizer (works on CPU without DeepSpeed's compiled ops).

    adamw: decoupled weight decay on the decay group. adam: Adam without weight decay, as the
    original's `--optim adam`. sgd: momentum `betas[0]`, L2 weight decay on the decay group (the
    original decayed every tensor; here biases, norms and positional tables are left out, as for AdamW).
    """
    if kind not in OPTIMIZERS:
        raise ScheduleError(f"--optim must be one of {OPTIMIZERS}, got {kind!r}")
    groups = param_groups(model, weight_decay=0.0 if kind == "adam" else weight_decay)
    for g in groups:
        g.pop("names")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0], weight_decay=weight_decay)
    # the fused kernel (CPU and CUDA) does the whole update in one pass per group instead of ~10 ops per tensor
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for g in groups for p in g["params"])
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def describe_optimizer(kind: str, *, betas: tuple[float, float], weight_decay: float, eps: float) -> str:
    """One line for the run's log: what `build_optimizer(kind=...)` builds from these flags."""
    if kind == "sgd":
        return f"SGD (momentum {betas[0]} = --beta1, weight decay {weight_decay})"
    if kind == "adam":
        unused = f"; --weight-decay {weight_decay} unused, as in the original" if weight_decay else ""
        return f"Adam (betas {betas}, eps {eps:g}, no weight decay{unused})"
    return f"AdamW (betas {betas}, eps {eps:g}, weight decay {weight_decay})"


@dataclass
class LRSchedule:
    """lr multiplier for optimizer step `s`, from the progress in epochs at that step.

    progress = epoch_base + (s - step_base) / steps_per_epoch, fraction p = progress / epochs;
    warm-up is linear over the first `warmup` fraction, then linear / cosine decay to 0 or constant.
    A resumed run sets (step_base, epoch_base) to the start of its first epoch, so a stage-2 run
    whose batch (hence steps per epoch) differs still follows the same curve over epochs.
    """

    kind: str
    warmup: float
    epochs: float
    steps_per_epoch: int
    step_base: int = 0
    epoch_base: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ScheduleError(f"--lr-scheduler must be one of {SCHEDULES}, got {self.kind!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ScheduleError(f"--warm-up is a fraction of training in [0, 1), got {self.warmup}")
        if self.epochs <= 0 or self.steps_per_epoch < 1:
            raise ScheduleError(f"need epochs > 0 and at least one step per epoch, got {self.epochs}, {self.steps_per_epoch}")

    def progress(self, step: int) -> float:
        return self.epoch_base + (step - self.step_base) / self.steps_per_epoch

    def __call__(self, step: int) -> float:
        """Multiplier for the update that follows `step` completed updates.

        Warm-up reads the fraction reached after the update (the first update is not wasted at 0),
        decay the fraction before it (nor is the last one).
        """
        after = (self.progress(step) + 1.0 / self.steps_per_epoch) / self.epochs
        before = self.progress(step) / self.epochs
        if self.warmup > 0 and after <= self.warmup:
            return max(after, 0.0) / self.warmup
        if self.kind == "constant":
            return 1.0
        q = min(max((before - self.warmup) / (1.0 - self.warmup), 0.0), 1.0)
        if self.kind == "linear":
            return 1.0 - q
        return 0.5 * (1.0 + math.cos(math.pi * q))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
