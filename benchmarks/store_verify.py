"""What a token store's integrity check costs: SHA-256 in GB/s, opening a store with and without it, and the
start-up of a multi-rank pre-training run with it.

    python benchmarks/store_verify.py [--mb 512] [--repeats 3] [--json]
    python benchmarks/store_verify.py --startup [--gb 1.5] [--shards 8] [--ranks 2] [--repeats 3] \
        [--code before=/path/to/older/checkout --code after=.] [--store DIR]
    python benchmarks/store_verify.py --fingerprint [--repeats 3]

Prints the CPU model (and whether it has the SHA extensions OpenSSL uses), then
  - `sha256_file` (the reader's check) on a --mb MB file already in the page cache, next to a
    plain read of the same file (what the disk alone would allow when it is not cached);
  - `TokenStore(path)` with `verify=True` (default) and `verify=False` on a demo-sized store
    (400 videos x 8 frames x 8x8 codes, `make demo`'s pool) and on a larger one (--large-videos
    x 32 frames x 16x16 codes), best of --repeats.

--startup: a store of about --gb GB in --shards shards (64 frames x 16x16 random codes per video,
vocabulary 8192; kept in --store DIR when given, and reused), then `torchrun --nproc_per_node
--ranks -m vimpac.pretrain` of a 1-layer model on it (CPU ranks, gloo) from each --code tree,
with the stores' check and with --no-verify-stores: seconds from the launch to the first train
row of metrics.jsonl (after one optimizer step), median and best of --repeats. The run is
stopped there. The difference between the two is what the check costs the start-up.

--fingerprint: what extraction's per-video fingerprint (size + SHA-256 of the file,
`checksum.file_fingerprint`) costs next to decoding the same file (`read_video` at 2 FPS,
128 px): two H.264 files of noisy frames at crf 18 (320x240 for 8 s, 1280x720 for 4 s), best
of --repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from video2token.checksum import sha256_file  # noqa: E402
from video2token.store import ShardWriter, TokenStore, VideoRecord  # noqa: E402


def cpu_model() -> tuple[str, bool]:
    name, sha = platform.processor() or "unknown", False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    sha = sha or "sha_ni" in line.split()
    except OSError:
        pass
    return name, sha


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def read_only(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


def make_store(path: str, videos: int, frames: int, grid: int, vocab: int, shards: int = 1) -> int:
    rng = np.random.default_rng(0)
    meta = {"tokenizer": {"name": "bench", "vocab_size": vocab, "downsample": 8}, "crop_size": grid * 8,
            "crop_type": "center", "frame_shorter_side": grid * 8, "fps": 4.0, "hflip": False, "video_root": "/none"}
    for k in range(shards):
        w = ShardWriter(path, meta, shard_id=k, num_shards=shards)
        for i in range(videos * k // shards, videos * (k + 1) // shards):
            w.add(VideoRecord(i, f"v{i:06d}.mp4", i % 10,
                              rng.integers(0, vocab, (frames, grid, grid)).astype(np.int16), np.arange(frames) / 4.0))
            if w.pending >= 512:
                w.commit()
        w.finalize()
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".h5"))


def first_step_seconds(code: str, store: str, ranks: int, verify: bool, work: str,
                       timeout: float = 600) -> tuple[float, float]:
    """torchrun ... -m vimpac.pretrain from the tree `code` -> (seconds from launch to the first train row, CPU
    seconds of all its processes until then: the check's cost without the noise of other jobs' load)."""
    out = os.path.join(work, "run")
    shutil.rmtree(out, ignore_errors=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": os.path.abspath(code), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", port,
           "-m", "vimpac.pretrain", "--train-tokens", store, "--output", out, "--layers", "1", "--hid-dim", "32",
           "--heads", "2", "--nce-proj-hid-dim", "32", "--clip-len", "4", "--mask-blocks", "2", "--num-workers", "0",
           "--no-tqdm", "--batch-size", str(2 * ranks), "--bs-per-gpu", "2", "--epochs", "1", "--debug",
           "--eval-per-epochs", "0"] + ([] if verify else ["--no-verify-stores"])
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.perf_counter()
    log = open(os.path.join(work, "run.log"), "w+", encoding="utf-8")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=os.path.abspath(code))
    wall = None
    while wall is None and time.perf_counter() - t0 < timeout:
        if os.path.exists(metrics) and '"split": "train"' in open(metrics, encoding="utf-8").read():
            wall = time.perf_counter() - t0
        elif proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun stops its workers and reaps them: their CPU time counts
    _, _, usage = os.wait4(proc.pid, 0)
    log.seek(0)
    text = log.read()
    log.close()
    if wall is None:
        raise RuntimeError(f"no training step (rc {proc.returncode}): {text[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def fingerprint_cost(a: argparse.Namespace) -> int:
    from video2token.checksum import file_fingerprint
    from video2token.video import read_video
    from video2token.videowriter import write_video

    rng = np.random.default_rng(0)
    name, sha_ni = cpu_model()
    print(f"cpu: {name} ({os.cpu_count()} cores, SHA extensions: {'yes' if sha_ni else 'no'}), load average "
          f"{os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        for h, w, seconds in ((240, 320, 8), (720, 1280, 4)):
            n = 25 * seconds
            ramp = (np.arange(w) % 200).astype(np.uint8)[None, None, :, None]
            frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) // 8 + ramp  # noise: a high bitrate
            path = os.path.join(d, f"v{h}.mp4")
            write_video(path, frames, fps=25, crf=18)
            size = os.path.getsize(path)
            dec = min(timed(lambda: read_video(path, 2, 128, 128), a.repeats))
            fp = min(timed(lambda: file_fingerprint(path), a.repeats))
            print(f"{w}x{h}, {seconds} s, {size / 1e6:.2f} MB ({size * 8 / seconds / 1e6:.1f} Mbit/s): decode "
                  f"{dec * 1e3:.1f} ms, fingerprint {fp * 1e3:.2f} ms = {100 * fp / dec:.2f}% of the decode "
                  f"({size / fp / 1e9:.2f} GB/s)")
    return 0


def startup(a: argparse.Namespace) -> int:
    codes = dict(c.split("=", 1) for c in a.code) if a.code else {"this": os.path.dirname(HERE)}
    name, _ = cpu_model()
    with tempfile.TemporaryDirectory() as d:
        store = os.path.abspath(a.store) if a.store else os.path.join(d, "store")
        if not os.path.isdir(store):
            videos = int(a.gb * 1e9 / (64 * 16 * 16 * 2))
            t0 = time.perf_counter()
            make_store(store, videos, 64, 16, 8192, shards=a.shards)
            print(f"made {store}: {videos} videos in {a.shards} shards ({time.perf_counter() - t0:.0f} s)", flush=True)
        nbytes = sum(os.path.getsize(os.path.join(store, n)) for n in os.listdir(store) if n.endswith(".h5"))
        shards = sum(1 for n in os.listdir(store) if n.endswith(".h5"))
        print(f"cpu: {name} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}; store {nbytes / 1e9:.2f} GB "
              f"in {shards} shards (page cache); {a.ranks} ranks; seconds from launch to the first step", flush=True)
        runs = [(label, code, verify) for label, code in codes.items() for verify in (True, False)]
        res: dict[tuple[str, bool], list[tuple[float, float]]] = {(label, verify): [] for label, _, verify in runs}
        for r in range(a.repeats):  # round by round, so that a change of load hits every variant alike
            for label, code, verify in runs:
                res[(label, verify)].append(first_step_seconds(code, store, a.ranks, verify, d))
            print(f"round {r + 1}: " + ", ".join(
                f"{label} {'check' if v else 'no check'} {res[(label, v)][-1][0]:.1f} s ({res[(label, v)][-1][1]:.1f} "
                f"CPU s)" for label, _, v in runs), flush=True)
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in res.items()}
        for (label, verify), times in res.items():
            print(f"{label:>8} {'check' if verify else '--no-verify-stores':>18}: wall median {med[(label, verify)][0]:.1f}"
                  f" best {min(w for w, _ in times):.1f} s; CPU median {med[(label, verify)][1]:.1f} s")
        for label in codes:
            print(f"{label:>8}: the check adds {med[(label, True)][0] - med[(label, False)][0]:.1f} s wall, "
                  f"{med[(label, True)][1] - med[(label, False)][1]:.1f} CPU s (medians)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=512, help="size of the hashed file")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-videos", type=int, default=4000, help="videos of the larger store (32 x 16 x 16 codes)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--startup", action="store_true", help="time a multi-rank pre-training start-up instead")
    p.add_argument("--fingerprint", action="store_true", help="time a video's fingerprint against its decoding instead")
    p.add_argument("--gb", type=float, default=1.5, help="--startup: store size")
    p.add_argument("--shards", type=int, default=8, help="--startup: shards of the store")
    p.add_argument("--ranks", type=int, default=2, help="--startup: CPU ranks")
    p.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                   help="--startup: a source tree to run (repeatable; default: this one)")
    p.add_argument("--store", default=None, help="--startup: keep (and reuse) the store here")
    a = p.parse_args()
    if a.startup:
        return startup(a)
    if a.fingerprint:
        return fingerprint_cost(a)
    name, sha_ni = cpu_model()
    res = {"cpu": name, "sha_extensions": sha_ni, "cores": os.cpu_count(), "openssl": __import__("ssl").OPENSSL_VERSION,
           "load_average": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as d:
        big = os.path.join(d, "blob.bin")
        with open(big, "wb") as f:
            block = np.random.default_rng(0).integers(0, 256, 1 << 24, dtype=np.uint8).tobytes()
            for _ in range(a.mb // 16):
                f.write(block)
        size = os.path.getsize(big)
        read_only(big)  # into the page cache
        sha = timed(lambda: sha256_file(big), a.repeats)
        raw = timed(lambda: read_only(big), a.repeats)
        res["sha256_file_GBps"] = {"best": round(size / min(sha) / 1e9, 3), "median": round(size / statistics.median(sha) / 1e9, 3)}
        res["cached_read_GBps"] = round(size / min(raw) / 1e9, 3)
        os.remove(big)
        stores = {}
        for label, (videos, frames, grid, vocab) in {"demo (400 x 8 x 8x8)": (400, 8, 8, 128),
                                                     f"large ({a.large_videos} x 32 x 16x16)":
                                                         (a.large_videos, 32, 16, 8192)}.items():
            path = os.path.join(d, label.split()[0])
            nbytes = make_store(path, videos, frames, grid, vocab)
            on = timed(lambda: TokenStore(path, verify=True).close(), a.repeats)
            off = timed(lambda: TokenStore(path, verify=False).close(), a.repeats)
            stores[label] = {"shard_MB": round(nbytes / 1e6, 2), "open_verify_s": round(min(on), 4),
                             "open_no_verify_s": round(min(off), 4)}
        res["open_store"] = stores
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"cpu: {res['cpu']} ({res['cores']} cores, SHA extensions: {'yes' if sha_ni else 'no'}, "
          f"{res['openssl']}, load average {res['load_average']:.2f})")
    print(f"sha256_file on {size / 1e6:.0f} MB (page cache): {res['sha256_file_GBps']['best']} GB/s best, "
          f"{res['sha256_file_GBps']['median']} GB/s median; plain cached read {res['cached_read_GBps']} GB/s")
    for label, r in stores.items():
        print(f"open {label} store, {r['shard_MB']} MB: verify {r['open_verify_s'] * 1e3:.1f} ms, "
              f"no verify {r['open_no_verify_s'] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
