"""Frames for BEVT-style training: stored beside the codes (--keep-frames) or decoded online from the videos.

    PYTHONPATH=. python benchmarks/frames_loader.py [--videos 64] [--batches 60] [--repeats 3] [--ucf-like] [--json]

For demo-like synthetic data (video2token.synthetic: H.264, 8 fps, 2 s, crf 12, as `make demo`)
at 64 and 128 px, extracted at 4 FPS (8 frames per video) with a random-weight VQ-VAE, it measures:
  - bytes per video on disk: the source .mp4, a store without frames, the frames of a store with
    --keep-frames for each --frames-compression (none / lzf / gzip), and extraction wall time;
  - the time to open each store (`TokenStore`, SHA-256 of every shard included);
  - one process reading random clips of T=5 frames: stored frames per compression
    (`TokenStore.read_frames_at`) and online decode (`video2token.online_frames.OnlineFrames`);
  - DataLoader frames/s with 1 and 2 workers, batches of 16 random clips (random video, random
    start), after the first batch (worker start-up excluded).
Times are the best of --repeats. --ucf-like adds online decode of 240x180, 25 fps, 8 s H.264 videos
with the encoder's default GOP (what real datasets look like to a decoder: long GOPs, large frames),
cropped to 128 px at 2 FPS; stored frames do not depend on the source, so only online decode is run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.extract import make_videos  # noqa: E402
from benchmarks.machine import machine_line  # noqa: E402
from video2token.extract import ExtractConfig, run  # noqa: E402
from video2token.online_frames import OnlineFrames  # noqa: E402
from video2token.store import FRAME_COMPRESSIONS, TokenStore  # noqa: E402
from video2token.synthetic import make_dataset  # noqa: E402

CLIP = 5


class RandomClips(Dataset):
    """Item i: a clip of CLIP frames from a random video at a random start, (CLIP, H, W, 3) uint8 tensor."""

    def __init__(self, read, num_frames: np.ndarray, length: int, seed: int = 0):
        self.read, self.num_frames, self.length, self.seed = read, num_frames, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.num_frames)))
        start = int(rng.integers(0, self.num_frames[k] - CLIP + 1))
        return torch.from_numpy(self.read(k, slice(start, start + CLIP)))


def make_tokenizer(path: str) -> str:
    from video2token.tokenizers.vqvae import save_vqvae
    from video2token.vqvae_model import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    cfg = VQVAEConfig(vocab_size=64, downsample=8, channels=8, max_channels=16, num_res_blocks=1, code_dim=8,
                      kmeans_init=False)
    save_vqvae(VQVAE(cfg).eval(), path)
    return path


def extract(root: str, anno: str, out: str, tok: str, px: int, fps: float, keep: str | None) -> float:
    t0 = time.perf_counter()
    run(ExtractConfig(video_root=root, anno=(anno,), output=out, fps=fps, frame_shorter_side=px, crop_size=px,
                      tokenizer="vqvae", tokenizer_path=tok, batch_size=64, num_workers=1, progress=False,
                      device="cpu", keep_frames=keep is not None, frames_compression=keep or "none"))
    return time.perf_counter() - t0


def best(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def clip_reads_per_s(read, num_frames: np.ndarray, clips: int) -> float:
    ds = RandomClips(read, num_frames, clips, seed=1)
    t0 = time.perf_counter()
    for i in range(clips):
        ds[i]
    return clips / (time.perf_counter() - t0)


def loader_frames_per_s(read, num_frames: np.ndarray, workers: int, batches: int, batch: int = 16) -> float:
    loader = DataLoader(RandomClips(read, num_frames, batches * batch), batch_size=batch, num_workers=workers)
    it = iter(loader)
    next(it)  # workers started, first batch in
    t0 = time.perf_counter()
    n = sum(b.shape[0] for b in it)
    return n * CLIP / (time.perf_counter() - t0)


def open_seconds(path: str) -> float:
    t0 = time.perf_counter()
    TokenStore(path).close()
    return time.perf_counter() - t0


def bench_size(work: str, px: int, a, tok: str) -> dict:
    ds = make_dataset(os.path.join(work, f"data{px}"), num_pool=a.videos, num_train=0, num_val=0, size=px, fps=8,
                      seconds=2, crf=12, show_progress=False)
    root, anno = str(ds.root), str(ds.pretrain_list)
    mp4 = float(np.mean([os.path.getsize(p) for p in glob.glob(os.path.join(root, "videos", "pool", "*.mp4"))]))
    res = {"px": px, "videos": a.videos, "mp4_bytes_per_video": round(mp4), "stores": {}}
    plain = os.path.join(work, f"plain{px}")
    res["extract_s_without_frames"] = round(extract(root, anno, plain, tok, px, 4, None), 2)
    store = TokenStore(plain)
    res["store_bytes_per_video_without_frames"] = round(sum(map(os.path.getsize, store.shard_paths)) / len(store))
    online = OnlineFrames(store)
    readers = {"online": online.read_at}
    for comp in FRAME_COMPRESSIONS:
        out = os.path.join(work, f"{comp}{px}")
        secs = extract(root, anno, out, tok, px, 4, comp)
        s = TokenStore(out)
        disk, raw = s.frame_bytes()
        res["stores"][comp] = {"extract_s": round(secs, 2), "frame_bytes_per_video": round(disk / len(s)),
                               "raw_frame_bytes_per_video": round(raw / len(s)),
                               "shard_bytes_per_video": round(sum(map(os.path.getsize, s.shard_paths)) / len(s)),
                               "open_ms": round(1e3 * best(lambda: open_seconds(out), a.repeats), 2)}
        readers[comp] = s.read_frames_at
    nf = store.num_frames
    for name, read in readers.items():  # the same frames, whichever way they were read
        assert np.array_equal(read(0, slice(0, CLIP)), readers["online"](0, slice(0, CLIP))), name
    res["clips_per_s_one_process"] = {n: round(max(clip_reads_per_s(r, nf, a.clips if n != "online" else
                                                                    a.clips // 10) for _ in range(a.repeats)), 1)
                                      for n, r in readers.items()}
    res["loader_frames_per_s"] = {n: {w: round(max(loader_frames_per_s(r, nf, w, a.batches if n != "online" else
                                                                       max(4, a.batches // 5))
                                                   for _ in range(a.repeats)), 1) for w in (1, 2)}
                                  for n, r in readers.items()}
    return res


def bench_ucf_like(work: str, a, tok: str) -> dict:
    root = os.path.join(work, "ucf")
    os.makedirs(root, exist_ok=True)
    names = make_videos(root, max(2, a.videos // 8), 8.0)
    anno = os.path.join(work, "ucf.txt")
    with open(anno, "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    out = os.path.join(work, "ucf_store")
    extract(root, anno, out, tok, 128, 2, None)
    store = TokenStore(out)
    read = OnlineFrames(store).read_at
    nf = store.num_frames
    mp4 = float(np.mean([os.path.getsize(os.path.join(root, n)) for n in names]))
    return {"source": "240x180, 25 fps, 8 s, H.264 crf 23, default GOP", "videos": len(names),
            "frames_per_video": int(nf[0]), "mp4_bytes_per_video": round(mp4),
            "clips_per_s_one_process": round(max(clip_reads_per_s(read, nf, 20) for _ in range(a.repeats)), 1),
            "loader_frames_per_s": {w: round(max(loader_frames_per_s(read, nf, w, max(4, a.batches // 4))
                                                 for _ in range(a.repeats)), 1) for w in (1, 2)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=64, help="synthetic videos per frame size")
    p.add_argument("--batches", type=int, default=60,
                   help="DataLoader batches of 16 clips per measurement (online decode: a fifth)")
    p.add_argument("--clips", type=int, default=2000, help="clips read in one process (stored; online: a tenth)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="frame sizes (px)")
    p.add_argument("--ucf-like", action="store_true", help="also online decode of 240x180 25 fps videos")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    print(f"machine: {machine_line()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {"machine": machine_line(), "load_average_start": round(os.getloadavg()[0], 2), "sizes": []}
    with tempfile.TemporaryDirectory() as work:
        tok = make_tokenizer(os.path.join(work, "tok"))
        for px in a.sizes:
            r = bench_size(work, px, a, tok)
            results["sizes"].append(r)
            print(f"\n{px} px: {a.videos} videos x 8 frames; mp4 {r['mp4_bytes_per_video'] / 1e3:.1f} kB/video, store "
                  f"without frames {r['store_bytes_per_video_without_frames'] / 1e3:.2f} kB/video "
                  f"(extract {r['extract_s_without_frames']} s)")
            print(f"{'':>8} {'frames kB/video':>15} {'shard kB/video':>14} {'extract s':>9} {'open ms':>8} "
                  f"{'clips/s 1 proc':>14} {'loader fr/s 1w':>14} {'loader fr/s 2w':>14}")
            for n in ("online", *FRAME_COMPRESSIONS):
                st = r["stores"].get(n)
                cols = (f"{st['frame_bytes_per_video'] / 1e3:15.1f} {st['shard_bytes_per_video'] / 1e3:14.1f} "
                        f"{st['extract_s']:9.2f} {st['open_ms']:8.1f}") if st else f"{'(mp4)':>15} {'':>14} {'':>9} {'':>8}"
                lf = r["loader_frames_per_s"][n]
                print(f"{n:>8} {cols} {r['clips_per_s_one_process'][n]:14.1f} {lf[1]:14.1f} {lf[2]:14.1f}", flush=True)
        if a.ucf_like:
            u = bench_ucf_like(work, a, tok)
            results["ucf_like"] = u
            print(f"\nUCF-like online decode ({u['source']}, {u['videos']} videos, {u['frames_per_video']} frames at 2 "
                  f"FPS, mp4 {u['mp4_bytes_per_video'] / 1e3:.0f} kB/video): {u['clips_per_s_one_process']} clips/s in "
                  f"one process; loader {u['loader_frames_per_s'][1]} frames/s (1 worker), "
                  f"{u['loader_frames_per_s'][2]} (2 workers)")
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    print(f"\nload average at the end {results['load_average_end']}")
    if a.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
