"""Extraction throughput: the whole job (decode + resize + encode + write) vs the encoder alone.

    python benchmarks/extract.py [--videos 8] [--seconds 8] [--fps 2] [--json]

For each tokenizer (the DALL-E dVAE architecture with random weights at 128 px, the
project's small VQ-VAE at 64 and 128 px) it measures, in the same run:
  - encoder-only frames/s: `tokenizer.encode` on frames decoded beforehand, in batches of
    the job's batch size;
  - job frames/s: `video2token.extract.run` from video files to a finished store;
and prints their ratio (target >= 0.8: decoding overlaps encoding instead of adding to it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from video2token.extract import ExtractConfig, run  # noqa: E402
from video2token.precision import read_cpu_bf16  # noqa: E402
from video2token.tokenizers import load_tokenizer  # noqa: E402
from video2token.video import read_video  # noqa: E402
from video2token.videowriter import write_video  # noqa: E402


def make_videos(root: str, n: int, seconds: float, fps: int = 25, h: int = 180, w: int = 240) -> list[str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    names = []
    for i in range(n):
        frames = np.empty((int(seconds * fps), h, w, 3), np.uint8)
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, rng.integers(0, 255))], -1)
        for t in range(frames.shape[0]):
            f = base.copy()
            x0 = (4 * t + 13 * i) % (w - 40)
            f[60:100, x0:x0 + 40] = rng.integers(0, 255, 3)
            frames[t] = f
        name = f"v{i:03d}.mp4"
        write_video(os.path.join(root, name), frames, fps=fps, crf=23)
        names.append(name)
    return names


def make_dalle(path: str) -> str:
    from dall_e import Encoder
    torch.manual_seed(0)
    torch.save(Encoder(), path)  # the released encoder.pkl is a whole pickled module like this
    return path


def make_vqvae(path: str) -> str:
    from video2token.tokenizers.vqvae import save_vqvae
    from video2token.vqvae_model import VQVAE, VQVAEConfig
    torch.manual_seed(0)
    # default architecture, random weights (no k-means init: the codebook is used as drawn)
    save_vqvae(VQVAE(VQVAEConfig(vocab_size=512, downsample=8, kmeans_init=False)).eval(), path)
    return path


def encoder_only(tok, frames: np.ndarray, batch: int, repeats: int = 1) -> float:
    tok.encode(frames[:batch])  # warm-up (kernel selection)
    n = 0
    t0 = time.perf_counter()
    for _ in range(repeats):
        for s in range(0, len(frames) - batch + 1, batch):
            tok.encode(frames[s:s + batch])
            n += batch
    return n / (time.perf_counter() - t0)


def bench_one(name, kind, tok_path, root, anno, size, fps, batch, workers, tmp, cpu_bf16) -> dict:
    tok = load_tokenizer(kind, tok_path, batch_size=batch, cpu_bf16=cpu_bf16)
    frames = np.concatenate([read_video(os.path.join(root, v), fps, size, size)[0] for v in
                             [ln.split()[0] for ln in open(anno)]])
    repeats = max(1, int(np.ceil(256 / len(frames)))) if "vqvae" in name else 1
    enc = encoder_only(tok, frames, batch, repeats)
    cfg = ExtractConfig(video_root=root, anno=(anno,), output=os.path.join(tmp, f"store_{name}"), fps=fps,
                        frame_shorter_side=size, crop_size=size, tokenizer=kind, tokenizer_path=tok_path,
                        batch_size=batch, num_workers=workers, progress=False, overwrite=True, cpu_bf16=cpu_bf16)
    t0 = time.perf_counter()
    summary = run(cfg)
    wall = time.perf_counter() - t0
    job = summary["frames"] / wall
    return {"tokenizer": name, "frame_px": size, "frames": summary["frames"], "batch": batch, "workers": workers,
            "encoder_fps": round(enc, 1), "job_fps": round(job, 1), "job_over_encoder": round(job / enc, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--skip-dalle", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "videos")
        names = make_videos(root, a.videos, a.seconds)
        anno = os.path.join(tmp, "list.txt")
        with open(anno, "w") as f:
            f.write("".join(f"{n} 0\n" for n in names))
        vq = make_vqvae(os.path.join(tmp, "vqvae"))
        if not a.skip_dalle:
            rows.append(bench_one("dalle", "dalle", make_dalle(os.path.join(tmp, "encoder.pkl")), root, anno, 128,
                                  a.fps, 16, a.workers, tmp, cpu_bf16))
        # the small tokenizer is fast enough that decoding dominates: sample more frames
        rows.append(bench_one("vqvae", "vqvae", vq, root, anno, 64, a.fps * 4, 64, 2, tmp, cpu_bf16))
        rows.append(bench_one("vqvae", "vqvae", vq, root, anno, 128, a.fps * 4, 64, 2, tmp, cpu_bf16))
    if a.json:
        print(json.dumps(rows))
        return
    cols = ["tokenizer", "frame_px", "frames", "batch", "workers", "encoder_fps", "job_fps", "job_over_encoder"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")


if __name__ == "__main__":
    main()
