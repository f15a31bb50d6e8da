"""What a token store's integrity check costs: SHA-256 in GB/s, and opening a store with and without it.

    python benchmarks/store_verify.py [--mb 512] [--repeats 3] [--json]

Prints the CPU model (and whether it has the SHA extensions OpenSSL uses), then
  - `sha256_file` (the reader's check) on a --mb MB file already in the page cache, next to a
    plain read of the same file (what the disk alone would allow when it is not cached);
  - `TokenStore(path)` with `verify=True` (default) and `verify=False` on a demo-sized store
    (400 videos x 8 frames x 8x8 codes, `make demo`'s pool) and on a larger one (--large-videos
    x 32 frames x 16x16 codes), best of --repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def make_store(path: str, videos: int, frames: int, grid: int, vocab: int) -> int:
    rng = np.random.default_rng(0)
    meta = {"tokenizer": {"name": "bench", "vocab_size": vocab, "downsample": 8}, "crop_size": grid * 8,
            "crop_type": "center", "frame_shorter_side": grid * 8, "fps": 4.0, "hflip": False, "video_root": "/none"}
    w = ShardWriter(path, meta)
    for i in range(videos):
        w.add(VideoRecord(i, f"v{i:06d}.mp4", i % 10, rng.integers(0, vocab, (frames, grid, grid)).astype(np.int16),
                          np.arange(frames) / 4.0))
        if w.pending >= 512:
            w.commit()
    w.finalize()
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".h5"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=512, help="size of the hashed file")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--large-videos", type=int, default=4000, help="videos of the larger store (32 x 16 x 16 codes)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
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
