"""Issue 14, stores: one writer per store, cleanup of own names only, shards that prove their integrity,
a finalize that a kill or a full disk cannot leave half done, the umask, the frame cap, bad annotation
lines and jobs that store nothing.

Corruption is read in subprocesses with a timeout: a reader that spins on corrupt bytes fails the test
instead of hanging it.
"""
from __future__ import annotations

import errno
import fractions
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import av
import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_store, store_meta  # noqa: E402

from video2token.extract import ExtractConfig, run  # noqa: E402
from video2token.inspect import inspect_store  # noqa: E402
from video2token.store import (ShardWriter, StoreError, TokenStore, VideoRecord, record_path,  # noqa: E402
                               shard_name)
from video2token.video import VideoError, read_video  # noqa: E402
from video2token.videowriter import write_video  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}
SHARD = shard_name(0, 1)


def _frames(seed: int, n: int, h: int = 32, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 60, size=(n, h, w, 3)).astype(np.uint8)
    for t in range(n):
        out[t, 8:16, 2 * t:2 * t + 8] = 200
    return out


def _write_gap_video(path: str, seconds=(0, 5000, 10000)) -> None:
    """Three frames whose timestamps jump (0, 5000, 10000 s): 20,002 frames at 2 FPS if sampled blindly."""
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=1)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 1)
        for i, t in enumerate(seconds):
            f = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 40 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = t, fractions.Fraction(1, 1)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(root / "good" / f"v{i}.mp4", _frames(i, 8), fps=8)  # 1 s: 2 frames at 2 FPS
    shutil.copy(root / "good" / "v1.mp4", root / "hang.mp4")  # hangs under tests.faulty_decoder
    _write_gap_video(str(root / "gap.mp4"))
    from PIL import Image

    Image.fromarray(_frames(5, 1)[0]).save(root / "still.mp4", format="PNG")  # an image under a video's name
    return root


def _list(d, lines, name="list.txt") -> str:
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return p


def _cfg(root, anno, out, tok, **kw) -> ExtractConfig:
    base = dict(video_root=str(root), anno=(anno,), output=str(out), fps=2, frame_shorter_side=32, crop_size=32,
                tokenizer="vqvae", tokenizer_path=tok, batch_size=4, num_workers=0, timeout=60, progress=False,
                device="cpu")
    base.update(kw)
    return ExtractConfig(**base)


