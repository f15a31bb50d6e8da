"""Multi-view video classification scores (VIMPAC / SlowFast-style testing: temporal clips x spatial crops, averaged).

A video's score is the mean of the softmax probabilities of its clips (every crop x every
uniform temporal clip). Reports top-1/top-5 in percent, per-class accuracy (CSV), the confusion
matrix (PNG) and per-video predictions (CSV: video id, label, top-5 with scores).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vimpac.train.runtime import autocast_context


@torch.no_grad()
def clip_probs(model: nn.Module, codes: torch.Tensor, *, precision: str = "fp32", chunk: int = 32) -> torch.Tensor:
    """codes (B, N, T, h, w) -> softmax probabilities (B, N, C) of every clip, `chunk` clips per forward."""
    b, n = codes.shape[:2]
    flat = codes.flatten(0, 1)  # (B*N, T, h, w)
    device = next(model.parameters()).device
    outs = []
    for i in range(0, flat.shape[0], chunk):
        with autocast_context(precision, device):
            logits = model(flat[i:i + chunk].to(device))
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

    from vimpac.data.finetune_clips import collate

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
        scores.append(video_scores(clip_probs(model, batch["codes"], precision=precision, chunk=chunk)))
        labels.append(batch["label"])
        index.append(batch["index"])
    model.train(was_training)
    ids = [dataset.video_ids[int(i)] for i in torch.cat(index)] if index else []
    return EvalResult(scores=torch.cat(scores).numpy() if scores else np.zeros((0, 0)),
                      labels=torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
                      video_ids=ids, num_clips=dataset.num_clips, num_crops=dataset.num_crops)


def class_names(label_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if label_names and len(label_names) == num_classes:
        return list(label_names)
    return [str(i) for i in range(num_classes)]


def write_per_class_csv(result: EvalResult, path: str, names: Sequence[str]) -> str:
    """class, name, videos, correct, top1 (percent; empty for a class with no test video)."""
    num_classes = len(names)
    cm = confusion_matrix(result.scores, result.labels, num_classes)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class", "name", "videos", "correct", "top1"])
        for c in range(num_classes):
            total = int(cm[c].sum())
            w.writerow([c, names[c], total, int(cm[c, c]), f"{100.0 * cm[c, c] / total:.2f}" if total else ""])
    return path


def write_predictions_csv(result: EvalResult, path: str, names: Sequence[str], k: int = 5) -> str:
    """video_id, label, label_name, then pred_i / name_i / score_i for the top k."""
    k = min(k, result.scores.shape[1]) if result.scores.size else k
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "label", "label_name"] + [f"{x}{i + 1}" for i in range(k)
                                                          for x in ("pred", "name", "score")])
        for vid, lab, s in zip(result.video_ids, result.labels, result.scores):
            top = np.argsort(-s, kind="stable")[:k]
            w.writerow([vid, int(lab), names[int(lab)]] + [v for c in top for v in (int(c), names[c], f"{s[c]:.6f}")])
    return path


def plot_confusion(result: EvalResult, path: str, names: Sequence[str]) -> str:
    """Row-normalised confusion matrix as a PNG (tick labels only when they stay readable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_classes = len(names)
    cm = confusion_matrix(result.scores, result.labels, num_classes).astype(np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.15 * num_classes, 24)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if num_classes <= 60:
        ax.set_xticks(range(num_classes), names, rotation=90, fontsize=6)
        ax.set_yticks(range(num_classes), names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {result.top1:.1f}% ({result.num_clips} clips x {result.num_crops} crops)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(result: EvalResult, out_dir: str, names: Sequence[str], prefix: str = "") -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    return {"per_class": write_per_class_csv(result, os.path.join(out_dir, f"{prefix}per_class_accuracy.csv"), names),
            "predictions": write_predictions_csv(result, os.path.join(out_dir, f"{prefix}predictions.csv"), names),
            "confusion": plot_confusion(result, os.path.join(out_dir, f"{prefix}confusion_matrix.png"), names)}
