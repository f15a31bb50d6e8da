"""Background-robust views (vimpac.data.pair_views, PairCollate): each lever does what it says on the codes."""
from __future__ import annotations

import pytest
import torch

from vimpac.data.pair_views import (change_weights, erase_plan, foreground_positions, freeze_positions,
                                    merge_foreground, reverse_time)
from vimpac.data.pretrain_clips import PairCollate, PairOptions
from vimpac.model.losses import symmetric_infonce

PAD = 101


def moving_clip(bg: int, obj: int, t: int = 4, h: int = 4, w: int = 6) -> torch.Tensor:
    """A static background code with an object code moving one column right per frame along row 1."""
    c = torch.full((t, h, w), bg)
    for f in range(t):
        c[f, 1, f] = obj
    return c


def test_foreground_is_what_changes_and_merging_keeps_it_in_place():
    a, b = moving_clip(bg=5, obj=9), moving_clip(bg=7, obj=3)
    b[:, 3, 5] = 8  # another static code somewhere
    valid = torch.ones(4, dtype=torch.bool)
    fg = foreground_positions(a, valid)
    assert fg[1, :4].all() and fg.sum() == 4  # the object's path, nothing else
    merged = merge_foreground(a, b, fg, valid, valid)
    assert torch.equal(merged[:, fg], a[:, fg])  # the source video's changing tokens at their positions
    assert torch.equal(merged[:, ~fg], b[:, ~fg])  # everything else is the other video's clip
    # flicker: a position that changes in one frame of four is background at static_frac 0.7
    a[2, 3, 0] = 6
    assert foreground_positions(a, valid)[3, 0] and not foreground_positions(a, valid, 0.7)[3, 0]


def test_merging_never_makes_a_partly_padded_frame():
    a, b = moving_clip(5, 9), moving_clip(7, 3)
    b[3] = PAD
    valid_a, valid_b = torch.ones(4, dtype=torch.bool), torch.tensor([True, True, True, False])
    merged = merge_foreground(a, b, foreground_positions(a, valid_a), valid_a, valid_b)
    assert torch.equal(merged[3], a[3]) and not (merged == PAD).any()


def test_erasing_freezes_the_chosen_positions_to_one_frame():
    c = moving_clip(5, 9)
    plan = erase_plan(4, (4, 6), 0.5, torch.Generator().manual_seed(0))
    assert plan is not None
    frame, freeze = plan
    out = freeze_positions(c, 4, frame, freeze)
    assert (out[:, freeze] == c[frame][freeze]).all()  # frozen: the same code in every frame
    assert torch.equal(out[:, ~freeze], c[:, ~freeze])
    assert erase_plan(1, (4, 6), 0.5, torch.Generator()) is None  # one frame: nothing to erase


def test_change_weights_single_out_what_the_copy_baseline_misses():
    c = moving_clip(5, 9)[None]  # (1, T, h, w)
    mask = torch.zeros_like(c, dtype=torch.bool)
    mask[0, 2] = True  # all of frame 2 hidden: copy takes frame 1 (ties go to the earlier frame)
    w = change_weights(c, mask, torch.ones_like(mask), 4.0)
    missed = c[0, 2] != c[0, 1]
    assert (w[0, 2][missed] == 4.0).all() and (w[0, 2][~missed] == 1.0).all() and missed.sum() == 2


def test_reverse_time_keeps_pad_frames_at_the_end():
    c = moving_clip(5, 9)
    c[3] = PAD
    r = reverse_time(c, torch.tensor([True, True, True, False]))
    assert torch.equal(r[:3], c[:3].flip(0)) and torch.equal(r[3], c[3])


def sample(i: int, bg: int, obj: int) -> dict:
    codes = torch.stack([moving_clip(bg, obj), moving_clip(bg, obj).roll(1, dims=2)])  # (2, T, h, w)
    mask = torch.zeros_like(codes, dtype=torch.bool)
    mask[:, 1, 1, :2] = True  # on the object's row: the copy baseline misses some
    return {"codes": codes, "codes_in": codes.masked_fill(mask, 100), "mask": mask, "index": torch.tensor(i),
            "frame_valid": torch.ones(2, 4, dtype=torch.bool), "seed": torch.tensor(1000 + i)}


