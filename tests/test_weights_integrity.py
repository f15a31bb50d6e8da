"""Issue 14, weights and training: checkpoints with non-finite or integer weights are refused naming the
tensor, absurd or mismatched configs are refused before a model is built, and a skipped non-finite step
restores everything it touched (BatchNorm statistics included) in pre-training and fine-tuning.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_store  # noqa: E402

from video2token.runlog import read_metrics  # noqa: E402
from vimpac.model.checkpoint import (CONFIG_FILE, MODEL_FILE, OPTIM_FILE, CheckpointError,  # noqa: E402
                                     load_checkpoint, save_checkpoint)
from vimpac.model.config import LIMITS, MAX_PARAMETERS, ModelConfig, named_config  # noqa: E402
from vimpac.model.loading import TASK_KIND, read_weights  # noqa: E402
from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining  # noqa: E402
from vimpac.model.weights_check import WeightsCheckError, check_fits, read_header  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(layers=2, hid_dim=32, heads=2, head_dim=16, mlp_dim=64, nce_proj_hid_dim=32, vocab_size=32, clip_len=4,
            grid_h=4, grid_w=4)
TENSOR = "backbone.layers.1.mlp.fc1.weight"  # a float tensor both model kinds hold


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _checkpoint(path: str, *, classes: int | None = None, optimizer: bool = False) -> str:
    torch.manual_seed(0)
    cfg = named_config("small", **TINY)
    if classes:
        model = VimpacForClassification(cfg, num_classes=classes)
        train = {"task": {"kind": TASK_KIND, "num_classes": classes, "label_names": ["a", "b", "c"][:classes],
                          "fps": 2.0, "frame_size": 32, "num_test_clips": 1}}
    else:
        model, train = VimpacForPretraining(cfg), {}
    state = model.state_dict()
    optim = {f"exp_avg.{k}": torch.zeros_like(v) for k, v in state.items() if v.is_floating_point()} if optimizer \
        else None
    return save_checkpoint(path, model_state=state, model_config=cfg, train_config=train, step=1, epoch=1,
                           optimizer_state=optim, trainer_state={"step": 1} if optimizer else None)


def _edit_tensors(path: str, edit) -> None:
    """Rewrite a safetensors file with `edit(tensors)` applied (what a broken writer or a bad disk leaves)."""
    tensors = load_file(path)
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def _edit_config(ckpt: str, **model_config) -> None:
    p = os.path.join(ckpt, CONFIG_FILE)
    config = json.load(open(p))
    config["model_config"].update(model_config)
    json.dump(config, open(p, "w"))


# ----------------------------------------------------------------------------- values and dtypes

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    _edit_tensors(os.path.join(ckpt, MODEL_FILE), lambda t: t[TENSOR].view(-1).__setitem__(3, value))
    with pytest.raises(CheckpointError, match=f"tensor {TENSOR} holds 1 non-finite value"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=f"tensor {TENSOR} holds 1 non-finite"):
        read_weights(ckpt)  # what fine-tuning's --load and predict read


def test_non_finite_optimizer_moments_are_refused_naming_the_tensor(tmp_path):
    ckpt = _checkpoint(str(tmp_path / "ck"), optimizer=True)
    load_checkpoint(ckpt)  # clean
    _edit_tensors(os.path.join(ckpt, OPTIM_FILE), lambda t: t[f"exp_avg.{TENSOR}"].fill_(math.nan))
    with pytest.raises(CheckpointError, match=f"tensor exp_avg.{TENSOR} holds 2048 non-finite"):
        load_checkpoint(ckpt)
    load_checkpoint(ckpt, weights_only=True)  # the weights alone are fine
    _edit_tensors(os.path.join(ckpt, OPTIM_FILE), lambda t: t.__setitem__(f"exp_avg.{TENSOR}",
                                                                           torch.zeros(3, dtype=torch.int64)))
    with pytest.raises(CheckpointError, match=f"tensor exp_avg.{TENSOR} is stored as torch.int64; a float"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("dtype,name", [(torch.int32, "I32"), (torch.int16, "I16"), (torch.bool, "BOOL"),
                                        (torch.uint8, "U8")])
def test_integer_weights_where_floats_belong_are_refused_naming_the_tensor(tmp_path, dtype, name):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    _edit_tensors(os.path.join(ckpt, MODEL_FILE), lambda t: t.__setitem__(TENSOR, t[TENSOR].to(dtype)))
    with pytest.raises(CheckpointError, match=f"tensor {TENSOR} is stored as {name}; a float tensor belongs there"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("damage", ["nan", "int32"])
def test_an_original_snapshot_with_nan_or_integer_weights_is_refused(tmp_path, damage):
    import shutil

    from conftest import original_fixtures

    src = original_fixtures() / "finetune" / "last"
    if not src.is_dir():
        pytest.skip(f"no original VIMPAC fixtures at {src}")
    snap = tmp_path / "last"
    shutil.copytree(src, snap, copy_function=shutil.copyfile)
    assert read_weights(str(snap)).num_classes == 7
    state = torch.load(snap / "classifier.pt", weights_only=True, map_location="cpu")
    key = "backbone.positional_embedding.cls_pos_embedding"
    state[key] = state[key].clone().fill_(math.nan) if damage == "nan" else state[key].to(torch.int32)
    torch.save(state, snap / "classifier.pt")
    with pytest.raises(CheckpointError, match="non-finite value" if damage == "nan" else "stored as torch.int32"):
        read_weights(str(snap))


def test_predict_on_a_nan_checkpoint_exits_non_zero_naming_the_tensor(tmp_path, capsys):
    from vimpac.predict import main

    ckpt = _checkpoint(str(tmp_path / "ck"), classes=3)
    _edit_tensors(os.path.join(ckpt, MODEL_FILE), lambda t: t["head.fc.weight"].fill_(math.nan))
    assert main(["--checkpoint", ckpt, "--device", "cpu", str(tmp_path / "video.mp4")]) == 2
    out = capsys.readouterr()
    assert "tensor head.fc.weight holds 96 non-finite value(s)" in out.err and "nan%" not in out.out


# ----------------------------------------------------------------------------- configs checked before building

@pytest.mark.parametrize("key,value", [("hid_dim", 10 ** 9), ("layers", 10 ** 6), ("vocab_size", 10 ** 12),
                                       ("mlp_dim", 2 ** 40)])
def test_an_absurd_config_is_refused_before_anything_is_built(tmp_path, monkeypatch, key, value):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    _edit_config(ckpt, **{key: value})
    import vimpac.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_read_tensors", lambda p: pytest.fail("tensors read before the check"))
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=f"ModelConfig.{key} = {value} is beyond the sane limit {LIMITS[key]}"):
        load_checkpoint(ckpt)
    assert time.monotonic() - t0 < 5


def test_sizes_within_each_limit_but_absurd_together_are_refused():
    with pytest.raises(ValueError, match="about .*B parameters, beyond the sane limit of 50B"):
        named_config("small", **{**TINY, "layers": 256, "hid_dim": 16384, "mlp_dim": 65536})
    assert named_config("small", **TINY).approx_parameters < MAX_PARAMETERS
    # the estimate is within a few percent of the real count (counted on the meta device: nothing allocated)
    for name, kw in [("small", {}), ("base", {}), ("small", {"pos_emb": "temporal_separation"}),
                     ("small", {**TINY, "hid_dim": 64, "mlp_dim": 256, "vocab_size": 512})]:
        cfg = named_config(name, **kw)
        with torch.device("meta"):
            real = sum(p.numel() for p in VimpacForPretraining(cfg).parameters())
        assert abs(cfg.approx_parameters - real) / real < 0.05, (name, kw, cfg.approx_parameters, real)


@pytest.mark.parametrize("change,message", [
    ({"hid_dim": 64}, "tensor backbone.embeddings.pos_t has shape (4, 32) but the recorded config needs (4, 64)"),
    ({"layers": 3}, "the weights do not fit the recorded config (layers=3, hid_dim=32): missing ['backbone.layers.2"),
    ({"layers": 1}, "unexpected ['backbone.layers.1"),
    ({"vocab_size": 48}, "but the recorded config needs (56, 32)"),
])
def test_a_config_that_does_not_fit_the_weights_header_is_refused_before_reading(tmp_path, monkeypatch, change,
                                                                                  message):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    _edit_config(ckpt, **change)
    import vimpac.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_read_tensors", lambda p: pytest.fail("tensors read before the check"))
    with pytest.raises(CheckpointError, match="recorded config") as e:
        load_checkpoint(ckpt)
    assert message in str(e.value), str(e.value)


def test_a_header_is_read_without_the_tensors_and_garbage_is_an_error(tmp_path):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    header = read_header(os.path.join(ckpt, MODEL_FILE))
    assert header[TENSOR] == ("F32", (64, 32))
    assert check_fits(named_config("small", **TINY), header, "x") is None  # a pre-training model: no classifier
    for data, msg in [(b"abc", "shorter than its 8-byte header length"),
                      ((10 ** 12).to_bytes(8, "little") + b"{}", "header length 1000000000000"),
                      ((4).to_bytes(8, "little") + b"\xff\xfe{}", "unreadable safetensors header"),
                      ((2).to_bytes(8, "little") + b"[]", "header is not a JSON object")]:
        p = tmp_path / "bad.safetensors"
        p.write_bytes(data)
        with pytest.raises(WeightsCheckError, match=msg):
            read_header(str(p))
    (tmp_path / "ck" / MODEL_FILE).write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors header"):
        load_checkpoint(ckpt)


def test_a_classifier_head_that_does_not_fit_is_refused(tmp_path):
    ckpt = _checkpoint(str(tmp_path / "ck"), classes=3)
    assert read_weights(ckpt).num_classes == 3
    _edit_tensors(os.path.join(ckpt, MODEL_FILE), lambda t: t.__setitem__("head.fc.weight", torch.zeros(3, 16)))
    with pytest.raises(CheckpointError, match=r"tensor head.fc.weight has shape \(3, 16\) but the recorded config "
                                              r"needs \(3, 32\)"):
        read_weights(ckpt)


def test_model_config_limits_hold_for_direct_construction():
    with pytest.raises(ValueError, match="hid_dim = 1000000000 is beyond the sane limit"):
        ModelConfig(**{**TINY, "hid_dim": 10 ** 9})


@pytest.mark.parametrize("key,value", [("layer_norm_eps", math.nan), ("layer_norm_eps", math.inf),
                                       ("layer_norm_eps", -1e-5), ("init_std", math.nan), ("init_std", "0.02"),
                                       ("dropout", math.nan)])
def test_a_non_finite_or_wrong_float_in_a_config_is_refused(tmp_path, key, value):
    ckpt = _checkpoint(str(tmp_path / "ck"))
    _edit_config(ckpt, **{key: value})  # json writes NaN / Infinity, which Python's reader accepts
    with pytest.raises(CheckpointError, match=f"bad model_config \\(ModelConfig.{key} must be"):
        load_checkpoint(ckpt, weights_only=True)


# ----------------------------------------------------------------------------- corrupt stores stop training

@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_training_on_a_corrupt_store_is_a_clear_error_naming_the_shard(tmp_path, capsys, entry):
    import h5py

    import vimpac.finetune
    import vimpac.pretrain

    train = make_store(str(tmp_path / "train"), num_videos=16, seed=0)
    shard = os.path.join(train, "shard-00000-of-00001.h5")
    with h5py.File(shard, "r+") as f:  # the lowest bit of 200 codes: still inside the vocabulary
        codes = f["codes"][()]
        codes[:200] ^= 1
        f["codes"][:] = codes
    common = ["--train-tokens", train, "--output", str(tmp_path / "out"), "--num-workers", "0", "--no-tqdm"]
    if entry == "pretrain":
        rc = vimpac.pretrain.main(common + ["--layers", "2", "--hid-dim", "32", "--heads", "2", "--clip-len", "4"])
    else:
        pre = _checkpoint(str(tmp_path / "pre"))
        rc = vimpac.finetune.main(common + ["--load", pre, "--valid-tokens", train])
    err = capsys.readouterr().err
    assert rc == 2 and f"--train-tokens: shard {shard} is corrupt: SHA-256" in err, err
    assert not os.path.exists(os.path.join(tmp_path, "out", "last"))
    if entry == "pretrain":  # trusted storage: the SHA-256 is skipped; flipped codes pass the index checks
        rc = vimpac.pretrain.main(common + ["--layers", "2", "--hid-dim", "32", "--heads", "2", "--clip-len", "4",
                                            "--epochs", "1", "--no-verify-stores"])
        assert rc == 0, capsys.readouterr().err[-2000:]
        assert os.path.exists(os.path.join(tmp_path, "out", "last"))


# ----------------------------------------------------------------------------- skipped steps restore buffers

def _hooked(entry: str, hooks: list[str], args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hooked_run.py"), entry, *hooks, "--",
                           *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("zero", ["0", "1"])
def test_pretraining_skips_an_inf_activation_and_restores_batchnorm_statistics(tmp_path, zero):
    train = make_store(str(tmp_path / "train"), num_videos=16, grid=4, vocab_size=32, seed=0)
    out = str(tmp_path / "out")
    # 16 videos, global batch 4 (2 x 2 accumulation): 4 steps; step 2 sees +Inf in the first BatchNorm
    proc = _hooked("pretrain", ["--inf-activation-steps", "2"],
                   ["--train-tokens", train, "--output", out, "--layers", "2", "--hid-dim", "32", "--heads", "2",
                    "--nce-proj-hid-dim", "32", "--clip-len", "4", "--mask-blocks", "2", "--num-workers", "0",
                    "--no-tqdm", "--seed", "3", "--batch-size", "4", "--bs-per-gpu", "2", "--epochs", "1",
                    "--save-steps", "1", "--zero-stage", zero])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # every later save worked
    sums = {}
    for line in proc.stdout.splitlines():
        if line.startswith("[buffers] step "):
            step, value = line[len("[buffers] step "):].split(": ")
            sums[int(step)] = float(value)
    assert sorted(sums) == [1, 2, 3, 4] and all(math.isfinite(v) for v in sums.values())
    assert sums[3] == sums[2] != sums[1]  # the skipped step 2 left the statistics of step 1
    rows = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in rows if r["skipped"]] == [2]
    ck = load_checkpoint(os.path.join(out, "last"))
    assert ck.trainer_state["step"] == 4 and ck.trainer_state["adam_step"] == 3
    assert any("running_var" in k for k in ck.model_state)


def test_finetuning_skips_an_inf_gradient(tmp_path):
    torch.manual_seed(0)
    cfg = named_config("small", **TINY)
    pre = save_checkpoint(str(tmp_path / "pre" / "last"), model_state=VimpacForPretraining(cfg).state_dict(),
                          model_config=cfg, train_config={}, step=1, epoch=1)
    train = make_store(str(tmp_path / "train"), num_videos=16, seed=0)
    valid = make_store(str(tmp_path / "valid"), num_videos=6, seed=1)
    out = str(tmp_path / "out")
    proc = _hooked("finetune", ["--inf-grad-steps", "2"],
                   ["--load", pre, "--train-tokens", train, "--valid-tokens", valid, "--output", out, "--epochs", "2",
                    "--num-test-clips", "1", "--num-workers", "0", "--no-tqdm", "--batch-size", "8", "--bs-per-gpu",
                    "4", "--lr", "1e-3", "--eval-batch-size", "4", "--seed", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 2: non-finite loss or gradient, update skipped" in proc.stderr + proc.stdout
    rows = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in rows if r["skipped"]] == [2]
    assert all(math.isfinite(r["loss"]) for r in rows if not r["skipped"])
    ck = load_checkpoint(os.path.join(out, "last"))  # refuses NaN weights itself
    assert ck.trainer_state["adam_step"] == 3
    res = json.load(open(os.path.join(out, "results.json")))
    assert math.isfinite(res["final"]["top1"])
