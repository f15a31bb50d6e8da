"""Classify raw videos with a fine-tuned VIMPAC model: decode -> VQ tokens -> multi-clip x crop averaged scores.

Runs the same views as fine-tuning's test (`vimpac.eval.scores`): the checkpoint's frame rate, frame
size and test crops, `--num-test-clips` uniform clips per crop, softmax scores averaged.

    python -m vimpac.predict --checkpoint snap/finetune/ucf101 --tokenizer dalle --tokenizer-path weights/dalle \
        video1.mp4 video2.avi [--num-test-clips 10] [--json]

`--checkpoint` takes a fine-tuning output (its best/ or last/), one checkpoint dir, or an export
from `vimpac.export`; only the tokenizer's weights come from elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vimpac.model.checkpoint import CheckpointError, load_checkpoint
from vimpac.eval.scores import clip_probs, video_scores
from vimpac.finetune import TASK_KIND, resolve_checkpoint
from vimpac.data.finetune_clips import ClipSpec, cut_clip, uniform_starts
from vimpac.model.transformer import VimpacForClassification

#: tokenizer facts that must agree between the fine-tuning stores and the tokenizer used here
TOKENIZER_KEYS = ("name", "vocab_size", "downsample", "sha256")


class PredictError(RuntimeError):
    """A checkpoint, tokenizer or video that cannot be used for prediction (the message says why)."""


@dataclass
class Classifier:
    model: VimpacForClassification
    task: dict[str, Any]        # what finetune.Finetuner.task() recorded: labels, clip shape, fps, crops, tokenizer
    path: str

    @property
    def label_names(self) -> list[str]:
        return list(self.task["label_names"])


def load_classifier(checkpoint: str, *, device: str | torch.device = "cpu") -> Classifier:
    """A fine-tuned classifier (eval mode) and its task record from a checkpoint or export directory."""
    path = resolve_checkpoint(checkpoint)
    try:
        ck = load_checkpoint(path, weights_only=True)
    except CheckpointError as e:
        raise PredictError(f"--checkpoint: {e}") from None
    task = ck.config.get("train", {}).get("task") if isinstance(ck.config.get("train"), dict) else None
    if not task or task.get("kind") != TASK_KIND:
        raise PredictError(f"--checkpoint {path}: config.json has no train.task of kind {TASK_KIND!r}; this is not a "
                           f"fine-tuned classifier (fine-tune it with python -m vimpac.finetune)")
    model = VimpacForClassification(ck.model_config.replace(dropout=0.0), num_classes=int(task["num_classes"]))
    try:
        model.load_state_dict(ck.model_state)
    except RuntimeError as e:
        raise PredictError(f"--checkpoint {path}: weights do not fit the recorded config ({e})") from None
    return Classifier(model=model.to(device).eval(), task=task, path=path)


def check_tokenizer(task: dict[str, Any], described: dict[str, Any], where: str) -> None:
    """The tokenizer must be the one the fine-tuning stores were made with (same codes for the same pixels)."""
    want = task.get("tokenizer", {})
    diff = [f"{k}: {described.get(k)!r} (given) vs {want.get(k)!r} (fine-tuning stores)"
            for k in TOKENIZER_KEYS if k in want and described.get(k) != want.get(k)]
    if diff:
        raise PredictError(f"{where}: another tokenizer than the model was fine-tuned on: " + "; ".join(diff))


def tokenize_views(video: str, tokenizer, task: dict[str, Any]) -> list[np.ndarray]:
    """Codes (F, h, w) of each test view (crop, flip) of a video, decoded as extraction does."""
    from video2token.video import VideoError, read_video

    size = int(task["frame_size"])
    out = []
    crops = task.get("test_crops") or ["center"]
    flips = task.get("test_hflip") or [False] * len(crops)
    for crop, flip in zip(crops, flips):
        try:
            frames, _ = read_video(video, fps=float(task["fps"]), shorter_side=size, crop_size=size, crop_type=crop,
                                   hflip=bool(flip))
        except (VideoError, ValueError) as e:
            raise PredictError(f"{video}: {e}") from None
        if len(frames) == 0:
            raise PredictError(f"{video}: no frame decoded at {task['fps']} FPS")
        out.append(np.asarray(tokenizer.encode(frames)))  # (F, h, w)
    return out


@torch.no_grad()
def classify_codes(clf: Classifier, views: list[np.ndarray], *, num_clips: int, precision: str = "fp32") -> np.ndarray:
    """Averaged class probabilities (C,) over `num_clips` uniform clips of every view's codes (F, h, w)."""
    cfg = clf.model.cfg
    clip = ClipSpec(clip_len=cfg.clip_len, frame_rate=int(clf.task.get("frame_rate", 1)))
    pad = cfg.special_tokens.pad
    clips = []
    for codes in views:
        if tuple(codes.shape[1:]) != (cfg.grid_h, cfg.grid_w):
            raise PredictError(f"code map {tuple(codes.shape[1:])} does not fit the model's {cfg.grid_h}x{cfg.grid_w}")
        clips += [cut_clip(codes, s, clip, pad) for s in uniform_starts(len(codes), clip.span, num_clips)]
    batch = torch.from_numpy(np.stack(clips))[None]  # (1, V*N, T, h, w)
    return video_scores(clip_probs(clf.model, batch, precision=precision))[0].numpy()


def top_k(probs: np.ndarray, names: list[str], k: int = 5) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": names[int(c)], "index": int(c), "prob": float(probs[c])} for c in order]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, help="fine-tuning output, checkpoint dir or export dir")
    p.add_argument("--tokenizer", choices=("dalle", "vqvae"), required=True)
    p.add_argument("--tokenizer-path", required=True)
    p.add_argument("--num-test-clips", type=int, default=None, help="default: the fine-tuning run's")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default="fp32")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from video2token.tokenizers import TokenizerError, load_tokenizer

    try:
        clf = load_classifier(a.checkpoint, device=a.device)
        try:
            tok = load_tokenizer(a.tokenizer, a.tokenizer_path, device=a.device)
        except (TokenizerError, OSError, ValueError) as e:
            raise PredictError(f"--tokenizer-path {a.tokenizer_path}: {e}") from None
        check_tokenizer(clf.task, tok.describe(), f"--tokenizer-path {a.tokenizer_path}")
        num_clips = a.num_test_clips or int(clf.task.get("num_test_clips", 10))
        if num_clips < 1:
            raise PredictError(f"--num-test-clips must be >= 1, got {num_clips}")
        results = []
        for video in a.videos:
            if not os.path.exists(video):
                raise PredictError(f"{video} does not exist")
            probs = classify_codes(clf, tokenize_views(video, tok, clf.task), num_clips=num_clips,
                                   precision=a.precision)
            results.append({"video": video, "top": top_k(probs, clf.label_names, a.top)})
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if a.json:
        print(json.dumps({"checkpoint": clf.path, "num_test_clips": num_clips,
                          "crops": clf.task.get("test_crops"), "results": results}, indent=2))
    else:
        for r in results:
            print(r["video"])
            for i, t in enumerate(r["top"], 1):
                print(f"  {i}. {t['label']:<30s} {100 * t['prob']:6.2f}%")
        print(f"done: {len(results)} video(s), {num_clips} clips x {len(clf.task.get('test_crops') or [1])} crops "
              f"each, model {clf.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