def _cli_args(root, anno, out, tok, *extra) -> list[str]:
    return ["--video-root", str(root), "--anno", anno, "--output", str(out), "--fps", "2", "--frame-shorter-side",
            "32", "--crop-size", "32", "--tokenizer", "vqvae", "--tokenizer-path", tok, "--batch-size", "4",
            "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


def _extract_cli(capsys, args) -> SimpleNamespace:
    """`python -m video2token.extract ARGS` in this process (saves a torch import per call)."""
    from video2token.extract import main

    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def _inspect(path, *extra, capsys=None) -> SimpleNamespace:
    """`python -m video2token.inspect PATH`: in a subprocess (a spin would time out), or in this process."""
    if capsys is None:
        r = subprocess.run([sys.executable, "-m", "video2token.inspect", str(path), *extra], env=ENV,
                           capture_output=True, text=True, timeout=60)
        return SimpleNamespace(returncode=r.returncode, stdout=r.stdout, stderr=r.stderr)
    from video2token.inspect import main

    capsys.readouterr()
    rc = main([str(path), *extra])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def _open_in_subprocess(path, verify=True) -> subprocess.CompletedProcess:
    """TokenStore(path) in a fresh process: exit 3 and the message on StoreError, 0 when it opened."""
    code = ("import sys\nfrom video2token.store import StoreError, TokenStore\n"
            f"try:\n    s = TokenStore({str(path)!r}, verify={verify})\n"
            "    [s.read_at(k) for k in range(len(s))]\n"
            "except StoreError as e:\n    print(e)\n    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)


def _record(i: int, vocab: int = 32, t: int = 3) -> VideoRecord:
    codes = (np.arange(t * 16, dtype=np.int64).reshape(t, 4, 4) * (i + 1) % vocab).astype(np.int16)
    return VideoRecord(source_index=i, video_id=f"vid_{i:04d}.mp4", label=i % 3, codes=codes,
                       timestamps=np.arange(t, dtype=np.float64) / 2)


def _write(path, records=range(6), failures=(7,), **kw) -> ShardWriter:
    """A writer with some videos and failures committed (not finalized)."""
    w = ShardWriter(str(path), store_meta(32, 32), **kw)
    for i in records:
        if i not in w.done:
            w.add(_record(i))
    for i in failures:
        if i not in w.done:
            w.add_failure(i, f"vid_{i:04d}.mp4", f"/videos/vid_{i:04d}.mp4", "decode", "not a video")
    w.commit()
    return w


# ----------------------------------------------------------------------------- one writer per store

def test_a_second_job_on_one_store_is_refused_naming_the_holder_and_a_kill_9_frees_it(video_root, tiny_vqvae,
                                                                                       tmp_path, capsys):
    out = tmp_path / "store"
    anno = _list(tmp_path, ["good/v0.mp4 0", "hang.mp4 1", "good/v2.mp4 2"])
    # job A commits v0, then hangs in its decoder while holding the store
    code = ("import sys\nfrom video2token.extract import ExtractConfig, run\n"
            f"run(ExtractConfig(**{_cfg(video_root, anno, out, tiny_vqvae, commit_every=1, batch_size=1, num_workers=1, timeout=600, reader='tests.faulty_decoder:read_video').__dict__!r}))\n")
    a = subprocess.Popen([sys.executable, "-c", code], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        parts = out / ".parts" / "shard-00000-of-00001"
        deadline = time.monotonic() + 90
        while not (parts.is_dir() and any(n.endswith(".h5") for n in os.listdir(parts))):
            assert a.poll() is None and time.monotonic() < deadline, "job A did not start writing"
            time.sleep(0.05)
        b = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae))
        assert b.returncode == 2, b.stdout + b.stderr
        assert "being written by another extraction job" in b.stderr and f"pid {a.pid}" in b.stderr, b.stderr
        assert a.poll() is None  # A was not disturbed
    finally:
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
    # the kernel dropped A's lock: the rerun resumes from A's committed part and finishes
    b = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae))
    assert b.returncode == 0, b.stdout + b.stderr
    assert "(1 already done before)" in b.stdout
    assert TokenStore(str(out)).video_ids == ["good/v0.mp4", "hang.mp4", "good/v2.mp4"]


