"""The own-data path of the README, end to end, on real H.264 files written by PyAV.

Only the flags a newcomer must give: no batch, tokenizer-kind or precision flags (the model is
shrunk and the runs shortened so the test stays quick; those flags change no default that the
path depends on). One truncated file among the videos given to predict.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
TINY_MODEL = ["--layers", "1", "--hid-dim", "32", "--heads", "2", "--nce-proj-hid-dim", "32"]


def _run(*args: str, ok: bool = True, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{args[:2]} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_own_videos_to_predictions_with_default_flags(tmp_path):
    data = tmp_path / "data"
    _run("-m", "video2token.synthetic", "--out", str(data), "--num-pool", "4", "--num-train", "12", "--num-val", "6",
         "--size", "32", "--seconds", "1.5", cwd=tmp_path)
    labels = data / "labels_motion.txt"
    train, val = data / "motion_train_videos.txt", data / "motion_val_videos.txt"

    # 1. the tokenizer: the built-in VQ-VAE, trained on the labelled clips (a held-out fraction by default)
    tok = tmp_path / "snap" / "tokenizer"
    r = _run("-m", "video2token.train_tokenizer", "--video-root", str(data), "--anno", str(train), "--fps", "4",
             "--frame-size", "32", "--vocab-size", "64", "--steps", "8", "--output", str(tok), "--no-progress",
             cwd=tmp_path)
    assert "holding out 1 of 12 videos" in r.stderr
    assert (tok / "model.safetensors").is_file() and (tok / "config.json").is_file()

    # 2. extraction: the tokenizer's kind is read from its directory
    stores = {}
    for split, anno in (("train", train), ("val", val)):
        stores[split] = tmp_path / "tokens" / split
        _run("-m", "video2token.extract", "--video-root", str(data), "--anno", str(anno), "--label-names", str(labels),
             "--fps", "4", "--frame-shorter-side", "32", "--crop-size", "32", "--tokenizer-path", str(tok),
             "--output", str(stores[split]), "--no-progress", cwd=tmp_path)
    # 3. inspect: a clean store exits 0 and says how many videos it holds
    r = _run("-m", "video2token.inspect", str(stores["train"]), "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["summary"]["videos"] == 12

    # 4. pre-training on the own stores: default batch sizes (capped by the 12 videos, with a warning)
    pre = tmp_path / "snap" / "pretrain"
    r = _run("-m", "vimpac.pretrain", "--train-tokens", str(stores["train"]), "--valid-tokens", str(stores["val"]),
             "--clip-len", "4", "--epochs", "1", "--output", str(pre), "--no-tqdm", *TINY_MODEL, cwd=tmp_path)
    assert (pre / "last" / "model.safetensors").is_file()

    # 5. fine-tuning from it, default batch sizes again
    ft = tmp_path / "snap" / "finetune"
    _run("-m", "vimpac.finetune", "--load", str(pre / "last"), "--train-tokens", str(stores["train"]),
         "--valid-tokens", str(stores["val"]), "--clip-len", "4", "--epochs", "1", "--output", str(ft), "--no-tqdm",
         cwd=tmp_path)
    results = json.loads((ft / "results.json").read_text())
    assert results["final"]["num_videos"] == 6

    # 6. predict: the tokenizer comes from the checkpoint's record; a truncated file is reported, the rest classified
    videos = sorted((data / "videos" / "val").glob("*.mp4"))[:2]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(videos[0].read_bytes()[:300])
    r = _run("-m", "vimpac.predict", "--checkpoint", str(ft), str(videos[0]), str(bad), str(videos[1]), "--json",
             ok=False, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    out = json.loads(r.stdout)
    names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
    assert [Path(x["video"]).name for x in out["results"]] == [videos[0].name, "broken.mp4", videos[1].name]
    assert out["failed"] == 1 and "error" in out["results"][1] and "top" not in out["results"][1]
    classified = {Path(x["video"]).name: x for x in out["results"] if "top" in x}
    assert all(x["top"][0]["label"] in names for x in classified.values())

    # 7. a self-contained release (the tokenizer inside), and predict from it alone
    release = tmp_path / "release"
    _run("-m", "vimpac.export", "--checkpoint", str(ft), "--output", str(release), "--with-tokenizer", cwd=tmp_path)
    assert (release / "tokenizer").is_dir()
    moved = tmp_path / "elsewhere"
    os.rename(release, moved)
    shutil.rmtree(tok)  # the release must not need the original tokenizer directory
    r = _run("-m", "vimpac.predict", "--checkpoint", str(moved), str(videos[1]), "--json", cwd=tmp_path)
    again = json.loads(r.stdout)
    assert again["failed"] == 0 and [Path(x["video"]).name for x in again["results"]] == [videos[1].name]
    assert again["results"][0]["top"][0]["label"] == classified[videos[1].name]["top"][0]["label"]
