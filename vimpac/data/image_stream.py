"""BEVT's image stream (Wang et al., CVPR 2022): masked image modelling on single frames, through the video
model's own weights, alone (stage 1) or interleaved with the video stream (stage 2, joint training).

An "image" is one stored frame of a store (every frame of every video of `--image-tokens`, e.g. the
training stores themselves, or a store extracted from a plain list of images: one 1-frame video per
image). Its sample is a T=1 clip: codes (1, h, w), codes_in with [MASK], mask, and with pixel input its
frame (1, S, S, 3) uint8. Masks are the block masks of one frame (BEiT-style rectangles).

Joint training keeps the one training loop: `JointBatchSampler` gives every video micro-batch the image
keys that go with it (`ratio` image micro-batches per video micro-batch, spread evenly: micro-step j
carries floor((j+1)R) - floor(jR) of them), so a micro-step holds both streams, the accumulation and
the resume position stay the video stream's, and the image order is a function of (seed, epoch,
micro-step): a resumed run sees the same images.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from video2token.store import TokenStore

from vimpac.data.clips import ClipSpec, collate, read_clip, read_frames_clip
from vimpac.data.masking import apply_mask, block_mask
from vimpac.data.sampler import EpochBatchSampler
from vimpac.data.stores import DataError, check_compatible_stores
from vimpac.model.masked import MaskedTargets
from vimpac.model.special_tokens import SpecialTokens

STREAMS = ("video", "image", "joint")
IMAGE = "image"  # the first element of an image key: (IMAGE, epoch, image_index)
_ONE = ClipSpec(clip_len=1)


class ImageFrames(Dataset):
    """Every stored frame of `stores` as one image. Key (epoch, j) or (IMAGE, epoch, j) -> a T=1 sample."""

    def __init__(self, stores: Sequence[TokenStore], *, mask_blocks: int, seed: int, pixels: bool,
                 what: str = "--image-tokens"):
        if not stores:
            raise DataError(f"{what}: no store given")
        self.stores = list(stores)
        self.vocab_size, self.grid = check_compatible_stores(self.stores[:1], what)
        for s in self.stores[1:]:  # image stores may hold other videos than each other (not views of one set)
            v, g = check_compatible_stores([s], what)
            if (v, g) != (self.vocab_size, self.grid):
                raise DataError(f"{what}: {s.path} holds {v} codes on a {g} map, {self.stores[0].path} "
                                f"{self.vocab_size} codes on a {self.grid} map")
        if pixels:
            for s in self.stores:
                if not s.has_frames:
                    raise DataError(f"{what}: {s.path} holds codes only; the pixel image stream needs the frames: "
                                    f"extract it with --keep-frames")
        self.special = SpecialTokens.from_vocab_size(self.vocab_size)
        self.mask_blocks, self.seed, self.pixels = int(mask_blocks), int(seed), pixels
        counts = [np.asarray(s.num_frames, dtype=np.int64) for s in self.stores]
        # image j -> (store, video, frame): frames of all videos, store after store
        self._store_of = np.concatenate([np.full(c.sum(), i, dtype=np.int64) for i, c in enumerate(counts)])
        self._video_of = np.concatenate([np.repeat(np.arange(len(c)), c) for c in counts])
        self._frame_of = np.concatenate([np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c) for c in counts])
        if len(self._store_of) == 0:
            raise DataError(f"{what}: the stores hold no frame")

    def __len__(self) -> int:
        return len(self._store_of)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        if isinstance(key, (int, np.integer)):
            epoch, j = 0, int(key)
        else:
            epoch, j = (key[1], key[2]) if key[0] == IMAGE else key
        j = int(j)
        if not 0 <= j < len(self):
            raise IndexError(f"image index {j} outside [0, {len(self)})")
        store, k, f = self.stores[self._store_of[j]], int(self._video_of[j]), int(self._frame_of[j])
        seq = np.random.SeedSequence([self.seed, 0x1A6E, int(epoch), j])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))
        codes = torch.from_numpy(read_clip(store, k, f, _ONE, self.grid, self.special.pad))[None]  # (1, 1, h, w)
        mask = block_mask(codes.shape, self.mask_blocks, generator=gen)
        codes_in, mask = apply_mask(codes, mask, self.special, generator=gen)
        sample = {"codes": codes[0], "codes_in": codes_in[0], "mask": mask[0], "index": torch.tensor(j)}
        if self.pixels:
            sample["frames"] = torch.from_numpy(read_frames_clip(store, k, f, _ONE))  # (1, S, S, 3)
        return sample


def collate_images(samples: list[dict[str, torch.Tensor]], *, pad_to: int) -> dict[str, torch.Tensor]:
    """Stack image samples (codes/codes_in/mask (B, 1, h, w), frames (B, 1, S, S, 3)) with their MaskedTargets."""
    batch = collate(samples)
    masked = MaskedTargets.from_mask(batch["mask"], batch["codes"], pad_to=pad_to)
    batch["mask_index"], batch["mask_target"] = masked.index, masked.target
    batch["masked"] = masked.target.ne(-100).sum()
    return batch


class JointBatchSampler:
    """Video micro-batches of `videos` (an EpochBatchSampler), each extended by its share of image keys.

    Image micro-batch q of an epoch (global, all ranks) takes positions [q*B*W, (q+1)*B*W) of the epoch's
    image sequence (permutations of all images seeded by (seed, epoch, cycle), one after another); rank r
    takes its r-th slice of B. Micro-step j of the epoch carries image micro-batches
    [floor(j*ratio), floor((j+1)*ratio)).
    """

    def __init__(self, videos: EpochBatchSampler, *, num_images: int, ratio: float, image_batch: int, seed: int):
        if ratio <= 0:
            raise DataError(f"--image-ratio must be > 0 for joint training, got {ratio}")
        if image_batch < 1:
            raise DataError(f"image micro-batch must be >= 1, got {image_batch}")
        self.videos, self.num_images, self.ratio = videos, int(num_images), float(ratio)
        self.image_batch, self.seed = int(image_batch), int(seed)

    def __getattr__(self, name: str):  # position, order, micro_steps_per_epoch ... are the video stream's
        return getattr(self.videos, name)

    def set_position(self, epoch: int, micro_step: int = 0) -> None:
        self.videos.set_position(epoch, micro_step)

    def __len__(self) -> int:
        return len(self.videos)

    def image_batches(self, micro_step: int) -> range:
        return range(int(np.floor(micro_step * self.ratio)), int(np.floor((micro_step + 1) * self.ratio)))

    def _image_keys(self, epoch: int, q: int) -> list[tuple[str, int, int]]:
        g = self.image_batch * self.videos.world_size
        lo = q * g + self.videos.rank * self.image_batch
        out = []
        for pos in range(lo, lo + self.image_batch):
            cycle, i = divmod(pos, self.num_images)
            perm = np.random.default_rng(np.random.SeedSequence([self.seed, 0x1A6E, int(epoch), cycle])).permutation(
                self.num_images)
            out.append((IMAGE, int(epoch), int(perm[i])))
        return out

    def __iter__(self) -> Iterator[list[tuple]]:
        epoch = self.videos.epoch
        for j, keys in enumerate(self.videos, start=self.videos.start):
            images = [k for q in self.image_batches(j) for k in self._image_keys(epoch, q)]
            yield list(keys) + images


class JointClips(Dataset):
    """Video keys (epoch, k) -> the video dataset's sample; image keys (IMAGE, epoch, j) -> an image sample."""

    def __init__(self, videos: Dataset, images: ImageFrames):
        self.videos, self.images = videos, images

    def __len__(self) -> int:
        return len(self.videos)  # the epoch is the video stream's

    def __getitem__(self, key):
        if isinstance(key, tuple) and key and key[0] == IMAGE:
            return {"stream": IMAGE, **self.images[key]}
        return {"stream": "video", **self.videos[key]}


def split_streams(samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(video samples, image samples) of a joint micro-batch, without their stream tags."""
    videos = [{k: v for k, v in s.items() if k != "stream"} for s in samples if s["stream"] == "video"]
    images = [{k: v for k, v in s.items() if k != "stream"} for s in samples if s["stream"] == IMAGE]
    return videos, images
