"""The own-data path of the README, end to end, on real H.264 files written by PyAV.

Only the flags a newcomer must give: no batch, tokenizer-kind or precision flags (the model is
shrunk and the runs shortened so the test stays quick; those flags change no default that the
path depends on). One truncated file among the videos given to predict.

The same path, shrunk further, under umask 022 and 027: every file and folder a stage writes
(stores, checkpoints, logs, PNGs, CSVs, the release) has the mode a plain open() / mkdir() gives.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
TINY_MODEL = ["--layers", "1", "--hid-dim", "32", "--heads", "2", "--nce-proj-hid-dim", "32"]


def _run(*args: str, ok: bool = True, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600,
                          umask=-1 if umask is None else umask)
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


def _tiny_run(out: Path, umask: int) -> list[Path]:
    """The own-data path, shrunk, with every stage under `umask` -> every path written under `out`."""
    out.mkdir()
    os.chmod(out, 0o777 & ~umask)  # made by the test, under the test's own umask

    def run(*args: str) -> subprocess.CompletedProcess:
        return _run(*args, cwd=out, umask=umask)

    run("-m", "video2token.synthetic", "--out", "data", "--num-pool", "0", "--num-train", "4", "--num-val", "0",
        "--size", "32", "--seconds", "1")
    anno, labels = "data/motion_train_videos.txt", "data/labels_motion.txt"
    run("-m", "video2token.train_tokenizer", "--video-root", "data", "--anno", anno, "--fps", "4", "--frame-size", "32",
        "--vocab-size", "16", "--channels", "8", "--max-channels", "8", "--code-dim", "8", "--num-res-blocks", "1",
        "--steps", "2", "--batch-size", "2", "--output", "tok", "--no-progress")
    run("-m", "video2token.extract", "--video-root", "data", "--anno", anno, "--label-names", labels, "--fps", "4",
        "--frame-shorter-side", "32", "--crop-size", "32", "--tokenizer-path", "tok", "--output", "tokens",
        "--num-workers", "0", "--no-progress")
    data = ["--train-tokens", "tokens", "--valid-tokens", "tokens", "--clip-len", "2", "--epochs", "1",
            "--num-workers", "0", "--no-tqdm"]
    run("-m", "vimpac.pretrain", *data, "--output", "pre", *TINY_MODEL)
    run("-m", "vimpac.finetune", "--load", "pre/last", *data, "--output", "ft")
    run("-m", "vimpac.export", "--checkpoint", "ft", "--output", "release", "--with-tokenizer")
    run("-m", "video2token.visualize", "tokens", "videos/train/train_000000.mp4", "--out", "pictures/grid.png",
        "--max-frames", "2", "--device", "cpu")
    return sorted(p for p in out.rglob("*") if not p.is_symlink())


def test_every_file_written_follows_the_umask(tmp_path):
    """Both umasks' runs at once (each stage is mostly one core: imports, tiny models)."""
    umasks = (0o022, 0o027)
    with ThreadPoolExecutor(len(umasks)) as pool:
        runs = dict(zip(umasks, pool.map(lambda m: _tiny_run(tmp_path / f"umask{m:03o}", m), umasks)))
    for umask, written in runs.items():
        out = tmp_path / f"umask{umask:03o}"
        names = {p.relative_to(out).as_posix() for p in written}
        for expected in ("tok/last/optimizer.safetensors", "tokens/meta.json", "pre/last/model.safetensors",
                         "pre/metrics.jsonl", "pre/curves.png", "ft/results.json", "ft/predictions.csv",
                         "release/model.safetensors", "release/tokenizer/model.safetensors", "pictures/grid.png"):
            assert expected in names, f"{expected} was not written; the walk would miss it"
        assert any(n.startswith("pre/tensorboard/events.") for n in names)
        wrong = [f"{p.relative_to(out)}: {stat.S_IMODE(p.stat().st_mode):04o}" for p in written
                 if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask]
        assert not wrong, (f"{len(wrong)} of {len(written)} paths do not have the mode umask {umask:04o} gives "
                           f"(files {0o666 & ~umask:04o}, folders {0o777 & ~umask:04o}):\n" + "\n".join(wrong))