def test_one_writer_per_shard_shards_side_by_side_and_one_shard_count(tmp_path):
    out = str(tmp_path / "store")
    meta = store_meta(32, 32)
    w0 = ShardWriter(out, meta, 0, 2)
    with pytest.raises(StoreError, match=f"shard 0/2 is being written by another extraction job: pid {os.getpid()}"):
        ShardWriter(out, meta, 0, 2)
    # a job with another shard count is refused while shard 0/2 is written, and cannot replace the store
    with pytest.raises(StoreError, match="being written by jobs with --num-shards 2"):
        ShardWriter(out, meta, 0, 3)
    with pytest.raises(StoreError, match=f"cannot replace this store while other jobs write it .*pid {os.getpid()}"):
        ShardWriter(out, {**meta, "fps": 4.0}, 1, 2, overwrite=True)
    # another shard of the same store, in another process, writes at the same time
    code = ("import numpy as np\nfrom video2token.store import ShardWriter, VideoRecord\n"
            f"w = ShardWriter({out!r}, {meta!r}, 1, 2)\n"
            "w.add(VideoRecord(1, 'vid_0001.mp4', 1, np.zeros((2, 4, 4), np.int16), np.arange(2) / 2))\n"
            "w.finalize()\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    w0.add(VideoRecord(0, "vid_0000.mp4", 0, np.ones((2, 4, 4), np.int16), np.arange(2) / 2))
    w0.finalize()  # drops the lock
    with pytest.raises(StoreError, match="already holds shards of a 2-shard extraction"):
        ShardWriter(out, meta, 0, 3)
    assert TokenStore(out).video_ids == ["vid_0000.mp4", "vid_0001.mp4"]
    ShardWriter(out, meta, 0, 2).close()  # the finished shard reopens: its lock was released


def test_a_filesystem_without_locks_or_a_store_of_another_user_is_a_clear_error(tmp_path, monkeypatch):
    import video2token.store_lock as store_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(store_lock.fcntl, "flock", no_locks)
    with pytest.raises(StoreError, match=r"cannot lock .*\.setup\.lock: No locks available; the store's filesystem "
                                         r"must support file locks \(on NFS, mount it without `nolock`\)"):
        ShardWriter(str(tmp_path / "store"), store_meta(32, 32))
    assert len(os.listdir("/proc/self/fd")) == fds  # nothing left open
    monkeypatch.undo()
    out = tmp_path / "theirs"
    make_store(str(out), num_videos=1)
    real_open = os.open

    def not_mine(path, flags, *a):
        if str(path).endswith(".lock") and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", not_mine)  # another user's store (root ignores modes, so simulated)
    with pytest.raises(StoreError, match=r"cannot open the lock file .*\.setup\.lock: Permission denied"):
        ShardWriter(str(out), store_meta(32, 32))
    assert len(TokenStore(str(out))) == 1  # readers take no lock


# ----------------------------------------------------------------------------- cleanup touches only own names

def _user_files(d) -> dict[str, bytes]:
    os.makedirs(d / "work.tmp" / "sub")
    os.makedirs(d / "old.old.tmp")
    (d / "work.tmp" / "sub" / "a.txt").write_text("mine")
    files = {"notes.txt": b"notes", "foo.tmp": b"temp of mine", ".cache.abcdefgh.tmp": b"hidden",
             "old.old.tmp/x": b"x", "work.tmp/sub/a.txt": b"mine"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def test_a_directory_that_is_not_a_store_is_refused_and_never_emptied(video_root, tiny_vqvae, tmp_path, capsys):
    out = tmp_path / "mine"
    files = _user_files(out)
    anno = _list(tmp_path, ["good/v0.mp4 0"])
    r = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae))
    assert r.returncode == 2 and "is not empty and is not a token store" in r.stderr and "--overwrite" in r.stderr
    assert {n: (out / n).read_bytes() for n in files} == files
    assert sorted(os.listdir(out)) == sorted([".cache.abcdefgh.tmp", "foo.tmp", "notes.txt", "old.old.tmp",
                                              "work.tmp"])  # nothing added either
    r = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae, "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert {n: (out / n).read_bytes() for n in files} == files
    assert TokenStore(str(out)).video_ids == ["good/v0.mp4"]
    # a meta.json that is not a store's is refused even with --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"mine": 1}')
    r = _extract_cli(capsys, _cli_args(video_root, anno, other, tiny_vqvae, "--overwrite"))
    assert r.returncode == 2 and "not a token store's" in r.stderr
    assert os.listdir(other) == ["meta.json"] and (other / "meta.json").read_text() == '{"mine": 1}'


def test_rerun_cleans_only_its_own_leftovers(tmp_path):
    out = tmp_path / "store"
    make_store(str(out), num_videos=2)
    leftovers = [f".{SHARD}.k3j_x9qz.tmp", ".meta.json.abcd1234.tmp"]
    for name in leftovers:
        (out / name).write_bytes(b"half written")
    (out / "foo.tmp").write_bytes(b"user")
    ShardWriter(str(out), store_meta(32, 32), overwrite=False).close()
    names = os.listdir(out)
    assert "foo.tmp" in names and not set(leftovers) & set(names)


# ----------------------------------------------------------------------------- integrity

def _flip_codes(shard: str) -> None:
    with h5py.File(shard, "r+") as f:
        codes = f["codes"][()]
        codes[:200] ^= 1  # the lowest bit of 200 codes: still inside the vocabulary
        f["codes"][:] = codes


def _copy_offset(shard: str) -> None:
    with h5py.File(shard, "r+") as f:
        offs = f["code_offsets"][()]
        offs[2] = offs[1]  # video 2 reads video 1's codes
        f["code_offsets"][:] = offs


