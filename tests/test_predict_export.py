"""End to end: real video files -> extraction -> fine-tuning -> `vimpac.predict` on a raw video -> `vimpac.export`."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vimpac.model.checkpoint import save_checkpoint
from vimpac.model.config import named_config
from vimpac.serve.release import export_release, verify_release
from vimpac.model.transformer import VimpacForPretraining
from vimpac.serve.classifier import PredictError, load_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["red_square", "blue_square"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def write_videos(root: str, n: int) -> list[tuple[str, int]]:
    """n short landscape clips (48x64, 8 FPS): noise with a red or blue square moving right."""
    from video2token.videowriter import write_video

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        label = i % 2
        frames = rng.integers(0, 60, size=(12, 48, 64, 3), dtype=np.uint8)
        for t in range(len(frames)):
            frames[t, 16:32, 2 * t:2 * t + 16, label * 2] = 230  # channel 0 red, 2 blue
        rel = f"{LABELS[label]}/v{i}.mp4"
        os.makedirs(os.path.join(root, LABELS[label]), exist_ok=True)
        write_video(os.path.join(root, rel), frames, fps=8)
        items.append((rel, label))
    return items


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_vqvae):
    d = tmp_path_factory.mktemp("pe")
    videos = str(d / "videos")
    items = write_videos(videos, 6)
    anno = d / "train_list_videos.txt"
    anno.write_text("".join(f"{rel} {lab}\n" for rel, lab in items))
    names = d / "labels.txt"
    names.write_text("".join(n + "\n" for n in LABELS))
    store = str(d / "tokens" / "vqvae_toy_train_fps4_hflip0_32center32")
    ok(run("video2token.extract", ["--video-root", videos, "--anno", str(anno), "--label-names", str(names),
                                   "--output", store, "--fps", "4", "--frame-shorter-side", "32", "--crop-size", "32",
                                   "--crop-type", "center", "--tokenizer", "vqvae", "--tokenizer-path", tiny_vqvae,
                                   "--num-workers", "1", "--no-progress"]))
    torch.manual_seed(0)
    cfg = named_config("small", layers=2, hid_dim=32, heads=2, head_dim=16, mlp_dim=64, nce_proj_hid_dim=32,
                       vocab_size=64, clip_len=4, grid_h=4, grid_w=4)
    pre = save_checkpoint(str(d / "pre" / "last"), model_state=VimpacForPretraining(cfg).state_dict(),
                          model_config=cfg, train_config={}, step=1, epoch=1)
    out = str(d / "ft")
    ok(run("vimpac.finetune", ["--load", pre, "--train-tokens", store, "--valid-tokens", store, "--output", out,
                               "--epochs", "2", "--batch-size", "2", "--bs-per-gpu", "2", "--lr", "3e-3",
                               "--num-test-clips", "2", "--num-workers", "0", "--no-tqdm"]))
    return {"videos": videos, "items": items, "out": out, "tok": tiny_vqvae, "dir": d}


def test_predict_on_a_raw_video_matches_the_evaluation_of_its_extracted_tokens(pipeline):
    rel, label = pipeline["items"][1]
    video = os.path.join(pipeline["videos"], rel)
    # last/ is the model whose evaluation wrote predictions.csv (the "final" numbers)
    last = os.path.join(pipeline["out"], "last")
    res = json.loads(ok(run("vimpac.predict", ["--checkpoint", last, "--tokenizer", "vqvae",
                                               "--tokenizer-path", pipeline["tok"], "--json", video])))
    top = res["results"][0]["top"]
    assert res["num_test_clips"] == 2 and [t["label"] for t in top] == sorted(
        [t["label"] for t in top], key=lambda n: -next(x["prob"] for x in top if x["label"] == n))
    assert {t["label"] for t in top} == set(LABELS) and abs(sum(t["prob"] for t in top) - 1) < 1e-5
    with open(os.path.join(pipeline["out"], "predictions.csv")) as f:
        row = next(r for r in csv.DictReader(f) if r["video_id"] == rel)
    # same views (center crop, 2 uniform clips), same model: the same scores as the evaluation
    evaluated = {row["name1"]: float(row["score1"]), row["name2"]: float(row["score2"])}
    for t in top:
        assert t["prob"] == pytest.approx(evaluated[t["label"]], abs=1e-5)
    text = ok(run("vimpac.predict", ["--checkpoint", pipeline["out"], "--tokenizer", "vqvae", "--tokenizer-path",
                                     pipeline["tok"], video]))
    assert top[0]["label"] in text.splitlines()[1] and text.startswith(video)


def test_predict_refuses_another_tokenizer_and_a_missing_video(pipeline, tmp_path):
    from video2token.tokenizers.vqvae import save_vqvae
    from video2token.vqvae_model import VQVAE, VQVAEConfig

    torch.manual_seed(1)
    other = str(tmp_path / "other")
    save_vqvae(VQVAE(VQVAEConfig(vocab_size=64, downsample=8, channels=8, max_channels=16, num_res_blocks=1,
                                 code_dim=8, kmeans_init=False)).eval(), other)
    video = os.path.join(pipeline["videos"], pipeline["items"][0][0])
    proc = run("vimpac.predict", ["--checkpoint", pipeline["out"], "--tokenizer", "vqvae", "--tokenizer-path", other,
                                  video])
    assert proc.returncode == 2 and "another tokenizer" in proc.stderr and "sha256" in proc.stderr
    # a missing and a truncated file among good ones: reported, the good one still classified, exit code 1
    truncated = str(tmp_path / "cut.mp4")
    with open(video, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[:600])
    proc = run("vimpac.predict", ["--checkpoint", pipeline["out"], "--json", str(tmp_path / "nope.mp4"), truncated,
                                  video])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["failed"] == 2 and "nope.mp4 does not exist" in doc["results"][0]["error"]
    assert "cut.mp4" in doc["results"][1]["error"] and doc["results"][2]["top"]  # no tokenizer flags: the record's


def test_export_with_the_tokenizer_is_self_contained(pipeline, tmp_path):
    release = str(tmp_path / "release")
    ok(run("vimpac.export", ["--checkpoint", pipeline["out"], "--output", release, "--with-tokenizer"]))
    verify_release(release)  # the tokenizer's files are in SHA256SUMS too
    assert os.path.exists(os.path.join(release, "tokenizer", "model.safetensors"))
    moved = str(tmp_path / "moved")
    os.rename(release, moved)  # the release works wherever it is, without the original tokenizer path
    video = os.path.join(pipeline["videos"], pipeline["items"][0][0])
    doc = json.loads(ok(run("vimpac.predict", ["--checkpoint", moved, "--json", video])))
    assert doc["failed"] == 0 and doc["results"][0]["top"]
    assert "--checkpoint RELEASE_DIR VIDEO" in open(os.path.join(moved, "README.md")).read()


def test_export_and_reload_give_identical_outputs(pipeline):
    release = str(pipeline["dir"] / "release")
    ok(run("vimpac.export", ["--checkpoint", pipeline["out"], "--output", release, "--tokenizer", "vqvae",
                             "--tokenizer-path", pipeline["tok"]]))
    verify_release(release)
    original, exported = load_classifier(pipeline["out"]), load_classifier(release)
    codes = torch.randint(0, 64, (3, 4, 4, 4))
    with torch.no_grad():
        assert torch.equal(original.model(codes), exported.model(codes))
    assert exported.label_names == LABELS
    assert json.load(open(os.path.join(release, "labels.json"))) == {"0": LABELS[0], "1": LABELS[1]}
    tok = json.load(open(os.path.join(release, "tokenizer.json")))
    assert tok["kind"] == "vqvae" and tok["sha256"] == original.task["tokenizer"]["sha256"] and len(tok["sha256"]) == 64
    results = json.load(open(os.path.join(pipeline["out"], "results.json")))
    card = open(os.path.join(release, "README.md")).read()
    assert f"{results['final']['top1']:.2f}" in card and f"{results['best']['top5']:.2f}" in card
    # a changed file is caught, and an existing folder is not overwritten silently
    with open(os.path.join(release, "labels.json"), "a") as f:
        f.write(" ")
    with pytest.raises(PredictError, match="labels.json"):
        verify_release(release)
    with pytest.raises(PredictError, match="--overwrite"):
        export_release(pipeline["out"], release)
