"""Resumable, rank-aware epoch batches of `(epoch, video_index)` keys."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from vimpac.data.stores import DataError


class EpochBatchSampler:
    """This rank's micro-batches of `(epoch, video_index)` keys, resumable mid-epoch.

    Each epoch is a permutation seeded by (seed, epoch) (or the identity when not shuffled);
    global micro-batch j is permutation[j*B*W : (j+1)*B*W] and rank r takes its r-th slice of
    B keys, so all ranks step through the same global batches. The tail that does not fill
    `micro_steps_per_epoch` micro-batches is dropped (InfoNCE needs equal batches on every rank).
    `set_position(epoch, micro_step)` selects where the next iteration starts.
    """

    def __init__(self, num_videos: int, *, micro_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, micro_steps_per_epoch: int | None = None):
        full = num_videos // (micro_batch * world_size)
        if full < 1:
            raise DataError(f"{num_videos} videos cannot fill one global micro-batch of {micro_batch} x "
                            f"{world_size} rank(s); lower --bs-per-gpu or use a larger store")
        if micro_steps_per_epoch is not None and not 1 <= micro_steps_per_epoch <= full:
            raise DataError(f"micro_steps_per_epoch={micro_steps_per_epoch} outside [1, {full}]")
        self.num_videos, self.micro_batch, self.world_size, self.rank = num_videos, micro_batch, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.micro_steps_per_epoch = full if micro_steps_per_epoch is None else micro_steps_per_epoch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, micro_step: int = 0) -> None:
        if not 0 <= micro_step <= self.micro_steps_per_epoch:
            raise DataError(f"data position {micro_step} outside epoch of {self.micro_steps_per_epoch} micro-steps")
        self.epoch, self.start = int(epoch), int(micro_step)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_videos)
        return np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED, int(epoch)])).permutation(self.num_videos)

    def __len__(self) -> int:
        return self.micro_steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.order(self.epoch)
        g = self.micro_batch * self.world_size
        for j in range(self.start, self.micro_steps_per_epoch):
            lo = j * g + self.rank * self.micro_batch
            yield [(self.epoch, int(i)) for i in perm[lo:lo + self.micro_batch]]
