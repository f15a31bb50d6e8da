"""Training checkpoints without pickles: safetensors + JSON, written atomically (nanoGPT-style config-in-checkpoint).

A checkpoint directory (`OUTPUT/last/`):

    model.safetensors       fp32 weights of VimpacForPretraining (what fine-tuning loads, no DeepSpeed needed)
    config.json             {"format", "model_config": ModelConfig.to_dict(), "step", "epoch", "train": flags}
    optimizer.safetensors   AdamW moments per parameter name, "<name>::exp_avg" / "<name>::exp_avg_sq",
                            gathered to full tensors, so any ZeRO stage or world size can load them and
                            stage 2 can resample the positional tables' moments with the tables
    trainer_state.json      step, epoch, data position, skip counters, AdamW step, RNG states per rank

Written by one process through `video2token.atomic.atomic_dir`: a kill at any moment leaves the
previous checkpoint loadable (`load_checkpoint` first calls `recover_dir`). Non-finite weights
or moments are refused. Nothing here unpickles: no `torch.load` at all.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from video2token.atomic import atomic_dir, recover_dir

from vimpac.model.config import ModelConfig

FORMAT = "vimpac-pretrain-checkpoint"
VERSION = 1
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OPTIM_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"
MOMENTS = ("exp_avg", "exp_avg_sq")
#: test hook: seconds to sleep after the files are written and before the directory swap
SLEEP_ENV = "VIMPAC_TEST_SLEEP_BEFORE_SWAP"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, malformed, non-finite or does not fit the run."""


