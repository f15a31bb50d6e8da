"""Process-group set-up and batch arithmetic shared by every training run.

- `Launch`: what the launcher (plain `python`, `torchrun`, the `deepspeed` launcher) says about
  this process, read once from the environment;
- `init_distributed`: join (or, under plain python, create) the process group: gloo on CPU,
  nccl on GPUs; the same DeepSpeed code path runs everywhere;
- `plan_batches`: global batch = micro batch x accumulation x world size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch

from vimpac.train import ds_compat


class EngineError(ValueError):
    """Flags that cannot work together (batch arithmetic, precision, ZeRO stage on this device)."""


@dataclass(frozen=True)
class Launch:
    """This process's place as the launcher set it up (read from the environment once)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launched: bool  # False: plain `python`, one process
    cpu: bool       # DeepSpeed on the CPU (no GPU, or DS_ACCELERATOR=cpu)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Launch":
        env = os.environ if environ is None else environ
        launched = "RANK" in env and "WORLD_SIZE" in env
        world = int(env.get("WORLD_SIZE", "1")) if launched else 1
        return cls(rank=int(env.get("RANK", "0")) if launched else 0, world_size=world,
                   local_rank=int(env.get("LOCAL_RANK", "0")) if launched else 0,
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)), launched=launched,
                   cpu=ds_compat.use_cpu_accelerator(env))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return "cpu" if self.cpu else "cuda"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(launch: Launch) -> DistInfo:
    """Join (or create) the process group; return this process's place in it."""
    ds_compat.deepspeed_environment(cpu=launch.cpu, single_process=not launch.launched)
    import deepspeed  # after the accelerator is decided

    if launch.cpu:
        ds_compat.skip_cpu_shm_comm_op()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if launch.cpu else "nccl", verbose=False)
    if launch.cpu:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            # ranks share the cores; oversubscription slows every rank down
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // launch.local_world_size))
    else:
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    return DistInfo(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                    local_rank=launch.local_rank, device=device)


def any_rank(flag: bool, dist: DistInfo) -> bool:
    """True on every rank when `flag` is true on any rank (a collective)."""
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    if dist.world_size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


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


def plan_for_data(*, batch_size: int | None, bs_per_gpu: int | None, default_batch: int, default_bs_per_gpu: int,
                  world_size: int, num_videos: int) -> tuple[BatchPlan, str | None]:
    """The batch plan from the flags a user gave -> (plan, a warning when the data changed the defaults).

    Both flags given: taken as they are (`plan_batches` names both when they disagree). Only
    --batch-size: the micro batch is the largest divisor of its per-rank share up to the default.
    Only --bs-per-gpu: the default global batch rounded down to a multiple of it (at least one
    micro-step). No --batch-size: the global batch is capped by the training videos, so a small
    set still trains; the warning says so.
    """
    if batch_size is not None and bs_per_gpu is not None:
        return plan_batches(batch_size=batch_size, bs_per_gpu=bs_per_gpu, world_size=world_size), None
    if batch_size is not None:
        if batch_size < 1 or batch_size % world_size:
            raise EngineError(f"--batch-size {batch_size} must be a positive multiple of the world size {world_size}")
        share = batch_size // world_size
        micro = max(d for d in range(1, min(share, default_bs_per_gpu) + 1) if share % d == 0)
        return plan_batches(batch_size=batch_size, bs_per_gpu=micro, world_size=world_size), None
    micro = default_bs_per_gpu if bs_per_gpu is None else bs_per_gpu
    if micro < 1:
        raise EngineError(f"--bs-per-gpu must be positive, got {micro}")
    per_step = micro * world_size
    wanted = max(per_step, default_batch // per_step * per_step)
    if num_videos >= wanted:
        return plan_batches(batch_size=wanted, bs_per_gpu=micro, world_size=world_size), None
    if num_videos < per_step:  # not even one micro-step: shrink the micro batch too (unless it was given)
        if bs_per_gpu is not None or num_videos < world_size:
            return plan_batches(batch_size=wanted, bs_per_gpu=micro, world_size=world_size), None  # the loop explains
        micro = num_videos // world_size
        per_step = micro * world_size
    capped = num_videos // per_step * per_step
    warning = (f"--batch-size not given: the default of {default_batch} videos per step does not fit the "
               f"{num_videos} training videos; using {capped} ({micro} per rank x {capped // per_step} accumulation "
               f"x {world_size} rank(s)); pass --batch-size to choose")
    return plan_batches(batch_size=capped, bs_per_gpu=micro, world_size=world_size), warning
