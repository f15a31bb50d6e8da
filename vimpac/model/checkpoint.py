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
or moments are refused when saving and when loading; loading also checks the config against
sane limits and against the weights' header (names, shapes, float dtypes) before reading a
tensor (`vimpac.model.weights_check`). Nothing here unpickles: no `torch.load` at all.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from video2token.atomic import atomic_dir, recover_dir

from vimpac.model.config import ModelConfig
from vimpac.model.weights_check import WeightsCheckError, check_fits, check_values, read_header

FORMAT = "vimpac-pretrain-checkpoint"
VERSION = 1
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
OPTIM_FILE, STATE_FILE = "optimizer.safetensors", "trainer_state.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


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
                    trainer_state: dict[str, Any] | None = None,
                    before_swap: Callable[[str], None] | None = None) -> str:
    """Write a checkpoint directory atomically (call on one process). Refuses NaN/Inf weights or moments.

    before_swap(temp_dir): called once every file is written, before the directory replaces the old
    one (tests use it to kill the process at that moment).
    """
    with atomic_dir(ckpt_dir) as tmp:
        write_checkpoint_files(tmp, model_state=model_state, model_config=model_config, train_config=train_config,
                               step=step, epoch=epoch, optimizer_state=optimizer_state, trainer_state=trainer_state,
                               name=ckpt_dir)
        if before_swap is not None:
            before_swap(tmp)
    return ckpt_dir


def write_checkpoint_files(directory: str, *, model_state: Mapping[str, torch.Tensor], model_config: ModelConfig,
                           train_config: dict[str, Any], step: int, epoch: int,
                           optimizer_state: Mapping[str, torch.Tensor] | None = None,
                           trainer_state: dict[str, Any] | None = None, name: str | None = None) -> None:
    """A checkpoint's files, written into the existing `directory` as they are, not atomically: save_checkpoint
    wraps this in `atomic_dir`, a release (`vimpac.serve.release`) adds its own files inside the same swap.
    Refuses NaN/Inf weights or moments; errors name `name` (default: `directory`)."""
    name = directory if name is None else name
    model_state = _plain(model_state)
    bad = nonfinite_tensors(model_state)
    if bad:
        raise CheckpointError(f"refusing to save {name}: non-finite values in {len(bad)} weight tensor(s), "
                              f"e.g. {bad[:3]}; the previous checkpoint is kept")
    optim = _plain(optimizer_state or {})
    bad = nonfinite_tensors(optim)
    if bad:
        raise CheckpointError(f"refusing to save {name}: non-finite optimizer moments, e.g. {bad[:3]}")
    config = {"format": FORMAT, "version": VERSION, "model_config": model_config.to_dict(), "step": int(step),
              "epoch": int(epoch), "train": train_config}
    save_file(model_state, os.path.join(directory, MODEL_FILE), metadata={"format": FORMAT})
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if optimizer_state is not None:
        save_file(optim, os.path.join(directory, OPTIM_FILE), metadata={"format": FORMAT})
    if trainer_state is not None:
        with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(trainer_state, f)


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


def read_checkpoint_config(ckpt_dir: str) -> dict:
    """A checkpoint directory's config.json (after restoring the directory if a kill hit its swap),
    format checked; no tensor is read."""
    recover_dir(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint {ckpt_dir} does not exist")
    config = _read_json(os.path.join(ckpt_dir, CONFIG_FILE))
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: format {config.get('format')!r}, "
                              f"expected {FORMAT!r}")
    return config


def load_checkpoint(ckpt_dir: str, *, weights_only: bool = False) -> Checkpoint:
    """Read a checkpoint directory (after restoring it if a kill hit the directory swap).

    weights_only: read model weights and config only (a fine-tuning export, or `--load`).
    """
    config = read_checkpoint_config(ckpt_dir)
    try:
        model_config = ModelConfig.from_dict(config["model_config"])  # includes the sane limits
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: bad model_config ({e})") from e
    model_path = os.path.join(ckpt_dir, MODEL_FILE)
    optim, state = {}, {}
    try:
        if os.path.exists(model_path):  # the config must fit the weights before anything is read or built
            check_fits(model_config, read_header(model_path), model_path)
        model_state = _read_tensors(model_path)
        check_values(model_state, model_path)
        if not weights_only:
            optim_path = os.path.join(ckpt_dir, OPTIM_FILE)
            optim = _read_tensors(optim_path)
            check_values(optim, optim_path, floats_only=True)
            state = _read_json(os.path.join(ckpt_dir, STATE_FILE))
    except WeightsCheckError as e:
        raise CheckpointError(str(e)) from None
    return Checkpoint(path=ckpt_dir, model_config=model_config, config=config, model_state=model_state,
                      optimizer_state=optim, trainer_state=state)


def load_pretrained(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, state dict of VimpacForPretraining) from a checkpoint dir: what fine-tuning needs."""
    ckpt = load_checkpoint(path, weights_only=True)
    return ckpt.model_config, ckpt.model_state
