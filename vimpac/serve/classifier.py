"""The classifier behind `vimpac.predict` and `vimpac.export`: load a fine-tuned model, decode a video's test
views as extraction does (and tokenize them, for a token model; a pixel model reads the frames), and average
the softmax scores of uniform clips x crops (as fine-tuning's test)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


from vimpac.data.clips import ClipSpec, cut_clip, uniform_starts
from vimpac.eval.scores import clip_probs, video_scores
from vimpac.model.checkpoint import CheckpointError
from vimpac.model.loading import CLASSIFICATION, TASK_KIND, build_model, read_weights
from vimpac.model.transformer import VimpacForClassification


#: tokenizer facts that must agree between the fine-tuning stores and the tokenizer used here
TOKENIZER_KEYS = ("name", "vocab_size", "downsample", "sha256")


class PredictError(RuntimeError):
    """A checkpoint, tokenizer or video that cannot be used for prediction (the message says why)."""


@dataclass
class Classifier:
    model: VimpacForClassification
    task: dict[str, Any]        # what fine-tuning recorded (LabelledData.task): labels, clip shape, fps, crops, tokenizer
    path: str
    notes: list[str] = field(default_factory=list)  # defaults filled in, conversions made

    @property
    def label_names(self) -> list[str]:
        return list(self.task["label_names"])

    @property
    def pixels(self) -> bool:
        """A BEVT-mode model: it reads frames, so prediction needs no tokenizer."""
        return self.model.cfg.input == "pixels"


#: what an original VIMPAC snapshot does not record, filled in for prediction (each use is reported)
ORIGINAL_DEFAULTS = {"fps": 2.0, "frame_rate": 1, "test_crops": ["center"], "test_hflip": [False]}


def load_classifier(checkpoint: str, *, device: str | torch.device = "cpu") -> Classifier:
    """A fine-tuned classifier (eval mode) and its task record from a checkpoint, export or original snapshot."""
    try:
        weights = read_weights(checkpoint)
    except CheckpointError as e:
        raise PredictError(f"--checkpoint: {e}") from None
    task = weights.task
    if weights.kind != CLASSIFICATION or not task:
        raise PredictError(f"--checkpoint {weights.path}: config.json has no train.task of kind {TASK_KIND!r}; this is "
                           f"not a fine-tuned classifier (fine-tune it with python -m vimpac.finetune)")
    task = dict(task)
    notes = list(weights.notes)
    if weights.source == "original":
        missing = {k: v for k, v in ORIGINAL_DEFAULTS.items() if k not in task}
        task.update(missing)
        task.setdefault("label_names", [str(i) for i in range(int(task["num_classes"]))])
        if missing:
            notes.append(f"an original VIMPAC snapshot records no {', '.join(missing)}: using {missing}")
    weights.config = weights.config.replace(dropout=0.0)
    model = build_model(weights)
    return Classifier(model=model.to(device).eval(), task=task, path=weights.path, notes=notes)


def check_input(clf: Classifier, want: str | None) -> None:
    """`--input` of predict / export, when given, must be what the model reads."""
    have = clf.model.cfg.input
    if want is not None and want != have:
        raise PredictError(f"--input {want}, but {clf.path} is a model with --input {have}"
                           + (" (BEVT: it reads frames, no tokenizer)" if have == "pixels" else
                              " (it reads tokenizer codes)"))


def check_tokenizer(task: dict[str, Any], described: dict[str, Any], where: str) -> None:
    """The tokenizer must be the one the fine-tuning stores were made with (same codes for the same pixels)."""
    want = task.get("tokenizer", {})
    diff = [f"{k}: {described.get(k)!r} (given) vs {want.get(k)!r} (fine-tuning stores)"
            for k in TOKENIZER_KEYS if k in want and described.get(k) != want.get(k)]
    if diff:
        raise PredictError(f"{where}: another tokenizer than the model was fine-tuned on: " + "; ".join(diff))


def decode_views(video: str, task: dict[str, Any]) -> list[np.ndarray]:
    """Frames (F, S, S, 3) uint8 of each test view (crop, flip) of a video, decoded as extraction does."""
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
        out.append(np.asarray(frames))
    return out


def tokenize_views(video: str, tokenizer, task: dict[str, Any]) -> list[np.ndarray]:
    """Codes (F, h, w) of each test view (crop, flip) of a video, decoded as extraction does."""
    return [np.asarray(tokenizer.encode(frames)) for frames in decode_views(video, task)]


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


@torch.no_grad()
def classify_frames(clf: Classifier, views: list[np.ndarray], *, num_clips: int, precision: str = "fp32") -> np.ndarray:
    """A pixel model's averaged class probabilities (C,) over `num_clips` uniform clips of every view's frames
    (F, S, S, 3) uint8; a short video's clips end in black [PAD] frames that the model leaves out."""
    cfg = clf.model.cfg
    clip = ClipSpec(clip_len=cfg.clip_len, frame_rate=int(clf.task.get("frame_rate", 1)))
    size = (cfg.grid_h * cfg.patch_size, cfg.grid_w * cfg.patch_size)
    clips, valid = [], []
    for frames in views:
        if tuple(frames.shape[1:3]) != size:
            raise PredictError(f"frames of {frames.shape[1]}x{frames.shape[2]} px do not fit the model's "
                               f"{size[0]}x{size[1]} px")
        for s in uniform_starts(len(frames), clip.span, num_clips):
            part = frames[s:s + clip.span:clip.frame_rate]
            valid.append(np.arange(clip.clip_len) < len(part))
            clips.append(np.concatenate([part, np.zeros((clip.clip_len - len(part), *part.shape[1:]), np.uint8)]))
    batch = torch.from_numpy(np.stack(clips))[None]  # (1, V*N, T, S, S, 3)
    frame_valid = torch.from_numpy(np.stack(valid))[None]  # (1, V*N, T)
    return video_scores(clip_probs(clf.model, batch, precision=precision, frame_valid=frame_valid))[0].numpy()