def _ff_bytes(shard: str, where: float) -> None:
    with open(shard, "r+b") as f:
        f.seek(int(os.path.getsize(shard) * where))
        f.write(b"\xff" * 64)


CORRUPTIONS = {"flip_200_code_bits": _flip_codes, "copy_offset": _copy_offset,
               "ff_in_metadata": lambda p: _ff_bytes(p, 0.002), "ff_in_the_middle": lambda p: _ff_bytes(p, 0.5),
               "truncated": lambda p: os.truncate(p, os.path.getsize(p) - 100),
               "appended": lambda p: open(p, "ab").write(b"\0" * 8)}


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    return make_store(str(tmp_path_factory.mktemp("clean") / "store"), num_videos=12, frames=(20, 30))


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_shard_is_an_error_naming_it_never_a_hang_or_a_wrong_read(clean_store, tmp_path, kind):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    shard = str(out / SHARD)
    CORRUPTIONS[kind](shard)
    r = _open_in_subprocess(out)
    assert r.returncode == 3, r.stdout + r.stderr
    assert shard in r.stdout and "corrupt" in r.stdout and "re-extract" in r.stdout
    r = _inspect(out)
    assert r.returncode == 1 and shard in r.stdout and "corrupt" in r.stdout, r.stdout + r.stderr
    assert "problems: none" not in r.stdout


