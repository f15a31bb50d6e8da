"""Test hooks of the training loop, injected by the caller (never read from the environment)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class LoopHooks:
    """Callbacks the loop calls at fixed points; all optional.

    after_step(step): after every optimizer step (e.g. sleep, so a test can kill -9 mid-epoch);
    loss_at_boundary(step, loss) -> loss: the loss of the last micro-step of optimizer step `step`
        (e.g. NaN, to exercise the non-finite guard);
    before_checkpoint_swap(temp_dir): once a checkpoint's files are written, before its directory swap;
    before_forward(step, model): before each micro-batch's forward of optimizer step `step` (e.g. make an
        activation Inf through a forward hook, to check what a skipped step restores);
    check_shard(path): replaces `video2token.store.verify_file` in the start-up check of the stores' shards
        (e.g. count which rank hashes which shard); raises StoreError for a corrupt one.
    """

    after_step: Callable[[int], None] | None = None
    loss_at_boundary: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    before_checkpoint_swap: Callable[[str], None] | None = None
    before_forward: Callable[[int, nn.Module], None] | None = None
    check_shard: Callable[[str], Any] | None = None
