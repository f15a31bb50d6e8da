"""Tests for vimpac.model.original / loading / convert_original: the original VIMPAC's snapshots as drop-ins.

Ground truth: /work/shared/fixtures/original-vimpac (weights saved by the original code and its
outputs). The flags those fixtures do not cover (other layouts, position tables, --halve-*,
--pre-activation, --nce-bn-after-proj) are checked against `original_forward` below, a
plain re-statement of the original's forward pass over its own state-dict names, which is
itself first checked against the fixtures' reference outputs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import original_fixtures
from vimpac.model.checkpoint import CheckpointError, save_checkpoint
from vimpac.model.config import ModelConfig
from vimpac.model.loading import TASK_KIND, load_model, read_weights, resolve_checkpoint
from vimpac.model.original import (OriginalCheckpointError, convert_original, find_original, read_args_pickle,
                                   read_original)
from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining

FIXTURES = original_fixtures()
REPO = Path(__file__).resolve().parents[1]
#: measured max relative errors (max |ours - ref| / max |ref|) are 2e-7 .. 5e-7 in fp32
REL_TOL = 5e-6

pytestmark = pytest.mark.skipif(not (FIXTURES / "pretrain" / "last" / "classifier.pt").exists(),
                                reason=f"original-VIMPAC fixtures not found at {FIXTURES}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max() / ref.abs().max())


def reference(kind: str) -> dict:
    return torch.load(FIXTURES / kind / "reference.pt", weights_only=True)


def copy_fixture(kind: str, tmp_path: Path) -> Path:
    dst = tmp_path / kind
    shutil.copytree(FIXTURES / kind, dst)
    return dst


# ----------------------------------------------------------------------------- the original's forward, restated

def _ln(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps=1e-12)


def _lin(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias"))


def _bn(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return F.batch_norm(x, sd[key + ".running_mean"], sd[key + ".running_var"], sd[key + ".weight"],
                        sd[key + ".bias"], training=False, eps=1e-5)


def original_forward(sd: dict, a: dict, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls (B, D), hidden (B, T, h, w, D)) of the original TransformerLayout, eval mode, clips without [PAD]."""
    b, t, h, w = codes.shape
    d = a["hid_dim"]
    pre = a["pre_activation"]
    p = "backbone.positional_embedding."
    if a["pos_emb"] == "default":
        table = sd[p + "positional_embedding"]
        cls_pos, pos = table[0], table[1:].reshape(t, h, w, d)
    elif a["pos_emb"] == "temporal_separation":
        cls_pos = sd[p + "cls_pos_embedding"][0]
        pos = (sd[p + "temporal_pos_embedding"][:, None] + sd[p + "spatial_pos_embedding"][None]).reshape(t, h, w, d)
    else:
        cls_pos = sd[p + "cls_pos_embedding"][0]
        pos = (sd[p + "temporal_pos_embedding"][:, None, None] + sd[p + "height_pos_embedding"][None, :, None]
               + sd[p + "width_pos_embedding"][None, None])
    x = F.embedding(codes, sd["backbone.embedding.weight"]) + pos
    cls = (sd["backbone.cls_param"] + cls_pos).expand(b, d)
    if not pre:
        x, cls = _ln(x, sd, "backbone.ln_pre"), _ln(cls, sd, "backbone.ln_pre")
    heads = d // 64
    for i in range(a["layers"]):
        r = f"backbone.transformer.resblocks.{i}"
        for j, block in enumerate(a["model"][len("efflayout"):].split(",")):
            ab = f"{r}.attention_blocks.{j}"
            xi, ci = (_ln(x, sd, ab + ".LayerNorm"), _ln(cls, sd, ab + ".LayerNorm")) if pre else (x, cls)
            outs_x, outs_c = [], []
            parts = block.split("|")
            for k, axis in enumerate(parts):
                dim = {"T": 1, "H": 2, "W": 3}[axis]
                rows = xi.movedim(dim, 3)  # (B, r1, r2, L, D): the attended axis next to last
                seq = torch.cat([ci[:, None, None, None].expand(*rows.shape[:3], 1, d), rows], dim=3)
                g = heads // len(parts)

                def split(y):  # (..., L, g*hd) -> (..., g, L, hd)
                    return y.reshape(*y.shape[:-1], g, -1).transpose(-2, -3)

                att = f"{ab}.attentions.{k}.attention"
                q, kk, v = (split(_lin(seq, sd, f"{att}.{n}")) for n in ("query", "key", "value"))
                probs = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
                out = (probs @ v).transpose(-2, -3).flatten(-2)  # (B, r1, r2, 1+L, g*hd)
                outs_c.append(out[:, :, :, 0].mean(dim=(1, 2)))
                outs_x.append(out[:, :, :, 1:].movedim(3, dim))
            ax, ac = torch.cat(outs_x, -1), torch.cat(outs_c, -1)
            if pre:
                x, cls = x + _lin(ax, sd, ab + ".dense"), cls + _lin(ac, sd, ab + ".dense")
            else:
                x = _ln(_lin(ax, sd, ab + ".output.dense") + x, sd, ab + ".output.LayerNorm")
                cls = _ln(_lin(ac, sd, ab + ".output.dense") + cls, sd, ab + ".output.LayerNorm")

        def mlp(y):
            return _lin(F.gelu(_lin(y, sd, r + ".mlp.c_fc")), sd, r + ".mlp.c_proj")

        if pre:
            x, cls = x + mlp(_ln(x, sd, r + ".ln")), cls + mlp(_ln(cls, sd, r + ".ln"))
        else:
            x, cls = _ln(x + mlp(x), sd, r + ".ln"), _ln(cls + mlp(cls), sd, r + ".ln")
    if pre:
        x, cls = _ln(x, sd, "backbone.ln_post"), _ln(cls, sd, "backbone.ln_post")
    return cls, x


