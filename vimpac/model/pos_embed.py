"""Positional-embedding resampling at load time (VIMPAC fine-tuning on new shapes; timm-style checkpoint surgery).

Positional tables keep their axes: `pos_t` (T, D), `pos_h` (h, D), `pos_w` (w, D), `pos_hw` (h, w, D),
`pos_thw` (T, h, w, D). `resample_pos_embed` is a pure tensor function (linear interpolation
per axis, identity when the size matches); `adapt_pos_embeds` applies it to a state dict
for a target model, used by fine-tuning with `--different-shape` and by stage-2
pre-training (128 -> 256 px, i.e. a 16x16 -> 32x32 code map).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

#: name of a positional table (last component of its state-dict key) -> its number of position axes
POS_TABLES = {"pos_t": 1, "pos_h": 1, "pos_w": 1, "pos_hw": 2, "pos_thw": 3}
_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


class PosEmbedShapeError(ValueError):
    """A checkpoint's positional table does not match the model and resampling was not allowed."""


def resample_pos_embed(table: torch.Tensor, new_size: Sequence[int]) -> torch.Tensor:
    """table (*old_size, D) -> (*new_size, D) by (bi/tri)linear interpolation; the same tensor when sizes match."""
    new_size = tuple(int(s) for s in new_size)
    axes = table.dim() - 1
    if axes not in _MODES or len(new_size) != axes or min(new_size, default=0) < 1:
        raise ValueError(f"cannot resample a table of shape {tuple(table.shape)} to positions {new_size}: "
                         f"expected 1-3 position axes plus a channel axis and one positive size per axis")
    if tuple(table.shape[:-1]) == new_size:
        return table
    x = table.movedim(-1, 0)[None].float()  # (1, D, *old_size)
    # align_corners=False treats each position as a cell centre, the usual choice (timm, ViT).
    x = F.interpolate(x, size=new_size, mode=_MODES[axes], align_corners=False)
    return x[0].movedim(0, -1).to(table.dtype).contiguous()  # (*new_size, D)


def adapt_pos_embeds(state_dict: Mapping[str, torch.Tensor], target_shapes: Mapping[str, torch.Size | Sequence[int]],
                     *, different_shape: bool) -> dict[str, torch.Tensor]:
    """Copy of `state_dict` with every positional table resampled to the shape in `target_shapes`.

    `target_shapes` maps keys to shapes, e.g. `{k: v.shape for k, v in model.state_dict().items()}`.
    A mismatched table raises PosEmbedShapeError unless `different_shape` (the `--different-shape` flag).
    """
    out = dict(state_dict)
    for key, table in state_dict.items():
        name = key.rsplit(".", 1)[-1]
        if name not in POS_TABLES or key not in target_shapes:
            continue
        want = tuple(target_shapes[key])
        if tuple(table.shape) == want:
            continue
        if table.shape[-1] != want[-1] or table.dim() != len(want):
            raise PosEmbedShapeError(f"positional table {key!r}: checkpoint shape {tuple(table.shape)} vs model "
                                     f"shape {want}; the channel width differs, which no resampling can fix")
        if not different_shape:
            raise PosEmbedShapeError(f"positional table {key!r}: checkpoint shape {tuple(table.shape)} vs model "
                                     f"shape {want}; pass --different-shape to resample it by linear interpolation")
        out[key] = resample_pos_embed(table, want[:-1])
    return out
