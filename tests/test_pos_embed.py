"""Tests for vimpac.model.pos_embed: identity on equal shapes, linear resampling, the --different-shape error, loading."""
from __future__ import annotations

import pytest
import torch

from vimpac.model.config import ModelConfig
from vimpac.model.transformer import VimpacBackbone
from vimpac.model.pos_embed import PosEmbedShapeError, adapt_pos_embeds, resample_pos_embed


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=20, clip_len=3, grid_h=4, grid_w=4, layers=1, hid_dim=16, heads=2, head_dim=8, mlp_dim=32,
                nce_proj_hid_dim=16, nce_proj_out_dim=8, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def test_identity_when_shapes_match():
    table = torch.randn(5, 16, 16, 8)
    assert resample_pos_embed(table, (5, 16, 16)) is table
    sd = {"backbone.embeddings.pos_t": torch.randn(5, 8)}
    out = adapt_pos_embeds(sd, {k: v.shape for k, v in sd.items()}, different_shape=False)
    assert out["backbone.embeddings.pos_t"] is sd["backbone.embeddings.pos_t"]


def test_linear_resampling_values():
    # a constant table stays constant; a 2-position table upsampled keeps its endpoints' range and order
    assert torch.allclose(resample_pos_embed(torch.full((5, 3), 2.5), (10,)), torch.full((10, 3), 2.5))
    ramp = torch.tensor([[0.0], [1.0]])
    up = resample_pos_embed(ramp, (4,))[:, 0]
    torch.testing.assert_close(up, torch.tensor([0.0, 0.25, 0.75, 1.0]))
    # 2-D resampling of a separable table equals resampling each axis
    th, tw = torch.randn(4, 1), torch.randn(6, 1)
    table = th[:, None] + tw[None, :]  # (4, 6, 1)
    got = resample_pos_embed(table, (8, 3))
    want = resample_pos_embed(th, (8,))[:, None] + resample_pos_embed(tw, (3,))[None, :]
    torch.testing.assert_close(got, want)
    assert resample_pos_embed(torch.randn(5, 16, 16, 8), (10, 32, 32)).shape == (10, 32, 32, 8)
    with pytest.raises(ValueError, match="cannot resample"):
        resample_pos_embed(torch.randn(5, 8), (10, 2))


def test_mismatch_without_flag_names_tensor_shapes_and_flag():
    src = VimpacBackbone(small_cfg()).state_dict()
    dst = {k: v.shape for k, v in VimpacBackbone(small_cfg(clip_len=6)).state_dict().items()}
    with pytest.raises(PosEmbedShapeError) as err:
        adapt_pos_embeds(src, dst, different_shape=False)
    msg = str(err.value)
    assert "'embeddings.pos_t'" in msg and "(3, 16)" in msg and "(6, 16)" in msg and "--different-shape" in msg
    wrong_width = {**dst, "embeddings.pos_t": torch.Size([6, 32])}
    with pytest.raises(PosEmbedShapeError, match="channel width"):
        adapt_pos_embeds(src, wrong_width, different_shape=True)


@pytest.mark.parametrize("pos_emb", ["hw_separation", "temporal_separation", "default"])
def test_load_into_a_larger_model_with_different_shape(pos_emb):
    # stage-2 style: T 3 -> 6 frames and a 4x4 -> 8x8 code map (128 -> 256 px at stride 8 is 16 -> 32)
    src_model = VimpacBackbone(small_cfg(pos_emb=pos_emb)).eval()
    dst_model = VimpacBackbone(small_cfg(pos_emb=pos_emb, clip_len=6, grid_h=8, grid_w=8)).eval()
    target = {k: v.shape for k, v in dst_model.state_dict().items()}
    sd = adapt_pos_embeds(src_model.state_dict(), target, different_shape=True)
    dst_model.load_state_dict(sd)
    changed = [k for k in sd if not torch.equal(sd[k], src_model.state_dict()[k])
               if sd[k].shape == src_model.state_dict()[k].shape]
    assert changed == []  # only positional tables are touched
    codes = torch.randint(0, 20, (2, 6, 8, 8))
    assert dst_model(codes).hidden.shape == (2, 6 * 8 * 8, 16)
    # 2x upsampling keeps each axis' first and last positions (cell-centre interpolation, clamped edges)
    for key, table in src_model.state_dict().items():
        if ".pos_" in key:
            new = sd[key]
            assert new.shape[:-1] == tuple(2 * n for n in table.shape[:-1])
            corners = [0, -1]
            for idx in [(c,) * (table.dim() - 1) for c in corners]:
                torch.testing.assert_close(new[idx], table[idx])
