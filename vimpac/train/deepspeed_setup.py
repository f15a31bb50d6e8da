"""The DeepSpeed engine for a run: its config from the flags (+ `--deepspeed-config` overrides) and the engine itself.

Precision: bf16 is torch.autocast(bf16) over fp32 weights, not DeepSpeed's bf16 mode (bf16
weights, fp32 masters in the optimizer). On CPU DeepSpeed's bf16 mode fails in the contrastive
head's BatchNorm ("expected scalar type BFloat16 but found Float"), while autocast runs the Small
model's step 2.9x faster than fp32 on AMX with losses equal to 3 decimals; fp32 weights also keep
checkpoints and gradient clipping plain. fp16 is DeepSpeed's fp16 mode with dynamic loss scaling,
GPU only, under ZeRO 1/2 (checkpoints read the fp32 masters through ZeRO's partition mapping).

The config always carries a `torch_autocast` section that matches the run's precision: DeepSpeed
0.19.8's `engine.forward` (runtime/torch_autocast.py::autocast_if_enabled) switches an outer CUDA
autocast OFF when that section is absent, so without it a "bf16" run computed in fp32 on GPUs.
Its `lower_precision_safe_modules` list is empty: gradients are reduced in fp32 (the weights are).
Throughput timers are off (they synchronise the device twice per micro-step), and under ZeRO-0
the trainer clips gradients itself (one foreach norm, `split_clipping`) instead of DeepSpeed's
per-parameter loop.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch import nn

from vimpac.train.runtime import BatchPlan, EngineError


def deep_update(base: dict, overrides: dict) -> dict:
    """Recursive dict merge: values of `overrides` win, nested dicts merge."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_overrides(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EngineError(f"--deepspeed-config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise EngineError(f"--deepspeed-config {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise EngineError(f"--deepspeed-config {path}: expected a JSON object, got {type(data).__name__}")
    return data


def choose_zero_stage(precision: str, zero_stage: int | None, *, cpu: bool) -> int:
    """The ZeRO stage for this precision: the flag's, or (unset) 0, or 1 under fp16 (its fp32 masters need ZeRO)."""
    if precision == "fp16" and cpu:
        raise EngineError("--precision fp16 is for GPUs: on a CPU fp16 matmuls run near fp32 speed while adding "
                          "loss scaling; use --precision auto (bf16 where the CPU computes it natively, else fp32)")
    if zero_stage is None:
        return 1 if precision == "fp16" else 0
    if zero_stage not in (0, 1, 2):
        raise EngineError(f"--zero-stage must be 0, 1 or 2 (ZeRO-3 shards the parameters themselves, which this "
                          f"trainer's checkpoints and stage-2 resampling do not handle), got {zero_stage}")
    if precision == "fp16" and zero_stage == 0:
        raise EngineError("--precision fp16 needs --zero-stage 1 or 2 (the default under fp16 is 1): checkpoints "
                          "read the fp32 master weights and AdamW state through ZeRO's partition mapping")
    return zero_stage


def build_ds_config(plan: BatchPlan, *, clip_grad_norm: float, zero_stage: int, precision: str,
                    overrides: dict | None = None) -> dict:
    """The DeepSpeed config for these flags, then `--deepspeed-config` overrides merged on top.

    Batch keys must stay consistent with the plan: an override that changes them is an error
    (the trainer's data sampler follows the plan, not DeepSpeed).
    """
    cfg: dict[str, Any] = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": float(clip_grad_norm),
        "zero_optimization": {"stage": int(zero_stage)},
        "steps_per_print": 10 ** 12,   # the trainer logs; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False, "synchronized": False}},  # no device sync per micro-step
        "zero_allow_untested_optimizer": True,  # torch AdamW as client optimizer under ZeRO
        # the engine's forward must keep the caller's autocast (see the module docstring)
        "torch_autocast": ({"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
                           if precision == "bf16" else {"enabled": False}),
    }
    if precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    cfg = deep_update(cfg, overrides or {})
    for key, want in (("train_batch_size", plan.global_batch), ("train_micro_batch_size_per_gpu", plan.micro_batch),
                      ("gradient_accumulation_steps", plan.accumulation)):
        if cfg[key] != want:
            raise EngineError(f"--deepspeed-config sets {key}={cfg[key]} but the flags give {want}; set batch sizes "
                              f"with --batch-size / --bs-per-gpu")
    if cfg.get("bf16", {}).get("enabled"):
        raise EngineError("--deepspeed-config enables DeepSpeed bf16 mode; use --precision bf16 (autocast over fp32 weights, "
                          "which this trainer's checkpoints assume)")
    check_autocast(cfg, precision)
    return cfg


def check_autocast(cfg: dict, precision: str) -> None:
    """The engine must compute in the run's precision: DeepSpeed's forward applies its `torch_autocast`
    section, and switches an outer CUDA autocast off when the section is disabled."""
    section = cfg.get("torch_autocast") or {}
    enabled, dtype = bool(section.get("enabled")), str(section.get("dtype", "bfloat16")).replace("torch.", "")
    want = {"bf16": "bfloat16"}.get(precision)
    if want is None and enabled:
        raise EngineError(f"--deepspeed-config enables torch_autocast ({dtype}) in a --precision {precision} run; "
                          f"choose the precision with --precision")
    if want is not None and (not enabled or dtype not in (want, "bf16")):
        raise EngineError(f"--deepspeed-config sets torch_autocast {section} in a --precision {precision} run: the "
                          f"engine would compute in another precision than the flag says (DeepSpeed switches the "
                          f"trainer's autocast off inside its forward); drop the torch_autocast override")


def split_clipping(cfg: dict, zero_stage: int) -> tuple[dict, float]:
    """(DeepSpeed config, the norm the trainer clips to): under ZeRO-0 the trainer clips (one foreach norm,
    also the logged gradient norm) and DeepSpeed does not; under ZeRO-1/2 the partitioned optimizer does."""
    clip = float(cfg.get("gradient_clipping", 0.0) or 0.0)
    if zero_stage == 0:
        return {**cfg, "gradient_clipping": 0.0}, clip
    return cfg, 0.0


def init_engine(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, ds_config: dict):
    """deepspeed.initialize with a client optimizer and scheduler -> the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine
