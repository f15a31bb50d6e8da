"""Training run logs shared by every trainer (tokenizer, pre-training, fine-tuning): one JSON object per
logged step in OUTPUT/metrics.jsonl, TensorBoard scalars, and a curves PNG drawn from the JSONL.

Only the process that logs (rank 0) writes; others get a logger whose methods do nothing. On resume
the lines past the resumed step are dropped (they came from the killed run and will be redone), and
TensorBoard's `purge_step` drops the same events, so both logs read like one uninterrupted run.
It lives in video2token because video2token may not import vimpac; vimpac imports it.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from video2token.atomic import atomic_path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


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
    """`log(split, epoch, step, **metrics)` -> metrics.jsonl line + TensorBoard `split/name` scalars.

    resume_step: None starts a fresh log (an old metrics.jsonl is removed); a step keeps the lines up
    to that step. epoch may be None for step-only trainers (the row then has no "epoch").
    """

    def __init__(self, output_dir: str, *, enabled: bool = True, resume_step: int | None = None,
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

            self._tb = SummaryWriter(os.path.join(output_dir, TENSORBOARD_DIR),
                                     purge_step=None if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)

    def log(self, split: str, epoch: int | None, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row: dict[str, Any] = {"split": split, "step": int(step)}
        if epoch is not None:
            row["epoch"] = int(epoch)
        for k, v in metrics.items():
            row[k] = v if isinstance(v, (list, str)) or v is None else float(v)
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("split", "epoch", "step") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def sync(self) -> None:
        """fsync the lines logged so far: call before writing the checkpoint they belong to, so a
        machine crash cannot leave a checkpoint whose log lines are lost."""
        if not self.enabled:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_curves(metrics_path: str, png_path: str, *, keys: tuple[str, ...], log_scale: tuple[str, ...] = (),
                baselines: Mapping[str, tuple[str, str]] | None = None) -> str:
    """One panel per metric in `keys` (those logged), train (per step) and valid (per eval) curves against
    the step -> PNG path.

    log_scale: keys drawn on a log y axis. baselines: {panel key: (metric, label)}, a valid-split metric
    drawn dashed on that panel (e.g. {"mask_acc": ("copy_acc", "copy baseline (valid)")}).
    Raises ValueError when none of `keys` was logged.
    """
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
        if baselines and key in baselines:
            other, label = baselines[key]
            pts = [(r["step"], r[other]) for r in rows if r.get("split") == "valid" and other in r]
            if pts:
                ax.plot(*zip(*pts), "k--", label=label)
        if key in log_scale:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