@dataclass
class Checkpoint:
    path: str
    model_config: ModelConfig
    config: dict[str, Any]                   # the whole config.json
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]  # {} for a weights-only export
    trainer_state: dict[str, Any]             # {} for a weights-only export


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _plain(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies; floating tensors in fp32 (fine-tuning and resume expect fp32)."""
    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        out[k] = (v.float() if v.is_floating_point() else v).contiguous().clone()
    return out


def save_checkpoint(ckpt_dir: str, *, model_state: Mapping[str, torch.Tensor], model_config: ModelConfig,
                    train_config: dict[str, Any], step: int, epoch: int,
                    optimizer_state: Mapping[str, torch.Tensor] | None = None,
                    trainer_state: dict[str, Any] | None = None) -> str:
    """Write a checkpoint directory atomically (call on one process). Refuses NaN/Inf weights or moments."""
    model_state = _plain(model_state)
    bad = nonfinite_tensors(model_state)
    if bad:
        raise CheckpointError(f"refusing to save {ckpt_dir}: non-finite values in {len(bad)} weight tensor(s), "
                              f"e.g. {bad[:3]}; the previous checkpoint is kept")
    optim = _plain(optimizer_state or {})
    bad = nonfinite_tensors(optim)
    if bad:
        raise CheckpointError(f"refusing to save {ckpt_dir}: non-finite optimizer moments, e.g. {bad[:3]}")
    config = {"format": FORMAT, "version": VERSION, "model_config": model_config.to_dict(), "step": int(step),
              "epoch": int(epoch), "train": train_config}
    with atomic_dir(ckpt_dir) as tmp:
        save_file(model_state, os.path.join(tmp, MODEL_FILE), metadata={"format": FORMAT})
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if optimizer_state is not None:
            save_file(optim, os.path.join(tmp, OPTIM_FILE), metadata={"format": FORMAT})
        if trainer_state is not None:
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(trainer_state, f)
        delay = float(os.environ.get(SLEEP_ENV, "0") or 0)
        if delay > 0:  # lets a test kill the process while a finished temp dir waits for its swap
            print(f"[checkpoint] {SLEEP_ENV}: sleeping {delay}s before swapping in {ckpt_dir}", flush=True)
            time.sleep(delay)
    return ckpt_dir


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete checkpoint") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: not a complete checkpoint")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e


def load_checkpoint(ckpt_dir: str, *, weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint directory (after restoring it if a kill hit the directory swap).

    weights_only: read model weights and config only (a fine-tuning export, or `--load`).
    """
    recover_dir(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint {ckpt_dir} does not exist")
    config = _read_json(os.path.join(ckpt_dir, CONFIG_FILE))
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: format {config.get('format')!r}, "
                              f"expected {FORMAT!r}")
    try:
        model_config = ModelConfig.from_dict(config["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: bad model_config ({e})") from e
    model_state = _read_tensors(os.path.join(ckpt_dir, MODEL_FILE))
    optim, state = {}, {}
    if not weights_only:
        optim = _read_tensors(os.path.join(ckpt_dir, OPTIM_FILE))
        state = _read_json(os.path.join(ckpt_dir, STATE_FILE))
    return Checkpoint(path=ckpt_dir, model_config=model_config, config=config, model_state=model_state,
                      optimizer_state=optim, trainer_state=state)


def load_pretrained(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, state dict of VimpacForPretraining) from a checkpoint dir: what fine-tuning needs."""
    ckpt = load_checkpoint(path, weights_only=True)
    return ckpt.model_config, ckpt.model_state


# ----------------------------------------------------------------------------- optimizer state

def _is_zero(engine) -> bool:
    return bool(engine.zero_optimization_stage())


def _client_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return opt.optimizer if _is_zero(engine) else opt


def _relink_zero_state(engine, *, init_step: int | None = None) -> None:
    """(Re)link ZeRO-1/2 parameters to their slices of the optimizer state.

    DeepSpeed 0.19.8 links them once, right after the first param group's first step, so the
    slices of every later group (here: the no-decay group) stay unlinked and
    `safe_get_full_optimizer_state` fails for them. With `init_step`, empty AdamW states are
    created first (a resumed engine has not stepped yet, and linking needs the tensors).
    """
    zero = engine.optimizer
    base = zero.optimizer
    if init_step is not None:
        for group in base.param_groups:
            for flat in group["params"]:
                if not base.state.get(flat):
                    base.state[flat] = {"step": torch.tensor(float(init_step)),
                                        **{key: torch.zeros_like(flat) for key in MOMENTS}}
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def gather_optimizer_state(engine) -> tuple[dict[str, torch.Tensor], int]:
    """Full AdamW moments per parameter name and the AdamW step count. Collective: call on every rank."""
    from deepspeed.utils import safe_get_full_optimizer_state

    out: dict[str, torch.Tensor] = {}
    steps: set[int] = set()
    if _is_zero(engine):
        _relink_zero_state(engine)
        for name, p in engine.module.named_parameters():
            for key in MOMENTS:
                out[f"{name}::{key}"] = safe_get_full_optimizer_state(p, key).detach().cpu()
        for st in _client_optimizer(engine).state.values():
            if "step" in st:
                steps.add(int(st["step"]))
    else:
        state = _client_optimizer(engine).state
        for name, p in engine.module.named_parameters():
            if p in state and "exp_avg" in state[p]:
                for key in MOMENTS:
                    out[f"{name}::{key}"] = state[p][key].detach().cpu()
                steps.add(int(state[p]["step"]))
    # parameters that never got a gradient have no state (stage 0); the rest share one count
    return out, max(steps, default=0)


def restore_optimizer_state(engine, moments: Mapping[str, torch.Tensor], adam_step: int) -> None:
    """Put gathered moments back into the engine's optimizer (any ZeRO stage; each rank keeps its part).

    Moments must already match the parameters' shapes (stage 2 resamples them beforehand).
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    params = dict(engine.module.named_parameters())
    names = {k.split("::")[0] for k in moments}
    unknown = sorted(names - set(params))
    if unknown:
        raise CheckpointError(f"optimizer state names parameters the model does not have: {unknown[:5]}")
    for name in names:
        for key in MOMENTS:
            value = moments.get(f"{name}::{key}")
            if value is None:
                raise CheckpointError(f"optimizer state lacks {name}::{key}")
            if tuple(value.shape) != tuple(params[name].shape):
                raise CheckpointError(f"optimizer state {name}::{key} has shape {tuple(value.shape)}, parameter "
                                      f"has {tuple(params[name].shape)}")
    opt = _client_optimizer(engine)
    if _is_zero(engine):
        _relink_zero_state(engine, init_step=adam_step)
        for name in sorted(names):
            p = params[name]
            for key in MOMENTS:
                safe_set_full_optimizer_state(p, moments[f"{name}::{key}"].to(p.device, torch.float32), key)
        for st in opt.state.values():
            if "step" in st:
                st["step"] = torch.tensor(float(adam_step)) if torch.is_tensor(st["step"]) else adam_step
    else:
        for name in names:
            p = params[name]
            opt.state[p] = {"step": torch.tensor(float(adam_step)),
                            **{key: moments[f"{name}::{key}"].to(p.device, p.dtype).clone() for key in MOMENTS}}