def original_mlm_logits(sd: dict, hidden: torch.Tensor) -> torch.Tensor:
    y = _ln(F.gelu(_lin(hidden, sd, "mlm_head.transform.0")), sd, "mlm_head.transform.2")
    return F.linear(y, sd["mlm_head.decoder.weight"], sd["mlm_head.bias"])[..., :8192]


def original_nce(sd: dict, a: dict, cls: torch.Tensor) -> torch.Tensor:
    y = cls
    last = a["nce_proj_layers"] - 1
    for k in range(last):
        y = F.relu(_bn(_lin(y, sd, f"cls_head.mlp.linear_{k}"), sd, f"cls_head.mlp.bn_{k}"))
    y = _lin(y, sd, f"cls_head.mlp.linear_{last}")
    return _bn(y, sd, f"cls_head.mlp.bn_{last}") if a["nce_bn_after_proj"] else y


def random_original_state(a: dict, *, num_labels: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the original's names and shapes for flags `a`, random values (BN variances > 0)."""
    g = torch.Generator().manual_seed(seed)
    d = a["hid_dim"]
    t, s = a["clip_len"], a["frame_size"] // 8
    sd: dict[str, torch.Tensor] = {}

    def rnd(*shape, scale=0.3, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    def linear(key, fan_in, fan_out, bias=True):
        sd[key + ".weight"] = rnd(fan_out, fan_in, scale=1 / math.sqrt(fan_in))
        if bias:
            sd[key + ".bias"] = rnd(fan_out, scale=0.1)

    def norm(key, n):
        sd[key + ".weight"], sd[key + ".bias"] = rnd(n, scale=0.2, shift=1.0), rnd(n, scale=0.1)

    def bn(key, n):
        norm(key, n)
        sd[key + ".running_mean"], sd[key + ".running_var"] = rnd(n, scale=0.1), rnd(n).abs() + 0.5
        sd[key + ".num_batches_tracked"] = torch.tensor(100)

    sd["backbone.cls_param"] = rnd(d)
    sd["backbone.embedding.weight"] = rnd(8197, d)
    p = "backbone.positional_embedding."
    if a["pos_emb"] == "default":
        sd[p + "positional_embedding"] = rnd(1 + t * s * s, d)
    else:
        sd[p + "cls_pos_embedding"] = rnd(1, d)
        sd[p + "temporal_pos_embedding"] = rnd(t, d)
        if a["pos_emb"] == "temporal_separation":
            sd[p + "spatial_pos_embedding"] = rnd(s * s, d)
        else:
            sd[p + "height_pos_embedding"], sd[p + "width_pos_embedding"] = rnd(s, d), rnd(s, d)
    norm("backbone.ln_post" if a["pre_activation"] else "backbone.ln_pre", d)
    att = d // 2 if a["halve_att"] else d
    for i in range(a["layers"]):
        r = f"backbone.transformer.resblocks.{i}"
        for j, block in enumerate(a["model"][len("efflayout"):].split(",")):
            parts = block.split("|")
            ab = f"{r}.attention_blocks.{j}"
            for k in range(len(parts)):
                for n in ("query", "key", "value"):
                    linear(f"{ab}.attentions.{k}.attention.{n}", d, att // len(parts))
            if a["pre_activation"]:
                linear(ab + ".dense", d, d)
                norm(ab + ".LayerNorm", d)
            else:
                linear(ab + ".output.dense", att, d)
                norm(ab + ".output.LayerNorm", d)
        mlp = 2 * d if a["halve_mlp"] else 4 * d
        linear(r + ".mlp.c_fc", d, mlp)
        linear(r + ".mlp.c_proj", mlp, d)
        norm(r + ".ln", d)
    if num_labels is not None:
        linear("cls_fc", d, num_labels)
        return sd
    linear("mlm_head.transform.0", d, d)
    norm("mlm_head.transform.2", d)
    sd["mlm_head.bias"] = rnd(8197, scale=0.1)
    sd["mlm_head.decoder.weight"] = sd["backbone.embedding.weight"]
    sd["mlm_head.decoder.bias"] = sd["mlm_head.bias"]
    hid, layers = a["nce_proj_hid_dim"], a["nce_proj_layers"]
    for k in range(layers):
        fan_in = d if k == 0 else hid
        if k < layers - 1:
            linear(f"cls_head.mlp.linear_{k}", fan_in, hid)
            bn(f"cls_head.mlp.bn_{k}", hid)
        else:
            linear(f"cls_head.mlp.linear_{k}", fan_in, 256, bias=False)
            if a["nce_bn_after_proj"]:
                bn(f"cls_head.mlp.bn_{k}", 256)
    return sd


def fixture_args(kind: str) -> dict:
    return read_args_pickle(str(FIXTURES / kind / "last" / "args.pickle"))


def test_restated_forward_matches_the_fixtures():
    # the test's own statement of the original must reproduce the original's outputs first
    for kind in ("pretrain", "finetune"):
        sd = torch.load(FIXTURES / kind / "last" / "classifier.pt", weights_only=True)
        ref, a = reference(kind), fixture_args(kind)
        cls, hidden = original_forward(sd, a, ref["codes"])
        assert rel_err(cls, ref["cls"]) < REL_TOL and rel_err(hidden, ref["hidden"]) < REL_TOL
        if kind == "pretrain":
            assert rel_err(original_mlm_logits(sd, hidden[:1, :1]), ref["mlm_logits"]) < REL_TOL
            assert rel_err(original_nce(sd, a, cls), ref["nce"]) < REL_TOL


# ----------------------------------------------------------------------------- the fixtures

def test_pretrain_fixture_matches_reference():
    conv = read_original(FIXTURES / "pretrain")
    ref = reference("pretrain")
    assert conv.kind == "pretrain" and conv.num_classes is None
    cfg = conv.config
    assert (cfg.layers, cfg.hid_dim, cfg.heads, cfg.head_dim, cfg.mlp_dim) == (2, 128, 2, 64, 512)
    assert (cfg.layout, cfg.pos_emb, cfg.clip_len, cfg.grid_h, cfg.grid_w) == ("T,H|W", "hw_separation", 4, 4, 4)
    assert not cfg.nce_proj_bias and cfg.nce_proj_hid_dim == 96 and cfg.nce_proj_out_dim == 256
    model = VimpacForPretraining(cfg).eval()
    model.load_state_dict(conv.state)  # strict: every parameter has a source
    with torch.no_grad():
        out = model.backbone(ref["codes"])
        b, t, h, w = ref["codes"].shape
        assert out.hidden.shape == (b, t * h * w, cfg.hid_dim)
        assert rel_err(out.cls, ref["cls"]) < REL_TOL
        assert rel_err(out.hidden.view(b, t, h, w, -1), ref["hidden"]) < REL_TOL
        first_frame = out.hidden[0, : h * w]  # clip 0, frame 0: (h*w, D) in (h, w) order
        logits = model.mp_head(first_frame, model.backbone.embeddings.code.weight).view(ref["mlm_logits"].shape)
        assert rel_err(logits, ref["mlm_logits"]) < REL_TOL
        assert rel_err(model.cl_head(out.cls), ref["nce"]) < REL_TOL
    dropped = " ".join(conv.notes)
    for what in ("mlm_head.bias[8192:]", "mlm_head.decoder.weight", "mlm_head.decoder.bias", "spare rows [8198, 8199]"):
        assert what in dropped


def test_finetune_fixture_matches_reference():
    conv = read_original(FIXTURES / "finetune" / "last" / "classifier.pt")
    ref = reference("finetune")
    assert conv.kind == "classification" and conv.num_classes == 7
    model = VimpacForClassification(conv.config, num_classes=7).eval()
    model.load_state_dict(conv.state)
    with torch.no_grad():
        out = model.backbone(ref["codes"])
        assert rel_err(out.cls, ref["cls"]) < REL_TOL
        assert rel_err(out.hidden.view(ref["hidden"].shape), ref["hidden"]) < REL_TOL
        assert rel_err(model(ref["codes"]), ref["class_logits"]) < REL_TOL


def test_special_rows_follow_special_tokens():
    conv = read_original(FIXTURES / "pretrain")
    sd = torch.load(FIXTURES / "pretrain" / "last" / "classifier.pt", weights_only=True)
    st = conv.config.special_tokens
    table = conv.state["backbone.embeddings.code.weight"]
    assert table.shape[0] == st.num_embeddings
    assert torch.equal(table[: st.vocab_size], sd["backbone.embedding.weight"][:8192])
    assert torch.equal(table[st.mask], sd["backbone.embedding.weight"][8196])
    assert torch.equal(table[st.pad], sd["backbone.embedding.weight"][8193])
    cls = sd["backbone.cls_param"] + sd["backbone.positional_embedding.cls_pos_embedding"][0]
    assert torch.equal(table[st.cls], cls)


def test_pad_clips_run_and_clips_without_pad_agree():
    # [PAD] is 8193 in the original and here (vocab 8192): codes_pad feeds both. The original averages the
    # [CLS] copies of rows inside [PAD] frames too, so only clips without [PAD] must agree (fixture README).
    model = load_model(FIXTURES / "finetune")
    ref = reference("finetune")
    codes_pad = ref["codes_pad"]
    assert model.cfg.special_tokens.pad == 8193 and (codes_pad == 8193).any()
    with torch.no_grad():
        out = model.backbone(codes_pad)
        assert torch.isfinite(out.cls).all() and out.frame_valid is not None
        for i in (0, 2):
            assert rel_err(out.cls[i], ref["cls_pad"][i]) < REL_TOL
        # here a clip with a trailing [PAD] frame gives the [CLS] of the shorter clip
        short = model.backbone(codes_pad[1:2, :3]).cls
        assert torch.allclose(out.cls[1:2], short, atol=1e-5)


# ----------------------------------------------------------------------------- flags the fixtures do not cover

FLAG_CASES = [
    # model, pos_emb, hid_dim, halve_att, halve_mlp, pre_activation, nce layers, bn after proj
    ("efflayoutT,H,W", "default", 128, False, False, False, 2, False),
    ("efflayoutT|H|W", "temporal_separation", 192, True, True, False, 3, True),
    ("efflayoutH|W,T", "hw_separation", 128, False, True, True, 2, False),
    ("efflayoutT,H", "default", 128, True, False, False, 1, True),
    ("efflayoutT", "temporal_separation", 128, False, False, True, 3, False),
]


@pytest.mark.parametrize("case", FLAG_CASES, ids=[f"{c[0][9:]}-{c[1]}" for c in FLAG_CASES])
def test_flags_match_the_restated_original(case):
    model_flag, pos_emb, hid, halve_att, halve_mlp, pre, nce_layers, bn_after = case
    a = dict(model=model_flag, pos_emb=pos_emb, hid_dim=hid, halve_att=halve_att, halve_mlp=halve_mlp,
             pre_activation=pre, nce_proj_layers=nce_layers, nce_proj_hid_dim=48, nce_bn_after_proj=bn_after,
             layers=2, clip_len=3, frame_size=24, vocab_size=8192, dropout=0.1)
    sd = random_original_state(a)
    conv = convert_original(sd, a)
    cfg = conv.config
    assert cfg.pre_ln == pre and cfg.embed_norm == (not pre) and cfg.nce_bn_after_proj == bn_after
    assert cfg.head_dim == (32 if halve_att else 64) and cfg.mlp_dim == hid * (2 if halve_mlp else 4)
    model = VimpacForPretraining(cfg).eval()
    model.load_state_dict(conv.state)
    codes = torch.randint(0, 8192, (2, 3, 3, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls, hidden = original_forward(sd, a, codes)
        out = model.backbone(codes)
        assert rel_err(out.cls, cls) < REL_TOL and rel_err(out.hidden.view(hidden.shape), hidden) < REL_TOL
        logits = model.mp_head(out.hidden[0], model.backbone.embeddings.code.weight)
        assert rel_err(logits, original_mlm_logits(sd, hidden[0].flatten(0, 2))) < REL_TOL
        assert rel_err(model.cl_head(out.cls), original_nce(sd, a, cls)) < REL_TOL

    labels = random_original_state(a, num_labels=5, seed=2)
    conv = convert_original(labels, a)
    clf = VimpacForClassification(conv.config, num_classes=5).eval()
    clf.load_state_dict(conv.state)
    with torch.no_grad():
        cls, _ = original_forward(labels, a, codes)
        assert rel_err(clf(codes), F.linear(cls, labels["cls_fc.weight"], labels["cls_fc.bias"])) < REL_TOL


def test_untrained_heads_are_reported_not_zero_filled():
    a = dict(fixture_args("pretrain"))
    sd = {k: v for k, v in random_original_state(a).items()
          if not k.startswith("cls_head.")}
    conv = convert_original(sd, a)
    assert any("no cls_head.*" in n and "--nce-weight 0" in n for n in conv.notes)
    weight = conv.state["cl_head.net.0.weight"]
    assert weight.abs().sum() > 0 and torch.equal(weight, convert_original(sd, a).state["cl_head.net.0.weight"])
    VimpacForPretraining(conv.config).load_state_dict(conv.state)


# ----------------------------------------------------------------------------- refusals

class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_hostile_args_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snap = copy_fixture("pretrain", tmp_path)
    args_pickle = snap / "last" / "args.pickle"
    payloads = {
        "os.system reference": (pickle.dumps(os.system), rf"refused global {os.system.__module__}\.system"),
        "reduce to os.system": (pickle.dumps(Evil()), rf"refused global {os.system.__module__}\.system"),
        "custom class": (pickle.dumps(argparse.Namespace(model=Path("x"))), r"refused global pathlib\.\w*Path"),
        "class in this module": (pickle.dumps(Evil), rf"refused global {__name__}\.Evil"),
    }
    for name, (data, pattern) in payloads.items():
        args_pickle.write_bytes(data)
        with pytest.raises(OriginalCheckpointError, match=rf"{args_pickle}: {pattern}"):
            read_original(snap)
        # a refusal is an error even where args.txt could stand in; load_model raises the same error
        with pytest.raises(CheckpointError, match="refused global"):
            load_model(snap)
    assert not (tmp_path / "PWNED").exists()
    args_pickle.write_bytes(pickle.dumps(["not", "a", "namespace"]))
    with pytest.raises(OriginalCheckpointError, match="expected an argparse.Namespace, found list"):
        read_original(snap)
    args_pickle.write_bytes(b"\x80\x04garbage")
    with pytest.raises(OriginalCheckpointError, match=f"{args_pickle}: unreadable argument pickle"):
        read_original(snap)


def test_missing_args_pickle_falls_back_to_args_txt(tmp_path):
    snap = copy_fixture("pretrain", tmp_path)
    (snap / "last" / "args.pickle").unlink()
    conv = read_original(snap)
    assert "args.txt" in conv.notes[0] and "args.pickle is missing" in conv.notes[0]
    assert conv.config == read_original(FIXTURES / "pretrain").config
    (snap / "last" / "args.txt").write_text("{'model': __import__('os').system('touch PWNED')}")
    with pytest.raises(OriginalCheckpointError, match=f"{snap / 'last' / 'args.txt'}: not a Python literal"):
        read_original(snap)
    (snap / "last" / "args.txt").unlink()
    with pytest.raises(OriginalCheckpointError, match="without args.pickle or args.txt"):
        read_original(snap)


def test_classifier_pt_that_is_not_weights_only_is_refused(tmp_path):
    snap = copy_fixture("finetune", tmp_path)
    weights = snap / "last" / "classifier.pt"
    sd = torch.load(weights, weights_only=True)
    torch.save({**sd, "extra": Evil()}, weights)
    with pytest.raises(OriginalCheckpointError, match=f"{weights}: not a weights-only state dict, refused"):
        read_original(snap)
    torch.save({"model": sd}, weights)  # loadable, but not a flat state dict
    with pytest.raises(OriginalCheckpointError, match=f"{weights}: expected a state dict"):
        read_original(snap)
    weights.write_bytes(b"not a zip")
    with pytest.raises(OriginalCheckpointError, match=f"{weights}: not a weights-only"):
        load_model(snap)


def test_mapping_errors_name_the_problem():
    a = fixture_args("pretrain")
    sd = torch.load(FIXTURES / "pretrain" / "last" / "classifier.pt", weights_only=True)
    with pytest.raises(OriginalCheckpointError, match="vocab-size 2048.*literals"):
        convert_original(sd, {**a, "vocab_size": 2048})
    with pytest.raises(OriginalCheckpointError, match=r"lacks \['hid_dim'\]"):
        convert_original(sd, {k: v for k, v in a.items() if k != "hid_dim"})
    with pytest.raises(OriginalCheckpointError, match="does not know.*backbone.extra"):
        convert_original({**sd, "backbone.extra": torch.zeros(1)}, a)
    with pytest.raises(OriginalCheckpointError, match="no 'backbone.ln_pre.weight'"):
        convert_original({k: v for k, v in sd.items() if k != "backbone.ln_pre.weight"}, a)
    with pytest.raises(OriginalCheckpointError, match="mlm_head.decoder.weight differs"):
        convert_original({**sd, "mlm_head.decoder.weight": sd["mlm_head.decoder.weight"] + 1}, a)
    with pytest.raises(OriginalCheckpointError, match="does not fit.*shape mismatches"):
        convert_original(sd, {**a, "halve_mlp": True})
    with pytest.raises(OriginalCheckpointError, match="clip-len 5"):
        convert_original(sd, {**a, "clip_len": 5})
    # a DistributedDataParallel prefix is stripped and reported
    conv = convert_original({"module." + k: v for k, v in sd.items()}, a)
    assert any("module." in n for n in conv.notes)


# ----------------------------------------------------------------------------- load_model / read_weights

def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=37, clip_len=3, grid_h=4, grid_w=4, layers=1, hid_dim=32, heads=2,
                                 head_dim=16, mlp_dim=64, nce_proj_hid_dim=16, nce_proj_out_dim=8), **kw})


def test_load_model_accepts_every_original_path(tmp_path):
    ref = reference("pretrain")
    last = FIXTURES / "pretrain" / "last"
    for path in (FIXTURES / "pretrain", last, last / "classifier.pt"):
        model = load_model(path)
        assert isinstance(model, VimpacForPretraining) and not model.training
        assert next(model.parameters()).device.type == "cpu"
        with torch.no_grad():
            assert rel_err(model.backbone(ref["codes"]).cls, ref["cls"]) < REL_TOL
    w = read_weights(str(FIXTURES / "finetune"))
    assert (w.kind, w.num_classes, w.source) == ("classification", 7, "original")
    assert w.task["kind"] == TASK_KIND and w.task["num_classes"] == 7
    assert w.path == str(FIXTURES / "finetune" / "last")
    assert isinstance(load_model(FIXTURES / "finetune"), VimpacForClassification)


def test_load_model_reads_project_checkpoints(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg)
    run = tmp_path / "pretrain_run"
    save_checkpoint(str(run / "last"), model_state=model.state_dict(), model_config=cfg, train_config={}, step=3,
                    epoch=1)
    codes = torch.randint(0, 37, (2, 3, 4, 4))
    for path in (run, run / "last", run / "last" / "model.safetensors", run / "last" / "config.json"):
        loaded = load_model(path)
        assert isinstance(loaded, VimpacForPretraining) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded.backbone(codes).cls, model.eval().backbone(codes).cls)
    w = read_weights(run)
    assert (w.kind, w.source, w.task, w.path) == ("pretrain", "vimpac", None, str(run / "last"))

    # a fine-tuning output with best/ and last/ (best wins), recorded the way the trainer records its task
    clf = VimpacForClassification(cfg, num_classes=4)
    task = {"kind": TASK_KIND, "num_classes": 4, "label_names": list("abcd")}
    for sub in ("best", "last"):
        save_checkpoint(str(tmp_path / "ft" / sub), model_state=clf.state_dict(), model_config=cfg,
                        train_config={"task": task}, step=0, epoch=0)
    w = read_weights(tmp_path / "ft")
    assert (w.kind, w.num_classes, w.task, w.path) == ("classification", 4, task, str(tmp_path / "ft" / "best"))
    assert resolve_checkpoint(tmp_path / "ft") == str(tmp_path / "ft" / "best")
    assert isinstance(load_model(tmp_path / "ft"), VimpacForClassification)

    save_checkpoint(str(tmp_path / "bad"), model_state=clf.state_dict(), model_config=cfg,
                    train_config={"task": {**task, "num_classes": 5}}, step=0, epoch=0)
    with pytest.raises(CheckpointError, match="num_classes 5 but head.fc.weight has 4 rows"):
        read_weights(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="neither a VIMPAC checkpoint.*nor an original"):
        read_weights(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_configs_without_the_new_keys_still_load():
    d = tiny_cfg().to_dict()
    for key in ("embed_norm", "nce_proj_bias", "nce_bn_after_proj"):
        del d[key]
    cfg = ModelConfig.from_dict(d)
    assert cfg.embed_norm and cfg.nce_proj_bias and not cfg.nce_bn_after_proj
    assert "cl_head.net.3.bias" in VimpacForPretraining(cfg).state_dict()


# ----------------------------------------------------------------------------- CLI

def cli(capsys, *args: str) -> tuple[int, str, str]:
    from vimpac.convert_original import main

    try:
        rc = main(list(args))
    except SystemExit as e:  # --help
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "converted"
    # once through `python -m`, the rest in-process
    r = subprocess.run([sys.executable, "-m", "vimpac.convert_original", str(FIXTURES / "finetune"), "--output",
                        str(out)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "74 original tensors" in r.stdout and "classifier over 7 classes" in r.stdout and "note:" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["task"]["kind"] == TASK_KIND and config["train"]["task"]["num_classes"] == 7
    assert config["train"]["converted_from"]["args"]["model"] == "efflayoutT,H|W"
    ref = reference("finetune")
    w = read_weights(out)
    assert (w.kind, w.num_classes, w.source) == ("classification", 7, "vimpac")
    with torch.no_grad():
        assert rel_err(load_model(out)(ref["codes"]), ref["class_logits"]) < REL_TOL

    rc, _, err = cli(capsys, str(FIXTURES / "pretrain"), "--output", str(out))
    assert rc == 2 and "not empty; pass --overwrite" in err
    rc, stdout, err = cli(capsys, str(FIXTURES / "pretrain"), "--output", str(out), "--overwrite")
    assert rc == 0, err
    assert "dropped mlm_head.bias[8192:]" in stdout and "pre-training model" in stdout
    ref = reference("pretrain")
    with torch.no_grad():
        assert rel_err(load_model(out).backbone(ref["codes"]).cls, ref["cls"]) < REL_TOL

    snap = copy_fixture("pretrain", tmp_path)
    rc, _, err = cli(capsys, str(snap), "--output", str(snap), "--overwrite")
    assert rc == 2 and "holds the source" in err and (snap / "last" / "classifier.pt").exists()
    (snap / "last" / "args.pickle").write_bytes(pickle.dumps(Evil()))
    rc, _, err = cli(capsys, str(snap), "--output", str(tmp_path / "o1"))
    assert rc == 2 and "refused global" in err and not (tmp_path / "o1").exists()
    rc, _, err = cli(capsys, str(tmp_path / "nothing"), "--output", str(tmp_path / "o2"))
    assert rc == 2 and "not an original VIMPAC snapshot" in err
    rc, stdout, _ = cli(capsys, "--help")
    assert rc == 0 and "python -m vimpac.convert_original runs/" in stdout and "--overwrite" in stdout


def test_find_original_ignores_other_folders(tmp_path):
    assert find_original(tmp_path) is None
    assert find_original(FIXTURES / "pretrain" / "last" / "args.txt") is None
    files = find_original(FIXTURES / "pretrain")
    assert files.folder == str(FIXTURES / "pretrain" / "last") and files.args_pickle.endswith("args.pickle")
