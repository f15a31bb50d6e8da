"""DeepSpeed setup shared by pre-training and fine-tuning (ZeRO data parallelism, Rajbhandari et al., 2020).

- `init_distributed`: one process group for plain `python` (a 1-rank group), `torchrun` and
  the `deepspeed` launcher; gloo on CPU (`DS_ACCELERATOR=cpu` is set before DeepSpeed is
  imported when there is no GPU), nccl on GPUs.
- `plan_batches`: global batch = micro batch x accumulation x world size.
- `param_groups`: AdamW groups without weight decay for biases, norms and positional tables.
- `LRSchedule` (+ `build_scheduler`): warm-up then linear / cosine / constant, as a function of
  training progress in epochs, so a stage-2 run with another batch size keeps the schedule.
- `build_ds_config` (+ `--deepspeed-config` JSON overrides) and `init_engine`.

Precision: `--bf16` is torch.autocast(bf16) over fp32 weights (`autocast_context`), not
DeepSpeed's bf16 mode (bf16 weights, fp32 masters in the optimizer). On CPU DeepSpeed's bf16
mode fails in the contrastive head's BatchNorm ("expected scalar type BFloat16 but found
Float"), while autocast runs the Small model's step 2.9x faster than fp32 (1.20 vs 0.41
clips/s, 1 thread, AMX) with losses equal to 3 decimals; fp32 weights also keep checkpoints
and gradient clipping plain. `--fp16` is DeepSpeed's fp16 mode with loss scaling, GPU only
(ZeRO 1/2; on CPU fp16 matmuls run near fp32 speed).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("linear", "cosine", "constant")


class EngineError(ValueError):
    """Flags that cannot work together (batch arithmetic, precision, ZeRO stage on this device)."""


# ----------------------------------------------------------------------------- process group

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def use_cpu_accelerator() -> bool:
    """Point DeepSpeed at the CPU when there is no GPU (must run before `import deepspeed`)."""
    if os.environ.get("DS_ACCELERATOR"):
        return os.environ["DS_ACCELERATOR"] == "cpu"
    if torch.cuda.is_available():
        return False
    os.environ["DS_ACCELERATOR"] = "cpu"
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce at `init_distributed` on CPU.

    That op serves only CPU *inference* all-reduce; building it is a C++ compile of minutes on
    2 cores at every fresh start, and a build killed midway leaves a lock that makes every later
    start wait forever. Training collectives go through gloo either way.
    """
    import deepspeed.ops

    ops = dict(vars(deepspeed.ops).get("__compatible_ops__") or {})  # {} also skips probing every op's compiler
    ops["deepspeed_shm_comm"] = False
    deepspeed.ops.__compatible_ops__ = ops


def init_distributed() -> DistInfo:
    """Join (or, under plain python, create) the process group; return this process's place in it.

    torchrun and the deepspeed launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; without
    them this is a single process and a 1-rank group on a free local port is created, so the
    same DeepSpeed code path runs everywhere.
    """
    cpu = use_cpu_accelerator()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed  # after DS_ACCELERATOR is decided

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cpu:
        skip_cpu_shm_comm_op()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False)
    if cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    return DistInfo(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                    local_rank=local_rank, device=device)


# ----------------------------------------------------------------------------- batches

@dataclass(frozen=True)
class BatchPlan:
    global_batch: int   # videos per optimizer step, all ranks together
    micro_batch: int    # videos per forward pass on one rank (--bs-per-gpu)
    accumulation: int   # micro-steps per optimizer step
    world_size: int


def plan_batches(*, batch_size: int, bs_per_gpu: int, world_size: int) -> BatchPlan:
    """--batch-size (global) = --bs-per-gpu x accumulation x world size, exactly."""
    if batch_size < 1 or bs_per_gpu < 1:
        raise EngineError(f"--batch-size ({batch_size}) and --bs-per-gpu ({bs_per_gpu}) must be positive")
    per_step = bs_per_gpu * world_size
    if batch_size % per_step:
        raise EngineError(f"--batch-size {batch_size} is not divisible by --bs-per-gpu {bs_per_gpu} x world size "
                          f"{world_size} = {per_step}; pick a batch size that is a multiple of {per_step}")
    return BatchPlan(global_batch=batch_size, micro_batch=bs_per_gpu, accumulation=batch_size // per_step,
                     world_size=world_size)


# ----------------------------------------------------------------------------- optimizer

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
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """torch AdamW as DeepSpeed's client optimizer (works on CPU without DeepSpeed's compiled ops)."""
    groups = param_groups(model, weight_decay=weight_decay)
    for g in groups:
        g.pop("names")
    # the fused kernel (CPU and CUDA) does the whole update in one pass per group instead of ~10 ops per tensor
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


# ----------------------------------------------------------------------------- schedule

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
            raise EngineError(f"--lr-scheduler must be one of {SCHEDULES}, got {self.kind!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise EngineError(f"--warm-up is a fraction of training in [0, 1), got {self.warmup}")
        if self.epochs <= 0 or self.steps_per_epoch < 1:
            raise EngineError(f"need epochs > 0 and at least one step per epoch, got {self.epochs}, {self.steps_per_epoch}")

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


# ----------------------------------------------------------------------------- DeepSpeed config

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


def check_precision(precision: str, zero_stage: int, *, cpu: bool) -> None:
    if precision not in PRECISIONS:
        raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if zero_stage not in (0, 1, 2):
        raise EngineError(f"--zero-stage must be 0, 1 or 2 (ZeRO-3 shards the parameters themselves, which this "
                          f"trainer's checkpoints and stage-2 resampling do not handle), got {zero_stage}")
    if precision == "fp16" and cpu:
        raise EngineError("--fp16 is for GPUs: on this CPU fp16 matmuls run near fp32 speed (measured 83 vs 64 "
                          "GFLOP/s, bf16 279) while adding loss scaling; use --bf16, the CPU fast path with AMX")
    if precision == "fp16" and zero_stage == 0:
        raise EngineError("--fp16 needs --zero-stage 1 or 2: checkpoints read the fp32 master weights and AdamW "
                          "state through ZeRO's partition mapping")


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
        "zero_allow_untested_optimizer": True,  # torch AdamW as client optimizer under ZeRO
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
        raise EngineError("--deepspeed-config enables DeepSpeed bf16 mode; use --bf16 (autocast over fp32 weights, "
                          "which this trainer's checkpoints assume)")
    return cfg


def init_engine(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, ds_config: dict):
    """deepspeed.initialize with a client optimizer and scheduler -> the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


@contextlib.contextmanager
def autocast_context(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for `--bf16` (fp32 weights, bf16 matmuls); nothing otherwise."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
