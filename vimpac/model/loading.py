"""One reader for every kind of trained weights: this project's checkpoints and the original VIMPAC's snapshots.

    from vimpac import load_model
    model = load_model("snap/pretrain/run1")   # VimpacForPretraining or VimpacForClassification, eval, CPU
    out = model.backbone(codes)                # codes (B, T, h, w) long -> out.cls (B, D), out.hidden (B, T*h*w, D)

`read_weights` returns config + state dict without building a model (what `--load` needs);
`load_model` builds the model. Both accept a checkpoint dir, its model.safetensors / config.json,
a run output holding best/ or last/, an export from `vimpac.export`, or an original VIMPAC
snapshot (run folder, its last/, or classifier.pt), which is converted in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vimpac.model.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint
from vimpac.model.config import ModelConfig
from vimpac.model.original import CLASSIFICATION, PRETRAIN, ConvertedOriginal, find_original, read_original
from vimpac.model.weights_check import WeightsCheckError, check_fits, check_values, state_shapes

#: `config["train"]["task"]["kind"]` of a fine-tuned classifier (as the fine-tuning trainer writes it)
TASK_KIND = "video-classification"
BEST, LAST = "best", "last"
HEAD_WEIGHT = "head.fc.weight"


@dataclass
class LoadedWeights:
    config: ModelConfig
    state: dict[str, torch.Tensor]   # complete state dict of the model `kind` names
    kind: str                        # "pretrain" (VimpacForPretraining) | "classification" (VimpacForClassification)
    num_classes: int | None          # classification only
    source: str                      # "vimpac" | "original"
    path: str                        # the checkpoint dir, or the original snapshot's folder
    notes: list[str] = field(default_factory=list)   # what a conversion moved or dropped
    task: dict[str, Any] | None = None               # config["train"]["task"] of a fine-tuned classifier


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """A checkpoint dir, its model.safetensors/config.json, or a run output holding best/ or last/ -> the dir."""
    path = os.fspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path) or "."
    if not os.path.exists(os.path.join(path, CONFIG_FILE)):
        for sub in (BEST, LAST):
            if os.path.exists(os.path.join(path, sub, CONFIG_FILE)):
                return os.path.join(path, sub)
    return path


def original_task(conv: ConvertedOriginal) -> dict[str, Any] | None:
    """The task record of a converted original classifier; None for pre-training weights.

    The original saved no label names, tokenizer facts or frame rate in this project's sense,
    so only what its arguments say is recorded.
    """
    if conv.kind != CLASSIFICATION:
        return None
    a = conv.args
    task = {"kind": TASK_KIND, "num_classes": conv.num_classes, "clip_len": conv.config.clip_len,
            "frame_size": a.get("frame_size"), "dataset": a.get("dataset_name"), "split_id": a.get("split_id"),
            "num_test_clips": a.get("num_test_clips"), "source": "original-vimpac"}
    return {k: v for k, v in task.items() if v is not None}


def finetune_task_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The fine-tuning task record of a checkpoint's config.json (None: not a fine-tuned classifier)."""
    train = config.get("train")
    task = train.get("task") if isinstance(train, dict) else None
    return task if isinstance(task, dict) and task.get("kind") == TASK_KIND else None


def read_weights(path: str | os.PathLike) -> LoadedWeights:
    """Config and state dict of any trained weights (see the module docstring); raises CheckpointError.

    An original snapshot is recognised by its classifier.pt and converted (`vimpac.model.original`);
    its errors are `OriginalCheckpointError`, a `CheckpointError`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} does not exist")
    if find_original(path) is not None:
        conv = read_original(path)
        try:  # what load_checkpoint checks for this project's checkpoints
            check_fits(conv.config, state_shapes(conv.state), conv.files.folder)
            check_values(conv.state, conv.files.folder)
        except WeightsCheckError as e:
            raise CheckpointError(str(e)) from None
        return LoadedWeights(config=conv.config, state=conv.state, kind=conv.kind, num_classes=conv.num_classes,
                             source="original", path=conv.files.folder, notes=list(conv.notes),
                             task=original_task(conv))
    ckpt_dir = resolve_checkpoint(path)
    if not os.path.exists(os.path.join(ckpt_dir, CONFIG_FILE)):
        raise CheckpointError(f"{path}: neither a VIMPAC checkpoint (config.json + model.safetensors, or a run output "
                              f"holding best/ or last/) nor an original VIMPAC snapshot (classifier.pt + args.pickle)")
    ckpt = load_checkpoint(ckpt_dir, weights_only=True)
    task = finetune_task_of(ckpt.config)
    head = ckpt.model_state.get(HEAD_WEIGHT)
    where = os.path.join(ckpt_dir, CONFIG_FILE)
    if head is None:
        if task is not None:
            raise CheckpointError(f"{where} records a fine-tuning task but the weights have no {HEAD_WEIGHT}")
        return LoadedWeights(config=ckpt.model_config, state=ckpt.model_state, kind=PRETRAIN, num_classes=None,
                             source="vimpac", path=ckpt_dir)
    num_classes = int(head.shape[0])
    if task is not None and int(task.get("num_classes", num_classes)) != num_classes:
        raise CheckpointError(f"{where}: train.task.num_classes {task['num_classes']} but {HEAD_WEIGHT} has "
                              f"{num_classes} rows")
    return LoadedWeights(config=ckpt.model_config, state=ckpt.model_state, kind=CLASSIFICATION,
                         num_classes=num_classes, source="vimpac", path=ckpt_dir, task=task)


def build_model(weights: LoadedWeights) -> nn.Module:
    """The model `weights.kind` names, with the weights loaded (strict), in eval mode on CPU."""
    from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining

    if weights.kind == CLASSIFICATION:
        model = VimpacForClassification(weights.config, num_classes=weights.num_classes)
    else:
        model = VimpacForPretraining(weights.config)
    try:
        model.load_state_dict(weights.state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights.path}: the weights do not fit the recorded config ({e})") from None
    return model.eval()


def load_model(path: str | os.PathLike) -> nn.Module:
    """`VimpacForPretraining` or `VimpacForClassification` (eval mode, CPU) from any trained weights.

    `model.backbone(codes)` takes codes (B, T, h, w) and returns `.cls` (B, D) and `.hidden`
    (B, T*h*w, D) in (T, h, w) order; a classifier's `model(codes)` returns logits (B, classes).
    """
    return build_model(read_weights(path))
