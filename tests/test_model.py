"""Tests for vimpac.model.transformer / config / special_tokens: shapes per layout, [CLS] and [PAD] semantics, overfitting."""
from __future__ import annotations

import math

import pytest
import torch

from vimpac.model.config import ModelConfig, apply_halving, named_config, parse_layout
from vimpac.data.masking import apply_mask, block_mask
from vimpac.model.dropout import dropout, residual_dropout
from vimpac.model.transformer import (FactorizedAttention, PadInfo, VimpacBackbone, VimpacForClassification,
                                      VimpacForPretraining)
from vimpac.modeling import main
from vimpac.model.special_tokens import SpecialTokens



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads, and on shared 2-core machines OpenMP spinning
    # makes them 10x slower; restore the setting for whoever runs next.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


LAYOUTS = ["T,H|W", "T,H,W", "T|H|W", "T", "T,H", "H|W,T", "THW"]


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=37, clip_len=4, grid_h=4, grid_w=3, layers=2, hid_dim=32, heads=4, head_dim=8,
                mlp_dim=48, nce_proj_hid_dim=24, nce_proj_out_dim=16, dropout=0.1, name="tiny")
    return ModelConfig(**{**base, **kw})


def rand_codes(cfg: ModelConfig, b: int = 2, t: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (b, t or cfg.clip_len, cfg.grid_h, cfg.grid_w), generator=g)


# ----------------------------------------------------------------------------- special tokens / config

def test_special_tokens_follow_vocab_size():
    for v in (512, 8192):
        st = SpecialTokens.from_vocab_size(v)
        ids = {st.mask, st.pad, st.cls, *st.spare}
        assert len(ids) == 3 + len(st.spare) and min(ids) == v and max(ids) == st.num_embeddings - 1
    st = SpecialTokens.from_vocab_size(8192)
    assert st.num_embeddings % 8 == 0
    assert st.is_code(torch.tensor([0, 8191, st.mask, st.pad])).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="vocab_size"):
        SpecialTokens.from_vocab_size(0)


