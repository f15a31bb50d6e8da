"""Clip-pair dataset over token stores for VIMPAC pre-training (Tan et al., 2021, sections 3.1-3.2).

For every video: two clips of `clip_len` frames, every `frame_rate`-th stored frame, starts
drawn uniformly and independently (or within `relevance_range` stored frames of each other);
short videos padded with [PAD] frames; a random view (store) per sample; both clips
block-masked. Everything random about a sample comes from (seed, epoch, video index), so a
batch is the same whatever the number of workers, and `EpochBatchSampler` restores an
epoch's order and a mid-epoch position exactly on resume (seeded permutation + step offset).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from video2token.store import TokenStore

from vimpac.data.masking import apply_mask, block_mask, expected_block_mask_ratio, iid_mask
from vimpac.model.special_tokens import SpecialTokens


class DataError(ValueError):
    """Token stores that cannot serve together (mismatched videos, vocabulary or grid)."""


def check_compatible_stores(stores: Sequence[TokenStore], what: str) -> tuple[int, tuple[int, int]]:
    """Views of one split must hold the same videos, vocabulary and code-map size -> (vocab, (h, w))."""
    if not stores:
        raise DataError(f"{what}: no token store given")
    first = stores[0]
    if len(first) == 0:
        raise DataError(f"{what}: token store {first.path} holds no video")
    grid = tuple(int(x) for x in first.read_at(0, frames=slice(0, 1))[0].shape[1:])
    for s in stores[1:]:
        if s.vocab_size != first.vocab_size:
            raise DataError(f"{what}: vocabulary mismatch: {s.path} has {s.vocab_size} codes "
                            f"(tokenizer {s.meta['tokenizer'].get('name')!r}) but {first.path} has "
                            f"{first.vocab_size} (tokenizer {first.meta['tokenizer'].get('name')!r})")
        if s.video_ids != first.video_ids:
            raise DataError(f"{what}: {s.path} and {first.path} are not views of the same split "
                            f"(their video lists differ: {len(s)} vs {len(first)} videos)")
        g = tuple(int(x) for x in s.read_at(0, frames=slice(0, 1))[0].shape[1:])
        if g != grid:
            raise DataError(f"{what}: code map {g} of {s.path} differs from {grid} of {first.path}")
    return first.vocab_size, grid  # type: ignore[return-value]


MASKINGS = ("block", "iid")


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video and masked."""

    clip_len: int                        # T frames per clip
    frame_rate: int = 1                  # take every frame_rate-th stored frame
    relevance_range: int | None = None   # max distance between the two clips' starts (stored frames); None: any
    mask_blocks: int = 5                 # block-mask cuboids per clip
    mask_rand_replace: bool = False      # BERT 80/10/10 instead of always [MASK]
    masking: str = "block"               # "block" cuboids, or "iid" positions at the same expected ratio

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.frame_rate < 1 or self.mask_blocks < 0:
            raise ValueError(f"clip_len and frame_rate must be >= 1 and mask_blocks >= 0, got {self}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.relevance_range is not None and self.relevance_range < 0:
            raise ValueError(f"relevance_range must be >= 0 or None, got {self.relevance_range}")

    @property
    def span(self) -> int:
        """Stored frames covered by one clip."""
        return (self.clip_len - 1) * self.frame_rate + 1


def sample_starts(num_frames: int, sampling: ClipSampling, rng: np.random.Generator) -> tuple[int, int]:
    """Start frames of the two clips of a video with `num_frames` stored frames."""
    last = num_frames - sampling.span  # last start at which a whole clip fits
    if last <= 0:
        return 0, 0  # short video: both clips take all it has, then [PAD]
    s1 = int(rng.integers(0, last + 1))
    if sampling.relevance_range is None:
        s2 = int(rng.integers(0, last + 1))
    else:
        r = sampling.relevance_range
        s2 = int(rng.integers(max(0, s1 - r), min(last, s1 + r) + 1))
    return s1, s2


class ClipPairDataset(Dataset):
    """Indexed by `(epoch, video_index)` (or a bare index = epoch 0) -> dict of tensors for one video.

    Returns codes (2, T, h, w) long targets with [PAD]; codes_in (2, T, h, w) long model input
    ([MASK] in place); mask (2, T, h, w) bool (never on [PAD]); index () long; view () long;
    starts (2,) long. Stores are opened lazily per worker process by TokenStore itself.
    """

    def __init__(self, stores: Sequence[TokenStore], sampling: ClipSampling, *, seed: int, what: str = "data"):
        self.stores = list(stores)
        self.vocab_size, self.grid = check_compatible_stores(self.stores, what)
        self.special = SpecialTokens.from_vocab_size(self.vocab_size)
        self.sampling = sampling
        self.seed = int(seed)
        self.num_frames = self.stores[0].num_frames
        # i.i.d. masking: the block masks' expected ratio on this clip shape, computed once (not per sample)
        self.iid_ratio = expected_block_mask_ratio((sampling.clip_len, *self.grid), sampling.mask_blocks)

    def __len__(self) -> int:
        return len(self.stores[0])

    def _read_clip(self, store: TokenStore, k: int, start: int) -> np.ndarray:
        s = self.sampling
        codes, _ = store.read_at(k, frames=slice(start, start + s.span))
        codes = codes[::s.frame_rate]  # (<=T, h, w)
        if codes.shape[1:] != self.grid:
            raise DataError(f"{store.path}: video {store.video_ids[k]!r} has a {codes.shape[1:]} code map, "
                            f"expected {self.grid} like the rest of the store")
        if codes.shape[0] < s.clip_len:
            pad = np.full((s.clip_len - codes.shape[0], *self.grid), self.special.pad, dtype=np.int64)
            codes = np.concatenate([codes.astype(np.int64), pad])
        return codes.astype(np.int64)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, k = (0, key) if isinstance(key, (int, np.integer)) else key
        k = int(k)
        if not 0 <= k < len(self):
            raise IndexError(f"video index {k} outside [0, {len(self)})")
        seq = np.random.SeedSequence([self.seed, int(epoch), k])
        rng = np.random.default_rng(seq)
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))
        view = int(rng.integers(len(self.stores))) if len(self.stores) > 1 else 0
        store = self.stores[view]
        starts = sample_starts(int(self.num_frames[k]), self.sampling, rng)
        codes = torch.from_numpy(np.stack([self._read_clip(store, k, s) for s in starts]))  # (2, T, h, w)
        if self.sampling.masking == "iid":  # the ablation baseline: same expected ratio, no spatio-temporal blocks
            mask = iid_mask(codes.shape, self.iid_ratio, generator=gen)
        else:
            mask = block_mask(codes.shape, self.sampling.mask_blocks, generator=gen)
        codes_in, mask = apply_mask(codes, mask, self.special, bert_style=self.sampling.mask_rand_replace,
                                    generator=gen)
        return {"codes": codes, "codes_in": codes_in, "mask": mask, "index": torch.tensor(k),
                "view": torch.tensor(view), "starts": torch.tensor(starts)}


def collate_pairs(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples: codes/codes_in/mask (B, 2, T, h, w), index/view (B,), starts (B, 2)."""
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


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
