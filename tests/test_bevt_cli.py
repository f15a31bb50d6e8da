"""BEVT mode end to end, as the README's BEVT section runs it: own videos -> frames + codes (--keep-frames) ->
image stream (stage 1) -> joint image + video pre-training (stage 2) -> fine-tuning -> export -> predict with
no tokenizer on the machine. Plus the refusals between input kinds. Tiny sizes, real H.264 files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
TINY = ["--layers", "1", "--hid-dim", "32", "--heads", "2", "--clip-len", "4", "--no-tqdm", "--num-workers", "0",
        "--epochs", "1", "--batch-size", "4"]


def _run(*args: str, ok: bool = True, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{args[:2]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pixels_in_codes_out_from_own_videos_to_predictions_without_a_tokenizer(tmp_path):
    data = tmp_path / "data"
    _run("-m", "video2token.synthetic", "--out", str(data), "--num-pool", "4", "--num-train", "8", "--num-val", "4",
         "--size", "32", "--seconds", "1.5", cwd=tmp_path)
    labels = data / "labels_motion.txt"
    tok = tmp_path / "tokenizer"
    _run("-m", "video2token.train_tokenizer", "--video-root", str(data), "--anno", str(data / "motion_train_videos.txt"),
         "--fps", "4", "--frame-size", "32", "--vocab-size", "32", "--steps", "4", "--output", str(tok),
         "--no-progress", cwd=tmp_path)
    stores = {}
    for split in ("train", "val"):  # the frames the tokenizer saw, beside its codes
        stores[split] = tmp_path / "tokens" / split
        _run("-m", "video2token.extract", "--video-root", str(data), "--anno", str(data / f"motion_{split}_videos.txt"),
             "--label-names", str(labels), "--fps", "4", "--frame-shorter-side", "32", "--crop-size", "32",
             "--tokenizer-path", str(tok), "--keep-frames", "--output", str(stores[split]), "--no-progress",
             cwd=tmp_path)
    train, val = str(stores["train"]), str(stores["val"])

    # stage 1: the image stream alone (every stored frame an image)
    stage1 = tmp_path / "snap" / "bevt_image"
    r = _run("-m", "vimpac.pretrain", "--train-tokens", train, "--valid-tokens", val, "--input", "pixels",
             "--stream", "image", "--nce-weight", "0", "--output", str(stage1), *TINY, cwd=tmp_path)
    assert "image_mp_loss" in r.stdout
    rows = [r for r in _rows(stage1) if r["split"] == "train"]
    assert rows and all("image_mp_loss" in r and "mp_loss" not in r for r in rows)
    cfg = json.loads((stage1 / "last" / "config.json").read_text())["model_config"]
    assert cfg["input"] == "pixels" and cfg["patch_size"] == 8  # the tokenizer's stride: 32 px -> 4x4 patches

    # stage 2: joint, from stage 1's weights, tube masks; both streams' losses logged apart
    stage2 = tmp_path / "snap" / "bevt_joint"
    _run("-m", "vimpac.pretrain", "--train-tokens", train, "--valid-tokens", val, "--input", "pixels",
         "--stream", "joint", "--image-ratio", "1", "--masking", "tube", "--load", str(stage1 / "last"),
         "--output", str(stage2), *TINY, cwd=tmp_path)
    rows = [r for r in _rows(stage2) if r["split"] == "train"]
    assert rows and all("image_mp_loss" in r and "mp_loss" in r and r["image_micro_batches"] >= 1 for r in rows)

    # fine-tuning reads frames (the checkpoint says so); a token run of it is refused clearly
    ft = tmp_path / "snap" / "finetune"
    bad = _run("-m", "vimpac.finetune", "--load", str(stage2 / "last"), "--train-tokens", train, "--valid-tokens", val,
               "--input", "tokens", "--output", str(tmp_path / "x"), *TINY, ok=False, cwd=tmp_path)
    assert bad.returncode == 2 and "is a model with --input pixels" in bad.stderr, bad.stderr[-2000:]
    _run("-m", "vimpac.finetune", "--load", str(stage2 / "last"), "--train-tokens", train, "--valid-tokens", val,
         "--num-test-clips", "1", "--output", str(ft), *TINY, cwd=tmp_path)
    assert json.loads((ft / "results.json").read_text())["final"]["num_videos"] == 4

    # export and predict: no tokenizer anywhere
    release = tmp_path / "release"
    _run("-m", "vimpac.export", "--checkpoint", str(ft), "--output", str(release), "--with-tokenizer", cwd=tmp_path)
    assert not (release / "tokenizer").exists()
    assert "no tokenizer at inference" in (release / "README.md").read_text()
    shutil.rmtree(tok)  # prove it: the tokenizer is gone
    video = data / "videos" / "val" / sorted(os.listdir(data / "videos" / "val"))[0]
    r = _run("-m", "vimpac.predict", "--checkpoint", str(release), str(video), "--json", cwd=tmp_path)
    out = json.loads(r.stdout)
    assert out["failed"] == 0 and len(out["results"][0]["top"]) == 4
    r = _run("-m", "vimpac.predict", "--checkpoint", str(release), "--input", "tokens", str(video), ok=False,
             cwd=tmp_path)
    assert r.returncode == 2 and "--input tokens, but" in r.stderr


def test_pixel_input_needs_stores_with_frames(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from store_factory import make_store

    store = make_store(str(tmp_path / "codes"), num_videos=8, grid=4, vocab_size=16)
    r = _run("-m", "vimpac.pretrain", "--train-tokens", store, "--input", "pixels", "--output", str(tmp_path / "o"),
             *TINY, ok=False, cwd=tmp_path)
    assert r.returncode == 2 and "holds codes only" in r.stderr and "--keep-frames" in r.stderr
    r = _run("-m", "vimpac.pretrain", "--train-tokens", store, "--image-tokens", store, "--output",
             str(tmp_path / "o2"), *TINY, ok=False, cwd=tmp_path)
    assert r.returncode == 2 and "add --stream image" in r.stderr
