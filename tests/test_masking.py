"""Tests for vimpac.data.masking: the block-mask contract (extents, ratio, determinism), [PAD] handling, BERT 80/10/10."""
from __future__ import annotations

import pytest
import torch

from vimpac.data.masking import apply_mask, block_mask, expected_block_mask_ratio, iid_mask
from vimpac.model.special_tokens import SpecialTokens


def test_block_mask_shape_dtype_and_determinism():
    shape = (8, 5, 16, 16)
    a = block_mask(shape, 5, torch.Generator().manual_seed(7))
    b = block_mask(shape, 5, torch.Generator().manual_seed(7))
    c = block_mask(shape, 5, torch.Generator().manual_seed(8))
    assert a.shape == shape and a.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)
    # clips of a batch get different masks (vectorised sampling, not one mask broadcast)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 8))
    assert not block_mask(shape, 0).any()


def test_single_block_is_a_cuboid_within_limits():
    t, h, w = 5, 16, 12
    masks = block_mask((2000, t, h, w), 1, torch.Generator().manual_seed(0))
    proj = [masks.any(dim=(2, 3)), masks.any(dim=(1, 3)), masks.any(dim=(1, 2))]  # (B, T), (B, h), (B, w)
    ext = torch.stack([p.sum(1) for p in proj], dim=1)  # (B, 3) extents
    for p, e in zip(proj, ext.unbind(1)):
        first = p.float().argmax(1)
        last = p.shape[1] - 1 - p.flip(1).float().argmax(1)
        assert torch.equal(last - first + 1, e)  # each projection is one contiguous run
    assert torch.equal(masks.sum(dim=(1, 2, 3)), ext.prod(1))  # and the mask fills its bounding box
    assert ext.min(0).values.tolist() == [1, 1, 1]
    assert ext.max(0).values.tolist() == [2 * t // 3, h // 2, w // 2]
    # positions are uniform where the block fits: every frame gets covered sometimes, and the
    # first and last frames about equally often
    per_t = masks.any(dim=(2, 3)).float().mean(0)
    assert per_t.min() > 0.1 and abs(per_t[0] - per_t[-1]) < 0.05


@pytest.mark.parametrize("blocks,paper", [(4, 0.12), (5, 0.145), (6, 0.17), (7, 0.194), (8, 0.217)])
def test_mask_ratio_matches_paper_and_expectation(blocks, paper):
    expected = expected_block_mask_ratio((5, 16, 16), blocks)
    assert abs(expected - paper) < 0.003
    got = block_mask((1000, 5, 16, 16), blocks, torch.Generator().manual_seed(blocks)).float().mean().item()
    assert abs(got - expected) < 0.006


def test_expected_ratio_small_shapes_exact():
    # T=1, h=w=2: every block is 1x1x1 at a uniform position; 1 - (3/4)^N of the 4 cells on average
    assert expected_block_mask_ratio((1, 2, 2), 3) == pytest.approx(1 - 0.75 ** 3)
    assert expected_block_mask_ratio((2, 2, 4, 4), 3) == expected_block_mask_ratio((2, 4, 4), 3)


def test_iid_mask_ratio_and_errors():
    m = iid_mask((16, 5, 16, 16), 0.15, torch.Generator().manual_seed(0))
    assert abs(m.float().mean().item() - 0.15) < 0.01
    with pytest.raises(ValueError, match="ratio"):
        iid_mask((1, 1, 2, 2), 1.5)
    with pytest.raises(ValueError, match=r"\(B, T, h, w\)"):
        block_mask((5, 16, 16), 3)
    with pytest.raises(ValueError, match="num_blocks"):
        block_mask((1, 5, 16, 16), -1)


def test_apply_mask_never_predicts_pad_and_places_mask_token():
    st = SpecialTokens.from_vocab_size(100)
    codes = torch.randint(0, 100, (4, 5, 8, 8), generator=torch.Generator().manual_seed(0))
    codes[:, 3:] = st.pad
    raw = torch.ones_like(codes, dtype=torch.bool)
    raw[:, :, :2] = False
    codes_in, mask = apply_mask(codes, raw, st)
    assert not (mask & (codes == st.pad)).any()
    assert torch.equal(mask, raw & (codes != st.pad))
    assert (codes_in[mask] == st.mask).all()
    assert torch.equal(codes_in[~mask], codes[~mask])  # [PAD] and unmasked codes untouched
    with pytest.raises(ValueError, match="bool"):
        apply_mask(codes, raw.long(), st)


def test_apply_mask_bert_style_80_10_10():
    st = SpecialTokens.from_vocab_size(1000)
    codes = torch.randint(0, 1000, (8, 5, 16, 16), generator=torch.Generator().manual_seed(0))
    raw = torch.rand(codes.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    a, mask = apply_mask(codes, raw, st, bert_style=True, generator=torch.Generator().manual_seed(2))
    b, _ = apply_mask(codes, raw, st, bert_style=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    n = mask.sum().item()
    frac_mask = (a[mask] == st.mask).sum().item() / n
    frac_kept = (a[mask] == codes[mask]).sum().item() / n
    frac_rand = 1 - frac_mask - frac_kept
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_kept - 0.1) < 0.02 and abs(frac_rand - 0.1) < 0.02
    assert st.is_code(a[mask & (a != st.mask)]).all()  # random replacements are real codes
    assert torch.equal(a[~mask], codes[~mask])
