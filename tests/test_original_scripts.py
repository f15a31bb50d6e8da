"""The original VIMPAC scripts' command lines run against this project: their flags are accepted, an original
snapshot is what `--load` of fine-tuning and pre-training and `predict --checkpoint` take, and fine-tuning without
`--load` trains the architecture the flags describe from random weights (the paper's no-pre-training rows)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import original_fixtures  # noqa: E402
from store_factory import make_store  # noqa: E402

from vimpac.model.checkpoint import load_checkpoint  # noqa: E402
from vimpac.serve.classifier import load_classifier  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = original_fixtures()
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "pretrain" / "last" / "classifier.pt").exists(),
                                    reason=f"original-VIMPAC fixtures not found at {FIXTURES}")
# the fixture snapshots: 2 layers x 128, T=4, 32 px frames (4x4 DALL-E codes), vocab 8192
FAST = ["--num-workers", "0", "--no-tqdm", "--batch-size", "4", "--bs-per-gpu", "2", "--seed", "1", "--epochs", "1"]


def run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("orig")
    return {"train": make_store(str(d / "train"), num_videos=8, grid=4, vocab_size=8192, seed=0),
            "valid": make_store(str(d / "valid"), num_videos=4, grid=4, vocab_size=8192, seed=1)}


@needs_fixtures
def test_finetune_with_the_original_flags_from_an_original_snapshot(stores, tmp_path):
    out = str(tmp_path / "ft")
    log = ok(run("vimpac.finetune", ["--load", str(FIXTURES / "pretrain"), "--train-tokens", stores["train"],
                                     "--valid-tokens", stores["valid"], "--output", out, "--layers", "2", "--hid-dim",
                                     "128", "--last-dropout", "0.0", "--save-per-epochs", "9595", "--vocab-size",
                                     "8192", "--num-test-clips", "1", *FAST]))
    assert "loaded the backbone of" in log and "done: final top-1" in log
    assert "classifier init: zero (--head-init auto: a pre-trained backbone)" in log  # the paper's, on --load
    assert load_checkpoint(os.path.join(out, "last")).model_config.hid_dim == 128
    proc = run("vimpac.finetune", ["--load", str(FIXTURES / "pretrain"), "--train-tokens", stores["train"],
                                   "--valid-tokens", stores["valid"], "--output", str(tmp_path / "x"), "--layers", "6",
                                   *FAST])
    assert proc.returncode == 2 and "--layers 6 but --load" in proc.stderr


@needs_fixtures
def test_pretrain_with_the_original_flags_continues_an_original_snapshot(stores, tmp_path):
    out = str(tmp_path / "pt")
    log = ok(run("vimpac.pretrain", ["--load", str(FIXTURES / "pretrain" / "last"), "--train-tokens", stores["train"],
                                     "--valid-tokens", stores["valid"], "--output", out, "--model", "efflayoutT,H|W",
                                     "--pos-emb", "hw_separation", "--layers", "2", "--hid-dim", "128", "--clip-len",
                                     "4", "--nce-proj-hid-dim", "96", "--vocab-size", "8192", "--save-per-epochs", "1",
                                     "--num-test-clips", "1", "--mask-blocks", "2", *FAST]))
    assert "initialised from" in log and "original weights" in log
    assert os.path.exists(os.path.join(out, "epoch1", "model.safetensors"))  # --save-per-epochs 1
    proc = run("vimpac.pretrain", ["--train-tokens", stores["train"], "--output", str(tmp_path / "v"),
                                   "--vocab-size", "1024", *FAST])
    assert proc.returncode == 2 and "--vocab-size 1024 but the token stores hold 8192 codes" in proc.stderr


@needs_fixtures
def test_predict_loads_an_original_classifier_and_says_what_it_assumed():
    clf = load_classifier(str(FIXTURES / "finetune"))
    assert clf.model.head.fc.weight.shape[0] == 7 and clf.label_names == [str(i) for i in range(7)]
    assert any("records no" in n for n in clf.notes)  # fps, crops: not in the original's snapshot


def test_finetune_without_load_trains_the_flags_architecture_from_random_weights(tmp_path):
    """scripts/finetune/small_ucf101.sh of the original without its --load line (how the paper's no-pre-training
    rows were made), scaled down: 2 x 128 model, T=4, 32 px frames; the stores found by --dataset-name."""
    root = tmp_path / "video_tokens"
    for split, n in (("train_split1", 8), ("val_split1", 4)):
        make_store(str(root / f"dalle_ucf101_{split}_fps2_hflip0_32center32"), num_videos=n, grid=4, vocab_size=8192,
                   seed=n)
    out = str(tmp_path / "ucf101_scratch")
    script = ["--clip-len", "4", "--frame-rate", "2", "--bs-per-gpu", "2", "--frame-size", "32", "--lr", "1e-4",
              "--different-shape", "--num-test-clips", "1", "--epochs", "1", "--eval-per-epochs", "1", "--model",
              "efflayoutT,H|W", "--pos-emb", "hw_separation", "--dataset-name", "ucf101", "--data-root", str(root),
              "--layers", "2", "--hid-dim", "128", "--last-test-clips", "1,2", "--vocab-size", "8192",
              "--clip-grad-norm", "1.", "--lr-scheduler", "linear", "--last-dropout", "0.0", "--weight-decay", "0.01",
              "--beta1", "0.9", "--beta2", "0.999", "--warm-up", "0.1", "--batch-size", "4", "--num-workers", "0",
              "--output", out]
    log = ok(run("vimpac.finetune", script + ["--no-tqdm", "--seed", "1"]))
    assert "no --load: random initial weights (the no-pre-training baseline), a 2-layer 128-wide efflayoutT,H|W" in log
    cfg = load_checkpoint(os.path.join(out, "last")).model_config
    assert (cfg.layers, cfg.hid_dim, cfg.heads, cfg.layout, cfg.pos_emb) == (2, 128, 2, "T,H|W", "hw_separation")
    assert (cfg.vocab_size, cfg.clip_len, cfg.grid_h, cfg.grid_w) == (8192, 4, 4, 4)  # vocabulary, grid: the stores
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["run"]["init"] == "scratch" and results["run"]["load"] is None
    assert set(results["last_test_clips"]) == {"1", "2"} and results["final"]["num_videos"] == 4
    proc = run("vimpac.finetune", script[:-1] + [str(tmp_path / "x"), "--pos-emb", "frozen"])
    assert proc.returncode == 2 and "--pos-emb frozen: the original VIMPAC accepted it but never implemented" in \
        proc.stderr