def top_k(probs: np.ndarray, names: list[str], k: int = 5) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": names[int(c)], "index": int(c), "prob": float(probs[c])} for c in order]


def recorded_tokenizer_path(clf: Classifier) -> str | None:
    """Where the fine-tuning stores' tokenizer is, from the checkpoint's record: a path inside the checkpoint (an
    export made with --with-tokenizer) first, then the path as recorded at extraction."""
    recorded = (clf.task.get("tokenizer") or {}).get("path")
    if not recorded:
        return None
    if not os.path.isabs(recorded) and os.path.exists(os.path.join(clf.path, recorded)):
        return os.path.join(clf.path, recorded)
    return recorded


def load_task_tokenizer(clf: Classifier, *, kind: str | None = None, path: str | None = None,
                        device: str = "cpu", precision: str = "auto"):
    """The tokenizer the model was fine-tuned on: the one given, else the checkpoint's record; its SHA-256 must
    match the record's either way."""
    from video2token.tokenizers import TokenizerError, load_tokenizer

    record = clf.task.get("tokenizer") or {}
    kind = kind or record.get("name")
    path = path or recorded_tokenizer_path(clf)
    if not kind or not path:
        raise PredictError(f"{clf.path} records no tokenizer (an original VIMPAC snapshot?): pass --tokenizer and "
                           f"--tokenizer-path")
    where = f"--tokenizer-path {path}" if path != recorded_tokenizer_path(clf) else f"the recorded tokenizer {path}"
    if not os.path.exists(path):
        raise PredictError(f"{where} does not exist; pass --tokenizer-path (or export with --with-tokenizer)")
    try:
        tok = load_tokenizer(kind, path, device=device, precision=precision)
    except (TokenizerError, OSError, ValueError) as e:
        raise PredictError(f"{where}: {e}") from None
    check_tokenizer(clf.task, tok.describe(), where)
    return tok
