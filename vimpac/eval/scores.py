"""Multi-view video classification scores (VIMPAC / SlowFast-style testing: temporal clips x spatial crops, averaged).

A video's score is the mean of the softmax probabilities of its clips (every crop x every
uniform temporal clip); top-1/top-5 in percent and the confusion matrix (`vimpac.eval.reports`
writes them out).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from video2token.precision import autocast


@torch.no_grad()
def clip_probs(model: nn.Module, inputs: torch.Tensor, *, precision: str = "fp32", chunk: int = 32,
               frame_valid: torch.Tensor | None = None) -> torch.Tensor:
    """inputs: codes (B, N, T, h, w), or frames (B, N, T, S, S, 3) for a pixel model with frame_valid (B, N, T)
    -> softmax probabilities (B, N, C) of every clip, `chunk` clips per forward."""
    b, n = inputs.shape[:2]
    flat = inputs.flatten(0, 1)  # (B*N, T, ...)
    valid = None if frame_valid is None else frame_valid.flatten(0, 1)
    device = next(model.parameters()).device
    outs = []
    for i in range(0, flat.shape[0], chunk):
        kw = {}
        if valid is not None:  # pixels: black [PAD] frames cannot be told from video, the loader says which are
            part = valid[i:i + chunk]
            kw["frame_valid"] = None if bool(part.all()) else part.to(device)
        with autocast(precision, device):
            logits = model(flat[i:i + chunk].to(device), **kw)
        outs.append(logits.float().softmax(-1).cpu())
    return torch.cat(outs).view(b, n, -1)


def video_scores(probs: torch.Tensor) -> torch.Tensor:
    """(B, N, C) clip probabilities -> (B, C) video scores: the plain mean over clips and crops."""
    return probs.mean(dim=1)


@dataclass
class EvalResult:
    scores: np.ndarray          # (V, C) float, averaged clip probabilities
    labels: np.ndarray          # (V,) int
    video_ids: list[str]
    num_clips: int              # uniform temporal clips per crop
    num_crops: int              # spatial crops (test views)

    @property
    def top1(self) -> float:
        return topk_accuracy(self.scores, self.labels, 1)

    @property
    def top5(self) -> float:
        return topk_accuracy(self.scores, self.labels, 5)

    def summary(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "num_test_clips": self.num_clips, "num_crops": self.num_crops,
                "num_videos": int(len(self.labels))}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of videos whose label is among the k highest scores (k capped at the number of classes)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(100.0 * (top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, scores.argmax(axis=1)), 1)
    return cm


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, batch_size: int = 8, precision: str = "fp32", chunk: int = 32,
             max_videos: int | None = None, progress: bool = False, desc: str = "eval") -> EvalResult:
    """Scores of every video of a `finetune_data.EvalClips` dataset (model in eval mode for the call)."""
    from torch.utils.data import DataLoader

    from vimpac.data.clips import collate

    n = len(dataset) if max_videos is None else min(max_videos, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
    was_training = model.training
    model.eval()
    scores, labels, index = [], [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
    for batch in it:
        if getattr(dataset, "pixels", False):
            probs = clip_probs(model, batch["frames"], precision=precision, chunk=chunk, frame_valid=batch["frame_valid"])
        else:
            probs = clip_probs(model, batch["codes"], precision=precision, chunk=chunk)
        scores.append(video_scores(probs))
        labels.append(batch["label"])
        index.append(batch["index"])
    model.train(was_training)
    ids = [dataset.video_ids[int(i)] for i in torch.cat(index)] if index else []
    return EvalResult(scores=torch.cat(scores).numpy() if scores else np.zeros((0, 0)),
                      labels=torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
                      video_ids=ids, num_clips=dataset.num_clips, num_crops=dataset.num_crops)
