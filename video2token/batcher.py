"""Pack frames of many videos into fixed-size encoder batches and hand back whole videos.

Short videos (a 4 s clip at 2 FPS is 8 frames) would leave the encoder idle between tiny
batches, so frames from consecutive videos share a batch. Every encoder call gets exactly
`batch_size` frames (the last one is zero-padded): a fixed input shape keeps the backend
on one kernel, so each frame's codes do not depend on which videos it was batched with,
and a resumed extraction reproduces an uninterrupted one bit for bit.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np


@dataclass
class _Pending:
    key: Any
    payload: Any
    frames: np.ndarray                # (T, H, W, 3) uint8
    codes: list = field(default_factory=list)
    fed: int = 0                      # frames handed to the encoder so far
    got: int = 0                      # frames whose codes came back


class FrameBatcher:
    """`add(key, frames, payload)` then iterate `ready()`; `flush()` at the end.

    `encode(frames (B, H, W, 3) uint8) -> codes (B, h, w)`. Videos of different frame
    sizes (crop type "none") go to separate queues. Yields `(key, payload, codes (T, h, w))`.
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], batch_size: int, max_buffered_frames: int | None = None):
        self.encode = encode
        self.batch_size = int(batch_size)
        self.max_buffered = max_buffered_frames or 8 * self.batch_size
        self._queues: "OrderedDict[tuple, list[_Pending]]" = OrderedDict()
        self.frames_encoded = 0
        self.batches = 0

    def add(self, key: Any, frames: np.ndarray, payload: Any = None) -> None:
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"{key}: expected frames (T>0, H, W, 3), got shape {frames.shape}")
        shape = tuple(frames.shape[1:])
        self._queues.setdefault(shape, []).append(_Pending(key, payload, frames))

    def _unfed(self, q: list[_Pending]) -> int:
        return sum(p.frames.shape[0] - p.fed for p in q)

    def _run_batch(self, q: list[_Pending]) -> Iterator[tuple[Any, Any, np.ndarray]]:
        chunks, owners = [], []
        need = self.batch_size
        for p in q:
            if need == 0:
                break
            take = min(need, p.frames.shape[0] - p.fed)
            if take:
                chunks.append(p.frames[p.fed:p.fed + take])
                owners.append((p, take))
                p.fed += take
                need -= take
        batch = np.concatenate(chunks, axis=0)
        real = batch.shape[0]
        if real < self.batch_size:
            pad = np.zeros((self.batch_size - real,) + batch.shape[1:], dtype=batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        codes = self.encode(batch)[:real]
        self.frames_encoded += real
        self.batches += 1
        pos = 0
        for p, take in owners:
            p.codes.append(codes[pos:pos + take])
            p.got += take
            pos += take
        while q and q[0].got == q[0].frames.shape[0]:
            p = q.pop(0)
            yield p.key, p.payload, np.concatenate(p.codes, axis=0)

    def ready(self) -> Iterator[tuple[Any, Any, np.ndarray]]:
        """Encode every full batch available; also drain the fullest queue when too much is buffered."""
        for shape in list(self._queues):
            q = self._queues[shape]
            while self._unfed(q) >= self.batch_size:
                yield from self._run_batch(q)
        total = sum(self._unfed(q) for q in self._queues.values())
        while total > self.max_buffered:
            shape = max(self._queues, key=lambda s: self._unfed(self._queues[s]))
            yield from self._run_batch(self._queues[shape])
            total = sum(self._unfed(q) for q in self._queues.values())
        for shape in [s for s, q in self._queues.items() if not q]:
            del self._queues[shape]

    def flush(self) -> Iterator[tuple[Any, Any, np.ndarray]]:
        for shape in list(self._queues):
            q = self._queues[shape]
            while q:
                yield from self._run_batch(q)
            del self._queues[shape]
