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
from vimpac.data.pair_views import (change_weights, erase_plan, foreground_positions, freeze_positions,
                                     merge_foreground, reverse_time)
from vimpac.eval.copy_baseline import copy_baseline_predictions
from vimpac.model.masked import MaskedTargets
from vimpac.model.special_tokens import SpecialTokens

#: masked positions of a batch are padded to a multiple of this (ignored entries), so batches reuse shapes
MASK_PAD_TO = 64


MASKINGS = ("block", "tube", "iid")
#: where a video's two clips come from when several stores (views) are given: one random view for both, or two
#: different views (e.g. colour views: extract --channel-order), so the pair cannot be matched by that view's looks
PAIR_VIEWS = ("same", "distinct")


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
    pair_views: str = "same"             # "same" view for both clips, or two "distinct" views (PAIR_VIEWS)

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.frame_rate < 1 or self.mask_blocks < 0:
            raise ValueError(f"clip_len and frame_rate must be >= 1 and mask_blocks >= 0, got {self}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.pair_views not in PAIR_VIEWS:
            raise ValueError(f"pair_views must be one of {PAIR_VIEWS}, got {self.pair_views!r}")
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
    frame); index () long; view () long; starts (2,) long; seed () long (for the collate's random views).
    Stores are opened lazily per worker process by TokenStore itself.
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
        if self.sampling.pair_views == "distinct" and len(self.stores) > 1:  # two views: looks differ in the pair
            views = tuple(int(v) for v in rng.choice(len(self.stores), size=2, replace=False))
        else:
            view = int(rng.integers(len(self.stores))) if len(self.stores) > 1 else 0
            views = (view, view)
        stores = [self.stores[v] for v in views]
        starts = sample_starts(int(self.num_frames[k]), self.sampling, rng)
        codes = torch.from_numpy(np.stack([read_clip(st, k, s, self.clip, self.grid, self.special.pad)
                                           for st, s in zip(stores, starts)]))  # (2, T, h, w)
        mask = make_mask(self.sampling, codes.shape, self.iid_ratio, gen)
        codes_in, mask = apply_mask(codes, mask, self.special, bert_style=self.sampling.mask_rand_replace,
                                    generator=gen)
        sample = {"codes": codes, "codes_in": codes_in, "mask": mask, "index": torch.tensor(k),
                  "view": torch.tensor(views[0]), "starts": torch.tensor(starts),
                  "frame_valid": (codes != self.special.pad).any(dim=(-2, -1)),
                  "seed": torch.tensor(int(seq.generate_state(2, dtype=np.uint64)[1] >> 1))}
        if self.pixels:  # (2, T, S, S, 3) uint8: the model puts its [MASK] embedding on masked patches itself
            sample["frames"] = torch.from_numpy(np.stack([read_frames_clip(st, k, s, self.clip)
                                                          for st, s in zip(stores, starts)]))
        return sample


def make_mask(sampling: ClipSampling, shape: tuple[int, ...], iid_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """The sampling's mask kind over `shape` (..., T, h, w) -> bool."""
    if sampling.masking == "iid":  # the ablation baseline: same expected ratio, no spatio-temporal blocks
        return iid_mask(shape, iid_ratio, generator=gen)
    if sampling.masking == "tube":
        return tube_mask(shape, sampling.mask_blocks, generator=gen)
    return block_mask(shape, sampling.mask_blocks, generator=gen)


def token_valid(codes: torch.Tensor, frame_valid: torch.Tensor) -> torch.Tensor:
    """frame_valid (..., T) -> bool like codes (..., T, h, w): False on [PAD] frames ([PAD] fills whole frames)."""
    return frame_valid[..., None, None].expand(codes.shape)


def clip_facts(codes: torch.Tensor, mask: torch.Tensor, frame_valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """codes, mask (B, V, T, h, w), frame_valid (B, V, T) -> the samples' metric counts ((B,) long), made on the host
    so the trainer never reads them back from the device: masked, copy_correct (the copy baseline on these
    masks), valid, tokens."""
    valid = token_valid(codes, frame_valid)
    flat = (-1, *codes.shape[-3:])
    pred, found = copy_baseline_predictions(codes.reshape(flat), mask.reshape(flat), valid.reshape(flat))
    hit = ((pred == codes.reshape(flat)) & found & mask.reshape(flat)).reshape(codes.shape)
    per = tuple(range(1, codes.dim()))
    return {"masked": mask.sum(dim=per), "copy_correct": hit.sum(dim=per), "valid": valid.sum(dim=per),
            "tokens": torch.full((codes.shape[0],), valid[0].numel())}


@dataclass(frozen=True)
class PairOptions:
    """Background-robust options of the clip pair and the masked-prediction targets (see `pair_views`)."""

    fgbg_merge: float = 0.0          # probability that a video's second clip takes another video's background
    static_frac: float = 1.0         # a position is background when its most frequent code fills this share of frames
    bg_erase: float = 0.0            # share of the second clip's positions frozen to one of its frames (0: off)
    change_weight: float = 1.0       # MP loss weight of targets the copy baseline misses (1: a plain mean)
    reverse_negatives: bool = False  # each video's first clip, played backwards, as an extra InfoNCE negative

    def __post_init__(self) -> None:
        for key in ("fgbg_merge", "static_frac", "bg_erase"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {getattr(self, key)!r}")
        if self.change_weight <= 0:
            raise ValueError(f"change_weight must be > 0, got {self.change_weight!r}")

    @property
    def views(self) -> int:
        """Clips per video in a batch: the pair, plus the reversed first clip."""
        return 3 if self.reverse_negatives else 2


class PairCollate:
    """Stack pairs (codes/codes_in/mask (B, V, T, h, w), frames (B, V, T, S, S, 3) with pixel input, frame_valid
    (B, V, T), index/view (B,), starts (B, 2), counts (B,)); V = 2, or 3 with reversed negatives (view 2 = view
    0 backwards). Applies the PairOptions to the second clips, then adds what the model would otherwise find
    on the device: the flat masked positions of the (V*B, T, h, w) clips with their target codes and
    weights (`mask_index`, `mask_target`, `mask_weight`, padded to a multiple of `pad_to`), and `any_pad`
    (() bool: whether any clip has a [PAD] frame). Random choices come from the samples' seeds."""

    def __init__(self, options: PairOptions = PairOptions(), *, pad_to: int = MASK_PAD_TO, patch: int = 1) -> None:
        """patch: pixels per code side (pixel input: fg/bg merging and erasing move whole patches)."""
        self.options, self.pad_to, self.patch = options, pad_to, patch

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = collate(samples)
        op = self.options
        if op.fgbg_merge > 0 or op.bg_erase > 0:
            self._robust_second_clips(batch)
        if op.reverse_negatives:
            valid = batch["frame_valid"][:, 0]
            for key in ("codes", "codes_in", "mask", "frames", "frame_valid"):
                if key in batch:
                    x = batch[key]
                    rev = torch.stack([reverse_time(x[i, 0], valid[i]) for i in range(x.shape[0])])
                    batch[key] = torch.cat([x, rev[:, None]], dim=1)
        batch.update(clip_facts(batch["codes"], batch["mask"], batch["frame_valid"]))
        codes, mask = batch["codes"].flatten(0, 1), batch["mask"].flatten(0, 1)
        weight = None
        if op.change_weight != 1.0:
            valid = token_valid(codes, batch["frame_valid"].flatten(0, 1))
            weight = change_weights(codes, mask, valid, op.change_weight)
        masked = MaskedTargets.from_mask(mask, codes, pad_to=self.pad_to, weight=weight)
        batch["mask_index"], batch["mask_target"] = masked.index, masked.target
        if masked.weight is not None:
            batch["mask_weight"] = masked.weight
        batch["any_pad"] = ~batch["frame_valid"].all()
        return batch

    def _robust_second_clips(self, batch: dict[str, torch.Tensor]) -> None:
        """fg/bg merging and background erasing of each video's second clip (codes, its input, its frames)."""
        op, b = self.options, batch["codes"].shape[0]
        gen = torch.Generator().manual_seed(int(batch["seed"].sum()) % (2 ** 62))
        codes, valid = batch["codes"], batch["frame_valid"]
        new = codes[:, 1].clone()
        frames = batch.get("frames")
        new_frames = None if frames is None else frames[:, 1].clone()
        for i in range(b):
            if op.fgbg_merge > 0 and b > 1 and float(torch.rand((), generator=gen)) < op.fgbg_merge:
                j = (i + 1) % b  # the next video of the micro-batch lends its clip's background
                fg = foreground_positions(codes[i, 1], valid[i, 1], op.static_frac)
                new[i] = merge_foreground(codes[i, 1], codes[j, 1], fg, valid[i, 1], valid[j, 1])
                if new_frames is not None:
                    keep = (fg[None] | ~(valid[i, 1] & valid[j, 1])[:, None, None])  # (T, h, w): own pixels
                    keep = keep.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)[..., None]
                    new_frames[i] = torch.where(keep, frames[i, 1], frames[j, 1])
            t = int(valid[i, 1].sum())
            plan = erase_plan(t, tuple(new.shape[-2:]), op.bg_erase, gen) if op.bg_erase > 0 else None
            if plan is not None:
                frame, freeze = plan
                new[i] = freeze_positions(new[i], t, frame, freeze)
                if new_frames is not None:
                    px = freeze.repeat_interleave(self.patch, 0).repeat_interleave(self.patch, 1)  # (S, S)
                    new_frames[i] = freeze_positions(new_frames[i], t, frame, px)
        batch["codes"] = torch.stack([codes[:, 0], new], dim=1)
        # the masked positions keep their input ([MASK], or BERT's random / kept code); the others read the new codes
        batch["codes_in"] = torch.where(batch["mask"], batch["codes_in"], batch["codes"])
        if new_frames is not None:
            batch["frames"] = torch.stack([frames[:, 0], new_frames], dim=1)


#: the plain pair collate (no background-robust option): the valid split's, and the default
collate_pairs = PairCollate()


def collate_joint(samples: list[dict], pairs: PairCollate = collate_pairs) -> dict:
    """A joint micro-batch (BEVT stage 2): {"video": pairs(...), "image": image batch or None}."""
    videos, images = split_streams(samples)
    return {"stream_split": True, "video": pairs(videos) if videos else None,
            "image": collate_images(images, pad_to=MASK_PAD_TO) if images else None}


def collate_image_stream(samples: list[dict], *, pad_to: int) -> dict:
    """An image-only micro-batch (BEVT stage 1): {"image": image batch}."""
    return {"stream_split": True, "video": None, "image": collate_images(samples, pad_to=pad_to)}