def test_index_checks_run_without_the_sha256(clean_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    _copy_offset(str(out / SHARD))
    r = _open_in_subprocess(out, verify=False)
    assert r.returncode == 3 and str(out / SHARD) in r.stdout and "code offsets do not tile" in r.stdout, r.stdout
    # verify=False skips only the SHA-256: bits flipped inside the vocabulary then read back unnoticed
    shutil.rmtree(out)
    shutil.copytree(clean_store, out)
    _flip_codes(str(out / SHARD))
    assert _open_in_subprocess(out, verify=False).returncode == 0
    assert _open_in_subprocess(out, verify=True).returncode == 3
    # the record's size is still checked without the SHA-256: a truncated copy never reaches HDF5
    os.truncate(out / SHARD, os.path.getsize(out / SHARD) - 100)
    r = _open_in_subprocess(out, verify=False)
    assert r.returncode == 3 and "(truncated or appended to)" in r.stdout, r.stdout + r.stderr
    # a record whose facts were edited (its SHA-256 still matches the shard): refused with or without verify
    shutil.rmtree(out)
    shutil.copytree(clean_store, out)
    rec = json.load(open(record_path(str(out / SHARD))))
    rec["videos"] += 1
    json.dump(rec, open(record_path(str(out / SHARD)), "w"))
    for verify in (True, False):
        with pytest.raises(StoreError, match=r"disagrees with its integrity record: videos 12 \(record: 13\)"):
            TokenStore(str(out), verify=verify)
    summary, problems = inspect_store(str(out))
    assert len(problems) == 1 and "disagrees with its integrity record" in problems[0]


def test_a_shard_without_a_record_is_refused_until_sealed(clean_store, tmp_path, capsys):
    out = tmp_path / "store"
    shutil.copytree(clean_store, out)
    rec = record_path(str(out / SHARD))
    os.remove(rec)
    with pytest.raises(StoreError, match="has no integrity record.*--seal"):
        TokenStore(str(out))
    r = _inspect(out, capsys=capsys)
    assert r.returncode == 1 and "no integrity record" in r.stdout
    r = _inspect(out, "--seal", capsys=capsys)
    assert r.returncode == 0 and f"sealed {out / SHARD}" in r.stdout, r.stdout + r.stderr
    assert json.load(open(rec)) == json.load(open(record_path(os.path.join(clean_store, SHARD))))
    assert len(TokenStore(str(out))) == 12
    r = _inspect(out, "--seal", capsys=capsys)  # already sealed: nothing to do
    assert r.returncode == 0 and "sealed" not in r.stdout
    # a shard whose codes are outside the vocabulary is not sealed
    os.remove(rec)
    with h5py.File(out / SHARD, "r+") as f:
        f["codes"][0] = 31000
    r = _inspect(out, "--seal", capsys=capsys)
    assert r.returncode == 1 and "holds codes outside [0, 32); not sealed" in r.stderr and not os.path.exists(rec)
    with h5py.File(out / SHARD, "r+") as f:  # 0xFF bytes in the timestamps read as NaN
        f["codes"][0] = 0
        f["timestamps"][5] = np.nan
    r = _inspect(out, "--seal", capsys=capsys)
    assert r.returncode == 1 and "non-finite or decreasing timestamps; not sealed" in r.stderr
    assert not os.path.exists(rec)


def test_swapped_shards_and_foreign_or_garbage_records_are_refused(tmp_path):
    out = tmp_path / "store"
    meta = store_meta(32, 32)
    for sid in (0, 1):
        w = ShardWriter(str(out), meta, sid, 2)
        w.add(_record(sid))
        w.finalize()
    a, b = str(out / shard_name(0, 2)), str(out / shard_name(1, 2))
    assert TokenStore(str(out)).video_ids == ["vid_0000.mp4", "vid_0001.mp4"]
    for p in (a, record_path(a)):  # a consistent swap: shard 1's bytes (and record) under shard 0's name
        os.replace(p, p + ".x")
    os.replace(b, a)
    os.replace(record_path(b), record_path(a))
    os.replace(a + ".x", b)
    os.replace(record_path(a) + ".x", record_path(b))
    with pytest.raises(StoreError, match=f"{a}: its integrity record .* is the record of '{os.path.basename(b)}'"):
        TokenStore(str(out))
    rec = json.load(open(record_path(a)))
    rec["file"] = os.path.basename(a)  # records edited to match: the shard says which shard it is
    json.dump(rec, open(record_path(a), "w"))
    rec = json.load(open(record_path(b)))
    rec["file"] = os.path.basename(b)
    json.dump(rec, open(record_path(b), "w"))
    with pytest.raises(StoreError, match=f"{a} holds shard 1 of 2, not the one its name says"):
        TokenStore(str(out))
    with open(record_path(a), "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError, match="unreadable integrity record"):
        TokenStore(str(out))
    with open(record_path(a), "w") as f:
        json.dump({"sha256": 5}, f)
    with pytest.raises(StoreError, match="is not a token-store integrity record"):
        TokenStore(str(out))


def test_a_damaged_part_is_discarded_and_its_videos_redone(tmp_path):
    out = tmp_path / "store"
    w = _write(out, records=range(3), failures=())
    w.close()
    part = out / ".parts" / "shard-00000-of-00001" / "part-00000000.h5"
    _ff_bytes(str(part), 0.5)
    w = ShardWriter(str(out), store_meta(32, 32))
    assert w.done == set()  # the part's videos are redone
    for i in range(3):
        w.add(_record(i))
    w.finalize()
    assert len(TokenStore(str(out))) == 3


# ----------------------------------------------------------------------------- finalize order

@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    _write(out).finalize()
    return out


def _same_as_reference(out, ref) -> None:
    assert (out / SHARD).read_bytes() == (ref / SHARD).read_bytes()
    assert (out / "errors.jsonl").read_text() == (ref / "errors.jsonl").read_text() != ""
    assert not (out / ".parts").exists()
    assert inspect_store(str(out))[1] == ["1 listed videos were not stored (decode: 1); the reasons are in "
                                          "errors.jsonl"]


def test_a_lost_errors_file_and_leftover_parts_are_settled_by_the_rerun(reference_store, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(reference_store, out)
    os.remove(out / "errors.jsonl")  # lost between the shard's rename and errors.jsonl
    shutil.copytree(reference_store, tmp_path / "scratch")
    os.makedirs(out / ".parts" / "shard-00000-of-00001")
    w = ShardWriter(str(out), store_meta(32, 32))
    assert w.complete
    w.finalize()
    _same_as_reference(out, reference_store)


def test_a_full_disk_at_any_write_of_finalize_leaves_a_state_the_rerun_completes(reference_store, tmp_path,
                                                                              monkeypatch):
    real_replace = os.replace
    k = 0
    while True:
        k += 1
        out = tmp_path / f"store{k}"
        w = _write(out)
        calls = {"n": 0}

        def full_disk(src, dst, calls=calls, k=k):
            calls["n"] += 1
            if calls["n"] == k:
                raise OSError(errno.ENOSPC, "No space left on device", dst)
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", full_disk)
        try:
            w.finalize()
            failed = False
        except OSError as e:
            assert e.errno == errno.ENOSPC
            failed = True
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        _write(out).finalize()  # the rerun (what extract does: skip what is done, add the rest, finalize)
        _same_as_reference(out, reference_store)
        if not failed:
            break
    assert k >= 4  # errors file, record, shard, ... each failed once


def test_a_failed_cleanup_after_the_commit_point_is_finished_by_the_rerun(reference_store, tmp_path, monkeypatch):
    out = tmp_path / "store"
    w = _write(out)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        w.finalize()
    monkeypatch.undo()
    assert (out / SHARD).exists() and (out / ".parts").exists()
    r = _extract_free_rerun(out)
    assert r.complete
    r.finalize()
    _same_as_reference(out, reference_store)


def _extract_free_rerun(out) -> ShardWriter:
    return ShardWriter(str(out), store_meta(32, 32))


def test_extract_rerun_rewrites_a_lost_errors_file(video_root, tiny_vqvae, tmp_path, capsys):
    out = tmp_path / "store"
    anno = _list(tmp_path, ["good/v0.mp4 0", "missing.mp4 1"])
    assert _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae)).returncode == 0
    errors = (out / "errors.jsonl").read_text()
    assert "missing.mp4" in errors
    os.remove(out / "errors.jsonl")
    r = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae))
    assert r.returncode == 0 and "already complete" in r.stdout, r.stdout + r.stderr
    assert (out / "errors.jsonl").read_text() == errors
    r = _inspect(out, capsys=capsys)
    assert "unfinished" not in r.stdout and "1 listed videos were not stored" in r.stdout


