"""The extraction job end to end: good and bad videos, kill -9 + resume, shards, overwrite, timeouts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import av
import h5py
import numpy as np
import pytest

from video2token.extract import ExtractConfig, run, shard_range
from video2token.store import StoreError, TokenStore, check_codes_fit, record_path
from video2token.videowriter import write_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}


def _frames(seed: int, n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """A coloured square moving over a smooth gradient: stable tokens, distinct per video."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, rng.integers(0, 255))], -1)
    out = np.empty((n, h, w, 3), np.uint8)
    color = rng.integers(0, 255, 3)
    for t in range(n):
        f = base.copy()
        x0 = (3 * t + seed) % (w - 8)
        f[8:16, x0:x0 + 8] = color
        out[t] = f.astype(np.uint8)
    return out


def _write_audio_only(path: str) -> None:
    with av.open(path, "w") as c:
        s = c.add_stream("aac", rate=8000)
        samples = (np.sin(np.arange(8000) / 10)[None] * 0.1).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        write_video(root / "good" / f"v{i}.mp4", _frames(i, 16 + 4 * i), fps=8)
    return root


def _list(root, lines, name="list.txt") -> str:
    p = os.path.join(root, name)
    with open(p, "w") as f:
        f.write("\n".join(lines) + "\n")
    return p


def _cfg(root, anno, out, tok_path, **kw) -> ExtractConfig:
    base = dict(video_root=str(root), anno=(anno,), output=str(out), fps=2, frame_shorter_side=32, crop_size=32,
                tokenizer="vqvae", tokenizer_path=tok_path, batch_size=4, num_workers=1, timeout=60,
                progress=False)
    base.update(kw)
    return ExtractConfig(**base)


def _content(path: str) -> list:
    """Everything a reader sees, video by video, in order."""
    s = TokenStore(path)
    out = []
    for v in s.video_ids:
        codes, label = s.read(v)
        out.append((v, codes.shape, codes.tobytes(), label, s.timestamps(v).tobytes()))
    return out


def test_good_videos_become_a_store(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, [f"good/v{i}.mp4 {i % 3}" for i in range(6)])
    summary = run(_cfg(video_root, anno, tmp_path / "store", tiny_vqvae))
    assert summary["stored"] == 6 and summary["skipped"] == {}
    s = TokenStore(str(tmp_path / "store"))
    assert len(s) == 6 and s.video_ids == [f"good/v{i}.mp4" for i in range(6)]
    for i, vid in enumerate(s.video_ids):
        codes, label = s.read(vid)
        duration = (16 + 4 * i) / 8
        assert codes.dtype == np.int16 and codes.shape == (int(np.ceil(duration * 2)), 4, 4)
        assert label == i % 3
        assert np.allclose(s.timestamps(vid), np.arange(codes.shape[0]) / 2)
        assert codes.min() >= 0 and codes.max() < s.vocab_size
    assert s.meta["fps"] == 2 and s.meta["crop_size"] == 32 and s.meta["tokenizer"]["name"] == "vqvae"
    assert os.path.getsize(tmp_path / "store" / "errors.jsonl") == 0
    # same frames -> same codes: direct encoding of the decoded frames agrees with the store
    from video2token.tokenizers import load_tokenizer
    from video2token.video import read_video
    frames, _ = read_video(str(video_root / "good" / "v2.mp4"), 2, 32, 32)
    assert np.array_equal(load_tokenizer("vqvae", tiny_vqvae).encode(frames), s.read("good/v2.mp4")[0])


