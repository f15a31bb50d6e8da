"""Which positions the masked-token loss reads, decided by the data loader (MAE-style: the mask is data).

`MaskedTargets.from_mask(mask, targets)` turns a bool mask (B, T, h, w) and the true codes into flat
indices of the masked positions in (B * T*h*w) token order and their target codes. Made on the host
by the loader's collate, it saves the model a boolean indexing (a device-to-host sync that waits for
the whole forward) per micro-batch. `pad_to` rounds M up with ignored entries (index 0, target
IGNORE_INDEX, weight 0), so batches with slightly different mask sizes reuse one shape.
`weight` (optional, (M,) float) weights each target in the loss (e.g. by how much it changes in time).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # torch's cross-entropy default: padded entries contribute nothing


@dataclass
class MaskedTargets:
    index: torch.Tensor                 # (M,) long, flat position in (B * N), N = T*h*w
    target: torch.Tensor                # (M,) long codes; IGNORE_INDEX at padding entries
    weight: torch.Tensor | None = None  # (M,) float loss weights (None: all 1); 0 at padding entries

    @classmethod
    def from_mask(cls, mask: torch.Tensor, targets: torch.Tensor, *, pad_to: int = 1,
                  weight: torch.Tensor | None = None) -> "MaskedTargets":
        """mask (B, T, h, w) bool, targets (B, T, h, w) codes, weight (B, T, h, w) float or None."""
        if mask.shape != targets.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool with the shape of targets {tuple(targets.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if weight is not None and weight.shape != mask.shape:
            raise ValueError(f"weight must have the mask's shape {tuple(mask.shape)}, got {tuple(weight.shape)}")
        index = mask.reshape(-1).nonzero().squeeze(1)
        target = targets.reshape(-1)[index]
        w = None if weight is None else weight.reshape(-1)[index].float()
        m = index.numel()
        padded = -(-m // pad_to) * pad_to if pad_to > 1 else m
        if padded > m:
            extra = padded - m
            index = torch.cat([index, index.new_zeros(extra)])
            target = torch.cat([target, target.new_full((extra,), IGNORE_INDEX)])
            if w is not None:
                w = torch.cat([w, w.new_zeros(extra)])
        return cls(index=index, target=target, weight=w)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskedTargets":
        return MaskedTargets(index=self.index.to(device, non_blocking=non_blocking),
                             target=self.target.to(device, non_blocking=non_blocking),
                             weight=None if self.weight is None else self.weight.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.index.numel()