def test_extract_on_a_full_disk_says_so_and_the_rerun_completes(video_root, tiny_vqvae, tmp_path, capsys,
                                                                 monkeypatch):
    anno = _list(tmp_path, ["good/v0.mp4 0", "missing.mp4 1", "good/v1.mp4 1"])
    out = tmp_path / "store"
    real_replace = os.replace

    def full_when_finalizing(src, dst):
        if os.path.basename(dst) in (SHARD, "errors.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_when_finalizing)
    r = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae, "--commit-every", "1"))
    monkeypatch.undo()
    assert r.returncode == 2 and "No space left on device" in r.stderr and "rerun the same command" in r.stderr
    assert not (out / SHARD).exists()
    r = _extract_cli(capsys, _cli_args(video_root, anno, out, tiny_vqvae))
    assert r.returncode == 0 and "(3 already done before)" in r.stdout, r.stdout + r.stderr
    assert TokenStore(str(out)).video_ids == ["good/v0.mp4", "good/v1.mp4"]
    assert "missing.mp4" in (out / "errors.jsonl").read_text() and inspect_store(str(out))[1] == [
        "1 listed videos were not stored (decode: 1); the reasons are in errors.jsonl"]


# ----------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_files_and_folders_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    out = tmp_path / "store"
    code = (f"import os, sys\nos.umask({umask})\nsys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
            "from store_factory import make_store\nfrom video2token.atomic import atomic_dir\n"
            f"make_store({str(out)!r}, num_videos=2)\n"
            f"outside = {str(tmp_path / 'outside.txt')!r}\n"
            "os.close(os.open(outside, os.O_CREAT | os.O_WRONLY, 0o600))\n"
            f"with atomic_dir({str(tmp_path / 'release')!r}) as d:\n"
            "    open(os.path.join(d, 'weights.bin'), 'wb').close()\n"
            # writers that ignore the umask inside the folder (safetensors' save_file makes 0600 files)
            "    os.close(os.open(os.path.join(d, 'private.bin'), os.O_CREAT | os.O_WRONLY, 0o600))\n"
            "    os.mkdir(os.path.join(d, 'sub'), 0o700)\n"
            "    os.close(os.open(os.path.join(d, 'sub', 'x.bin'), os.O_CREAT | os.O_WRONLY, 0o600))\n"
            "    os.symlink(outside, os.path.join(d, 'link'))\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    for name in (SHARD, "shard-00000-of-00001.integrity.json", "meta.json", "errors.jsonl", ".lock",
                 ".shard-00000-of-00001.lock"):
        assert mode(out / name) == file_mode, (name, oct(mode(out / name)))
    assert mode(out) == dir_mode
    release = tmp_path / "release"
    assert mode(release) == dir_mode and mode(release / "sub") == dir_mode
    for name in ("weights.bin", "private.bin", "sub/x.bin"):
        assert mode(release / name) == file_mode, (name, oct(mode(release / name)))
    assert mode(tmp_path / "outside.txt") == 0o600  # a link inside is not followed


