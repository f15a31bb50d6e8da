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
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from video2token.store import TokenStore

from vimpac.data.clips import ClipSpec, collate, read_clip, read_frames_clip
from vimpac.data.image_stream import collate_images, split_streams
from vimpac.data.masking import apply_mask, block_mask, expected_block_mask_ratio, iid_mask, tube_mask
from vimpac.data.stores import check_compatible_stores
from vimpac.eval.copy_baseline import copy_baseline_accuracy
from vimpac.model.masked import MaskedTargets
from vimpac.model.special_tokens import SpecialTokens

#: masked positions of a batch are padded to a multiple of this (ignored entries), so batches reuse shapes
MASK_PAD_TO = 64


MASKINGS = ("block", "tube", "iid")


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video and masked."""

    clip_len: int                        # T frames per clip
    frame_rate: int = 1                  # take every frame_rate-th stored frame
    relevance_range: int | None = None   # max distance between the two clips' starts (stored frames); None: any
    mask_blocks: int = 5                 # block-mask cuboids per clip
    mask_rand_replace: bool = False      # BERT 80/10/10 instead of always [MASK]
    masking: str = "block"               # "block" cuboids, "tube" rectangles through all frames (BEVT), or "iid"
                                         # positions at the block masks' expected ratio

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
        return ClipSpec(self.clip_len, self.frame_rate).span


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
    ([MASK] in place); mask (2, T, h, w) bool (never on [PAD]); frame_valid (2, T) bool (False: a [PAD]
    frame); index () long; view () long; starts (2,) long; and the sample's metric counts, made here so
    the trainer never reads them back from the device: masked, copy_correct (the copy baseline on these
    masks), valid, tokens. Stores are opened lazily per worker process by TokenStore itself.
    """

    def __init__(self, stores: Sequence[TokenStore], sampling: ClipSampling, *, seed: int, what: str = "data",
                 pixels: bool = False):
        """pixels: also return each clip's frames (2, T, S, S, 3) uint8 (BEVT input; stores with --keep-frames)."""
        self.stores = list(stores)
        self.pixels = pixels
        self.vocab_size, self.grid = check_compatible_stores(self.stores, what)
        self.special = SpecialTokens.from_vocab_size(self.vocab_size)
        self.sampling = sampling
        self.clip = ClipSpec(clip_len=sampling.clip_len, frame_rate=sampling.frame_rate)
        self.seed = int(seed)
        self.num_frames = self.stores[0].num_frames
        # i.i.d. masking: the block masks' expected ratio on this clip shape, computed once (not per sample)
        self.iid_ratio = expected_block_mask_ratio((sampling.clip_len, *self.grid), sampling.mask_blocks)

    def __len__(self) -> int:
        return len(self.stores[0])

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
        codes = torch.from_numpy(np.stack([read_clip(store, k, s, self.clip, self.grid, self.special.pad) for s in starts]))  # (2, T, h, w)
        mask = make_mask(self.sampling, codes.shape, self.iid_ratio, gen)
        codes_in, mask = apply_mask(codes, mask, self.special, bert_style=self.sampling.mask_rand_replace,
                                    generator=gen)
        sample = {"codes": codes, "codes_in": codes_in, "mask": mask, "index": torch.tensor(k),
                  "view": torch.tensor(view), "starts": torch.tensor(starts), **clip_facts(codes, mask, self.special)}
        if self.pixels:  # (2, T, S, S, 3) uint8: the model puts its [MASK] embedding on masked patches itself
            sample["frames"] = torch.from_numpy(np.stack([read_frames_clip(store, k, s, self.clip) for s in starts]))
        return sample


def make_mask(sampling: ClipSampling, shape: tuple[int, ...], iid_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """The sampling's mask kind over `shape` (..., T, h, w) -> bool."""
    if sampling.masking == "iid":  # the ablation baseline: same expected ratio, no spatio-temporal blocks
        return iid_mask(shape, iid_ratio, generator=gen)
    if sampling.masking == "tube":
        return tube_mask(shape, sampling.mask_blocks, generator=gen)
    return block_mask(shape, sampling.mask_blocks, generator=gen)


def clip_facts(codes: torch.Tensor, mask: torch.Tensor, special: SpecialTokens) -> dict[str, torch.Tensor]:
    """codes, mask (..., T, h, w) of one sample -> frame_valid (..., T) bool and its metric counts (() long)."""
    valid = codes != special.pad
    copy_correct, masked = copy_baseline_accuracy(codes.reshape(-1, *codes.shape[-3:]),
                                                  mask.reshape(-1, *mask.shape[-3:]),
                                                  valid.reshape(-1, *valid.shape[-3:]))
    return {"frame_valid": valid.any(dim=(-2, -1)), "masked": masked, "copy_correct": copy_correct,
            "valid": valid.sum(), "tokens": torch.tensor(valid.numel())}


def collate_pairs(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack pairs (codes/codes_in/mask (B, 2, T, h, w), frame_valid (B, 2, T), index/view (B,), starts (B, 2),
    counts (B,)) and add what the model would otherwise find on the device: the flat masked positions of
    the (2B, T, h, w) clips and their target codes (`mask_index`, `mask_target`, (M,) long, padded to a
    multiple of MASK_PAD_TO), and `any_pad` (() bool: whether any clip has a [PAD] frame)."""
    batch = collate(samples)
    masked = MaskedTargets.from_mask(batch["mask"].flatten(0, 1), batch["codes"].flatten(0, 1), pad_to=MASK_PAD_TO)
    batch["mask_index"], batch["mask_target"] = masked.index, masked.target
    batch["any_pad"] = ~batch["frame_valid"].all()
    return batch


def collate_joint(samples: list[dict]) -> dict:
    """A joint micro-batch (BEVT stage 2): {"video": collate_pairs(...), "image": image batch or None}."""
    videos, images = split_streams(samples)
    return {"stream_split": True, "video": collate_pairs(videos) if videos else None,
            "image": collate_images(images, pad_to=MASK_PAD_TO) if images else None}


def collate_image_stream(samples: list[dict], *, pad_to: int) -> dict:
    """An image-only micro-batch (BEVT stage 1): {"image": image batch}."""
    return {"stream_split": True, "video": None, "image": collate_images(samples, pad_to=pad_to)}
