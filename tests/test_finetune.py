"""Tests of `python -m vimpac.finetune`, multi-clip evaluation and the vocabulary / shape surgery (tiny CPU models)."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_store  # noqa: E402

from vimpac.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from vimpac.model.config import named_config  # noqa: E402
from vimpac.eval.scores import clip_probs, evaluate, topk_accuracy  # noqa: E402
from vimpac.model.surgery import remap_vocab  # noqa: E402
from vimpac.data.clips import ClipSpec, uniform_starts  # noqa: E402
from vimpac.data.finetune_clips import EvalClips, TrainClips  # noqa: E402
from vimpac.data.registry import get_finetune_spec  # noqa: E402
from video2token.runlog import read_metrics  # noqa: E402
from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining  # noqa: E402
from video2token.store import TokenStore  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(layers=2, hid_dim=32, heads=2, head_dim=16, mlp_dim=64, nce_proj_hid_dim=32, vocab_size=32, clip_len=4,
            grid_h=4, grid_w=4)
FAST = ["--num-workers", "0", "--no-tqdm", "--batch-size", "8", "--bs-per-gpu", "4", "--lr", "1e-3",
        "--eval-batch-size", "4", "--seed", "1"]


def save_pretrained(path: str, **overrides) -> str:
    torch.manual_seed(0)
    cfg = named_config("small", **{**TINY, **overrides})
    model = VimpacForPretraining(cfg)
    return save_checkpoint(path, model_state=model.state_dict(), model_config=cfg, train_config={}, step=1, epoch=1)


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "vimpac.finetune", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    return {
        "pre": save_pretrained(str(d / "pre" / "last")),
        # two views of the same 16 labelled videos (3 classes), and a 4x4-code test store
        "train": [make_store(str(d / "train_a"), num_videos=16, seed=0),
                  make_store(str(d / "train_b"), num_videos=16, seed=0, hflip=True)],
        "valid": [make_store(str(d / "valid"), num_videos=6, seed=1)],
        "test": [make_store(str(d / "test"), num_videos=5, seed=4)],
        # 8x8 codes (twice the frame size of pre-training)
        "train8": [make_store(str(d / "train8"), num_videos=8, grid=8, seed=2)],
        "valid8": [make_store(str(d / "valid8"), num_videos=4, grid=8, seed=3)],
        "dir": d,
    }


@pytest.fixture(scope="module")
def finetuned(data):
    out = str(data["dir"] / "out")
    ok(run(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
            "--test-tokens", *data["test"], "--output", out, "--epochs", "2", "--num-test-clips", "2",
            "--last-test-clips", "1,3", *FAST]))
    return out


def test_finetune_writes_results_reports_and_checkpoints(finetuned):
    res = json.load(open(os.path.join(finetuned, "results.json")))
    for key in ("final", "best"):
        assert 0 <= res[key]["top1"] <= res[key]["top5"] <= 100
    assert res["final"]["num_test_clips"] == 2 and res["final"]["num_crops"] == 1 and res["final"]["num_videos"] == 6
    assert set(res["last_test_clips"]) == {"1", "3"}
    assert res["last_test_clips"]["3"]["num_test_clips"] == 3
    rows = [r for r in read_metrics(os.path.join(finetuned, "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # 16 videos / batch 8 = 2 steps x 2 epochs
    assert all(np.isfinite(r["loss"]) for r in rows)
    with open(os.path.join(finetuned, "per_class_accuracy.csv")) as f:
        per_class = list(csv.DictReader(f))
    assert [int(r["class"]) for r in per_class] == [0, 1, 2] and sum(int(r["videos"]) for r in per_class) == 6
    with open(os.path.join(finetuned, "predictions.csv")) as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 6 and preds[0]["video_id"] == "vid_0000.mp4" and "score3" in preds[0]
    assert abs(sum(float(preds[0][f"score{i}"]) for i in (1, 2, 3)) - 1) < 1e-4  # 3 classes: top-3 = all
    with open(os.path.join(finetuned, "confusion_matrix.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"
    best = load_checkpoint(os.path.join(finetuned, "best"), weights_only=True)
    assert best.config["train"]["task"]["num_classes"] == 3 and "head.fc.weight" in best.model_state
    last = load_checkpoint(os.path.join(finetuned, "last"))
    assert last.trainer_state["epoch"] == 2 and last.trainer_state["step"] == 4
    # the classifier moved away from its zero init; the backbone kept the pre-trained shape
    assert last.model_state["head.fc.weight"].abs().sum() > 0
    assert last.model_state["backbone.embeddings.pos_h"].shape == (4, 32)


def test_eval_only_reproduces_best_checkpoint_numbers(finetuned, data, tmp_path):
    out = str(tmp_path / "eval")
    ok(run(["--eval-only", "--load", os.path.join(finetuned, "best"), "--valid-tokens", *data["valid"],
            "--output", out, "--num-test-clips", "2", *FAST]))
    res = json.load(open(os.path.join(out, "results.json")))
    best = load_checkpoint(os.path.join(finetuned, "best"), weights_only=True).config["train"]["eval"]
    assert res["final"]["top1"] == pytest.approx(best["top1"]) and res["final"]["top5"] == pytest.approx(best["top5"])
    # without --valid-tokens: the run's own test stores, read from its checkpoint
    again = str(tmp_path / "again")
    log = ok(run(["--eval-only", "--load", os.path.join(finetuned, "best"), "--output", again, "--num-test-clips", "2",
                  *FAST]))
    assert "the test stores of the run" in log
    assert json.load(open(os.path.join(again, "results.json")))["final"]["top1"] == pytest.approx(best["top1"])


def test_eval_only_checks_stores_when_opened_training_leaves_it_to_the_loop(data, tmp_path, capsys):
    import h5py

    import vimpac.finetune as finetune

    bad = tmp_path / "valid"
    shutil.copytree(data["valid"][0], bad)
    shard = bad / "shard-00000-of-00001.h5"
    with h5py.File(shard, "r+") as f:  # bit rot inside the vocabulary: only the SHA-256 notices
        f["codes"][:20] = (f["codes"][:20] + 1) % 32
    args = ["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", str(bad), "--output",
            str(tmp_path / "out"), *FAST]
    assert finetune.main([*args, "--eval-only"]) == 2  # one process: checked before HDF5 reads a byte
    assert f"error: --valid-tokens: shard {shard} is corrupt: SHA-256" in capsys.readouterr().err
    training = finetune.labelled_data(finetune.build_parser().parse_args(args))  # index checks only
    assert training.shards_to_verify() == {
        **{os.path.join(p, "shard-00000-of-00001.h5"): "--train-tokens" for p in data["train"]},
        os.path.join(str(bad), "shard-00000-of-00001.h5"): "--valid-tokens"}
    trusted = finetune.labelled_data(finetune.build_parser().parse_args([*args, "--no-verify-stores"]))
    assert trusted.shards_to_verify() == {}


def test_different_shape_resamples_and_its_absence_is_a_clear_error(data, tmp_path):
    args = ["--load", data["pre"], "--train-tokens", *data["train8"], "--valid-tokens", *data["valid8"],
            "--clip-len", "6", "--epochs", "1", "--num-test-clips", "1", *FAST]
    proc = run(args + ["--output", str(tmp_path / "no_flag")])
    assert proc.returncode == 2
    assert "--different-shape" in proc.stderr and "T=4, 4x4" in proc.stderr and "T=6, 8x8" in proc.stderr
    out = str(tmp_path / "flag")
    ok(run(args + ["--output", out, "--different-shape"]))
    ck = load_checkpoint(os.path.join(out, "last"))
    assert ck.model_config.clip_len == 6 and (ck.model_config.grid_h, ck.model_config.grid_w) == (8, 8)
    assert ck.model_state["backbone.embeddings.pos_t"].shape == (6, 32)
    assert ck.model_state["backbone.embeddings.pos_w"].shape == (8, 32)
    assert os.path.exists(os.path.join(out, "results.json"))


def test_linear_probe_keeps_the_backbone_frozen(data, tmp_path):
    out = str(tmp_path / "probe")
    ok(run(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
            "--output", out, "--epochs", "1", "--num-test-clips", "1", "--linear-probe", "--dropout", "0", *FAST]))
    pre = load_checkpoint(data["pre"], weights_only=True).model_state
    ft = load_checkpoint(os.path.join(out, "last")).model_state
    assert all(torch.equal(ft[k], pre[k]) for k in ft if k.startswith("backbone."))
    assert ft["head.fc.weight"].abs().sum() > 0


def test_multi_clip_scores_are_the_mean_of_single_clip_scores(data):
    torch.manual_seed(0)
    model = VimpacForClassification(named_config("small", **TINY, dropout=0.0), num_classes=3).eval()
    torch.nn.init.normal_(model.head.fc.weight)  # a zero head would give equal scores everywhere
    stores = [TokenStore(p) for p in data["train"]]  # two crops
    clip = ClipSpec(clip_len=4, frame_rate=2)
    multi = evaluate(model, EvalClips(stores, clip, num_clips=3), batch_size=2)
    assert multi.num_clips == 3 and multi.num_crops == 2
    for k in range(len(stores[0])):
        singles = []
        for s in stores:
            codes, _ = s.read_at(k)
            for start in uniform_starts(int(codes.shape[0]), clip.span, 3):
                one = EvalClips([s], clip, num_clips=1)
                clip_codes = torch.from_numpy(one._read(s, k, start))[None, None]  # (1, 1, T, h, w)
                singles.append(clip_probs(model, clip_codes)[0, 0])
        expect = torch.stack(singles).mean(0).numpy()
        np.testing.assert_allclose(multi.scores[k], expect, rtol=1e-5, atol=1e-6)
    assert multi.top1 == topk_accuracy(multi.scores, multi.labels, 1)


def test_uniform_starts_and_training_views():
    assert uniform_starts(10, 4, 1) == [3]
    assert uniform_starts(13, 4, 3) == [2, 4, 8]  # last start 9: centres of three equal thirds
    assert uniform_starts(3, 4, 2) == [0, 0]  # shorter than a clip: both start at 0, [PAD] after
    starts = uniform_starts(101, 1, 10)
    assert starts == sorted(starts) and starts[0] > 0 and starts[-1] < 100
    with pytest.raises(ValueError, match="--num-test-clips"):
        uniform_starts(10, 4, 0)
    ucf, ssv2 = get_finetune_spec("ucf101"), get_finetune_spec("ssv2")
    assert len(ucf.train_views(128)) == 12 and {v.shorter_side for v in ucf.train_views(128)} == {128, 160}
    assert len(ssv2.train_views(128)) == 6 and not any(v.hflip for v in ssv2.train_views(128))
    assert [v.crop_type for v in ssv2.test_views(128)] == ["center"] and len(ucf.test_views(128)) == 3
    assert ucf.split_names(2) == ("train_split2", "val_split2")
    with pytest.raises(ValueError, match="--split-id 4"):
        ucf.split_names(4)


def test_train_clips_pad_short_videos_and_subsample(data):
    store = TokenStore(data["train"][0])
    ds = TrainClips([store], ClipSpec(clip_len=8, frame_rate=2), seed=0)
    k = int(np.argmin(store.num_frames))  # 6..12 frames: a span of 15 never fits
    s = ds[(0, k)]
    pad = store.vocab_size + 1
    n_real = (int(store.num_frames[k]) + 1) // 2
    assert s["codes"].shape == (8, 4, 4) and (s["codes"][n_real:] == pad).all() and (s["codes"][:n_real] < pad).all()
    full, label = store.read_at(k)
    assert torch.equal(s["codes"][:n_real], torch.from_numpy(full[::2].astype(np.int64))) and s["label"] == label


def test_vocabulary_remap_keeps_codes_and_moves_special_tokens():
    old_v, new_v, extra = 32, 40, 8  # 3 specials + 5 spares after the codes
    table = torch.arange((old_v + extra) * 2, dtype=torch.float32).view(old_v + extra, 2)
    grown = remap_vocab(table, old_v, new_v, std=0.02)
    assert grown.shape == (new_v + extra, 2)
    assert torch.equal(grown[:old_v], table[:old_v]) and torch.equal(grown[new_v:], table[old_v:])
    shrunk = remap_vocab(table, old_v, 16, std=0.02)
    assert torch.equal(shrunk[:16], table[:16]) and torch.equal(shrunk[16:], table[old_v:])


def test_missing_stores_and_bad_architecture_flags_are_clear_errors(data, tmp_path):
    proc = run(["--train-tokens", *data["train"], "--valid-tokens", *data["valid"], "--output", str(tmp_path / "x"),
                "--hid-dim", "32", "--heads", "3", *FAST])  # no --load: the architecture flags build the model
    assert proc.returncode == 2 and "--hid-dim 32 is not divisible by --heads 3" in proc.stderr
    proc = run(["--load", data["pre"], "--dataset-name", "ucf101", "--frame-size", "32", "--data-root",
                str(tmp_path / "nothing"), "--output", str(tmp_path / "y"), *FAST])
    assert proc.returncode == 2 and "train_split1" in proc.stderr and "--train-tokens" in proc.stderr


def test_test_tokens_score_the_final_model_once_and_never_choose(finetuned, data, tmp_path):
    out, test = finetuned, data["test"][0]  # (the fixture's run has --test-tokens)
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["final"]["num_videos"] == 6 and res["best"]["num_test_clips"] == 2  # valid: what chooses
    assert {k: res["test"][k] for k in ("num_test_clips", "num_crops", "num_videos")} == {
        "num_test_clips": 2, "num_crops": 1, "num_videos": 5}
    assert "test" not in {r["split"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))}
    # the final model's scores: the same as evaluating last/ on the test store by hand
    again = str(tmp_path / "again")
    ok(run(["--eval-only", "--load", os.path.join(out, "last"), "--valid-tokens", test, "--output", again,
            "--num-test-clips", "2", *FAST]))
    by_hand = json.load(open(os.path.join(again, "results.json")))["final"]
    assert (by_hand["top1"], by_hand["top5"]) == pytest.approx((res["test"]["top1"], res["test"]["top5"]))


def test_test_stores_of_another_code_map_or_label_map_are_refused_by_flag(data, tmp_path):
    from vimpac.data.labelled import LabelledData, LabelledSource
    from vimpac.data.stores import DataError

    src = LabelledSource(train_tokens=tuple(data["train"]), valid_tokens=tuple(data["valid"]))
    with pytest.raises(DataError, match=r"--test-tokens .*valid8: test stores have 32 codes on a \(8, 8\) map"):
        LabelledData(dataclasses.replace(src, test_tokens=tuple(data["valid8"])))
    named = [make_store(str(tmp_path / k), num_videos=4, seed=5, label_names=names)
             for k, names in (("a", ["left", "right", "up"]), ("b", ["circle", "square", "triangle"]))]
    wrong = r"--test-tokens .*b: its label map \['circle'.* differs from --valid-tokens .*a's \['left'"
    with pytest.raises(DataError, match=wrong):
        LabelledData(dataclasses.replace(src, valid_tokens=(named[0],), test_tokens=(named[1],)))
    assert len(LabelledData(dataclasses.replace(src, test_tokens=tuple(data["valid"]))).test_stores) == 1


def test_interval_then_resume_reproduces_the_uninterrupted_run(finetuned, data, tmp_path):
    from safetensors.torch import load_file

    out = str(tmp_path / "resumed")
    args = ["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"], "--output", out,
            "--epochs", "2", "--num-test-clips", "2", *FAST]
    ok(run(args + ["--interval", "1"]))
    assert load_checkpoint(os.path.join(out, "last")).trainer_state["epoch"] == 1
    proc = run(args)
    assert proc.returncode == 2 and "--resume" in proc.stderr  # no silent overwrite of a run
    ok(run(args + ["--resume"]))
    ref = load_file(os.path.join(finetuned, "last", "model.safetensors"))
    got = load_file(os.path.join(out, "last", "model.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    steps = [r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def _class_store(path: str, *, num_videos: int, seed: int) -> str:
    """Videos whose codes come from a class-specific third of the vocabulary: a learnable labelling."""
    from store_factory import store_meta
    from video2token.store import ShardWriter, VideoRecord

    rng = np.random.default_rng(seed)
    w = ShardWriter(path, store_meta(30, 32), shard_id=0, num_shards=1)
    for i in range(num_videos):
        label = i % 3
        codes = rng.integers(10 * label, 10 * label + 10, size=(int(rng.integers(4, 9)), 4, 4)).astype(np.int16)
        w.add(VideoRecord(source_index=i, video_id=f"v{i}", label=label, codes=codes,
                          timestamps=np.arange(len(codes), dtype=np.float64) / 2))
    w.finalize()
    return path


def _learn_labelling(data, tmp_path, *extra: str) -> tuple[str, dict, list[float]]:
    """60 steps (batch 4, lr 3e-3, constant) on the learnable labelling -> (log, results, train losses)."""
    train = _class_store(str(tmp_path / "train"), num_videos=24, seed=0)
    valid = _class_store(str(tmp_path / "valid"), num_videos=6, seed=1)
    out = str(tmp_path / "out")
    text = ok(run(["--load", data["pre"], "--train-tokens", train, "--valid-tokens", valid, "--output", out,
                   "--epochs", "10", "--eval-per-epochs", "10", "--num-test-clips", "1", "--lr-scheduler", "constant",
                   "--warm-up", "0", *FAST, "--lr", "3e-3", "--batch-size", "4", *extra]))  # 60 steps
    res = json.load(open(os.path.join(out, "results.json")))
    losses = [r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    return text, res, losses


def test_finetuning_learns_a_learnable_labelling(data, tmp_path):
    """Vocabulary shrink (32 -> 30 codes) on the way; the classifier must reach high accuracy in a few steps."""
    # the fixture's "pre-trained" backbone is random weights: the head a random backbone needs (with the
    # paper's zero head, 39 of 48 seeds reach 100%, see the next test; the low bits of any change to the step
    # decide which seeds stall)
    text, res, losses = _learn_labelling(data, tmp_path, "--head-init", "normal")
    assert "vocabulary 32 -> 30 codes" in text and "classifier init: normal" in text
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.3, (first, last)
    assert res["final"]["top1"] >= 80.0, res["final"]  # 6 test videos, chance 33%


def test_a_normal_initialised_head_learns_where_the_zero_head_stalls(data, tmp_path):
    """Seed 5 with the zero head merges two classes for good (train loss ~0.47 = 2/3 ln 2, top-1 66.7%):
    the random backbone's [CLS] hardly varies, so the zero head's first Adam steps are rank one.
    A normal head (BERT's N(0, 0.02)) breaks that symmetry from the first step: what --head-init auto gives a
    random backbone (--from-scratch); `--head-init zero` here stalls (loss 0.477)."""
    text, res, losses = _learn_labelling(data, tmp_path, "--seed", "5", "--from-scratch")
    assert "classifier init: normal (--head-init auto: a random backbone)" in text
    assert np.mean(losses[-6:]) < 0.2, losses[-6:]  # the last epoch; a merged pair keeps it near 0.47
    assert res["final"]["top1"] == 100.0, res["final"]


def test_classifier_head_is_zero_by_default_and_normal_on_request():
    cfg = named_config("small", **TINY)
    zero = VimpacForClassification(cfg, num_classes=400).head.fc  # the paper's and the original's init
    assert not zero.weight.any() and not zero.bias.any()
    torch.manual_seed(0)
    normal = VimpacForClassification(cfg, num_classes=400, head_init="normal").head.fc
    assert abs(float(normal.weight.std()) - cfg.init_std) < 0.1 * cfg.init_std and not normal.bias.any()
    with pytest.raises(ValueError, match=r"classifier init must be one of \('zero', 'normal'\), got 'xavier'"):
        VimpacForClassification(cfg, num_classes=3, head_init="xavier")


def test_registry_finds_the_extracted_views_of_a_split(tmp_path):
    from vimpac.data.registry import store_paths

    root = str(tmp_path)
    for name in ("dalle_hmdb51_train_split2_fps4_hflip0_32center32", "dalle_hmdb51_train_split2_fps4_hflip1_40top32",
                 "dalle_hmdb51_val_split2_fps4_hflip0_32center32"):
        os.makedirs(os.path.join(root, name))
    train = store_paths("hmdb51", "train", frame_size=32, split_id=2, root=root, purpose="finetune")
    assert [os.path.basename(p) for p in train] == ["dalle_hmdb51_train_split2_fps4_hflip0_32center32",
                                                   "dalle_hmdb51_train_split2_fps4_hflip1_40top32"]
    assert len(store_paths("hmdb51", "valid", frame_size=32, split_id=2, root=root, purpose="finetune")) == 1
    with pytest.raises(FileNotFoundError, match="val_split1.*--valid-tokens"):
        store_paths("hmdb51", "valid", frame_size=32, split_id=1, root=root, purpose="finetune")
    with pytest.raises(ValueError, match="custom"):
        get_finetune_spec("nope")


def test_from_scratch_keeps_the_architecture_but_not_the_weights(finetuned, data, tmp_path):
    out = str(tmp_path / "scratch")
    ok(run(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
            "--output", out, "--epochs", "1", "--num-test-clips", "1", "--from-scratch", *FAST]))
    pre = load_checkpoint(data["pre"], weights_only=True)
    scratch = load_checkpoint(os.path.join(out, "last"))
    tuned = load_checkpoint(os.path.join(finetuned, "last"))  # same data, initialised from --load
    assert (scratch.model_config.layers, scratch.model_config.hid_dim) == (pre.model_config.layers,
                                                                           pre.model_config.hid_dim)
    keys = [k for k in tuned.model_state if k.startswith("backbone.") and tuned.model_state[k].dim() == 2]
    assert keys and all(scratch.model_state[k].shape == pre.model_state[k].shape for k in keys)
    dist = lambda state: sum(float((state[k] - pre.model_state[k]).abs().mean()) for k in keys)  # noqa: E731
    assert dist(scratch.model_state) > 10 * dist(tuned.model_state)
    run_info = json.load(open(os.path.join(out, "results.json")))["run"]
    assert run_info["init"] == "scratch" and run_info["train_videos"] == 16 and run_info["train_clips_per_s"] > 0
    assert json.load(open(os.path.join(finetuned, "results.json")))["run"]["init"] == "pretrained"


# ----------------------------------------------------------------------------- the shared loop's guarantees

def hooked(args: list[str], hooks: list[str]) -> subprocess.CompletedProcess:
    """Fine-tuning with test hooks injected (tests/hooked_run.py)."""
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hooked_run.py"), "finetune", *hooks, "--",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_nonfinite_steps_are_skipped_then_stop_and_resume_checks_the_position(data, tmp_path):
    out = str(tmp_path / "nan")
    # 16 videos, batch 8: 2 steps per epoch; a checkpoint after every step (mid-epoch after step 1)
    args = ["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"], "--output", out,
            "--epochs", "2", "--num-test-clips", "1", "--save-steps", "1", *FAST]
    proc = hooked(args + ["--max-nonfinite", "2"], ["--nan-steps", "2,3"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 non-finite steps in a row (at step 3" in proc.stderr
    rows = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]
    assert [r["step"] for r in rows if r["skipped"]] == [2, 3] and rows[-1]["skipped_steps"] == 2
    ck = load_checkpoint(os.path.join(out, "last"))  # saved after step 2 (end of epoch 1): finite weights
    assert ck.trainer_state["step"] == 2 and ck.trainer_state["adam_step"] == 1
    assert all(torch.isfinite(v).all() for v in ck.model_state.values() if v.is_floating_point())

    # a mid-epoch checkpoint (step 1 of an epoch of 2) cannot be resumed with another global batch
    mid = str(tmp_path / "mid")
    proc = hooked(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
                   "--output", mid, "--epochs", "2", "--num-test-clips", "1", "--save-steps", "1", *FAST,
                   "--max-nonfinite", "1"], ["--nan-steps", "2"])
    assert proc.returncode == 2 and load_checkpoint(os.path.join(mid, "last")).trainer_state["samples_in_epoch"] == 8
    proc = run(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
                "--output", mid, "--epochs", "2", "--num-test-clips", "1", *FAST, "--batch-size", "16", "--resume"])
    assert proc.returncode == 2 and "not a whole number of global batches of 16" in proc.stderr
    ok(run(["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"],
            "--output", mid, "--epochs", "2", "--num-test-clips", "1", *FAST, "--resume"]))
    assert load_checkpoint(os.path.join(mid, "last")).trainer_state["step"] == 4


def test_a_leftover_of_a_killed_swap_counts_as_a_checkpoint(finetuned, data, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(finetuned, out)
    os.replace(os.path.join(out, "last"), os.path.join(out, "last.old.tmp"))  # a kill between the swap's renames
    args = ["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"], "--output", out,
            "--epochs", "3", "--num-test-clips", "1", *FAST]
    proc = run(args)
    assert proc.returncode == 2 and "already holds a checkpoint" in proc.stderr  # never trained over
    ok(run(args + ["--resume"]))  # the leftover is restored and continued
    assert load_checkpoint(os.path.join(out, "last")).trainer_state["epoch"] == 3


def test_resume_on_another_world_size_reseeds(finetuned, data, tmp_path):
    """Saved by 1 rank, resumed by 2 (torchrun, gloo): the RNG streams are reseeded, the schedule continues."""
    out = str(tmp_path / "out")
    shutil.copytree(finetuned, out)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           port, "-m", "vimpac.finetune", "--load", data["pre"], "--train-tokens", *data["train"],
                           "--valid-tokens", *data["valid"], "--output", out, "--epochs", "3", "--num-test-clips",
                           "1", *FAST, "--bs-per-gpu", "2", "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed on 2 rank(s), saved by 1: reseeding" in proc.stdout
    ck = load_checkpoint(os.path.join(out, "last"))
    assert ck.trainer_state["epoch"] == 3 and len(ck.trainer_state["rng"]) == 2


def test_sgd_with_label_smoothing_resumes_exactly_under_zero_and_refuses_another_optimizer(data, tmp_path):
    """--optim sgd keeps its momentum buffers by parameter name: interval + --resume (into ZeRO-1's partitions)
    reproduces the uninterrupted run; resuming it with AdamW is refused before anything starts."""
    from safetensors.torch import load_file

    common = ["--load", data["pre"], "--train-tokens", *data["train"], "--valid-tokens", *data["valid"], "--epochs",
              "2", "--num-test-clips", "1", *FAST, "--lr", "3e-2", "--label-smoothing", "0.1"]
    args = common + ["--optim", "sgd"]
    ref = str(tmp_path / "ref")
    log = ok(run(args + ["--output", ref]))
    assert "optimizer: SGD (momentum 0.9 = --beta1, weight decay 0.01)" in log and "label smoothing 0.1" in log
    out = str(tmp_path / "resumed")
    ok(run(args + ["--output", out, "--interval", "1"]))
    saved = load_checkpoint(os.path.join(out, "last"))
    assert saved.trainer_state["optimizer"] == "sgd" and saved.trainer_state["adam_step"] == 0
    assert saved.optimizer_state and all(k.endswith("::momentum_buffer") for k in saved.optimizer_state)
    proc = run(common + ["--output", out, "--resume"])  # --optim left out: AdamW
    assert proc.returncode == 2 and "was trained with --optim sgd, this run asks for --optim adamw" in proc.stderr
    ok(run(args + ["--output", out, "--resume", "--zero-stage", "1"]))
    want, got = load_file(os.path.join(ref, "last", "model.safetensors")), load_file(
        os.path.join(out, "last", "model.safetensors"))
    assert all(torch.allclose(want[k], got[k], rtol=1e-5, atol=1e-7) for k in want)
    moved = sum(float((got[k] - saved.model_state[k]).abs().max()) for k in want)
    assert moved > 1e-3  # the resumed epoch trained
