"""Reports of a multi-view evaluation: per-class accuracy (CSV), per-video predictions (CSV: video id, label,
top-5 with scores) and the confusion matrix (PNG)."""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from vimpac.eval.scores import EvalResult, confusion_matrix


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
