"""Test hooks of the training loop, injected by the caller (never read from the environment)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LoopHooks:
    """Callbacks the loop calls at fixed points; all optional.

    after_step(step): after every optimizer step (e.g. sleep, so a test can kill -9 mid-epoch);
    loss_at_boundary(step, loss) -> loss: the loss of the last micro-step of optimizer step `step`
        (e.g. NaN, to exercise the non-finite guard);
    before_checkpoint_swap(temp_dir): once a checkpoint's files are written, before its directory swap.
    """

    after_step: Callable[[int], None] | None = None
    loss_at_boundary: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    before_checkpoint_swap: Callable[[str], None] | None = None
