"""BEVT mode (Wang et al., CVPR 2022): pixels in, the tokenizer's codes as targets, an image stream through the
same weights. Unit contracts here; the end-to-end path (stores with frames, the CLIs) is in test_bevt_cli.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vimpac.data.image_stream import IMAGE, JointBatchSampler
from vimpac.data.masking import block_mask, tube_mask
from vimpac.data.sampler import EpochBatchSampler
from vimpac.model.config import ModelConfig
from vimpac.model.surgery import WeightsError, check_input_kind, check_same_architecture
from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining

TINY = dict(vocab_size=29, clip_len=3, grid_h=4, grid_w=4, layers=1, hid_dim=32, heads=2, head_dim=16, mlp_dim=64,
            nce_proj_hid_dim=16, nce_proj_out_dim=8, dropout=0.0)


def pixel_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, "input": "pixels", "patch_size": 4, **kw})


def frames(b=2, t=3, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_pixel_and_token_models_share_the_transformer():
    torch.manual_seed(0)
    tok = VimpacForPretraining(ModelConfig(**TINY))
    pix = VimpacForPretraining(pixel_cfg())
    tok_keys = {k for k in tok.state_dict() if not k.startswith(("backbone.embeddings.", "mp_head.decoder"))}
    pix_keys = {k for k in pix.state_dict() if not k.startswith(("backbone.embeddings.", "mp_head.decoder"))}
    assert tok_keys == pix_keys  # layers, heads: one model; only the input embedding (and the untied decoder) differ
    assert type(tok.backbone.layers[0]) is type(pix.backbone.layers[0])
    assert "backbone.embeddings.code.weight" in tok.state_dict() and "backbone.embeddings.proj.weight" in pix.state_dict()
    assert pix.mp_head.decoder.shape == (29, 32) and tok.mp_head.decoder is None


def test_pixel_forward_masks_patches_with_the_mask_embedding():
    torch.manual_seed(0)
    model = VimpacForPretraining(pixel_cfg()).eval()
    x = frames()
    mask = block_mask((2, 3, 4, 4), 2, torch.Generator().manual_seed(1))
    emb = model.backbone.embeddings
    tok_a, _ = emb(x, mask)
    y = x.clone()
    y[..., :, :, :] = 255 - y  # every pixel changes: only the unmasked patches' embeddings may follow
    tok_b, _ = emb(y, mask)
    flat = mask.reshape(2, -1)
    torch.testing.assert_close(tok_a[flat], tok_b[flat])
    assert not torch.allclose(tok_a[~flat], tok_b[~flat])
    codes = torch.randint(0, 29, (2, 3, 4, 4))
    out = model(x, mask, codes)
    assert out.num_masked == int(mask.sum()) and torch.isfinite(out.mp_loss) and out.cls_proj.shape == (2, 8)
    assert model(x, mask, codes, contrastive=False).cls_proj is None


def test_pixel_model_refuses_codes_and_wrong_frame_sizes():
    model = VimpacForPretraining(pixel_cfg()).eval()
    mask = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"takes frames \(B, T, H, W, 3\)"):
        model.backbone(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"16x16 px = 4x4 patches of 4 px"):
        model.backbone(torch.zeros(2, 3, 20, 20, 3, dtype=torch.uint8), mask=mask)
    clf = VimpacForClassification(pixel_cfg(), num_classes=3).eval()
    assert clf(frames()).shape == (2, 3)


def test_padded_pixel_frames_do_not_change_cls():
    torch.manual_seed(0)
    model = VimpacForClassification(pixel_cfg(), num_classes=3).eval()
    short = frames(b=1, t=2)
    padded = torch.cat([short, torch.zeros(1, 1, 16, 16, 3, dtype=torch.uint8)], dim=1)
    valid = torch.tensor([[True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, frame_valid=valid), model(short, frame_valid=None), rtol=1e-5,
                                   atol=1e-5)


def test_a_checkpoint_of_the_other_input_kind_is_refused_clearly():
    with pytest.raises(WeightsError, match=r"--load X is a model with --input pixels .* this run uses --input tokens"):
        check_input_kind(pixel_cfg(), "tokens", "--load X")
    with pytest.raises(WeightsError, match=r"pass --input tokens"):
        check_same_architecture(ModelConfig(**TINY), pixel_cfg(), "--load Y")
    check_input_kind(pixel_cfg(), "pixels", "--load X")  # same kind: fine


def test_config_from_an_older_checkpoint_is_a_token_model():
    d = ModelConfig(**TINY).to_dict()
    d.pop("input"), d.pop("patch_size")  # config.json written before pixel input existed
    assert ModelConfig.from_dict(d).input == "tokens"
    with pytest.raises(ValueError, match="input must be one of"):
        ModelConfig(**{**TINY, "input": "audio"})


def test_tube_mask_covers_the_same_patches_in_every_frame():
    m = tube_mask((3, 5, 8, 8), 3, torch.Generator().manual_seed(0))
    assert m.shape == (3, 5, 8, 8) and m.any()
    assert (m == m[:, :1]).all()  # one spatial mask through all frames


def test_joint_sampler_holds_the_image_ratio_over_an_epoch_and_resumes_exactly():
    videos = EpochBatchSampler(40, micro_batch=4, world_size=1, rank=0, seed=3)
    joint = JointBatchSampler(videos, num_images=7, ratio=0.5, image_batch=3, seed=3)
    joint.set_position(2, 0)
    batches = list(joint)
    video_keys = [k for b in batches for k in b if k[0] != IMAGE]
    image_keys = [k for b in batches for k in b if k[0] == IMAGE]
    assert len(batches) == 10 and len(video_keys) == 40
    assert len(image_keys) == 0.5 * 10 * 3  # ratio x video micro-batches x image micro-batch
    assert [len([k for k in b if k[0] == IMAGE]) for b in batches] == [0, 3] * 5  # spread evenly
    counts = np.bincount([k[2] for k in image_keys], minlength=7)
    assert counts.max() - counts.min() <= 2  # whole permutations of the images, one after another
    joint.set_position(2, 6)  # a resumed run starts mid-epoch: the same keys from there
    assert list(joint) == batches[6:]
    two = [JointBatchSampler(EpochBatchSampler(40, micro_batch=2, world_size=2, rank=r, seed=3), num_images=7,
                             ratio=1.0, image_batch=2, seed=3) for r in range(2)]
    for s in two:
        s.set_position(0, 0)
    first = [next(iter(s)) for s in two]
    imgs = [k for b in first for k in b if k[0] == IMAGE]
    assert len(imgs) == 4 and len({k[2] for k in imgs}) == 4  # ranks take different images


def test_a_masked_patch_target_is_the_code_of_that_patch_at_that_frame(tmp_path):
    """Codes are a known function of the pixels (store_factory.pixel_code): every masked position's target, as the
    loader hands it to the model, is that function of the patch the model reads at that frame and place."""
    import sys, os
    sys.path.insert(0, os.path.dirname(__file__))
    from store_factory import make_pixel_store, pixel_code

    from video2token.store import TokenStore
    from vimpac.data.pretrain_clips import ClipPairDataset, ClipSampling, PairCollate, PairOptions

    store = TokenStore(make_pixel_store(str(tmp_path / "px"), num_videos=6, vocab_size=16))
    for masking in ("block", "tube"):
        ds = ClipPairDataset([store], ClipSampling(clip_len=3, mask_blocks=3, masking=masking), seed=1, pixels=True)
        for options in (PairOptions(), PairOptions(fgbg_merge=1.0, bg_erase=0.5, reverse_negatives=True)):
            batch = PairCollate(options, patch=4)([ds[(0, k)] for k in range(4)])
            frames = batch["frames"].flatten(0, 1)  # (V*B, T, 16, 16, 3)
            cells = frames.reshape(*frames.shape[:2], 4, 4, 4, 4, 3).permute(0, 1, 2, 4, 3, 5, 6).numpy()
            expect = torch.from_numpy(pixel_code(cells, 16)).reshape(-1)  # (V*B*T*h*w,) in the model's token order
            kept = batch["mask_target"] != -100
            index, target = batch["mask_index"][kept], batch["mask_target"][kept]
            assert len(target) > 0 and torch.equal(target, expect[index]), (masking, options)
            # and the model cuts the same patches: patch (t, i, j) is frames[t, 4i:4i+4, 4j:4j+4]
            emb = VimpacForPretraining(pixel_cfg()).backbone.embeddings
            p = emb.patches(frames[:1])  # (1, T, 4, 4, 48)
            ref = frames[0, 1, 4:8, 8:12].reshape(-1).float() * (2 / 255) - 1
            torch.testing.assert_close(p[0, 1, 1, 2], ref)


def test_progress_bar_shows_the_streams_that_ran():
    from vimpac.train.pretrain_task import PretrainTask, pretrain_metrics

    zero = dict(mp_loss=0.0, mask_correct=0.0, copy_correct=0.0, masked=0.0, cl_loss=0.0, cl_acc=0.0, micro=0,
                valid=0.0, pad=0.0, tokens=0.0, image_mp_loss=0.0, image_mask_correct=0.0, image_masked=0.0,
                image_micro=0)
    image_only = pretrain_metrics({**zero, "image_mp_loss": 6.0, "image_mask_correct": 3.0, "image_masked": 4.0,
                                   "image_micro": 2})  # --stream image: no video metrics at all
    assert PretrainTask.progress_postfix(None, image_only) == {"img_mp": "3.000", "img_acc": "0.750"}
    video = pretrain_metrics({**zero, "mp_loss": 2.0, "masked": 4.0, "mask_correct": 2.0, "micro": 1, "valid": 8.0,
                              "tokens": 8.0})
    assert set(PretrainTask.progress_postfix(None, video)) == {"mp", "acc", "copy", "cl"}
