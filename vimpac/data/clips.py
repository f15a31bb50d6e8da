"""Cutting clips of codes out of stored videos, shared by pre-training and fine-tuning.

A clip is `clip_len` frames, every `frame_rate`-th stored frame; a video shorter than a clip is
padded with whole [PAD] frames. `collate` stacks per-video sample dicts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from video2token.store import TokenStore

from vimpac.data.stores import DataError


@dataclass(frozen=True)
class ClipSpec:
    clip_len: int        # T frames per clip
    frame_rate: int = 1  # every frame_rate-th stored frame

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.frame_rate < 1:
            raise ValueError(f"--clip-len and --frame-rate must be >= 1, got {self.clip_len}, {self.frame_rate}")

    @property
    def span(self) -> int:
        """Stored frames covered by one clip."""
        return (self.clip_len - 1) * self.frame_rate + 1


def uniform_starts(num_frames: int, span: int, num_clips: int) -> list[int]:
    """Starts of `num_clips` clips whose centres split the video evenly (1 clip: the middle)."""
    if num_clips < 1:
        raise ValueError(f"--num-test-clips must be >= 1, got {num_clips}")
    last = max(num_frames - span, 0)
    return [int(round(last * (i + 0.5) / num_clips)) for i in range(num_clips)]


def cut_clip(codes: np.ndarray, start: int, clip: ClipSpec, pad_id: int) -> np.ndarray:
    """codes (F, h, w) of a whole video -> (T, h, w) int64, [PAD] frames after a short video's end."""
    out = codes[start:start + clip.span:clip.frame_rate].astype(np.int64)
    if out.shape[0] < clip.clip_len:
        pad = np.full((clip.clip_len - out.shape[0], *codes.shape[1:]), pad_id, dtype=np.int64)
        out = np.concatenate([out, pad])
    return out


def read_clip(store: TokenStore, k: int, start: int, clip: ClipSpec, grid: tuple[int, int], pad_id: int) -> np.ndarray:
    """Video k of `store` from stored frame `start` -> (T, h, w) int64, [PAD]-padded; a stray code-map size is an error."""
    codes, _ = store.read_at(k, frames=slice(start, start + clip.span))
    if tuple(codes.shape[1:]) != tuple(grid):
        raise DataError(f"{store.path}: video {store.video_ids[k]!r} has a {tuple(codes.shape[1:])} code map, "
                        f"expected {tuple(grid)} like the rest of the store")
    return cut_clip(codes, 0, clip, pad_id)


def read_frames_clip(store: TokenStore, k: int, start: int, clip: ClipSpec) -> np.ndarray:
    """The pixels of `read_clip`'s clip -> (T, S, S, 3) uint8, black frames where the codes have [PAD]. The
    store must hold frames (extracted with --keep-frames); the frames are exactly those the tokenizer saw."""
    if not store.has_frames:
        raise DataError(f"{store.path} holds codes only; pixel input (--input pixels) needs the frames the tokenizer "
                        f"saw: extract the store with --keep-frames")
    frames = store.read_frames_at(k, frames=slice(start, start + clip.span))[::clip.frame_rate]
    if frames.shape[0] < clip.clip_len:
        pad = np.zeros((clip.clip_len - frames.shape[0], *frames.shape[1:]), dtype=np.uint8)
        frames = np.concatenate([frames, pad])
    return np.ascontiguousarray(frames)


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-video samples key by key: (B, ...) tensors."""
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
