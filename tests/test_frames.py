"""Issue 23, point 2: the frames a tokenizer encoded, stored beside the codes (--keep-frames) or decoded online.

Stored frames live in the shard files, so they get the codes' integrity records, locking, resume
and atomic commits; `OnlineFrames` decodes the same frames from the videos at the stored times.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import store_meta  # noqa: E402
from test_store_integrity import _cfg as _store_cfg, _cli_args, _list  # noqa: E402  (the extraction settings)

from video2token.extract import ExtractConfig, main as extract_main, run  # noqa: E402
from video2token.inspect import main as inspect_main  # noqa: E402
from video2token.online_frames import OnlineFrames  # noqa: E402
from video2token.store import (ShardWriter, StoreError, TokenStore, VideoRecord, frames_meta,  # noqa: E402
                               record_path, shard_name)
from video2token.tokenizers import load_tokenizer  # noqa: E402
from video2token.video import read_video, read_video_at, trim_to_stride  # noqa: E402
from video2token.videowriter import write_video  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}
SHARD = shard_name(0, 1)


def _frames(seed: int, n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """A coloured square moving over a gradient (H.264 keeps it close, the tokenizer sees motion)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, rng.integers(0, 255))], -1)
    out = np.repeat(base[None], n, axis=0).astype(np.uint8)
    for t in range(n):
        x0 = (3 * t + seed) % (w - 8)
        out[t, 8:16, x0:x0 + 8] = rng.integers(0, 255, 3)
    return out


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """H.264 at 8 fps with a keyframe every 4 frames (x264's closed GOPs), so clips after 0.5 s need a seek."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        write_video(root / "good" / f"v{i}.mp4", _frames(i, 24 + 4 * i), fps=8, options={"g": "4"})
    shutil.copy(root / "good" / "v1.mp4", root / "hang.mp4")  # hangs under tests.faulty_decoder
    return root


def _cfg(root, anno, out, tok, **kw) -> ExtractConfig:
    return _store_cfg(root, anno, out, tok, **{"keep_frames": True, **kw})


def _record(i: int, t: int = 3, side: int = 32, frames: bool = True) -> VideoRecord:
    codes = (np.arange(t * 16).reshape(t, 4, 4) * (i + 1) % 32).astype(np.int16)
    px = np.random.default_rng(i).integers(0, 256, (t, side, side, 3), dtype=np.uint8) if frames else None
    return VideoRecord(i, f"vid_{i:04d}.mp4", i % 3, codes, np.arange(t) / 2, frames=px)


def _frames_store(path, n: int = 6, compression: str = "gzip") -> str:
    w = ShardWriter(str(path), store_meta(32, 32) | {"frames": frames_meta(32, compression)})
    for i in range(n):
        w.add(_record(i, t=3 + i))
        if i % 2:
            w.commit()
    w.finalize()
    return str(path)


# ----------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("crop_type", ["center", "none"])
def test_keep_frames_stores_the_frames_the_tokenizer_encoded(video_root, tiny_vqvae, tmp_path, crop_type):
    anno = _list(tmp_path, [f"good/v{i}.mp4 {i % 2}" for i in range(3)])
    out = tmp_path / "store"
    run(_cfg(video_root, anno, out, tiny_vqvae, crop_type=crop_type, hflip=True, frame_shorter_side=40))
    s = TokenStore(str(out))
    tok = load_tokenizer("vqvae", tiny_vqvae)
    side = {"center": (32, 32), "none": (40, 56)}[crop_type]  # 40x60 resized, trimmed to the stride 8
    assert s.has_frames and s.meta["frames"] == {"size": 32 if crop_type == "center" else None, "channels": 3,
                                                 "dtype": "uint8", "compression": "none"}
    for k, vid in enumerate(s.video_ids):
        frames, codes = s.read_frames_at(k), s.read_at(k)[0]
        assert frames.dtype == np.uint8 and frames.shape == (codes.shape[0], *side, 3)
        decoded, _ = read_video(str(video_root / vid), 2, 40, 32, crop_type=crop_type, hflip=True)
        assert np.array_equal(frames, trim_to_stride(decoded, 8))  # what the tokenizer was given ...
        assert np.array_equal(tok.encode(frames), codes)           # ... and its codes
        for a, b in [(0, 2), (1, 4), (2, 100), (3, 3)]:  # a clip: frame j is the image of codes j
            part = s.read_frames_at(k, slice(a, b))
            assert np.array_equal(part, frames[a:b]) and part.shape[0] == s.read_at(k, slice(a, b))[0].shape[0]
    plain = tmp_path / "plain"
    run(_cfg(video_root, anno, plain, tiny_vqvae, keep_frames=False))
    p = TokenStore(str(plain))
    assert not p.has_frames and "frames" not in p.meta
    with pytest.raises(StoreError, match=f"token store {plain} keeps no frames.*extract with --keep-frames"):
        p.read_frames_at(0)


def test_kill9_with_keep_frames_then_rerun_is_bit_identical(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, ["good/v0.mp4 0", "good/v2.mp4 1", "hang.mp4 1", "good/v3.mp4 0"])
    ref = tmp_path / "ref"
    run(_cfg(video_root, anno, ref, tiny_vqvae, batch_size=2))
    out = tmp_path / "killed"
    # the job commits its first two videos (frames included, one part each; their 6 and 8 frames fill whole
    # batches of 2), then hangs on hang.mp4
    cfg = _cfg(video_root, anno, out, tiny_vqvae, batch_size=2, commit_every=1,
               reader="tests.faulty_decoder:read_video")
    code = f"from video2token.extract import ExtractConfig, run\nrun(ExtractConfig(**{cfg.__dict__!r}))\n"
    job = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    parts = out / ".parts" / "shard-00000-of-00001"
    try:
        deadline = time.monotonic() + 120
        while not (parts.is_dir() and sum(n.endswith(".h5") for n in os.listdir(parts)) >= 2):
            assert job.poll() is None and time.monotonic() < deadline, "the job did not commit two parts"
            time.sleep(0.05)
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    with h5py.File(sorted(parts.glob("part-*.h5"))[0], "r") as f:
        assert f["pixels"].shape[0] > 0  # the committed work holds frames
    with pytest.raises(StoreError):
        TokenStore(str(out))
    summary = run(_cfg(video_root, anno, out, tiny_vqvae, batch_size=2))
    assert summary["resumed_from"] == 2 and summary["stored"] == 2
    assert (out / SHARD).read_bytes() == (ref / SHARD).read_bytes()
    s = TokenStore(str(out))
    assert s.has_frames and len(s) == 4 and not (out / ".parts").exists()


def test_keep_frames_on_resume_of_a_store_made_without_it_or_the_reverse_is_refused(video_root, tiny_vqvae, tmp_path,
                                                                                   capsys):
    anno = _list(tmp_path, ["good/v0.mp4 0"])
    for made, then in [((), ("--keep-frames",)), (("--keep-frames",), ())]:
        out = tmp_path / f"store{len(made)}"
        assert extract_main(_cli_args(video_root, anno, out, tiny_vqvae, *made)) == 0
        before = (out / SHARD).read_bytes()
        capsys.readouterr()
        assert extract_main(_cli_args(video_root, anno, out, tiny_vqvae, *then)) == 2
        err = capsys.readouterr().err
        kept, runs = ("with", "without") if made else ("without", "with")
        assert f"{out} was extracted {kept} --keep-frames" in err and f"this job runs {runs} it" in err, err
        assert "--overwrite" in err and (out / SHARD).read_bytes() == before
    # another compression is another setting, refused like any other
    capsys.readouterr()
    assert extract_main(_cli_args(video_root, anno, tmp_path / "store1", tiny_vqvae, "--keep-frames",
                                  "--frames-compression", "gzip")) == 2
    assert "frames.compression: 'none' (existing) vs 'gzip' (requested)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--frames-compression must be one of"):
        run(_cfg(video_root, anno, tmp_path / "x", tiny_vqvae, frames_compression="zstd"))


def test_the_writer_refuses_records_whose_frames_do_not_match_the_store(tmp_path):
    w = ShardWriter(str(tmp_path / "a"), store_meta(32, 32) | {"frames": frames_meta(32, "none")})
    with pytest.raises(StoreError, match=r"vid_0000.mp4: this store keeps frames: expected uint8 frames "
                                         r"\(3, 32, 32, 3\) beside codes \(3, 4, 4\), got none"):
        w.add(_record(0, frames=False))
    with pytest.raises(StoreError, match=r"expected uint8 frames \(3, 32, 32, 3\).*got uint8 \(3, 24, 24, 3\)"):
        w.add(_record(0, side=24))
    w.close()
    w = ShardWriter(str(tmp_path / "b"), store_meta(32, 32))
    with pytest.raises(StoreError, match="frames given to store .* which keeps none"):
        w.add(_record(0))
    w.close()
    with pytest.raises(StoreError, match="frames compression must be one of"):
        frames_meta(32, "zstd")


# ----------------------------------------------------------------------------- integrity

def _open_in_subprocess(path) -> subprocess.CompletedProcess:
    code = ("import sys\nfrom video2token.store import StoreError, TokenStore\n"
            f"try:\n    s = TokenStore({str(path)!r})\n    [s.read_frames_at(k) for k in range(len(s))]\n"
            "except StoreError as e:\n    print(e)\n    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)


def test_a_bit_flip_in_the_frames_is_refused_on_open(tmp_path):
    clean = _frames_store(tmp_path / "clean", compression="none")
    out = tmp_path / "store"
    shutil.copytree(clean, out)
    shard = str(out / SHARD)
    with h5py.File(shard, "r+") as f:
        f["pixels"][1000] ^= 1  # one bit of one pixel
    r = _open_in_subprocess(out)
    assert r.returncode == 3 and shard in r.stdout and "corrupt" in r.stdout, r.stdout + r.stderr
    assert _open_in_subprocess(clean).returncode == 0


def test_the_frame_index_is_checked_like_the_codes(tmp_path):
    clean = _frames_store(tmp_path / "clean")
    shard = str(tmp_path / "store" / SHARD)

    def damaged(edit):
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
        shutil.copytree(clean, tmp_path / "store")
        with h5py.File(shard, "r+") as f:
            edit(f)
        # the edit changes the file's size: record the new size (not its SHA-256), so without the SHA-256 the index
        # checks speak rather than the cheap size check, and with it the shard is still corrupt
        rec = json.load(open(record_path(shard)))
        rec["bytes"] = os.path.getsize(shard)
        json.dump(rec, open(record_path(shard), "w"))
        return str(tmp_path / "store")

    def copy_offset(f):
        offs = f["pixel_offsets"][()]
        offs[2] = offs[1]
        f["pixel_offsets"][:] = offs

    for edit, message in [
        (copy_offset, r"inconsistent frame index: pixel offsets do not tile the \d+ frame bytes \(first wrong at "
                      r"video 2\)"),
        (lambda f: f.__delitem__("pixels"), "the pixels or pixel_offsets dataset is missing"),
        (lambda f: f.attrs.__setitem__("meta", json.dumps(store_meta(32, 32))), "holds frames its metadata does "
                                                                                "not declare"),
        (lambda f: f.attrs.__setitem__("meta", json.dumps(store_meta(32, 32) | {"frames": frames_meta(16, "gzip")})),
         "video 0 has 32x32 frames, the store's frames are 16x16"),
        (lambda f: f.attrs.__setitem__("meta", json.dumps(store_meta(32, 32) | {"frames": frames_meta(32, "lzf")})),
         "compressed with gzip, its metadata says flat uint8 with lzf"),
    ]:
        with pytest.raises(StoreError, match=message):
            TokenStore(damaged(edit), verify=False)  # the index checks run without the SHA-256
        with pytest.raises(StoreError, match="corrupt"):
            TokenStore(str(tmp_path / "store"))
    shutil.rmtree(tmp_path / "store")
    shutil.copytree(clean, tmp_path / "store")
    rec = json.load(open(record_path(shard)))
    assert rec["pixels"] == sum(t * 32 * 32 * 3 for t in range(3, 9))
    rec["pixels"] += 3
    json.dump(rec, open(record_path(shard), "w"))
    with pytest.raises(StoreError, match=r"disagrees with its integrity record: pixels \d+ \(record: \d+\)"):
        TokenStore(str(tmp_path / "store"))
    del rec["pixels"]
    json.dump(rec, open(record_path(shard), "w"))
    with pytest.raises(StoreError, match="holds frames but its integrity record has no 'pixels' count"):
        TokenStore(str(tmp_path / "store"))


def test_frames_read_in_dataloader_workers_each_with_its_own_handle(tmp_path):
    s = TokenStore(_frames_store(tmp_path / "s", n=4))
    want = [s.read_frames_at(k, slice(1, 3)) for k in range(len(s))]  # the parent's handle is open now

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.from_numpy(s.read_frames_at(i % 4, slice(1, 3))), torch.tensor(os.getpid())

    got = list(torch.utils.data.DataLoader(Clips(), batch_size=None, num_workers=2))
    assert all(np.array_equal(x.numpy(), want[i % 4]) for i, (x, _) in enumerate(got))
    assert {int(p) for _, p in got} - {os.getpid()}  # read in the workers


# ----------------------------------------------------------------------------- inspect

def test_inspect_reports_the_kept_frames(tmp_path, capsys):
    path = _frames_store(tmp_path / "s", n=3, compression="gzip")
    capsys.readouterr()
    assert inspect_main([path, "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)["summary"]["kept_frames"]
    raw = sum(t * 32 * 32 * 3 for t in (3, 4, 5))
    assert kept["size"] == 32 and kept["compression"] == "gzip" and kept["uncompressed_bytes_per_video"] == raw // 3
    assert 0 < kept["bytes_per_video"] <= raw // 3 + 4096  # random pixels: gzip gains nothing, chunks cost a little
    assert inspect_main([path]) == 0
    assert "kept_frames: {'size': 32, 'compression': 'gzip', 'bytes_per_video':" in capsys.readouterr().out
    plain = ShardWriter(str(tmp_path / "p"), store_meta(32, 32))
    plain.add(_record(0, frames=False))
    plain.finalize()
    assert inspect_main([str(tmp_path / "p")]) == 0
    assert "kept_frames: none (extracted without --keep-frames)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- online decode

@pytest.mark.parametrize("decoder", ["av", "decord"])
def test_online_frames_are_the_stored_frames_bit_for_bit(video_root, tiny_vqvae, tmp_path, monkeypatch, decoder):
    pytest.importorskip(decoder)
    anno = _list(tmp_path, [f"good/v{i}.mp4 0" for i in range(4)])
    out = tmp_path / "store"
    run(_cfg(video_root, anno, out, tiny_vqvae, hflip=True, frame_shorter_side=40, decoder=decoder))
    moved = tmp_path / "moved"  # the videos may live elsewhere now
    shutil.copytree(video_root, moved)
    s = TokenStore(str(out))
    import video2token.video as video

    seeks = []
    real_pick = video._pick_av
    monkeypatch.setattr(video, "_pick_av", lambda *a, **kw: seeks.append(kw["after_seek"]) or real_pick(*a, **kw))
    for online in (OnlineFrames(s), OnlineFrames(s, video_root=str(moved))):
        for k in range(len(s)):
            n = int(s.num_frames[k])
            for a, b in [(0, n), (0, 2), (n - 5, n), (n - 2, n + 3), (2, 2)]:  # whole, head, tail, past the end, none
                want = s.read_frames_at(k, slice(a, b))
                got = online.read_at(k, slice(a, b))
                assert got.shape == want.shape and np.array_equal(got, want), (s.video_ids[k], a, b)
    if decoder == "av":
        assert seeks.count(True) >= 8  # clips after 0.5 s were read from a later keyframe, not from frame 0
    with pytest.raises(ValueError, match="times must be a non-empty increasing"):
        read_video_at(str(video_root / "good" / "v0.mp4"), np.array([1.0, 0.5]), 32, 32)
