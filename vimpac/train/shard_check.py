"""The token stores' SHA-256 check, once per run: the shards are split over the ranks and the verdict shared.

Each rank used to hash every shard when it opened the stores (about 70 s per 50 GB per rank on
a 2-core Xeon, and shared storage read once per rank). Now the tasks open their stores with the
index checks only, and the loop calls `check_shards` as soon as the process group exists,
before any training step reads a clip: rank 0 splits the shards by size (`split_shards`), every
rank hashes its share, and all ranks gather what failed, so a corrupt shard stops every rank
with the same error naming it. The ranks wait for the slowest share inside the process group's
timeout (DeepSpeed's default: 30 min, about 1 TB of one rank's shards at 0.7 GB/s).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from video2token.store import StoreError, verify_file
from vimpac.data.stores import split_shards
from vimpac.train.errors import TrainError
from vimpac.train.runtime import DistInfo


def check_shards(paths: Sequence[str] | Mapping[str, str], dist: DistInfo, *,
                 check: Callable[[str], Any] = verify_file, log: Callable[[str], None] = print,
                 what: str = "token store check") -> float:
    """Check size and SHA-256 of every shard in `paths` once across the ranks (a collective) -> seconds taken.

    paths: shard files, or {shard: the flag its store came from} (`stores.shard_flags`), whose errors then
    start with that flag (else with `what`). check(path): raises StoreError naming the shard when it is
    corrupt (the default: the store's own `verify_file`; tests inject a counting one). Raises TrainError on
    every rank when any shard failed.
    """
    flags = dict(paths) if isinstance(paths, Mapping) else {}
    paths = list(paths)
    if not paths:
        return 0.0
    t0 = time.time()
    plan = [split_shards(paths, dist.world_size) if dist.is_main else None]
    if dist.world_size > 1:  # rank 0's plan, so that every rank agrees even if a size changes meanwhile
        torch.distributed.broadcast_object_list(plan, src=0)
    errors = []
    for path in plan[0][dist.rank]:
        try:
            check(path)
        except (StoreError, OSError) as e:
            errors.append(f"{flags[path]}: {e}" if path in flags else str(e))
    gathered = [errors]
    if dist.world_size > 1:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, errors)
    failed = [e for rank_errors in gathered for e in rank_errors]
    if failed:
        more = f" (and {len(failed) - 1} more shard(s): {'; '.join(failed[1:])})" if len(failed) > 1 else ""
        raise TrainError(f"{failed[0]}{more}" if flags else f"{what}: {failed[0]}{more}")
    seconds = time.time() - t0
    total = sum(_size(p) for p in paths)
    log(f"checked the SHA-256 of {len(paths)} shard(s), {total / 1e9:.2f} GB, split over {dist.world_size} "
        f"rank(s) in {seconds:.1f} s")
    return seconds


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
