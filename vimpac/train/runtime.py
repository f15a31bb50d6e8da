"""Process-group set-up and batch arithmetic shared by every training run.

- `Launch`: what the launcher (plain `python`, `torchrun`, the `deepspeed` launcher) says about
  this process, read once from the environment; `slurm_launch`: the same from `srun`'s SLURM_*
  variables (the original VIMPAC's `--slurm-multinode-dist`);
- `init_distributed`: join (or, under plain python, create) the process group: gloo on CPU,
  nccl on GPUs; the same DeepSpeed code path runs everywhere;
- `plan_batches`: global batch = micro batch x accumulation x world size.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

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
    # variables DeepSpeed's env:// rendezvous reads, set by `init_distributed` (SLURM: no launcher set them)
    rendezvous: tuple[tuple[str, str], ...] = ()

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


SLURM_MASTER_PORT = 29500  # the original's fixed port; MASTER_PORT in the environment wins
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST")


def scontrol_hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames NODELIST`: a compressed SLURM node list ("node[01-04]") -> host names."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise EngineError(f"--slurm-multinode-dist: `scontrol show hostnames {nodelist}` failed ({e}); run inside a "
                          f"SLURM allocation, or launch with torchrun / deepspeed instead") from None
    return out.split()


def slurm_launch(environ: Mapping[str, str], hostnames: Callable[[str], Sequence[str]]) -> Launch:
    """This process's place from srun's variables (one task per GPU), as the original's --slurm-multinode-dist.

    rank = SLURM_PROCID, local rank = SLURM_LOCALID, world size = SLURM_NTASKS, master = the first
    host of SLURM_JOB_NODELIST (`hostnames` expands it: `scontrol_hostnames`), port MASTER_PORT or 29500.
    """
    missing = [k for k in SLURM_VARIABLES if not environ.get(k)]
    if missing:
        raise EngineError(f"--slurm-multinode-dist: {', '.join(missing)} not set; start every rank with srun (one "
                          f"task per GPU) inside a SLURM allocation, or drop the flag")
    try:
        rank, local_rank, world = (int(environ[k]) for k in SLURM_VARIABLES[:3])
        port = int(environ.get("MASTER_PORT") or SLURM_MASTER_PORT)
    except ValueError as e:
        raise EngineError(f"--slurm-multinode-dist: a SLURM variable or MASTER_PORT is not an integer ({e})") from None
    if not 0 <= rank < world or local_rank < 0:
        raise EngineError(f"--slurm-multinode-dist: SLURM_PROCID {rank} / SLURM_LOCALID {local_rank} out of range "
                          f"for SLURM_NTASKS {world}")
    hosts = list(hostnames(environ["SLURM_JOB_NODELIST"]))
    if not hosts:
        raise EngineError(f"--slurm-multinode-dist: SLURM_JOB_NODELIST {environ['SLURM_JOB_NODELIST']!r} names no host")
    per_node = re.match(r"\d+", environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or "")
    local_world = int(per_node.group()) if per_node else world
    return Launch(rank=rank, world_size=world, local_rank=local_rank, local_world_size=max(local_world, 1),
                  launched=True, cpu=ds_compat.use_cpu_accelerator(environ),
                  rendezvous=(("MASTER_ADDR", hosts[0]), ("MASTER_PORT", str(port)), ("RANK", str(rank)),
                              ("WORLD_SIZE", str(world)), ("LOCAL_RANK", str(local_rank))))


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
    ds_compat.deepspeed_environment(cpu=launch.cpu, single_process=not launch.launched,
                                    rendezvous=dict(launch.rendezvous))
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


def gather_rows(tensors: Sequence[torch.Tensor], dist: DistInfo) -> list[torch.Tensor]:
    """Every rank's rows of each tensor, concatenated in rank order, on every rank (CPU; a collective)."""
    local = [t.detach().cpu() for t in tensors]
    if dist.world_size == 1:
        return local
    parts: list = [None] * dist.world_size
    torch.distributed.all_gather_object(parts, local)  # rows differ between ranks: objects, not equal-size tensors
    return [torch.cat([p[i] for p in parts]) for i in range(len(local))]


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
                  world_size: int, num_videos: int, accumulation: int | None = None) -> tuple[BatchPlan, str | None]:
    """The batch plan from the flags a user gave -> (plan, a warning when the data changed the defaults).

    Both flags given: taken as they are (`plan_batches` names both when they disagree). Only
    --batch-size: the micro batch is the largest divisor of its per-rank share up to the default.
    Only --bs-per-gpu: the default global batch rounded down to a multiple of it (at least one
    micro-step). No --batch-size: the global batch is capped by the training videos, so a small
    set still trains; the warning says so. `accumulation` (--gradient-accumulation N, the
    original's): micro batch = global batch / world size / N, unless --bs-per-gpu is given (it wins,
    as in the original; the warning says when N is then not what runs).
    """
    if accumulation is not None:
        if accumulation < 1:
            raise EngineError(f"--gradient-accumulation must be >= 1, got {accumulation}")
        if bs_per_gpu is None:
            return _plan_for_accumulation(batch_size=batch_size, accumulation=accumulation,
                                          default_batch=default_batch, world_size=world_size, num_videos=num_videos)
        plan, warning = plan_for_data(batch_size=batch_size, bs_per_gpu=bs_per_gpu, default_batch=default_batch,
                                      default_bs_per_gpu=default_bs_per_gpu, world_size=world_size,
                                      num_videos=num_videos)
        if plan.accumulation != accumulation:
            note = (f"--gradient-accumulation {accumulation} not used: --bs-per-gpu {bs_per_gpu} wins (as in the "
                    f"original), giving {plan.accumulation} accumulation step(s)")
            warning = f"{warning}; {note}" if warning else note
        return plan, warning
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


def _plan_for_accumulation(*, batch_size: int | None, accumulation: int, default_batch: int, world_size: int,
                           num_videos: int) -> tuple[BatchPlan, str | None]:
    """--gradient-accumulation N without --bs-per-gpu: the micro batch follows from the global batch."""
    per_micro = world_size * accumulation  # one video per rank and micro-step, at the least
    if batch_size is not None:
        if batch_size < 1 or batch_size % per_micro:
            raise EngineError(f"--batch-size {batch_size} is not divisible by world size {world_size} x "
                              f"--gradient-accumulation {accumulation} = {per_micro}; pick a multiple of {per_micro}")
        return plan_batches(batch_size=batch_size, bs_per_gpu=batch_size // per_micro, world_size=world_size), None
    wanted = max(per_micro, default_batch // per_micro * per_micro)
    if num_videos >= wanted or num_videos < per_micro:  # (too few videos for even one step: the loop explains)
        return plan_batches(batch_size=wanted, bs_per_gpu=wanted // per_micro, world_size=world_size), None
    capped = num_videos // per_micro * per_micro
    warning = (f"--batch-size not given: the default of {default_batch} videos per step does not fit the "
               f"{num_videos} training videos; using {capped} ({capped // per_micro} per rank x {accumulation} "
               f"accumulation x {world_size} rank(s)); pass --batch-size to choose")
    return plan_batches(batch_size=capped, bs_per_gpu=capped // per_micro, world_size=world_size), warning
