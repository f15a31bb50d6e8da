"""Evaluating a fine-tuned classifier and writing its results (what `finetune` does at the end and `--eval-only`).

results.json holds the final evaluation, the best one seen during training, extra clip counts
(`--last-test-clips`), the final model on the test stores (`--test-tokens`: "test") and the run's
facts; the reports (per-class CSV, predictions CSV, confusion PNG) come from `vimpac.eval.reports`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from video2token.atomic import atomic_write_json

from vimpac.data.labelled import LabelledData
from vimpac.data.stores import DataError
from vimpac.eval.reports import write_reports
from vimpac.eval.scores import EvalResult, evaluate
from vimpac.model.checkpoint import CheckpointError, load_checkpoint
from vimpac.model.loading import finetune_task_of, resolve_checkpoint
from vimpac.model.surgery import WeightsError, backbone_state
from vimpac.model.transformer import VimpacForClassification

RESULTS = "results.json"


@dataclass(frozen=True)
class EvalSettings:
    precision: str = "fp32"         # a resolved precision name
    batch_size: int = 4             # videos per eval batch (each: clips x crops)
    max_videos: int | None = None   # cap on test videos (quick checks)
    progress: bool = True


def evaluate_model(model: nn.Module, dataset, settings: EvalSettings) -> EvalResult:
    return evaluate(model, dataset, batch_size=settings.batch_size, precision=settings.precision,
                    max_videos=settings.max_videos, progress=settings.progress,
                    desc=f"eval {dataset.num_clips}x{dataset.num_crops}")


def write_results(out_dir: str, final: EvalResult, *, label_names: Sequence[str], best: dict[str, Any] | None = None,
                  run: dict[str, Any] | None = None, clip_counts: Sequence[int] = (),
                  evaluate_clips: Callable[[int], EvalResult] | None = None, test: EvalResult | None = None,
                  log: Callable[[str], None] = print, main: bool = True) -> dict[str, Any]:
    """Reports of the final model, extra clip counts, and results.json -> the results dict.

    best: the best evaluation seen in training (None: the evaluated checkpoint is the best we know).
    test: the same model on the test stores (`--test-tokens`), results.json's "test".
    """
    results: dict[str, Any] = {"final": final.summary()}
    if test is not None:
        results["test"] = test.summary()
        log(f"[finetune] test: top-1 {test.top1:.2f} top-5 {test.top5:.2f} ({test.num_clips} clips x "
            f"{test.num_crops} crops, {len(test.labels)} videos)")
    if run is not None:
        results["run"] = run
    results["best"] = best if best is not None else dict(results["final"])
    extra = {}
    for n in clip_counts:
        r = final if n == final.num_clips else evaluate_clips(n)
        extra[str(n)] = r.summary()
        log(f"[finetune] {n} clips x {r.num_crops} crops: top-1 {r.top1:.2f} top-5 {r.top5:.2f}")
    if extra:
        results["last_test_clips"] = extra
    if main:
        files = write_reports(final, out_dir, label_names)
        results["files"] = {k: os.path.basename(v) for k, v in files.items()}
        atomic_write_json(os.path.join(out_dir, RESULTS), results)  # export reads it: never half written
    return results


def parse_clip_counts(text: str | None) -> list[int]:
    """--last-test-clips "2,5,10" -> [2, 5, 10]."""
    if not text:
        return []
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--last-test-clips {text!r}: expected comma-separated integers like 2,5,10") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--last-test-clips {text!r}: counts must be >= 1")
    return counts


def evaluate_finetuned(path: str, data: LabelledData, settings: EvalSettings, *, precision: str, device: str,
                       out: str, clip_len: int | None = None, clip_counts: Sequence[int] = ()) -> dict[str, Any]:
    """`finetune --eval-only`: a fine-tuned checkpoint on the test stores -> results (also written under `out`)."""
    path = resolve_checkpoint(path)
    ck = load_checkpoint(path, weights_only=True)
    if finetune_task_of(ck.config) is None:
        raise CheckpointError(f"--eval-only: {path} is not a fine-tuned checkpoint (no classifier); fine-tune first")
    cfg = ck.model_config
    clip = data.clip_spec(clip_len or cfg.clip_len)
    if clip.clip_len != cfg.clip_len:
        raise DataError(f"--eval-only: --clip-len {clip.clip_len} differs from the checkpoint's {cfg.clip_len}")
    if cfg.vocab_size != data.vocab_size or (cfg.grid_h, cfg.grid_w) != tuple(data.grid):
        raise DataError(f"--eval-only {path}: model takes {cfg.vocab_size} codes on {cfg.grid_h}x{cfg.grid_w} maps, "
                        f"the stores hold {data.vocab_size} codes on {data.grid[0]}x{data.grid[1]} maps")
    model = VimpacForClassification(cfg, num_classes=data.num_classes)
    try:
        state, _ = backbone_state(ck.model_state, cfg, model, different_shape=False, keep_head=True, where=path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    model.load_state_dict(state)
    model.to(torch.device(device)).eval()
    settings = EvalSettings(precision=precision, batch_size=settings.batch_size, max_videos=settings.max_videos,
                            progress=settings.progress)
    pixels = cfg.input == "pixels"
    final = evaluate_model(model, data.test_set(clip, pixels=pixels), settings)
    held_out = data.held_out_set(clip, pixels=pixels)
    test = evaluate_model(model, held_out, settings) if held_out is not None else None
    os.makedirs(out, exist_ok=True)
    return write_results(out, final, label_names=data.label_names, clip_counts=clip_counts, test=test,
                         evaluate_clips=lambda n: evaluate_model(model, data.test_set(clip, n, pixels=pixels), settings))