def test_config_round_trip_and_errors():
    cfg = tiny_cfg(layout="T,H,W", pre_ln=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*'bogus'"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="bad part 'X'"):
        tiny_cfg(layout="T,X")
    with pytest.raises(ValueError, match="pos_emb"):
        tiny_cfg(pos_emb="sinusoid")
    assert parse_layout("T,H|W") == (("T",), ("H", "W"))
    lh = apply_halving(named_config("base"), halve_att=True, halve_mlp=True)
    assert (lh.head_dim, lh.mlp_dim) == (32, 1536)


@pytest.mark.parametrize("name,clip_len,grid,paper", [("small", 5, 16, 29.4e6), ("base", 10, 32, 119.7e6),
                                                       ("large_half", 10, 32, 210.1e6)])
def test_named_config_param_counts_match_paper(name, clip_len, grid, paper, capsys):
    main(["--config", name, "--vocab-size", "8192", "--clip-len", str(clip_len), "--grid", str(grid)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("total params: ")
    total = int(last.split(":")[1])
    assert abs(total - paper) / paper < 0.005, (name, total)


def test_checkpoint_rebuild_from_config_dict(tmp_path):
    cfg = tiny_cfg(dropout=0.0)
    model = VimpacForPretraining(cfg).eval()
    torch.save({"model_config": cfg.to_dict(), "model": model.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    rebuilt = VimpacForPretraining(ModelConfig.from_dict(ckpt["model_config"])).eval()
    rebuilt.load_state_dict(ckpt["model"])
    codes = rand_codes(cfg)
    torch.testing.assert_close(rebuilt.backbone(codes).cls, model.backbone(codes).cls, rtol=0, atol=0)


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("train", [True, False])
def test_shapes_every_layout(layout, train):
    cfg = tiny_cfg(layout=layout)
    model = VimpacForPretraining(cfg).train(train)
    codes = rand_codes(cfg, b=3)
    mask = block_mask(codes.shape, 2, torch.Generator().manual_seed(1))
    codes_in, mask = apply_mask(codes, mask, cfg.special_tokens)
    out = model(codes_in, mask, codes)
    n = cfg.clip_len * cfg.grid_h * cfg.grid_w
    assert out.hidden.shape == (3, n, cfg.hid_dim) and out.cls.shape == (3, cfg.hid_dim)
    assert out.cls_proj.shape == (3, cfg.nce_proj_out_dim)
    assert out.num_masked == int(mask.sum()) > 0
    assert out.mp_loss.ndim == 0 and torch.isfinite(out.mp_loss) and 0 <= float(out.mp_acc) <= 1
    if train:
        (out.mp_loss + out.cls_proj.square().mean()).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        # the tied decoder trains the code embedding through the MP head
        assert model.backbone.embeddings.code.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pos_emb", ["default", "temporal_separation", "hw_separation"])
def test_pos_emb_kinds_and_pre_ln(pos_emb):
    for pre_ln in (False, True):
        cfg = tiny_cfg(pos_emb=pos_emb, pre_ln=pre_ln)
        out = VimpacBackbone(cfg).eval()(rand_codes(cfg))
        assert out.hidden.shape == (2, 48, 32) and torch.isfinite(out.hidden).all()
    table = {"default": ["pos_thw"], "temporal_separation": ["pos_t", "pos_hw"],
             "hw_separation": ["pos_t", "pos_h", "pos_w"]}[pos_emb]
    names = [n for n, _ in VimpacBackbone(tiny_cfg(pos_emb=pos_emb)).embeddings.named_parameters() if "pos" in n]
    assert names == table


def test_eval_is_deterministic_and_train_uses_dropout():
    cfg = tiny_cfg(dropout=0.3)
    model = VimpacBackbone(cfg)
    codes = rand_codes(cfg)
    model.eval()
    torch.testing.assert_close(model(codes).cls, model(codes).cls, rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(codes).cls, model(codes).cls)


def test_bf16_autocast_close_to_fp32():
    cfg = tiny_cfg(dropout=0.0)
    model = VimpacForPretraining(cfg)
    codes = rand_codes(cfg, b=4)
    codes_in, mask = apply_mask(codes, block_mask(codes.shape, 3, torch.Generator().manual_seed(0)),
                                cfg.special_tokens)
    ref = model(codes_in, mask, codes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(codes_in, mask, codes)
    assert out.hidden.dtype == torch.float32  # the residual stream stays fp32 under autocast
    torch.testing.assert_close(out.hidden, ref.hidden, rtol=0.05, atol=0.05)
    assert abs(out.mp_loss.item() - ref.mp_loss.item()) < 0.02 * ref.mp_loss.item()
    out.mp_loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classification_head_starts_at_zero():
    cfg = tiny_cfg()
    model = VimpacForClassification(cfg, num_classes=5)
    logits = model(rand_codes(cfg, b=3))
    assert logits.shape == (3, 5) and torch.count_nonzero(logits) == 0


def test_grad_checkpointing_gives_same_gradients():
    cfg = tiny_cfg(dropout=0.0)
    torch.manual_seed(0)
    a = VimpacBackbone(cfg).train()
    b = VimpacBackbone(cfg.replace(grad_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    codes = rand_codes(cfg)
    for m in (a, b):
        o = m(codes)
        (o.hidden.square().mean() + o.cls.sum()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


# ----------------------------------------------------------------------------- [CLS] and [PAD]

def _reference_attention(attn: FactorizedAttention, tok, cls, grid, frame_valid):
    """Row-by-row loops: [CLS] joins every row, attends over [CLS, row]; copies in [PAD] rows are dropped."""
    b = tok.shape[0]
    t, h, w = grid
    hd = attn.head_dim
    qkv_tok = attn.qkv(tok).view(b, t, h, w, 3, attn.heads, hd)
    qkv_cls = attn.qkv(cls).view(b, 3, attn.heads, hd)
    out_tok = torch.zeros(b, t, h, w, attn.heads, hd, dtype=tok.dtype)
    out_cls = torch.zeros(b, attn.heads, hd, dtype=tok.dtype)
    h0 = 0
    for axes, g in zip(attn.parts, attn.part_heads):
        heads = slice(h0, h0 + g)
        assert len(axes) == 1
        ax = "THW".index(axes)
        for bi in range(b):
            copies = []
            others = [range(n) for i, n in enumerate((t, h, w)) if i != ax]
            for o1 in others[0]:
                for o2 in others[1]:
                    idx = []
                    for pos in range((t, h, w)[ax]):
                        full = [o1, o2]
                        full.insert(ax, pos)
                        idx.append(tuple(full))
                    valid = [bool(frame_valid[bi, i[0]]) for i in idx]
                    keep = [True] + (valid if ax == 0 else [True] * len(idx))
                    rows_qkv = torch.stack([qkv_cls[bi]] + [qkv_tok[bi, i[0], i[1], i[2]] for i in idx])  # (1+L, 3, nh, hd)
                    q, k, v = rows_qkv[:, 0, heads], rows_qkv[:, 1, heads], rows_qkv[:, 2, heads]
                    s = torch.einsum("qgd,kgd->gqk", q, k) / math.sqrt(hd)
                    s = s.masked_fill(~torch.tensor(keep)[None, None, :], float("-inf"))
                    o = torch.einsum("gqk,kgd->qgd", s.softmax(-1), v)
                    for j, i in enumerate(idx):
                        out_tok[bi, i[0], i[1], i[2], heads] = o[1 + j]
                    if ax == 0 or valid[0]:
                        copies.append(o[0])
            out_cls[bi, heads] = torch.stack(copies).mean(0)
        h0 += g
    return attn.proj(out_tok.reshape(b, t * h * w, -1)), attn.proj(out_cls.reshape(b, -1))


@pytest.mark.parametrize("parts", [("T",), ("H", "W"), ("T", "H", "W")])
def test_attention_matches_row_by_row_reference(parts):
    torch.manual_seed(0)
    attn = FactorizedAttention(hid_dim=16, heads=4, head_dim=4, parts=parts, attn_dropout=0.0).eval()
    grid = (3, 3, 2)
    tok, cls = torch.randn(2, 18, 16), torch.randn(2, 16)
    frame_valid = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        got_tok, got_cls = attn(tok, cls, grid, PadInfo(frame_valid=frame_valid))
        ref_tok, ref_cls = _reference_attention(attn, tok, cls, grid, frame_valid)
    valid_tok = frame_valid[:, :, None, None].expand(2, *grid).reshape(2, -1)
    torch.testing.assert_close(got_cls, ref_cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_tok[valid_tok], ref_tok[valid_tok], rtol=1e-5, atol=1e-5)
    # with gradients on CPU, short rows take SDPA's math backend: same numbers
    train_tok, train_cls = attn(tok.requires_grad_(), cls, grid, PadInfo(frame_valid=frame_valid))
    torch.testing.assert_close(train_cls.detach(), ref_cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(train_tok.detach()[valid_tok], ref_tok[valid_tok], rtol=1e-5, atol=1e-5)


def _attention_grads(attn, tok, cls, grid, pad, weights):
    """Outputs and the gradients of a fixed weighted sum of them w.r.t. inputs and parameters."""
    attn.zero_grad(set_to_none=True)
    tok, cls = tok.detach().clone().requires_grad_(), cls.detach().clone().requires_grad_()
    out_tok, out_cls = attn(tok, cls, grid, pad)
    ((out_tok.float() * weights[0]).sum() + (out_cls.float() * weights[1]).sum()).backward()
    return [out_tok.detach().float(), out_cls.detach().float(), tok.grad.float(), cls.grad.float()] + \
        [p.grad.float() for p in attn.parameters()]


@pytest.mark.parametrize("parts", [("T",), ("H", "W"), ("T", "H", "W")])
@pytest.mark.parametrize("padded", [False, True])
def test_short_row_attention_gradients_match_row_by_row_reference(parts, padded):
    # training on CPU, short rows go through vimpac.model.row_attention.ShortRowAttention, whose
    # backward is written by hand: its gradients must be the loops' autograd gradients (fp64)
    torch.manual_seed(0)
    attn = FactorizedAttention(hid_dim=16, heads=4, head_dim=4, parts=parts, attn_dropout=0.0).double().train()
    grid = (3, 3, 2)
    tok, cls = torch.randn(2, 18, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    frame_valid = torch.tensor([[True, True, True], [True, True, False]]) if padded else torch.ones(2, 3, dtype=torch.bool)
    weights = (torch.randn(2, 18, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64))
    if padded:  # [PAD] tokens' outputs are meaningless: they get no gradient from the loss
        weights[0].view(2, 3, 6, 16)[1, 2] = 0.0
    got = _attention_grads(attn, tok, cls, grid, PadInfo(frame_valid=frame_valid) if padded else None, weights)

    class Loops(torch.nn.Module):  # the reference as a module, so _attention_grads can call it
        def __init__(self):
            super().__init__()
            self.inner = attn

        def forward(self, t, c, g, _pad):
            return _reference_attention(attn, t, c, g, frame_valid)

    ref = _attention_grads(Loops(), tok, cls, grid, None, weights)
    for name, a, b in zip(["out_tok", "out_cls", "d_tok", "d_cls", *[n for n, _ in attn.named_parameters()]], got, ref):
        if name == "out_tok" and padded:
            a, b = a.view(2, 3, 6, 16)[0], b.view(2, 3, 6, 16)[0]
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("parts", [("T",), ("H", "W"), ("HW",), ("T", "HW"), ("THW",)])
def test_short_row_attention_matches_the_autograd_path(parts, monkeypatch):
    # multi-axis parts, [PAD] frames, fp32 and bf16 inputs: the Function against the per-part
    # autograd path it replaces; in bf16 both are compared with the same computation in fp64
    torch.manual_seed(1)
    attn = FactorizedAttention(hid_dim=24, heads=3, head_dim=8, parts=parts, attn_dropout=0.0).train()
    grid = (2, 3, 4)
    tok, cls = torch.randn(3, 24, 24), torch.randn(3, 24)
    pad = PadInfo(frame_valid=torch.tensor([[True, True], [True, False], [True, True]]))
    weights = (torch.randn(3, 24, 24), torch.randn(3, 24))
    weights[0].view(3, 2, 12, 24)[1, 1] = 0.0  # [PAD] tokens' outputs get no gradient
    valid = lambda grads: [g.view(3, 2, 12, 24)[[0, 2]] if i == 0 else g for i, g in enumerate(grads)]  # noqa: E731

    def both(module, t, c):
        got = _attention_grads(module, t, c, grid, pad, weights)
        with monkeypatch.context() as m:
            m.setattr(FactorizedAttention, "_short_rows", lambda self, x, g: False)
            ref = _attention_grads(module, t, c, grid, pad, weights)
        return valid(got), valid(ref)

    got, ref = both(attn, tok, cls)
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"fp32 tensor {i}")
    exact = valid(_attention_grads(attn.double(), tok.double(), cls.double(), grid, pad, weights))
    got, ref = both(attn.bfloat16(), tok.bfloat16(), cls.bfloat16())
    for i, (a, b, e) in enumerate(zip(got, ref, exact)):
        err_new, err_old = [float((x - e.float()).norm() / e.float().norm()) for x in (a, b)]
        assert err_new < 0.01 and err_new <= 1.25 * err_old + 1e-3, (i, err_new, err_old)


def test_residual_dropout_rate_and_scale():
    torch.manual_seed(0)
    x = torch.zeros(512, 1024)
    delta = torch.ones(512, 1024)
    out = residual_dropout(x, delta, 0.1, True)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(out[kept], torch.full((int(kept.sum()),), 1 / 0.9))
    assert abs(out.mean().item() - 1.0) < 0.01  # expectation preserved
    assert torch.equal(residual_dropout(x, delta, 0.1, False), x + delta)
    assert not torch.equal(dropout(delta, 0.1, True), dropout(delta, 0.1, True))
    assert dropout(delta.bfloat16(), 0.5, True).dtype == torch.bfloat16
    # a bf16 branch on an fp32 residual: the kept values are scaled by 1/(1-p) in fp32, not by bf16(1/0.9)
    out = residual_dropout(x, delta.bfloat16(), 0.1, True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[out != 0], torch.full((int((out != 0).sum()),), 1 / 0.9), rtol=0, atol=1e-7)
    # the masks come from torch's generator: the same seed gives the same masks
    torch.manual_seed(5)
    first = dropout(delta, 0.1, True)
    torch.manual_seed(5)
    assert torch.equal(dropout(delta, 0.1, True), first)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_padded_clip_matches_shorter_clip(layout):
    for pos_emb in ("hw_separation", "default"):
        cfg = tiny_cfg(layout=layout, pos_emb=pos_emb)
        model = VimpacBackbone(cfg).eval()
        pad = cfg.special_tokens.pad
        codes = rand_codes(cfg, b=2)
        short = codes[:, :2]
        padded = codes.clone()
        padded[:, 2:] = pad
        # a batch mixing a padded and an unpadded clip: the unpadded one must not change either
        mixed = torch.cat([padded[:1], codes[1:]])
        with torch.no_grad():
            o_short, o_pad, o_mix, o_full = model(short), model(padded), model(mixed), model(codes)
        n_short = short[0].numel()
        torch.testing.assert_close(o_pad.cls, o_short.cls, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o_pad.hidden[:, :n_short], o_short.hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o_mix.cls[0], o_short.cls[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o_mix.cls[1], o_full.cls[1], rtol=1e-5, atol=1e-5)
        assert o_pad.frame_valid.tolist() == [[True, True, False, False]] * 2 and o_full.frame_valid is None


def test_bad_codes_raise_clear_errors():
    cfg = tiny_cfg()
    model = VimpacBackbone(cfg)
    codes = rand_codes(cfg)
    with pytest.raises(ValueError, match="--different-shape"):
        model(torch.zeros(1, cfg.clip_len, cfg.grid_h + 1, cfg.grid_w, dtype=torch.long))
    with pytest.raises(ValueError, match="clip_len=4"):
        model(torch.zeros(1, cfg.clip_len + 1, cfg.grid_h, cfg.grid_w, dtype=torch.long))
    bad = codes.clone()
    bad[0, 0, 0, 0] = cfg.special_tokens.num_embeddings
    with pytest.raises(ValueError, match=r"codes must be in \[0, 45\)"):
        model(bad)
    partial = codes.clone()
    partial[0, 1, 0] = cfg.special_tokens.pad
    with pytest.raises(ValueError, match="partly \\[PAD\\]"):
        model(partial)
    with pytest.raises(ValueError, match="long tensor"):
        model(codes.float())


# ----------------------------------------------------------------------------- learning

def test_tiny_model_overfits_a_few_clips():
    torch.manual_seed(0)
    cfg = tiny_cfg(vocab_size=16, clip_len=3, grid_h=4, grid_w=4, layers=2, hid_dim=64, heads=4, head_dim=16,
                   mlp_dim=128, dropout=0.0)
    model = VimpacForPretraining(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    codes = rand_codes(cfg, b=4, seed=3).repeat(4, 1, 1, 1)  # 4 clips, each under 4 different block masks
    codes_in, mask = apply_mask(codes, block_mask(codes.shape, 6, torch.Generator().manual_seed(0)),
                                cfg.special_tokens)
    accs = []
    for _ in range(80):
        out = model(codes_in, mask, codes)
        opt.zero_grad()
        out.mp_loss.backward()
        opt.step()
        accs.append(float(out.mp_acc))
    model.eval()
    with torch.no_grad():
        out = model(codes_in, mask, codes)
    assert accs[0] < 0.3  # chance is 1/16
    assert float(out.mp_acc) > 0.98, float(out.mp_acc)
    assert float(out.mp_loss) < 0.1
