"""Copy baseline for masked video-token prediction: predict a masked token by copying it in time.

Video tokens are highly redundant along time (VIMPAC, Tan et al. 2021, section 4.4: i.i.d.
masking is "trivially solved by copying neighbours"), so each masked token is predicted as
the token at the same (i, j) in the nearest frame where that position is neither masked nor
[PAD]. A model's mask accuracy means something only next to this number on the same masks.
"""
from __future__ import annotations

import torch


def copy_baseline_predictions(codes: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict every position from the nearest usable frame at the same spatial position.

    codes (B, T, h, w) long targets; mask (B, T, h, w) bool, True = hidden from the model;
    valid (B, T, h, w) bool, False at [PAD] (default: all valid). Returns (pred (B, T, h, w)
    long, found (B, T, h, w) bool); `found` is False where the column has no usable frame
    (such positions count as wrong). Ties between an earlier and a later frame go to the earlier.
    """
    if codes.shape != mask.shape or codes.dim() != 4:
        raise ValueError(f"codes and mask must both be (B, T, h, w); got {tuple(codes.shape)} and {tuple(mask.shape)}")
    usable = ~mask if valid is None else (~mask & valid)  # (B, T, h, w)
    t = codes.shape[1]
    idx = torch.arange(t, device=codes.device).view(1, t, 1, 1)
    # Index of the nearest usable frame at or before t (-1: none), by a running max along T.
    prev = torch.where(usable, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    # ... and at or after t (T: none), by a running max over the time-reversed sequence.
    rev_idx = torch.where(usable, (t - 1) - idx, torch.full_like(idx, -1)).flip(1).cummax(dim=1).values.flip(1)
    nxt = torch.where(rev_idx >= 0, (t - 1) - rev_idx, torch.full_like(rev_idx, t))
    has_prev, has_next = prev >= 0, nxt < t
    use_prev = has_prev & (~has_next | ((idx - prev) <= (nxt - idx)))
    src = torch.where(use_prev, prev, nxt).clamp(0, t - 1)  # (B, T, h, w) frame to copy from
    pred = codes.gather(1, src)
    return pred, has_prev | has_next


def copy_baseline_accuracy(codes: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(number of masked positions the copy baseline gets right, number of masked positions), both () long.

    Counts rather than a ratio, so callers can sum them over micro-batches and ranks.
    """
    pred, found = copy_baseline_predictions(codes, mask, valid)
    target_mask = mask if valid is None else (mask & valid)
    correct = (pred == codes) & found & target_mask
    return correct.sum(), target_mask.sum()
