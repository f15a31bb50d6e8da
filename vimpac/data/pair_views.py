"""Background-robust views for pre-training on codes: the contrastive pair and the masked-prediction targets.

When every video has its own background and colours, two clips of one video are matched by their
looks, and masked prediction is solved by copying a token from the next frame. These are the levers
(each a pure function on one sample's codes, applied by the pair collate; flags in vimpac.pretrain):

- `foreground_positions` + `merge_foreground`: FAME-style foreground/background merging (Ding et al.,
  2022) on codes. A position whose code stays the same through a clip is background; the positions
  that change carry the moving object. The second clip of a video keeps its changing tokens in
  place and takes another video's clip everywhere else, so the positive pair no longer shares a
  background.
- `erase_plan` + `freeze_positions`: Background Erasing (Wang et al., CVPR 2021) at token level. BE blends one static
  frame into every frame; on codes, a random share of positions is frozen to the tokens of one
  frame of the clip in every frame: static content changes, the motion elsewhere stays.
- `change_weights`: masked-prediction targets weighted by change: a target the copy baseline gets
  wrong (its code differs from the nearest visible frame's) weighs `weight`, the others 1.
- `reverse_time`: a clip played backwards. As an extra negative of its own clip it can only be told
  apart by the direction of motion, which appearance cannot give away.
"""
from __future__ import annotations

import torch

from vimpac.eval.copy_baseline import copy_baseline_predictions


def foreground_positions(codes: torch.Tensor, valid: torch.Tensor, static_frac: float = 1.0) -> torch.Tensor:
    """codes (T, h, w), valid (T,) frames -> fg (h, w) bool: positions whose most frequent code over the valid
    frames fills less than `static_frac` of them (1.0: any change at all makes a position foreground)."""
    t = int(valid.sum())
    if t <= 1:
        return torch.zeros(codes.shape[1:], dtype=torch.bool)
    c = codes[valid]  # (t, h, w)
    # the mode's count per position: compare every frame with every frame (t is a clip length: small)
    same = (c[:, None] == c[None]).sum(dim=1)  # (t, h, w): frames equal to frame i at each position
    return same.max(dim=0).values < static_frac * t - 1e-9


def merge_foreground(codes: torch.Tensor, other: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor,
                     other_valid: torch.Tensor) -> torch.Tensor:
    """codes, other (T, h, w), fg (h, w), valid / other_valid (T,) -> `codes` at fg positions, `other` elsewhere;
    frames where `other` is [PAD] (or `codes` is) keep `codes` whole (no partly-[PAD] frame is made)."""
    use_other = (~fg)[None] & (valid & other_valid)[:, None, None]
    return torch.where(use_other, other, codes)


def erase_plan(num_valid: int, hw: tuple[int, int], frac: float, generator: torch.Generator
               ) -> tuple[int, torch.Tensor] | None:
    """Background erasing of a clip with `num_valid` frames: (the frame whose tokens are frozen in, freeze (h, w)
    bool: a random `frac` of the positions); None when there is nothing to do."""
    if num_valid <= 1 or frac <= 0:
        return None
    frame = int(torch.randint(0, num_valid, (1,), generator=generator))
    return frame, torch.rand(hw, generator=generator) < frac


def freeze_positions(x: torch.Tensor, num_valid: int, frame: int, freeze: torch.Tensor) -> torch.Tensor:
    """x (T, h, w, ...) -> a copy whose valid frames show frame `frame` at the `freeze` (h, w) positions."""
    f = freeze.reshape(1, *freeze.shape, *([1] * (x.dim() - 3)))
    out = x.clone()
    out[:num_valid] = torch.where(f, x[frame][None], x[:num_valid])
    return out


def change_weights(codes: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, weight: float) -> torch.Tensor:
    """codes, mask, valid (N, T, h, w) -> float weights (N, T, h, w): `weight` where the copy baseline misses, else 1."""
    pred, found = copy_baseline_predictions(codes, mask, valid)
    missed = ~((pred == codes) & found)
    return torch.where(missed, torch.full(codes.shape, float(weight)), torch.ones(codes.shape))


def reverse_time(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (T, ...) with valid (T,) frames first -> the valid frames in reverse order, [PAD] frames kept at the end."""
    t = int(valid.sum())
    out = x.clone()
    out[:t] = x[:t].flip(0)
    return out
