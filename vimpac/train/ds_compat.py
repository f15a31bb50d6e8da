"""Every place this project reaches into DeepSpeed (and torch) internals, in one module.

DeepSpeed 0.19.8 is pinned in the Makefile; when it changes, this is the file to re-check:
- the accelerator choice must be made through `DS_ACCELERATOR` before `import deepspeed`, and the
  engine reads LOCAL_RANK (and its launcher RANK / WORLD_SIZE / MASTER_*) from the environment:
  `deepspeed_environment` sets them for a plain single-process run;
- its shared-memory all-reduce op is JIT-compiled at start-up on CPU unless marked incompatible;
- ZeRO-1/2 optimizer-state linking (`_hp_optimizer_states_linked`), fp32 partitions
  (`single_partition_of_fp32_groups`) and the micro-step counter (`micro_steps`);
- `LambdaLR._last_lr` when the schedule is restored at a step.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


class CompatError(RuntimeError):
    """Saved optimizer state that does not fit this engine."""


# ----------------------------------------------------------------------------- start-up

def use_cpu_accelerator(environ: Mapping[str, str]) -> bool:
    """Whether DeepSpeed runs on the CPU: `DS_ACCELERATOR` if set, else when there is no GPU."""
    if environ.get("DS_ACCELERATOR"):
        return environ["DS_ACCELERATOR"] == "cpu"
    return not torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deepspeed_environment(*, cpu: bool, single_process: bool, rendezvous: Mapping[str, str] | None = None) -> None:
    """Set what DeepSpeed reads from the environment (it has no other way to be told).

    cpu: `DS_ACCELERATOR=cpu` (before deepspeed is imported). single_process: a plain `python`
    run without a launcher becomes rank 0 of a 1-rank group on a free local port. rendezvous:
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* a launcher did not set (SLURM's srun).
    """
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(rendezvous or {})
    if single_process:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def skip_cpu_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce at start-up on CPU.

    That op serves only CPU *inference* all-reduce; building it is a C++ compile of minutes on
    2 cores at every fresh start, and a build killed midway leaves a lock that makes every later
    start wait forever. Training collectives go through gloo either way.
    """
    import deepspeed.ops

    ops = dict(vars(deepspeed.ops).get("__compatible_ops__") or {})  # {} also skips probing every op's compiler
    ops["deepspeed_shm_comm"] = False
    deepspeed.ops.__compatible_ops__ = ops


# ----------------------------------------------------------------------------- schedule

def set_scheduler_step(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put a LambdaLR at `step` (resume): its counter, the param groups' lr and its cached last lr."""
    scheduler.last_epoch = step
    lrs = [base * lmbda(step) for base, lmbda in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for g, lr in zip(scheduler.optimizer.param_groups, lrs):
        g["lr"] = lr
    scheduler._last_lr = lrs


# ----------------------------------------------------------------------------- fp16 master weights

def full_fp32_weights(engine) -> dict[str, torch.Tensor]:
    """The fp32 master weights of trainable parameters (fp16 mode keeps fp16 copies in the module). Collective."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(p) for name, p in engine.module.named_parameters() if p.requires_grad}


def set_fp32_weights(engine, weights: Mapping[str, torch.Tensor]) -> None:
    """Put exact fp32 master weights back (the engine made its masters from fp16-rounded weights)."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, p in engine.module.named_parameters():
        if p.requires_grad and name in weights:
            safe_set_full_fp32_param(p, weights[name].to(p.device, torch.float32))


# ----------------------------------------------------------------------------- skipped steps

def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def global_grad_norm(engine) -> float:
    """L2 norm of all gradients of the last ZeRO-1/2 step, as DeepSpeed's partitioned optimizer computed it
    (under ZeRO-0 the trainer computes the norm itself: `loop.clip_gradients`)."""
    gn = engine.get_global_grad_norm()
    return float(gn) if gn is not None else float("nan")


def skip_window(engine, *, window_micro: int, accumulation: int) -> None:
    """Skip this optimizer step: no update, but the schedule and DeepSpeed's counters move on.

    ZeRO-0: drop the gradients (param.grad) and count the micro-steps DeepSpeed did not see.
    ZeRO-1/2: gradients live in partitioned buffers whose bookkeeping only a real step clears,
    so take the step (on the finite micro-batches and zeros) and put weights and AdamW state back.
    """
    if zero_stage(engine) == 0:
        engine.zero_grad()
        finite_steps_called = engine.micro_steps % accumulation
        engine.micro_steps += window_micro - finite_steps_called
        engine.lr_scheduler.step()  # a skipped step still advances the schedule (epochs stay the unit)
        return
    zero = engine.optimizer
    base = zero.optimizer
    lp = [p.detach().clone() for p in engine.module.parameters()]
    hp = [t.detach().clone() for t in zero.single_partition_of_fp32_groups]
    state = {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()} for k, v in base.state.items()}
    engine.step()  # also steps the LR scheduler
    with torch.no_grad():
        for p, saved in zip(engine.module.parameters(), lp):
            p.copy_(saved)
        for t, saved in zip(zero.single_partition_of_fp32_groups, hp):
            t.copy_(saved)
        for k in list(base.state):
            if k not in state:
                del base.state[k]  # created by this step: the next real step starts it afresh
                continue
            for kk, vv in state[k].items():
                if torch.is_tensor(vv):
                    base.state[k][kk].copy_(vv)  # in place: ZeRO keeps views into these tensors
                else:
                    base.state[k][kk] = vv


# ----------------------------------------------------------------------------- optimizer state

def state_keys(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """The per-parameter tensors a checkpoint keeps for this optimizer: Adam(W) moments, SGD's momentum buffer."""
    if isinstance(optimizer, torch.optim.SGD):
        return ("momentum_buffer",) if any(g.get("momentum", 0) for g in optimizer.param_groups) else ()
    return MOMENTS


def _counts_steps(optimizer: torch.optim.Optimizer) -> bool:
    return not isinstance(optimizer, torch.optim.SGD)  # Adam(W) keeps a step count per parameter; SGD none


def _is_zero(engine) -> bool:
    return bool(engine.zero_optimization_stage())


def _client_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return opt.optimizer if _is_zero(engine) else opt


def _relink_zero_state(engine, *, init_step: int | None = None) -> None:
    """(Re)link ZeRO-1/2 parameters to their slices of the optimizer state.

    DeepSpeed 0.19.8 links them once, right after the first param group's first step, so the
    slices of every later group (here: the no-decay group) stay unlinked and
    `safe_get_full_optimizer_state` fails for them. With `init_step`, empty states are created
    first (a resumed engine has not stepped yet, and linking needs the tensors).
    """
    zero = engine.optimizer
    base = zero.optimizer
    if init_step is not None:
        keys = state_keys(base)
        for group in base.param_groups:
            for flat in group["params"]:
                if not base.state.get(flat) and keys:
                    step = {"step": _step_tensor(group, flat, init_step)} if _counts_steps(base) else {}
                    base.state[flat] = {**step, **{key: torch.zeros_like(flat) for key in keys}}
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def _step_tensor(group: dict, param: torch.Tensor, step: int) -> torch.Tensor:
    """AdamW's step count as torch.optim.AdamW keeps it: on the parameter's device for the fused and
    capturable kernels (they refuse a CPU count beside CUDA parameters), a CPU scalar otherwise."""
    if group.get("fused") or group.get("capturable"):
        return torch.tensor(float(step), dtype=torch.float32, device=param.device)
    return torch.tensor(float(step))


def gather_optimizer_state(engine) -> tuple[dict[str, torch.Tensor], int]:
    """Full optimizer state per parameter name ("<name>::exp_avg", ...; `state_keys`) and the Adam(W) step
    count (0 for SGD). Collective: call on every rank."""
    from deepspeed.utils import safe_get_full_optimizer_state

    out: dict[str, torch.Tensor] = {}
    steps: set[int] = set()
    keys = state_keys(_client_optimizer(engine))
    if not keys:
        return out, 0
    if _is_zero(engine):
        _relink_zero_state(engine)
        for name, p in engine.module.named_parameters():
            for key in keys:
                out[f"{name}::{key}"] = safe_get_full_optimizer_state(p, key).detach().cpu()
        for st in _client_optimizer(engine).state.values():
            if "step" in st:
                steps.add(int(st["step"]))
    else:
        state = _client_optimizer(engine).state
        for name, p in engine.module.named_parameters():
            if p in state and all(torch.is_tensor(state[p].get(key)) for key in keys):
                for key in keys:
                    out[f"{name}::{key}"] = state[p][key].detach().cpu()
                if "step" in state[p]:
                    steps.add(int(state[p]["step"]))
    # parameters that never got a gradient have no state (stage 0); the rest share one count
    return out, max(steps, default=0)


def restore_optimizer_state(engine, moments: Mapping[str, torch.Tensor], adam_step: int) -> None:
    """Put gathered state back into the engine's optimizer (any ZeRO stage; each rank keeps its part).

    The state must be this optimizer's (`state_keys`) and match the parameters' shapes (stage 2
    resamples positional tables beforehand).
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    opt = _client_optimizer(engine)
    keys = state_keys(opt)
    params = dict(engine.module.named_parameters())
    names = {k.split("::")[0] for k in moments}
    unknown = sorted(names - set(params))
    if unknown:
        raise CompatError(f"optimizer state names parameters the model does not have: {unknown[:5]}")
    foreign = sorted({k.split("::", 1)[-1] for k in moments} - set(keys))
    if foreign:
        raise CompatError(f"optimizer state holds {foreign}, which {type(opt).__name__} does not keep "
                          f"(it keeps {list(keys) or 'nothing'}): saved by another --optim")
    for name in names:
        for key in keys:
            value = moments.get(f"{name}::{key}")
            if value is None:
                raise CompatError(f"optimizer state lacks {name}::{key}")
            if tuple(value.shape) != tuple(params[name].shape):
                raise CompatError(f"optimizer state {name}::{key} has shape {tuple(value.shape)}, parameter "
                                      f"has {tuple(params[name].shape)}")
    if not names:
        return
    counts = _counts_steps(opt)
    if _is_zero(engine):
        _relink_zero_state(engine, init_step=adam_step)
        for name in sorted(names):
            p = params[name]
            for key in keys:
                safe_set_full_optimizer_state(p, moments[f"{name}::{key}"].to(p.device, torch.float32), key)
        for group in opt.param_groups:
            for flat in group["params"]:
                st = opt.state.get(flat, {})
                if "step" in st:
                    st["step"] = _step_tensor(group, flat, adam_step) if torch.is_tensor(st["step"]) else adam_step
    else:
        group_of = {p: g for g in opt.param_groups for p in g["params"]}
        for name in names:
            p = params[name]
            step = {"step": _step_tensor(group_of[p], p, adam_step)} if counts else {}
            opt.state[p] = {**step, **{key: moments[f"{name}::{key}"].to(p.device, p.dtype).clone() for key in keys}}
