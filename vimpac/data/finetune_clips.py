"""Labelled clips for VIMPAC fine-tuning (Tan et al., 2021, section 4.1): random training views, multi-clip test views.

Training: per (epoch, video) a random extracted view (store) and a uniformly random clip start.
Test: `num_clips` uniform temporal clips from every test view (crop), later averaged by
`vimpac.eval.scores`. Clips take every `frame_rate`-th stored frame (sub-sampling a 16-FPS store);
videos shorter than a clip are padded with whole [PAD] frames.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from video2token.store import TokenStore

from vimpac.data.clips import ClipSpec, read_clip, read_frames_clip, uniform_starts
from vimpac.data.stores import DataError, check_compatible_stores
from vimpac.model.special_tokens import SpecialTokens


def check_labels(stores: Sequence[TokenStore], num_classes: int, what: str) -> None:
    for s in stores[:1]:  # views share videos and labels (check_compatible_stores)
        bad = np.flatnonzero((s.labels < 0) | (s.labels >= num_classes))
        if bad.size:
            k = int(bad[0])
            raise DataError(f"{what}: {s.path}: video {s.video_ids[k]!r} has label {int(s.labels[k])}, outside "
                            f"[0, {num_classes}) ({bad.size} such videos); unlabelled or wrong label map?")


class _Clips(Dataset):
    """pixels: samples also hold the clips' frames (BEVT input; stores extracted with --keep-frames)."""

    def __init__(self, stores: Sequence[TokenStore], clip: ClipSpec, *, what: str, pixels: bool = False):
        self.stores = list(stores)
        self.pixels = pixels
        if pixels:
            for s in self.stores:
                if not s.has_frames:
                    raise DataError(f"{what}: {s.path} holds codes only; a pixel model (--input pixels) needs the "
                                    f"frames the tokenizer saw: extract the store with --keep-frames")
        self.vocab_size, self.grid = check_compatible_stores(self.stores, what)
        self.pad_id = SpecialTokens.from_vocab_size(self.vocab_size).pad
        self.clip = clip
        self.num_frames = self.stores[0].num_frames
        self.labels = self.stores[0].labels
        self.video_ids = self.stores[0].video_ids

    def __len__(self) -> int:
        return len(self.stores[0])

    def _read(self, store: TokenStore, k: int, start: int) -> np.ndarray:
        return read_clip(store, k, start, self.clip, self.grid, self.pad_id)

    def _sample(self, codes: np.ndarray, frames: list[np.ndarray] | None) -> dict[str, torch.Tensor]:
        """codes (..., T, h, w) -> codes, frame_valid (..., T) and, for pixel models, frames (..., T, S, S, 3)."""
        codes = torch.from_numpy(codes)
        out = {"codes": codes, "frame_valid": (codes != self.pad_id).any(dim=(-2, -1))}
        if frames is not None:
            out["frames"] = torch.from_numpy(np.stack(frames) if len(frames) > 1 or codes.dim() == 4 else frames[0])
        return out


class TrainClips(_Clips):
    """Key (epoch, k) -> codes (T, h, w) long, frame_valid (T,) bool (False: [PAD]), label () long, index () long,
    view () long.

    The view and start come from (seed, epoch, k) only, so a resumed epoch replays the same samples.
    """

    def __init__(self, stores: Sequence[TokenStore], clip: ClipSpec, *, seed: int, what: str = "--train-tokens",
                 pixels: bool = False):
        super().__init__(stores, clip, what=what, pixels=pixels)
        self.seed = int(seed)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, k = (0, key) if isinstance(key, (int, np.integer)) else key
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), int(k)]))
        view = int(rng.integers(len(self.stores)))
        last = max(int(self.num_frames[k]) - self.clip.span, 0)
        start = int(rng.integers(0, last + 1))
        store = self.stores[view]
        frames = [read_frames_clip(store, int(k), start, self.clip)] if self.pixels else None
        return {**self._sample(self._read(store, int(k), start), frames), "label": torch.tensor(int(self.labels[k])),
                "index": torch.tensor(int(k)), "view": torch.tensor(view)}


class EvalClips(_Clips):
    """k -> codes (V*C, T, h, w) long (views x uniform clips, view-major), frame_valid (V*C, T) bool, label () long,
    index () long; pixel models: frames (V*C, T, S, S, 3) uint8 too."""

    def __init__(self, stores: Sequence[TokenStore], clip: ClipSpec, *, num_clips: int, what: str = "--valid-tokens",
                 pixels: bool = False):
        super().__init__(stores, clip, what=what, pixels=pixels)
        uniform_starts(1, 1, num_clips)  # validates num_clips
        self.num_clips = int(num_clips)

    @property
    def num_crops(self) -> int:
        return len(self.stores)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        k = int(k)
        starts = uniform_starts(int(self.num_frames[k]), self.clip.span, self.num_clips)
        clips = [self._read(s, k, st) for s in self.stores for st in starts]
        frames = [read_frames_clip(s, k, st, self.clip) for s in self.stores for st in starts] if self.pixels else None
        return {**self._sample(np.stack(clips), frames), "label": torch.tensor(int(self.labels[k])),
                "index": torch.tensor(k)}