def test_pair_collate_applies_the_options_and_keeps_the_mask_input():
    samples = [sample(0, 5, 9), sample(1, 7, 3)]
    plain = PairCollate()(samples)
    assert plain["codes"].shape == (2, 2, 4, 4, 6) and "mask_weight" not in plain
    out = PairCollate(PairOptions(fgbg_merge=1.0, reverse_negatives=True, change_weight=3.0))(samples)
    assert out["codes"].shape == (2, 3, 4, 4, 6)  # pair + the first clip backwards
    assert torch.equal(out["codes"][0, 0], samples[0]["codes"][0])  # first clips untouched
    second = out["codes"][0, 1]
    fg = foreground_positions(samples[0]["codes"][1], torch.ones(4, dtype=torch.bool))
    assert torch.equal(second[:, fg], samples[0]["codes"][1][:, fg])
    assert (second[:, ~fg] == 7).all()  # video 1's background
    assert (out["codes_in"][out["mask"]] == 100).all()  # masked positions keep their [MASK]
    assert torch.equal(out["codes_in"][~out["mask"]], out["codes"][~out["mask"]])
    assert torch.equal(out["codes"][:, 2], out["codes"][:, 0].flip(1))
    assert out["mask_weight"].shape == out["mask_target"].shape and out["mask_weight"].max() == 3.0
    assert int(out["masked"].sum()) == int(out["mask"].sum())


def test_reversed_negatives_make_the_pair_harder():
    torch.manual_seed(0)
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    base = symmetric_infonce(z_a, z_b).loss
    with_neg = symmetric_infonce(z_a, z_b, negatives=z_a.clone())  # a perfect look-alike negative
    assert with_neg.loss > base
    with pytest.raises(ValueError, match="negatives must be"):
        symmetric_infonce(z_a, z_b, negatives=torch.randn(3, 8))


def test_pair_options_are_checked():
    with pytest.raises(ValueError, match="fgbg_merge must be in"):
        PairOptions(fgbg_merge=1.5)
    with pytest.raises(ValueError, match="change_weight must be > 0"):
        PairOptions(change_weight=0)


def test_monitors_warn_about_shortcuts():
    from vimpac.train.pretrain_task import monitor_warnings

    fine = {"cl_acc": 0.6, "mask_acc": 0.55, "copy_acc": 0.5}
    assert monitor_warnings(fine, epoch=1, epochs=10) == {} and monitor_warnings(fine, epoch=8, epochs=10) == {}
    saturated = monitor_warnings({**fine, "cl_acc": 1.0}, epoch=2, epochs=10)
    assert list(saturated) == ["contrastive_shortcut"] and "matched by their looks" in saturated["contrastive_shortcut"]
    assert monitor_warnings({**fine, "cl_acc": 1.0}, epoch=6, epochs=10) == {}  # late saturation is learning
    assert monitor_warnings({**fine, "cl_acc": 1.0}, epoch=1, epochs=10, contrastive=False) == {}
    copying = monitor_warnings({**fine, "mask_acc": 0.49}, epoch=3, epochs=10)
    assert list(copying) == ["copying"] and "does not beat copying" in copying["copying"]
    assert monitor_warnings({**fine, "mask_acc": 0.49}, epoch=1, epochs=10) == {}  # too early to tell


def test_colour_views_and_distinct_pair_views(tmp_path):
    """extract --channel-order makes a colour view; --pair-views distinct draws a video's clips from two views."""
    import os
    import sys

    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    from store_factory import store_meta

    from video2token.store import ShardWriter, TokenStore, VideoRecord
    from video2token.video import resize_crop_flip
    from vimpac.data.pretrain_clips import ClipPairDataset, ClipSampling

    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    gbr = resize_crop_flip(frames, shorter_side=None, crop_size=8, channel_order="gbr")
    assert np.array_equal(gbr, frames[..., [1, 2, 0]])
    with pytest.raises(ValueError, match="channel_order must be one of"):
        resize_crop_flip(frames, shorter_side=None, crop_size=8, channel_order="rgba")
    views = []
    for v in range(2):  # two views of the same videos: view 0 holds codes 0-7, view 1 codes 8-15
        w = ShardWriter(str(tmp_path / f"v{v}"), store_meta(16, 32))
        for i in range(6):
            codes = np.random.default_rng(i).integers(0, 8, (6, 4, 4)).astype(np.int16) + 8 * v
            w.add(VideoRecord(i, f"v{i}.mp4", 0, codes, np.arange(6) / 2.0))
        w.finalize()
        views.append(TokenStore(str(tmp_path / f"v{v}")))

    def sources(pair_views: str) -> set:
        ds = ClipPairDataset(views, ClipSampling(clip_len=3, mask_blocks=1, pair_views=pair_views), seed=0)
        return {tuple(int(c.min() >= 8) for c in ds[(e, k)]["codes"]) for e in range(3) for k in range(6)}

    assert sources("same") == {(0, 0), (1, 1)}  # both clips from one random view
    assert sources("distinct") == {(0, 1), (1, 0)}  # never the same view twice
    with pytest.raises(ValueError, match="pair_views must be one of"):
        ClipSampling(clip_len=3, pair_views="both")
