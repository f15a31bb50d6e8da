"""Masks for mask-then-predict pre-training: VIMPAC block masking (Tan et al., 2021, sec. 3.1), BEVT tube
masking (Wang et al., 2022: one spatial mask through every frame) and i.i.d.

Contract of `block_mask(shape, num_blocks, generator)`: for `shape = (B, T, h, w)` it returns a bool
mask of that shape, the union of `num_blocks` cuboids per clip; each cuboid's extent is uniform
in 1..max(1, floor(2T/3)) x 1..max(1, floor(h/2)) x 1..max(1, floor(w/2)) and its position uniform
where it fits. Vectorised over the batch; the same generator state gives the same mask.
[PAD] is handled by `apply_mask`, which knows the codes: [PAD] positions are never predicted.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vimpac.model.special_tokens import SpecialTokens


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"mask shape must be (B, T, h, w) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def _max_extents(t: int, h: int, w: int) -> tuple[int, int, int]:
    return max(1, (2 * t) // 3), max(1, h // 2), max(1, w // 2)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def block_mask(shape: Sequence[int], num_blocks: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Union of `num_blocks` random cuboids per clip -> bool (B, T, h, w). See the module docstring."""
    b, t, h, w = _check_shape(shape)
    if not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
    gdev = _gen_device(generator)
    sizes = torch.tensor([t, h, w], device=gdev)
    max_len = torch.tensor(_max_extents(t, h, w), device=gdev)
    # lengths uniform in 1..max_len, starts uniform in 0..size-len (both per axis, per block)
    u = torch.rand(b, num_blocks, 3, generator=generator, device=gdev)
    lengths = 1 + (u * max_len).long()                       # (B, N, 3)
    u = torch.rand(b, num_blocks, 3, generator=generator, device=gdev)
    starts = (u * (sizes - lengths + 1)).long()              # (B, N, 3)
    ends = starts + lengths
    inside = []
    for axis, n in enumerate((t, h, w)):
        pos = torch.arange(n, device=gdev)
        inside.append((pos >= starts[..., axis, None]) & (pos < ends[..., axis, None]))  # (B, N, n)
    cubes = inside[0][..., :, None, None] & inside[1][..., None, :, None] & inside[2][..., None, None, :]
    mask = cubes.any(dim=1)  # (B, T, h, w)
    return mask.to(device) if device is not None else mask


def tube_mask(shape: Sequence[int], num_blocks: int, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Union of `num_blocks` random rectangles per clip, each through every frame -> bool (B, T, h, w).

    BEVT's tube masking: a masked patch is masked in all frames, so it cannot be copied from a neighbouring
    frame. Rectangle extents and positions are drawn as `block_mask` draws its spatial ones.
    """
    b, t, h, w = _check_shape(shape)
    return block_mask((b, 1, h, w), num_blocks, generator=generator, device=device).expand(b, t, h, w).contiguous()


def iid_mask(shape: Sequence[int], ratio: float, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Each position masked independently with probability `ratio` -> bool (B, T, h, w) (the baseline)."""
    shape = _check_shape(shape)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio!r}")
    mask = torch.rand(shape, generator=generator, device=_gen_device(generator)) < ratio
    return mask.to(device) if device is not None else mask


def _axis_cover_prob(n: int, max_len: int) -> torch.Tensor:
    """P(position i is inside one random segment) for i in 0..n-1 -> (n,) float64."""
    p = torch.zeros(n, dtype=torch.float64)
    pos = torch.arange(n)
    for length in range(1, max_len + 1):
        starts = n - length + 1
        lo = (pos - length + 1).clamp_min(0)
        hi = pos.clamp_max(n - length)
        p += (hi - lo + 1).clamp_min(0).double() / starts
    return p / max_len


def expected_block_mask_ratio(shape: Sequence[int], num_blocks: int) -> float:
    """Exact expected masked fraction of `block_mask` for shape (T, h, w) or (B, T, h, w).

    One cuboid covers a position with probability p_T(t) p_H(i) p_W(j); blocks are independent,
    so the union misses it with probability (1 - p)^N.
    """
    shape = tuple(shape)[-3:]
    if len(shape) != 3:
        raise ValueError(f"shape must end in (T, h, w), got {tuple(shape)}")
    t, h, w = shape
    mt, mh, mw = _max_extents(t, h, w)
    p = (_axis_cover_prob(t, mt)[:, None, None] * _axis_cover_prob(h, mh)[None, :, None]
         * _axis_cover_prob(w, mw)[None, None, :])
    return float((1 - (1 - p) ** num_blocks).mean())


def apply_mask(codes: torch.Tensor, mask: torch.Tensor, special: SpecialTokens, *, bert_style: bool = False,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Put [MASK] at masked positions -> (codes_in, mask) with [PAD] positions removed from the mask.

    bert_style: of the masked positions 80% get [MASK], 10% a random code, 10% keep their code
    (all of them are still predicted).
    """
    if codes.shape != mask.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool with the shape of codes {tuple(codes.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    mask = mask & (codes != special.pad)  # [PAD] is never predicted
    replace = mask
    codes_in = codes.clone()
    if bert_style:
        gdev = _gen_device(generator)
        u = torch.rand(codes.shape, generator=generator, device=gdev).to(codes.device)
        rand_codes = torch.randint(0, special.vocab_size, codes.shape, generator=generator, device=gdev).to(codes.device)
        replace = mask & (u < 0.8)
        randomize = mask & (u >= 0.8) & (u < 0.9)
        codes_in = torch.where(randomize, rand_codes, codes_in)
    codes_in[replace] = special.mask
    return codes_in, mask
