"""Training metrics: one JSON object per logged step in OUTPUT/metrics.jsonl, TensorBoard scalars, a curves PNG.

Rank 0 writes; other ranks get a logger whose methods do nothing. On resume the lines past
the resumed step are dropped (they came from the killed run and will be redone), and
TensorBoard's `purge_step` drops the same events, so both logs read like one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a torn last line (kill mid-write) is ignored, any other bad line is an error."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n >= len(lines) - 1:  # the last line of the file, possibly cut by a kill
                break
            raise ValueError(f"{path}:{n}: not a JSON object ({e.msg})") from None
    return rows


class MetricsLogger:
    """`log(split, epoch, step, **metrics)` -> metrics.jsonl line + TensorBoard `split/name` scalars."""

    def __init__(self, output_dir: str, *, enabled: bool, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, METRICS_FILE)
        self._tb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate_after(resume_step)
        elif resume_step is None and os.path.exists(self.path):
            os.remove(self.path)  # a fresh run into an old output dir starts a fresh log
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        os.replace(tmp, self.path)

    def log(self, split: str, epoch: int, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"split": split, "epoch": int(epoch), "step": int(step)}
        for k, v in metrics.items():
            row[k] = v if isinstance(v, (list, str)) or v is None else float(v)
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("split", "epoch", "step") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_curves(metrics_path: str, png_path: str, *, keys: tuple[str, ...] = (
        "mp_loss", "cl_loss", "mask_acc", "copy_acc", "lr", "grad_norm")) -> str:
    """One panel per metric, train (per step) and valid (per eval) curves against the step -> PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        raise ValueError(f"{metrics_path}: none of the metrics {keys} was logged")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for split, style in (("train", "-"), ("valid", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        if key == "mask_acc":  # the copy baseline on the same masks, to read accuracy against it
            pts = [(r["step"], r["copy_acc"]) for r in rows if r.get("split") == "valid" and "copy_acc" in r]
            if pts:
                ax.plot(*zip(*pts), "k--", label="copy baseline (valid)")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
