"""Synthetic token stores for the pre-training tests: random or structured (static background + moving block) codes."""
from __future__ import annotations

import numpy as np

from video2token.store import ShardWriter, VideoRecord


def store_meta(vocab_size: int, crop_size: int, *, name: str = "synthetic", hflip: bool = False,
               crop_type: str = "center") -> dict:
    return {"tokenizer": {"name": name, "vocab_size": vocab_size, "downsample": 8}, "crop_size": crop_size,
            "crop_type": crop_type, "frame_shorter_side": crop_size, "fps": 2.0, "hflip": hflip,
            "video_root": "/nonexistent"}


def structured_codes(rng: np.random.Generator, num_frames: int, grid: int, vocab_size: int) -> np.ndarray:
    """A static random background with a 2x2 object of one code moving one cell per frame (T, h, w) int16.

    Copying from the nearest frame gets the background right but not the object; the object's
    motion is predictable from the other frames, so a model can beat the copy baseline.
    """
    bg = rng.integers(0, vocab_size - 1, size=(grid, grid))
    obj = vocab_size - 1
    codes = np.repeat(bg[None], num_frames, axis=0)
    y, x = rng.integers(0, grid - 1, size=2)
    dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][int(rng.integers(4))]
    for t in range(num_frames):
        yy, xx = (y + dy * t) % (grid - 1), (x + dx * t) % (grid - 1)
        codes[t, yy:yy + 2, xx:xx + 2] = obj
    return codes.astype(np.int16)


def make_store(path: str, *, num_videos: int = 16, frames: tuple[int, int] = (6, 12), grid: int = 4,
               vocab_size: int = 32, seed: int = 0, kind: str = "structured", name: str = "synthetic",
               hflip: bool = False, shards: int = 1, label_names: list[str] | None = None) -> str:
    """Write a token store of `num_videos` videos with frame counts in [frames[0], frames[1]], in `shards`
    shards (contiguous blocks of the videos, as extraction makes them); labels i % 3, named by `label_names`."""
    rng = np.random.default_rng(seed)
    meta = store_meta(vocab_size, grid * 8, name=name, hflip=hflip)
    if label_names is not None:
        meta["label_names"] = list(label_names)
    writers = [ShardWriter(path, meta, shard_id=k, num_shards=shards) for k in range(shards)]
    for i in range(num_videos):
        w = writers[i * shards // num_videos]
        t = int(rng.integers(frames[0], frames[1] + 1))
        if kind == "structured":
            codes = structured_codes(rng, t, grid, vocab_size)
        elif kind == "random":
            codes = rng.integers(0, vocab_size, size=(t, grid, grid)).astype(np.int16)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        w.add(VideoRecord(source_index=i, video_id=f"vid_{i:04d}.mp4", label=i % 3, codes=codes,
                          timestamps=np.arange(t, dtype=np.float64) / 2.0))
    for w in writers:
        w.finalize()
    return path


def make_prototype_store(path: str, *, num_videos: int, prototypes: int = 4, frames: int = 6, grid: int = 4,
                         vocab_size: int = 32, prototype_seed: int = 0, label_names: list[str] | None = None) -> str:
    """Videos that are exact copies of `prototypes` random videos, label = prototype id (video i: prototype i % P).

    Stores made with the same `prototype_seed` share the prototypes: any model that maps equal inputs to
    equal features lets a 1-nearest-neighbour vote find every label. label_names: the store's label map.
    """
    protos = np.random.default_rng(prototype_seed).integers(0, vocab_size, size=(prototypes, frames, grid, grid))
    meta = store_meta(vocab_size, grid * 8)
    if label_names is not None:
        meta["label_names"] = list(label_names)
    w = ShardWriter(path, meta, shard_id=0, num_shards=1)
    for i in range(num_videos):
        w.add(VideoRecord(source_index=i, video_id=f"vid_{i:04d}.mp4", label=i % prototypes,
                          codes=protos[i % prototypes].astype(np.int16),
                          timestamps=np.arange(frames, dtype=np.float64) / 2.0))
    w.finalize()
    return path


def pixel_code(patches: np.ndarray, vocab_size: int) -> np.ndarray:
    """A 'tokenizer' whose code is a known function of a patch's pixels: its mean red value, quantised.

    patches (..., p, p, 3) uint8 -> codes (...) in [0, vocab_size)."""
    return (patches[..., 0].astype(np.int64).mean(axis=(-2, -1)) * vocab_size // 256).astype(np.int64)


def make_pixel_store(path: str, *, num_videos: int = 8, frames: tuple[int, int] = (4, 8), grid: int = 4,
                     patch: int = 4, vocab_size: int = 16, seed: int = 0, num_classes: int = 2) -> str:
    """A store with frames (extracted as with --keep-frames) whose codes are `pixel_code` of each patch:
    random flat-coloured patches, a bright patch moving one column per frame."""
    from video2token.store import frames_meta

    rng = np.random.default_rng(seed)
    side = grid * patch
    meta = store_meta(vocab_size, side) | {"frames": frames_meta(side, "none")}
    meta["tokenizer"]["downsample"] = patch
    w = ShardWriter(path, meta, shard_id=0, num_shards=1)
    for i in range(num_videos):
        t = int(rng.integers(frames[0], frames[1] + 1))
        colours = rng.integers(0, 256, size=(grid, grid, 3))
        px = np.repeat(np.repeat(colours, patch, 0), patch, 1)[None].repeat(t, 0).astype(np.uint8)  # (T, S, S, 3)
        for f in range(t):
            col = f % grid
            px[f, :patch, col * patch:(col + 1) * patch] = 250
        cells = px.reshape(t, grid, patch, grid, patch, 3).transpose(0, 1, 3, 2, 4, 5)
        codes = pixel_code(cells, vocab_size).astype(np.int16)  # (T, grid, grid)
        w.add(VideoRecord(source_index=i, video_id=f"v{i:03d}.mp4", label=i % num_classes, codes=codes,
                          timestamps=np.arange(t, dtype=np.float64) / 2.0, frames=px))
    w.finalize()
    return path