def test_bad_inputs_are_skipped_with_reasons(video_root, tiny_vqvae, tmp_path):
    root = tmp_path / "root"
    os.makedirs(root / "bad")
    shutil.copytree(video_root / "good", root / "good")
    (root / "bad" / "empty.mp4").write_bytes(b"")
    good = (video_root / "good" / "v3.mp4").read_bytes()
    (root / "bad" / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "bad" / "text.mp4").write_text("this is not a video\n" * 50)
    _write_audio_only(str(root / "bad" / "audio.mp4"))
    write_video(root / "bad" / "one_frame.mp4", _frames(7, 1), fps=8)
    write_video(root / "bad" / "odd.mkv", _frames(8, 12, h=9, w=17), fps=8, codec="ffv1")
    lines = ["good/v0.mp4 0", "bad/empty.mp4 1", "bad/truncated.mp4 1", "bad/text.mp4 1", "bad/audio.mp4 1",
             "bad/one_frame.mp4 2", "bad/odd.mkv 2", "bad/missing.mp4 1", "good/v0.mp4 1", "good/v1.mp4 1",
             "../escape.mp4 0"]
    anno = _list(tmp_path, lines)
    summary = run(_cfg(root, anno, tmp_path / "store", tiny_vqvae, num_workers=2))
    s = TokenStore(str(tmp_path / "store"))
    assert s.video_ids == ["good/v0.mp4", "bad/one_frame.mp4", "bad/odd.mkv", "good/v1.mp4"]
    assert s.read("bad/one_frame.mp4")[0].shape == (1, 4, 4)
    assert s.read("bad/odd.mkv")[0].shape == (3, 4, 4)  # 12 frames at 8 fps, sampled at 2 fps
    with open(tmp_path / "store" / "errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    by_path = {os.path.basename(e["path"] or e["video_id"] or ""): e for e in errors}
    for name in ("empty.mp4", "truncated.mp4", "text.mp4", "audio.mp4", "missing.mp4"):
        assert name in by_path, (name, errors)
        assert by_path[name]["stage"] == "decode" and by_path[name]["reason"]
    annotation_errors = [e for e in errors if e["stage"] == "annotation"]
    reasons = " ".join(e["reason"] for e in annotation_errors)
    assert len(annotation_errors) == 2 and "duplicate" in reasons and "root" in reasons
    assert all(set(e) >= {"path", "stage", "reason"} for e in errors)
    assert summary["stored"] == 4 and sum(summary["skipped"].values()) == len(errors)


def test_hanging_or_crashing_decoder_is_killed_and_the_job_goes_on(video_root, tiny_vqvae, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(video_root / "good", root / "good")
    shutil.copy(video_root / "good" / "v2.mp4", root / "hang.mp4")
    shutil.copy(video_root / "good" / "v3.mp4", root / "crash.mp4")
    anno = _list(tmp_path, ["good/v0.mp4 0", "hang.mp4 1", "crash.mp4 1", "good/v1.mp4 1"])
    t0 = time.monotonic()
    summary = run(_cfg(root, anno, tmp_path / "store", tiny_vqvae, num_workers=2, timeout=4,
                       reader="tests.faulty_decoder:read_video"))
    assert time.monotonic() - t0 < 90
    assert summary["skipped"] == {"timeout": 1, "crash": 1}
    assert TokenStore(str(tmp_path / "store")).video_ids == ["good/v0.mp4", "good/v1.mp4"]
    with open(tmp_path / "store" / "errors.jsonl") as f:
        errors = {os.path.basename(e["path"]): e for e in map(json.loads, f)}
    assert "killed" in errors["hang.mp4"]["reason"] and "exit code -11" in errors["crash.mp4"]["reason"]


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "video2token.extract", *args], env=env or ENV, capture_output=True,
                          text=True, timeout=300)


def _cli_args(root, anno, out, tok, *extra):
    return ["--video-root", str(root), "--anno", anno, "--output", str(out), "--fps", "2", "--frame-shorter-side",
            "32", "--crop-size", "32", "--tokenizer", "vqvae", "--tokenizer-path", tok, "--batch-size", "4",
            "--num-workers", "1", "--no-progress", *extra]


