"""Token stores as training data: open them with clear errors, check that views of a split agree, and plan
the SHA-256 check of their shards over the ranks of a run (`vimpac.train.shard_check` runs it)."""
from __future__ import annotations

import os
from typing import Sequence

from video2token.store import StoreError, TokenStore


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


def open_stores(paths: Sequence[str], what: str, *, verify: bool = True) -> list[TokenStore]:
    """Open every store, an unreadable one named with the flag it came from.

    verify: each shard's SHA-256 against its integrity record (False: trusted storage, or the
    check comes later: `shard_files` + `vimpac.train.shard_check`; the index arrays are checked
    either way)."""
    stores = []
    for path in paths:
        try:
            stores.append(TokenStore(path, verify=verify))
        except StoreError as e:
            raise DataError(f"{what}: {e}") from None
    return stores


def check_frame_size(stores: Sequence[TokenStore], frame_size: int | None, what: str) -> None:
    """--frame-size, when given, must be the crop size the stores were extracted at."""
    if frame_size is None:
        return
    for s in stores:
        crop = s.meta.get("crop_size")
        if crop is not None and int(crop) != frame_size:
            raise DataError(f"{what}: --frame-size {frame_size} but {s.path} was extracted at crop size {crop}")


def shard_files(stores: Sequence[TokenStore]) -> list[str]:
    """Every shard file of `stores`, each once, in order (a store given twice is checked once)."""
    return list(dict.fromkeys(p for s in stores for p in s.shard_paths))


def shard_flags(groups: Sequence[tuple[Sequence[TokenStore], str]]) -> dict[str, str]:
    """{shard path: the flag its store was given with} over (stores, flag) groups, each shard once (its first flag),
    so a failed check names the flag as the index checks do."""
    out: dict[str, str] = {}
    for stores, flag in groups:
        for path in shard_files(stores):
            out.setdefault(path, flag)
    return out


def split_shards(paths: Sequence[str], world_size: int) -> list[list[str]]:
    """The shards each rank checks: largest first, each to the rank with the fewest bytes so far (ties: the
    lower rank), so every shard is checked exactly once and the slowest rank reads about 1/world_size of the
    bytes. A shard that cannot be stat'ed counts 0 bytes (its check says why)."""
    def size(p: str) -> int:
        try:
            return os.path.getsize(p)
        except OSError:
            return 0

    shares: list[list[str]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for nbytes, p in sorted(((size(p), p) for p in paths), key=lambda x: (-x[0], x[1])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        shares[rank].append(p)
        load[rank] += nbytes
    return shares
