"""Inputs for the GPU check, made on the machine itself: videos, random-weight DALL-E, token stores, a checkpoint.

Nothing here is downloaded: the videos come from `video2token.synthetic`, the DALL-E encoder is the
package's architecture with random weights (saved as a whole pickled module, as released, so it
goes through the normal loading path), the stores hold random codes written with the store's own
writer, and the fallback checkpoint is a freshly initialised model written by `save_checkpoint`.

    python scripts/gpu_check/fixtures.py videos --out DIR --count 16 --size 128 --fps 25 --seconds 8
    python scripts/gpu_check/fixtures.py copies --src DIR --out DIR --count 96
    python scripts/gpu_check/fixtures.py dalle --out DIR [--tiny]
    python scripts/gpu_check/fixtures.py tokmeta --tokenizer-path DIR --device cuda --out FILE.json
    python scripts/gpu_check/fixtures.py store --out DIR --videos 3840 --frames 10 --grid 16 --vocab 8192 \
        [--labels 4] [--tokenizer-meta FILE.json]
    python scripts/gpu_check/fixtures.py checkpoint --out DIR --vocab 8192 --clip-len 5 --grid 16 [--tiny]

Each command prints one JSON object (what it made) on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the tiny shapes of `--cpu-dry-run` (dall_e's validators need n_hid >= 64 and vocab >= 512)
TINY_DALLE = dict(n_hid=64, n_blk_per_group=1, vocab_size=512)
TINY_MODEL = dict(layers=2, hid_dim=64, heads=2, head_dim=32, mlp_dim=256, nce_proj_hid_dim=64)


def make_videos(out: str, *, count: int, size: int, fps: float, seconds: float, seed: int = 0) -> dict:
    """`count` synthetic H.264 videos (moving shapes) under out/videos/pool/."""
    cmd = [sys.executable, "-m", "video2token.synthetic", "--out", out, "--num-pool", str(count), "--num-train", "0",
           "--num-val", "0", "--size", str(size), "--fps", str(fps), "--seconds", str(seconds), "--seed", str(seed)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=sys.stderr)
    pool = os.path.join(out, "videos", "pool")
    files = sorted(os.path.join(pool, f) for f in os.listdir(pool) if f.endswith(".mp4"))
    return {"videos": files, "size": size, "fps": fps, "seconds": seconds}


def copy_videos(src: str, out: str, *, count: int) -> dict:
    """A video root of `count` copies of the videos in `src` (round robin) and its MMAction2 list.

    The extraction job decodes and encodes every listed file anew, so copies give a job of any
    length from a few generated videos. Copies, not links: extraction stores one file listed under
    two names (a hard link or a symlink) once.
    """
    files = sorted(f for f in os.listdir(src) if f.endswith(".mp4"))
    if not files:
        raise SystemExit(f"no .mp4 files in {src}")
    os.makedirs(os.path.join(out, "job"), exist_ok=True)
    lines = []
    for i in range(count):
        rel = f"job/v{i:05d}.mp4"
        dst = os.path.join(out, rel)
        if not os.path.exists(dst):
            shutil.copyfile(os.path.join(src, files[i % len(files)]), dst)
        lines.append(rel)
    anno = os.path.join(out, "job_videos.txt")
    with open(anno, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return {"video_root": out, "anno": anno, "videos": count}


def make_dalle(out: str, *, tiny: bool) -> dict:
    """out/encoder.pkl: the dall_e Encoder (full size: n_hid 256, 2 blocks per group, 8192 codes) with random weights."""
    import torch
    from dall_e import Encoder

    torch.manual_seed(0)
    enc = Encoder(**TINY_DALLE) if tiny else Encoder()
    os.makedirs(out, exist_ok=True)
    torch.save(enc, os.path.join(out, "encoder.pkl"))
    params = sum(p.numel() for p in enc.parameters())
    return {"path": out, "vocab_size": enc.vocab_size, "n_hid": enc.n_hid, "params": params}


def tokenizer_meta(path: str, out: str, *, device: str, cpu_bf16: bool | None = None) -> dict:
    """out: what extraction stores as meta["tokenizer"] for the DALL-E at `path` on `device` (predict checks it);
    cpu_bf16: VIMPAC_CPU_BF16 as extraction reads it."""
    from video2token.tokenizers import load_tokenizer

    meta = load_tokenizer("dalle", path, device=device, cpu_bf16=cpu_bf16).describe()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return {"path": out, "tokenizer": meta}


def make_store(out: str, *, videos: int, frames: int, grid: int, vocab: int, labels: int = 0,
               tokenizer: dict | None = None, fps: float = 2.0, seed: int = 0) -> dict:
    """A one-shard store of random codes (T=frames, grid x grid); labels i % `labels` (or -1 with labels=0)."""
    from video2token.store import ShardWriter, VideoRecord

    rng = np.random.default_rng(seed)
    meta = {"tokenizer": tokenizer or {"name": "random", "vocab_size": vocab, "downsample": 8},
            "crop_size": grid * 8, "crop_type": "center", "frame_shorter_side": grid * 8, "fps": fps,
            "hflip": False, "video_root": "/nonexistent"}
    if labels:
        meta["label_names"] = [f"class_{k}" for k in range(labels)]
    if meta["tokenizer"]["vocab_size"] != vocab:
        raise SystemExit(f"--vocab {vocab} differs from the tokenizer's {meta['tokenizer']['vocab_size']}")
    w = ShardWriter(out, meta, shard_id=0, num_shards=1)
    timestamps = np.arange(frames, dtype=np.float64) / fps
    for i in range(videos):
        codes = rng.integers(0, vocab, size=(frames, grid, grid), dtype=np.int16)
        w.add(VideoRecord(source_index=i, video_id=f"v{i:06d}.mp4", label=i % labels if labels else -1,
                          codes=codes, timestamps=timestamps))
    w.finalize()
    return {"path": out, "videos": videos, "frames": frames, "grid": grid, "vocab": vocab, "labels": labels}


def make_checkpoint(out: str, *, vocab: int, clip_len: int, grid: int, tiny: bool) -> dict:
    """A pre-training checkpoint of a freshly initialised Small (or tiny) model, for fine-tuning to load."""
    import torch
    from vimpac import VimpacForPretraining, named_config, save_checkpoint

    torch.manual_seed(0)
    cfg = named_config("small", vocab_size=vocab, clip_len=clip_len, grid_h=grid, grid_w=grid,
                       **(TINY_MODEL if tiny else {}))
    save_checkpoint(out, model_state=VimpacForPretraining(cfg).state_dict(), model_config=cfg,
                    train_config={"note": "gpu_check fallback: random initialisation"}, step=0, epoch=0)
    return {"path": out, "config": cfg.to_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check/fixtures.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("videos")
    v.add_argument("--out", required=True)
    v.add_argument("--count", type=int, required=True)
    v.add_argument("--size", type=int, required=True)
    v.add_argument("--fps", type=float, required=True)
    v.add_argument("--seconds", type=float, required=True)
    ln = sub.add_parser("copies")
    ln.add_argument("--src", required=True)
    ln.add_argument("--out", required=True)
    ln.add_argument("--count", type=int, required=True)
    d = sub.add_parser("dalle")
    d.add_argument("--out", required=True)
    d.add_argument("--tiny", action="store_true")
    s = sub.add_parser("store")
    s.add_argument("--out", required=True)
    s.add_argument("--videos", type=int, required=True)
    s.add_argument("--frames", type=int, required=True)
    s.add_argument("--grid", type=int, required=True)
    s.add_argument("--vocab", type=int, required=True)
    s.add_argument("--labels", type=int, default=0)
    s.add_argument("--tokenizer-meta", default=None, help="JSON from `tokmeta`: the store's meta['tokenizer']")
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tokmeta")
    t.add_argument("--tokenizer-path", required=True)
    t.add_argument("--device", required=True)
    t.add_argument("--out", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("--out", required=True)
    c.add_argument("--vocab", type=int, required=True)
    c.add_argument("--clip-len", type=int, required=True)
    c.add_argument("--grid", type=int, required=True)
    c.add_argument("--tiny", action="store_true")
    a = p.parse_args(argv)

    t0 = time.monotonic()
    if a.cmd == "videos":
        made = make_videos(a.out, count=a.count, size=a.size, fps=a.fps, seconds=a.seconds)
    elif a.cmd == "copies":
        made = copy_videos(a.src, a.out, count=a.count)
    elif a.cmd == "dalle":
        made = make_dalle(a.out, tiny=a.tiny)
    elif a.cmd == "tokmeta":
        from video2token.precision import read_cpu_bf16

        made = tokenizer_meta(a.tokenizer_path, a.out, device=a.device, cpu_bf16=read_cpu_bf16(p, os.environ))
    elif a.cmd == "store":
        tok = None
        if a.tokenizer_meta:
            with open(a.tokenizer_meta, encoding="utf-8") as f:
                tok = json.load(f)
        made = make_store(a.out, videos=a.videos, frames=a.frames, grid=a.grid, vocab=a.vocab, labels=a.labels,
                          tokenizer=tok, seed=a.seed)
    else:
        made = make_checkpoint(a.out, vocab=a.vocab, clip_len=a.clip_len, grid=a.grid, tiny=a.tiny)
    made["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