def test_kill9_then_resume_is_bit_identical(video_root, tiny_vqvae, tmp_path):
    lines = [f"good/v{i % 6}.mp4 {i % 3}" for i in range(6)]
    anno = _list(tmp_path, lines)
    ref = tmp_path / "ref"
    assert _cli(_cli_args(video_root, anno, ref, tiny_vqvae)).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "video2token.extract",
                             *_cli_args(video_root, anno, out, tiny_vqvae, "--commit-every", "1")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / ".parts" / "shard-00000-of-00001"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and any(n.startswith("part-") and n.endswith(".h5") for n in os.listdir(parts)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(StoreError):
        TokenStore(str(out))  # never trusted while unfinished
    r = _cli(_cli_args(video_root, anno, out, tiny_vqvae))
    assert r.returncode == 0, r.stderr
    assert "already done before" in r.stdout and "(0 already done before)" not in r.stdout
    assert _content(str(out)) == _content(str(ref))
    name = "shard-00000-of-00001.h5"
    assert (out / name).read_bytes() == (ref / name).read_bytes()
    assert not (out / ".parts").exists()


def test_shards_read_together_equal_the_unsharded_store(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, [f"good/v{i}.mp4 {i % 3}" for i in range(6)])
    run(_cfg(video_root, anno, tmp_path / "whole", tiny_vqvae))
    run(_cfg(video_root, anno, tmp_path / "sharded", tiny_vqvae, shard_id=1, num_shards=3))
    with pytest.raises(StoreError, match="incomplete"):
        TokenStore(str(tmp_path / "sharded"))
    run(_cfg(video_root, anno, tmp_path / "sharded", tiny_vqvae, shard_id=0, num_shards=3))
    # the third shard through the launcher's environment, as under torchrun / SLURM
    r = _cli(_cli_args(video_root, anno, tmp_path / "sharded", tiny_vqvae),
             env={**ENV, "RANK": "2", "WORLD_SIZE": "3"})
    assert r.returncode == 0, r.stderr
    assert _content(str(tmp_path / "sharded")) == _content(str(tmp_path / "whole"))
    assert sorted(set(range(7)) - {i for k in range(3) for i in shard_range(7, k, 3)}) == []


def test_existing_store_is_never_overwritten_silently(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, ["good/v0.mp4 0", "good/v1.mp4 1"])
    out = tmp_path / "store"
    assert _cli(_cli_args(video_root, anno, out, tiny_vqvae)).returncode == 0
    before = _content(str(out))
    r = _cli(_cli_args(video_root, anno, out, tiny_vqvae))
    assert r.returncode == 0 and "already complete" in r.stdout
    r = _cli(_cli_args(video_root, anno, out, tiny_vqvae)[:-1] + ["--hflip", "--no-progress"])
    assert r.returncode == 2 and "--overwrite" in r.stderr and "hflip" in r.stderr
    assert _content(str(out)) == before
    r = _cli(_cli_args(video_root, anno, out, tiny_vqvae, "--hflip", "--overwrite"))
    assert r.returncode == 0, r.stderr
    s = TokenStore(str(out))
    assert s.meta["hflip"] is True and len(s) == 2


def test_codes_that_do_not_fit_are_refused():
    with pytest.raises(StoreError, match="int16"):
        check_codes_fit(np.zeros((1, 2, 2), np.int64), 70000, "x.mp4")
    with pytest.raises(StoreError, match="x.mp4"):
        check_codes_fit(np.full((1, 2, 2), 600, np.int64), 512, "x.mp4")
    assert check_codes_fit(np.full((1, 2, 2), 511, np.int64), 512, "x.mp4").dtype == np.int16


def test_inspect_reports_summary_and_problems(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, ["good/v0.mp4 0", "good/v1.mp4 1", "good/missing.mp4 1"])
    out = tmp_path / "store"
    run(_cfg(video_root, anno, out, tiny_vqvae))
    r = subprocess.run([sys.executable, "-m", "video2token.inspect", str(out), "--json"], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # a video that was not stored is a problem
    report = json.loads(r.stdout)
    assert report["summary"]["videos"] == 2 and report["summary"]["not_stored"] == {"decode": 1}
    assert report["problems"] == ["1 listed videos were not stored (decode: 1); the reasons are in errors.jsonl"]
    os.makedirs(out / ".parts")
    r = subprocess.run([sys.executable, "-m", "video2token.inspect", str(out)], env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "unfinished" in r.stdout


def test_label_names_file_names_classes_and_refuses_unknown_labels(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, ["good/v0.mp4 0", "good/v1.mp4 2", "good/v2.mp4 7"])
    names = _list(tmp_path, ["walk", "run", "jump"], name="classes.txt")
    summary = run(_cfg(video_root, anno, tmp_path / "store", tiny_vqvae, label_names=names))
    s = TokenStore(str(tmp_path / "store"))
    assert s.label_names == ["walk", "run", "jump"] and s.video_ids == ["good/v0.mp4", "good/v1.mp4"]
    assert summary["skipped"] == {"annotation": 1}
    with open(tmp_path / "store" / "errors.jsonl") as f:
        (err,) = [json.loads(line) for line in f]
    assert "list.txt:3" in err["path"] and "label" in err["reason"]
    bad = _list(tmp_path, ["walk", "", "jump"], name="bad.txt")
    with pytest.raises(ValueError, match="bad.txt:2"):
        run(_cfg(video_root, anno, tmp_path / "store2", tiny_vqvae, label_names=bad))


@pytest.fixture(scope="module")
def tiny_dalle(tmp_path_factory) -> str:
    """A random-weight dall_e Encoder pickled like the release's encoder.pkl (vocab 512, stride 8)."""
    import torch
    from dall_e import Encoder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dalle") / "encoder.pkl"
    torch.save(Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512), path)
    return str(path)


def _main_args(root, anno, out, kind, tok, *extra):
    args = _cli_args(root, anno, out, tok, "--num-workers", "0", *extra)
    args[args.index("--tokenizer") + 1] = kind
    return args


@pytest.mark.parametrize("kind", ["vqvae", "dalle"])
def test_precision_flag_is_recorded_and_never_mixed(video_root, tiny_vqvae, tiny_dalle, tmp_path, capsys, kind):
    from video2token.extract import main
    from video2token.precision import cpu_bf16_override, resolve_precision
    from video2token.tokenizers import load_tokenizer
    from video2token.video import read_video

    tok_path = {"vqvae": tiny_vqvae, "dalle": tiny_dalle}[kind]
    anno = _list(tmp_path, ["good/v0.mp4 0", "good/v1.mp4 1"])
    auto = resolve_precision("auto", "cpu", cpu_bf16=cpu_bf16_override(os.environ))  # as main resolves it
    # no flag: auto, resolved for this CPU, printed once and recorded
    assert main(_main_args(video_root, anno, tmp_path / "auto", kind, tok_path, "--device", "cpu")) == 0
    assert capsys.readouterr().err.count(f"[extract] {kind} tokenizer: precision {auto.name} on cpu") == 1
    assert TokenStore(str(tmp_path / "auto")).meta["tokenizer"]["precision"] == auto.name

    for flags, name in [(["--precision", "fp32"], "fp32"), (["--bf16"], "bf16")]:
        out = tmp_path / name
        assert main(_main_args(video_root, anno, out, kind, tok_path, "--device", "cpu", *flags)) == 0
        s = TokenStore(str(out))
        assert s.meta["tokenizer"]["precision"] == name
        frames, _ = read_video(str(video_root / "good" / "v1.mp4"), 2, 32, 32)
        direct = load_tokenizer(kind, tok_path, device="cpu", precision=name).encode(frames)
        assert np.array_equal(direct, s.read("good/v1.mp4")[0])
    # the store made in fp32 refuses to be continued in bf16
    capsys.readouterr()
    assert main(_main_args(video_root, anno, tmp_path / "fp32", kind, tok_path, "--device", "cpu", "--bf16")) == 2
    assert "tokenizer.precision: 'fp32' (existing) vs 'bf16' (requested)" in capsys.readouterr().err


def _main(capsys, args) -> tuple[int, str, str]:
    from video2token.extract import main

    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _inspect(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "video2token.inspect", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_one_file_under_two_names_is_stored_once_whatever_the_shard(video_root, tiny_vqvae, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(video_root / "good", root / "good")
    os.symlink(root / "good", root / "linked_dir")                 # a directory symlink
    os.symlink(root / "good" / "v1.mp4", root / "file_link.mp4")   # a file symlink
    os.link(root / "good" / "v2.mp4", root / "hard.mp4")           # a hard link, listed before its other name
    anno = _list(tmp_path, ["good/v0.mp4 0", "linked_dir/v0.mp4 0", "good/v1.mp4 1", "hard.mp4 2", "file_link.mp4 1",
                            "good/v2.mp4 2", "good/v3.mp4 0"])
    kept = ["good/v0.mp4", "good/v1.mp4", "hard.mp4", "good/v3.mp4"]
    pairs = {"linked_dir/v0.mp4": "good/v0.mp4", "file_link.mp4": "good/v1.mp4", "good/v2.mp4": "hard.mp4"}
    # two shards, the second first (through the decode pool), then the first: the same names are kept
    out = tmp_path / "sharded"
    for shard, workers in (("1", "1"), ("0", "0")):
        rc, stdout, err = _main(capsys, [*_cli_args(root, anno, out, tiny_vqvae, "--shard-id", shard, "--num-shards",
                                                    "2"), "--num-workers", workers])
        assert rc == 0, err
        assert "3 listed name(s) are the same file as an earlier name" in stdout  # every shard's summary says it
        for dup, first in pairs.items():
            assert f"{dup} = {first}" in stdout
    s = TokenStore(str(out))
    assert s.video_ids == kept
    from video2token.checksum import file_fingerprint

    assert {vid: (path, fp) for vid, path, fp in s.sources()} == {
        vid: (os.path.realpath(root / vid), file_fingerprint(root / vid)) for vid in kept}
    rc, _, _ = _main(capsys, _cli_args(root, anno, tmp_path / "whole", tiny_vqvae, "--num-workers", "0"))
    assert rc == 0 and _content(str(tmp_path / "whole")) == _content(str(out))
    rc, stdout, _ = _main(capsys, _cli_args(root, anno, out, tiny_vqvae, "--shard-id", "0", "--num-shards", "2"))
    assert rc == 0 and "already complete" in stdout and "file_link.mp4 = good/v1.mp4" in stdout  # a rerun agrees
    with open(out / "errors.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert {e["video_id"]: e["same_as"] for e in logged if e["stage"] == "same_file"} == pairs
    r = _inspect(out, "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["problems"] == [], r.stdout  # stored once: no problem
    assert report["summary"]["same_file"] == pairs and report["summary"]["not_stored"] == "none"
    r = _inspect(out)
    assert "3 listed name(s) are the same file" in r.stdout and "good/v2.mp4 = hard.mp4" in r.stdout


def test_inspect_against_names_the_videos_two_stores_share(video_root, tiny_vqvae, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(video_root / "good", root / "good")
    os.makedirs(root / "copy")
    shutil.copy(root / "good" / "v1.mp4", root / "copy" / "renamed.mp4")  # the same video under another path
    stores = {}
    for name, lines in (("train", ["good/v0.mp4 0", "good/v1.mp4 1", "good/v2.mp4 2"]),
                        ("test", ["copy/renamed.mp4 1", "good/v2.mp4 2", "good/v3.mp4 0"]),
                        ("other", ["good/v4.mp4 1"])):
        stores[name] = tmp_path / name
        rc, _, err = _main(capsys, _cli_args(root, _list(tmp_path, lines, f"{name}.txt"), stores[name], tiny_vqvae,
                                             "--num-workers", "0"))
        assert rc == 0, err
    r = _inspect(stores["train"], "--against", stores["test"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 video(s) of" in r.stdout and "(same content: 2, same path: 0)" in r.stdout
    assert "good/v1.mp4 = copy/renamed.mp4 (same content)" in r.stdout
    assert "good/v2.mp4 = good/v2.mp4 (same content)" in r.stdout and "note:" not in r.stdout
    r = _inspect(stores["train"], "--against", stores["other"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["shared"] == [], r.stdout
    r = _inspect(stores["train"], "--against", tmp_path / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr
    # a store made before fingerprints were recorded: still opens; --against falls back to paths and says so
    old = tmp_path / "old"
    shutil.copytree(stores["train"], old)
    shard = old / "shard-00000-of-00001.h5"
    with h5py.File(shard, "r+") as f:
        del f["source_paths"], f["fingerprints"]
    os.remove(record_path(str(shard)))
    assert _inspect(old, "--seal").returncode == 0
    assert TokenStore(str(old)).sources()[0] == ("good/v0.mp4", None, None)
    r = _inspect(old, "--against", stores["test"], "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 1 and report["shared"] == [
        {"video_id": "good/v2.mp4", "other_video_id": "good/v2.mp4", "by": "path"}], r.stdout  # the copy is missed
    (note,) = report["notes"]
    assert f"{old}: 3 of 3 videos have no content fingerprint" in note and "compared by resolved path" in note