# ----------------------------------------------------------------------------- frame cap

@pytest.mark.parametrize("decoder", ["av", "decord"])
def test_timestamps_that_jump_are_too_long_not_20002_frames(video_root, monkeypatch, decoder):
    if decoder == "decord":
        pytest.importorskip("decord")
    with pytest.raises(VideoError, match="20002 frames at 2 FPS exceed the cap of 10000.*--max-frames") as e:
        read_video(str(video_root / "gap.mp4"), 2, 32, 32, decoder=decoder, max_frames=10_000)
    assert e.value.kind == "too_long"
    # a header that claims nothing: the cap holds while sampling
    import video2token.video as video

    monkeypatch.setattr(video, "_header_duration", lambda *a: None)
    with pytest.raises(VideoError, match="exceed the cap of 50") as e:
        read_video(str(video_root / "gap.mp4"), 2, 32, 32, decoder=decoder, max_frames=50)
    assert e.value.kind == "too_long"
    monkeypatch.undo()
    with pytest.raises(VideoError, match="cap of 10000"):  # the default bounds every caller (predict, visualize)
        read_video(str(video_root / "gap.mp4"), 2, 32, 32, decoder=decoder)
    assert len(read_video(str(video_root / "gap.mp4"), 0.001, 32, 32, decoder=decoder, max_frames=None)[0]) == 11
    frames, _ = read_video(str(video_root / "good" / "v0.mp4"), 2, 32, 32, max_frames=2)
    assert len(frames) == 2  # exactly the cap is fine
    with pytest.raises(VideoError, match="cap of 1 per video"):
        read_video(str(video_root / "good" / "v0.mp4"), 2, 32, 32, max_frames=1)


def test_extraction_logs_a_too_long_video_or_a_still_image_and_stores_the_rest(video_root, tiny_vqvae, tmp_path,
                                                                               capsys):
    with pytest.raises(VideoError, match=r"a still image \(piped png sequence\), not a video") as e:
        read_video(str(video_root / "still.mp4"), 2, 32, 32)
    assert e.value.kind == "not_video"
    anno = _list(tmp_path, ["good/v0.mp4 0", "gap.mp4 1", "still.mp4 1", "good/v1.mp4 1"])
    t0 = time.monotonic()
    summary = run(_cfg(video_root, anno, tmp_path / "store", tiny_vqvae))
    assert time.monotonic() - t0 < 60
    assert summary["stored"] == 2 and summary["skipped"] == {"decode": 2}
    s = TokenStore(str(tmp_path / "store"))
    assert s.video_ids == ["good/v0.mp4", "good/v1.mp4"]
    gap, still = [json.loads(x) for x in open(tmp_path / "store" / "errors.jsonl")]
    assert gap["path"].endswith("gap.mp4") and "--max-frames" in gap["reason"] and "too_long" in gap["reason"]
    assert still["path"].endswith("still.mp4") and "still image" in still["reason"]
    r = _extract_cli(capsys, _cli_args(video_root, anno, tmp_path / "cap", tiny_vqvae, "--max-frames", "0"))
    assert r.returncode == 2 and "--max-frames must be >= 1" in r.stderr


# ----------------------------------------------------------------------------- bad lines, empty jobs

