"""Frames of a token store's videos decoded from the source files on demand: the alternative to --keep-frames.

BEVT-style training (Wang et al., CVPR 2022) reads pixels and predicts the codes of masked
patches. A store extracted with --keep-frames holds those frames (`TokenStore.read_frames_at`);
for one without, `OnlineFrames(store).read_at(k, frames)` decodes the same frames from the video
the store names (`meta.json`'s video_root + the video id) at the stored timestamps, with the
store's resize / crop / flip (video2token.video.read_video_at): frame j is the image whose
codes are `store.read_at(k, frames)[0][j]`. The videos must be the files that were extracted.
"""
from __future__ import annotations

import os

import numpy as np

from .store import TokenStore, frame_range
from .video import read_video_at, trim_to_stride


class OnlineFrames:
    """`read_at(k, frames: slice | None) -> (T', H, W, 3) uint8`, decoded from the k-th video's file.

    video_root: where the videos are now (default: the store's video_root); decoder: "av" or
    "decord" (default: what extraction used, per file suffix when it was auto). Holds no open
    file, so it pickles into DataLoader workers.
    """

    def __init__(self, store: TokenStore, *, video_root: str | None = None, decoder: str | None = None):
        meta = store.meta
        self.store = store
        self.video_root = video_root if video_root is not None else meta["video_root"]
        self.decoder = decoder if decoder is not None else (None if meta.get("decoder", "auto") == "auto"
                                                            else meta["decoder"])
        self.geometry = dict(shorter_side=meta["frame_shorter_side"], crop_size=meta["crop_size"],
                             crop_type=meta["crop_type"], hflip=bool(meta["hflip"]),
                             channel_order=meta.get("channel_order", "rgb"))
        self.stride = int(meta["tokenizer"]["downsample"])

    def read_at(self, k: int, frames: slice | None = None) -> np.ndarray:
        video_id = self.store.video_ids[k]
        f0, f1 = frame_range(frames, int(self.store.num_frames[k]))
        if f1 == f0:
            h, w = self.store.read_at(k, slice(0, 0))[0].shape[1:]
            return np.zeros((0, h * self.stride, w * self.stride, 3), np.uint8)
        times = self.store.timestamps(video_id)[f0:f1]
        out = read_video_at(os.path.join(self.video_root, video_id), times, decoder=self.decoder, **self.geometry)
        return trim_to_stride(out, self.stride) if self.geometry["crop_type"] == "none" else out
