"""DALL-E dVAE encoder throughput on this CPU: the `dall-e` package's fp32 forward vs our fp32 and bf16 paths.

Full-size architecture (the package's default Encoder(): n_hid=256, n_blk_per_group=2,
vocab 8192) with random weights, on smooth synthetic frames. Per batch size, one untimed
round warms every path up, then `--reps` rounds time the paths one after another
(interleaved, so load from other jobs hits them alike); frames/s is the batch over the
median time, and every ratio is against the package's fp32 forward of the same run.
"argmax = package" is the share of positions whose code equals the package's fp32 code
(random weights have small logit margins, so for bf16 this is a pessimistic figure).

Paths: the package's fp32 forward (the baseline); ours in fp32 (`ExactDalleEncoder`: the
package's codes exactly); ours at `--precision` (default auto: bf16 where this CPU computes
bf16 natively, else fp32 and no extra row; `--precision bf16` times bf16 anyway).

    PYTHONPATH=. .venv/bin/python benchmarks/tokenizer_encode.py [--batch-sizes 8 16] [--reps 3]
        [--frame-size 128] [--precision auto|fp32|bf16|fp16] [--threads N] [--budget-s 400] [--json]

An AVX2-only CPU, emulated on an AMX one (the policy then picks fp32, and there is no bf16 row):
`MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` before the command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from video2token.precision import add_precision_flag, read_cpu_bf16, resolve_precision  # noqa: E402
from benchmarks.machine import machine_line  # noqa: E402
from video2token.tokenizers.dalle import DalleTokenizer  # noqa: E402


def synthetic_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames (n, size, size, 3) uint8: upsampled noise, a bit like video."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 16, size // 16, 3)).astype(np.float32)
    frames = coarse.repeat(16, axis=1).repeat(16, axis=2) + rng.normal(0, 8, (n, size, size, 3))
    return frames.clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--frame-size", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3, help="timed rounds per batch size (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="fewer timed rounds (one at least) once a run would pass this many seconds, so a slow "
                             "CPU still finishes in under 10 minutes")
    add_precision_flag(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    cpu_bf16 = read_cpu_bf16(parser, os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)

    from dall_e import Encoder
    torch.manual_seed(0)
    encoder = Encoder().eval()  # n_hid=256, n_blk_per_group=2, vocab_size=8192
    ours32 = DalleTokenizer(encoder, device="cpu", precision="fp32")
    policy = resolve_precision(args.precision, "cpu", cpu_bf16=cpu_bf16)
    print(f"machine: {machine_line(cpu_bf16)}\n{policy.describe()}", file=sys.stderr, flush=True)

    def package_fp32(x: torch.Tensor) -> torch.Tensor:
        return encoder(x.contiguous()).argmax(1)

    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "dall-e package, fp32 forward (baseline)": package_fp32,
        "ours, fp32 (exact)": ours32.fast_encoder.codes,
    }
    if policy.name != "fp32":
        ours_lowp = DalleTokenizer(encoder, device="cpu", precision=policy.name)
        paths[f"ours, {policy.name} (fp32 re-score of top-4)"] = ours_lowp.fast_encoder.codes
    rows = []
    started, cut_short = time.perf_counter(), False
    with torch.inference_mode():
        for b in args.batch_sizes:
            x = ours32._map_pixels(synthetic_frames(b, args.frame_size))  # (B, 3, H, W) fp32, mapped
            codes = {name: fn(x) for name, fn in paths.items()}  # warm-up round (oneDNN primitives, allocator)
            times: dict[str, list[float]] = {name: [] for name in paths}
            for rep in range(args.reps):
                round_start = time.perf_counter()
                for name, fn in paths.items():
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
                now = time.perf_counter()
                if rep + 1 < args.reps and now + (now - round_start) - started > args.budget_s:
                    print(f"batch {b}: {rep + 1} of {args.reps} timed rounds (--budget-s {args.budget_s:.0f})",
                          file=sys.stderr, flush=True)
                    cut_short = True
                    break
            ref = codes["dall-e package, fp32 forward (baseline)"]
            base = b / statistics.median(times["dall-e package, fp32 forward (baseline)"])
            for name in paths:
                fps = b / statistics.median(times[name])
                rows.append({"path": name, "batch": b, "frames_per_s": fps, "best_frames_per_s": b / min(times[name]),
                             "vs_package_fp32": fps / base,
                             "argmax_agreement": float((codes[name] == ref).float().mean())})
            print(f"batch {b} done", file=sys.stderr, flush=True)
    facts = {"machine": machine_line(cpu_bf16), "frame_size": args.frame_size, "threads": torch.get_num_threads(),
             "reps": args.reps, "reps_cut_by_budget": cut_short, "torch": torch.__version__,
             "wall_s": round(time.perf_counter() - started, 1), "precision": policy.describe()}
    if args.json:
        print(json.dumps({**facts, "rows": rows}, indent=2))
        return
    print(f"\nDALL-E encoder, {args.frame_size}px, random weights; {facts['machine']}; "
          f"{facts['threads']} threads; median of {args.reps} interleaved runs"
          + (" (fewer where --budget-s cut them)" if cut_short else ""))
    print(f"| {'path':<42} | batch | frames/s | best | vs package fp32 | argmax = package |")
    print(f"|{'-' * 44}|-------|----------|------|-----------------|------------------|")
    for r in rows:
        print(f"| {r['path']:<42} | {r['batch']:>5} | {r['frames_per_s']:>8.2f} | {r['best_frames_per_s']:>4.2f} "
              f"| {r['vs_package_fp32']:>14.2f}x | {100 * r['argmax_agreement']:>15.2f}% |")


if __name__ == "__main__":
    main()
