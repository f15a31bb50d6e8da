"""DALL-E dVAE encoder throughput on CPU: the package's fp32 forward vs bf16 autocast vs our fast path.

Full-size architecture (the `dall-e` package's default Encoder(): n_hid=256,
n_blk_per_group=2, vocab 8192) with random weights, at 128 px. Also reports how often
each path's argmax agrees with the fp32 one (random weights have small logit margins, so
this is a pessimistic figure).

    PYTHONPATH=. .venv/bin/python benchmarks/tokenizer_encode.py [--batch-sizes 8 16 32] [--json]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from video2token.tokenizers.dalle import DalleTokenizer


def synthetic_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames (n, size, size, 3) uint8: upsampled noise, a bit like video."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 16, size // 16, 3)).astype(np.float32)
    frames = coarse.repeat(16, axis=1).repeat(16, axis=2) + rng.normal(0, 8, (n, size, size, 3))
    return frames.clip(0, 255).astype(np.uint8)


def time_path(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reps: int) -> tuple[float, torch.Tensor]:
    """frames/s of fn over x (one warm-up call on 2 frames first), and the codes it gave."""
    fn(x[:2])
    start = time.perf_counter()
    for _ in range(reps):
        codes = fn(x)
    return reps * x.shape[0] / (time.perf_counter() - start), codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()

    from dall_e import Encoder
    torch.manual_seed(0)
    encoder = Encoder().eval()  # n_hid=256, n_blk_per_group=2, vocab_size=8192
    tok = DalleTokenizer(encoder, device="cpu", precision="fast")

    def fp32(x: torch.Tensor) -> torch.Tensor:
        return encoder(x).argmax(1)

    def autocast_bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder(x).argmax(1)

    paths = {"fp32 (dall-e package)": fp32, "bf16 autocast (package)": autocast_bf16,
             "fast (ours: bf16 weights, channels-last, fp32 re-score)": tok._fast.codes}
    rows = []
    with torch.inference_mode():
        jobs = [(b, name) for b in args.batch_sizes for name in paths]
        ref: dict[int, torch.Tensor] = {}
        for b, name in tqdm(jobs, desc="encode benchmark"):
            frames = synthetic_frames(b, args.frame_size)
            x = tok._map_pixels(frames)  # (B, 3, H, W) float32, mapped as the package expects
            fps, codes = time_path(paths[name], x, args.reps)
            if name.startswith("fp32"):
                ref[b] = codes
            rows.append({"path": name, "batch": b, "frames_per_s": fps,
                         "argmax_agreement": float((codes == ref[b]).float().mean())})
    base = {r["batch"]: r["frames_per_s"] for r in rows if r["path"].startswith("fp32")}
    for r in rows:
        r["speedup"] = r["frames_per_s"] / base[r["batch"]]
    if args.json:
        print(json.dumps({"frame_size": args.frame_size, "threads": torch.get_num_threads(), "rows": rows}, indent=2))
        return
    print(f"\nDALL-E encoder, {args.frame_size}px, random weights, {torch.get_num_threads()} threads")
    print(f"| {'path':<56} | batch | frames/s | vs fp32 | argmax = fp32 |")
    print(f"|{'-' * 58}|-------|----------|---------|---------------|")
    for r in rows:
        print(f"| {r['path']:<56} | {r['batch']:>5} | {r['frames_per_s']:>8.2f} | {r['speedup']:>6.2f}x "
              f"| {100 * r['argmax_agreement']:>12.2f}% |")
    fast = [r["speedup"] for r in rows if r["path"].startswith("fast")]
    print(f"fast path: {min(fast):.2f}x-{max(fast):.2f}x the package's fp32 forward")


if __name__ == "__main__":
    main()