def test_a_label_beyond_int32_skips_its_line_only(video_root, tiny_vqvae, tmp_path):
    anno = _list(tmp_path, ["good/v0.mp4 0", f"good/v1.mp4 {2 ** 31}", f"good/v2.mp4 {2 ** 31 - 1}"])
    for _ in range(2):  # and the rerun too
        summary = run(_cfg(video_root, anno, tmp_path / "store", tiny_vqvae))
    assert summary["already_complete"]
    s = TokenStore(str(tmp_path / "store"))  # the largest int32 label is stored and read back
    assert s.video_ids == ["good/v0.mp4", "good/v2.mp4"] and list(s.labels) == [0, 2 ** 31 - 1]
    (err,) = [json.loads(x) for x in open(tmp_path / "store" / "errors.jsonl")]
    assert err["stage"] == "annotation" and "does not fit the stored int32" in err["reason"]


def test_class_names_in_the_label_column_need_label_names(video_root, tiny_vqvae, tmp_path, capsys):
    anno = _list(tmp_path, ["good/v0.mp4 walk", "good/v1.mp4 jump", "good/v2.mp4 walk"])
    r = _extract_cli(capsys, _cli_args(video_root, anno, tmp_path / "plain", tiny_vqvae))
    assert r.returncode == 1 and "nothing stored" in r.stderr, r.stdout + r.stderr
    errors = [json.loads(x) for x in open(tmp_path / "plain" / "errors.jsonl")]
    assert len(errors) == 3 and all("--label-names" in e["reason"] and e["stage"] == "annotation" for e in errors)
    assert "'walk' in the label column is a class name" in errors[0]["reason"]
    assert "does not exist" not in (tmp_path / "plain" / "errors.jsonl").read_text()
    names = _list(tmp_path, ["jump", "walk"], name="names.txt")
    r = _extract_cli(capsys, _cli_args(video_root, anno, tmp_path / "named", tiny_vqvae, "--label-names", names))
    assert r.returncode == 0, r.stderr
    s = TokenStore(str(tmp_path / "named"))
    assert list(s.labels) == [1, 0, 1] and s.label_names == ["jump", "walk"]


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(video_root, tiny_vqvae, tmp_path):
    root = tmp_path / "root"
    os.makedirs(root / "cls")
    shutil.copy(video_root / "good" / "v0.mp4", root / "cls" / "ok.mp4")
    try:
        shutil.copy(video_root / "good" / "v1.mp4", os.path.join(os.fsencode(root / "cls"), b"bad\xff.mp4"))
    except OSError:
        pytest.skip("this filesystem refuses non-UTF-8 names")
    for _ in range(2):  # and the rerun
        summary = run(_cfg(root, str(root), tmp_path / "store", tiny_vqvae, anno_format="folder"))
    assert TokenStore(str(tmp_path / "store")).video_ids == ["cls/ok.mp4"]
    (err,) = [json.loads(x) for x in open(tmp_path / "store" / "errors.jsonl")]
    assert err["stage"] == "annotation" and "not valid UTF-8" in err["reason"] and summary["skipped"] == {
        "annotation": 1}


def test_a_job_that_stores_nothing_exits_non_zero_with_a_summary(video_root, tiny_vqvae, tmp_path, capsys):
    empty = _list(tmp_path, [], name="empty.txt")
    r = _extract_cli(capsys, _cli_args(video_root, empty, tmp_path / "empty", tiny_vqvae))
    assert r.returncode == 1 and "nothing stored: the annotation list is empty" in r.stderr, r.stdout + r.stderr
    assert "done: 0 videos stored" in r.stdout
    bad = _list(tmp_path, ["missing0.mp4 0", "missing1.mp4 1"], name="bad.txt")
    r = _extract_cli(capsys, _cli_args(video_root, bad, tmp_path / "bad", tiny_vqvae))
    assert r.returncode == 1 and "every video of this shard failed" in r.stderr, r.stdout + r.stderr
    assert "skipped: decode: 2" in r.stdout
    r = _extract_cli(capsys, _cli_args(video_root, bad, tmp_path / "bad", tiny_vqvae))  # the rerun says so again
    assert r.returncode == 1 and "already complete (0 videos stored" in r.stdout
    r = _inspect(tmp_path / "bad", capsys=capsys)
    assert r.returncode == 1 and "2 listed videos were not stored" in r.stdout and "holds no video" in r.stdout
