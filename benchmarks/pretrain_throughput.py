"""Steady-state throughput of the VIMPAC pre-training trainer (vimpac.pretrain) vs the raw model step.

For each config (tiny, small) and rank count (1, 2 CPU ranks):
  - trainer: `python -m vimpac.pretrain` (1 rank) or the deepspeed launcher (2 ranks) on a
    synthetic random-code store: data loading + masking + DeepSpeed engine + logging; clips/s
    is the median of the per-step rates the trainer logs, after `--skip` warm-up steps;
  - raw step: benchmarks/train_step.py's `make_step` (forward + losses + backward + fused AdamW
    on one tensor batch, no data, no DeepSpeed) at the same micro-batch and threads per rank;
    with 2 ranks, 2 such processes run at once and their rates add up (no all-reduce cost);
  - loader: the trainer's DataLoader alone (same dataset, sampler, workers), clips/s.

    PYTHONPATH=. python benchmarks/pretrain_throughput.py                 # tiny + small, 1 and 2 ranks
    PYTHONPATH=. python benchmarks/pretrain_throughput.py --configs tiny --ranks 1

`--loader-only --store DIR` times the loader alone on an existing store, as the trainer feeds a
device: store -> masked batch (the trainer's dataset, collate and sampler, epoch after epoch
through persistent workers) and, with `--device cuda`, pinned host memory and every tensor of
the batch copied with `.to(device, non_blocking=True)`, the device synchronised at the end;
one JSON object with videos/s (scripts/gpu_check.sh sets it beside the trainer's videos/s):

    PYTHONPATH=. python benchmarks/pretrain_throughput.py --loader-only --store DIR --device cuda \
        --clip-len 5 --batch 32 --workers 6 --seconds 3
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from video2token.store import ShardWriter, TokenStore, VideoRecord  # noqa: E402

# name -> (trainer model flags, ModelConfig overrides, vocab, grid, T, micro batch of videos)
CONFIGS = {
    "tiny": (["--config", "small", "--layers", "2", "--hid-dim", "64", "--heads", "2", "--nce-proj-hid-dim", "64"],
             dict(layers=2, hid_dim=64, heads=2, head_dim=32, mlp_dim=256, nce_proj_hid_dim=64), 512, 8, 5, 8),
    "small": (["--config", "small"], {}, 8192, 16, 5, 2),
}


def make_store(path: str, *, num_videos: int, vocab: int, grid: int, frames: int = 12, seed: int = 0) -> str:
    """Random codes: the data path costs the same as real codes (reads, slicing, masking)."""
    rng = np.random.default_rng(seed)
    meta = {"tokenizer": {"name": "random", "vocab_size": vocab, "downsample": 8}, "crop_size": grid * 8,
            "crop_type": "center", "fps": 2.0, "hflip": False, "video_root": "/nonexistent"}
    w = ShardWriter(path, meta, shard_id=0, num_shards=1)
    for i in range(num_videos):
        codes = rng.integers(0, vocab, size=(frames, grid, grid)).astype(np.int16)
        w.add(VideoRecord(i, f"v{i:05d}.mp4", 0, codes, np.arange(frames, dtype=np.float64)))
    w.finalize()
    return path


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_trainer(store: str, out: str, *, model_flags: list[str], clip_len: int, micro: int, ranks: int, steps: int,
                workers: int, threads: int, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(threads))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    flags = ["--train-tokens", store, "--output", out, *model_flags, "--clip-len", str(clip_len), "--bf16",
             "--batch-size", str(micro * ranks), "--bs-per-gpu", str(micro), "--epochs", "1", "--num-workers",
             str(workers), "--no-tqdm", "--eval-per-epochs", "0", "--mask-blocks", "5"]
    if ranks == 1:
        cmd = [sys.executable, "-m", "vimpac.pretrain", *flags]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_nodes", "1", "--num_gpus", str(ranks),
               "--master_port", free_port(), "--module", "vimpac.pretrain", *flags]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"trainer failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rates = [r["clips_per_s"] for r in rows if r["split"] == "train"]
    return {"per_step_clips_per_s": [round(x, 3) for x in rates], "wall_s": round(time.time() - t0, 1), "steps": len(rates)}


def loader_rate(store: str, *, vocab: int, clip_len: int, micro: int, workers: int, batches: int) -> float:
    """Clips/s of the trainer's data path alone: dataset + collate + DataLoader workers."""
    return loader_timing(store, clip_len=clip_len, micro=micro, workers=workers, max_batches=batches)["clips_per_s"]


def loader_timing(store: str, *, clip_len: int, micro: int, workers: int, device: str = "cpu",
                  max_batches: int = 20, seconds: float = float("inf"), mask_blocks: int = 5) -> dict:
    """The trainer's data path alone: store -> masked batch (dataset, collate, sampler, persistent DataLoader workers,
    epoch after epoch), and on a CUDA device pinned memory and every tensor of the batch moved with
    `.to(device, non_blocking=True)`, synchronised once at the end. The first batch (worker start-up) is not timed;
    timing stops after `max_batches` batches or `seconds`, whichever comes first."""
    import torch
    from torch.utils.data import DataLoader

    from vimpac.data.pretrain_clips import ClipPairDataset, ClipSampling, collate_pairs
    from vimpac.data.sampler import EpochBatchSampler

    dev = torch.device(device)
    ds = ClipPairDataset([TokenStore(store)], ClipSampling(clip_len=clip_len, mask_blocks=mask_blocks), seed=0)
    sampler = EpochBatchSampler(len(ds), micro_batch=micro, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_pairs,
                        persistent_workers=workers > 0, pin_memory=dev.type == "cuda",
                        prefetch_factor=4 if workers else None)

    def batches():
        epoch = 0
        while True:
            sampler.set_position(epoch)
            yield from loader
            epoch += 1

    def to_device(batch: dict) -> int:
        moved = {k: v.to(dev, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return int(moved["codes"].shape[0])

    it = batches()
    to_device(next(it))  # worker start-up is not steady state
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0, videos, n = time.perf_counter(), 0, 0
    while n < max_batches and time.perf_counter() - t0 < seconds:
        videos += to_device(next(it))
        n += 1
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    return {"videos_per_s": round(videos / dt, 1), "clips_per_s": round(2 * videos / dt, 1), "batches": n,
            "videos": videos, "seconds": round(dt, 3), "micro_batch": micro, "workers": workers, "device": str(dev),
            "pinned": dev.type == "cuda", "store_videos": len(ds)}


def raw_step(name: str, *, threads: int, micro: int, steps: int, procs: int = 1) -> dict:
    """benchmarks/train_step.py's training step (`make_step`) timed in `procs` concurrent fresh processes.

    With procs = ranks the processes compete for the cores like the trainer's ranks do (on a shared
    2-core machine a sequential x2 would promise cores that are not free); clips/s is their sum.
    """
    _, overrides, vocab, grid, clip_len, _ = CONFIGS[name]
    code = (
        "import json, statistics, sys, time, torch; sys.path.insert(0, 'benchmarks');"
        f"torch.set_num_threads({threads});"
        "from train_step import make_step; from vimpac.model.config import named_config;"
        f"cfg = named_config('small', vocab_size={vocab}, clip_len={clip_len}, grid_h={grid}, grid_w={grid}, "
        f"**{overrides!r});"
        f"step = make_step(impl='vimpac', cfg=cfg, batch_size={2 * micro}, precision='bf16', num_blocks=5, "
        "device=torch.device('cpu'));"
        "step(); times = []\n"
        f"for _ in range({steps}):\n"
        "    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)\n"
        f"print(json.dumps({{'clips_per_s': {2 * micro} / statistics.median(times), 'step_s': times}}))")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(threads))
    running = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = []
    for p in running:
        out, err = p.communicate(timeout=1800)
        if p.returncode:
            raise RuntimeError(f"raw step failed:\n{err[-3000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"clips_per_s": sum(o["clips_per_s"] for o in outs), "per_process": outs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loader-only", action="store_true",
                    help="time the loader alone on --store (with --device, --clip-len, --batch, --workers, --seconds, "
                         "--max-batches) and print one JSON object")
    ap.add_argument("--store", default=None, help="--loader-only: the token store")
    ap.add_argument("--device", default="cpu", help="--loader-only: where batches go (cuda: pinned, non_blocking)")
    ap.add_argument("--clip-len", type=int, default=5, help="--loader-only")
    ap.add_argument("--batch", type=int, default=32, help="--loader-only: videos per batch")
    ap.add_argument("--seconds", type=float, default=3.0, help="--loader-only: time at most this long")
    ap.add_argument("--max-batches", type=int, default=1000, help="--loader-only: time at most this many batches")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per rank, trainer and raw step alike (on 2 shared cores, 2 OMP threads "
                         "next to a loader worker and other jobs stall in spin-waits)")
    ap.add_argument("--skip", type=int, default=2, help="trainer steps left out as warm-up")
    ap.add_argument("--tiny-steps", type=int, default=30)
    ap.add_argument("--small-steps", type=int, default=8)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args()
    if a.loader_only:
        if not a.store:
            ap.error("--loader-only needs --store DIR")
        print(json.dumps(loader_timing(a.store, clip_len=a.clip_len, micro=a.batch, workers=a.workers, device=a.device,
                                       max_batches=a.max_batches, seconds=a.seconds)), flush=True)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.configs.split(","):
            model_flags, _, vocab, grid, clip_len, micro = CONFIGS[name]
            steps = a.tiny_steps if name == "tiny" else a.small_steps
            for ranks in (int(r) for r in a.ranks.split(",")):
                store = make_store(os.path.join(tmp, f"{name}_{ranks}"), num_videos=micro * ranks * (steps + a.skip),
                                   vocab=vocab, grid=grid)
                tr = run_trainer(store, os.path.join(tmp, f"out_{name}_{ranks}"), model_flags=model_flags,
                                 clip_len=clip_len, micro=micro, ranks=ranks, steps=steps, workers=a.workers,
                                 threads=a.threads, timeout=3600)
                steady = statistics.median(tr["per_step_clips_per_s"][a.skip:])
                raw = raw_step(name, threads=a.threads, micro=micro, steps=min(steps, 5), procs=ranks)
                ideal = raw["clips_per_s"]
                loader = loader_rate(store, vocab=vocab, clip_len=clip_len, micro=micro, workers=a.workers,
                                     batches=min(steps, 20))
                row = {"config": name, "threads_per_rank": a.threads, "ranks": ranks, "micro_videos": micro, "clips_per_step": 2 * micro * ranks,
                       "trainer_clips_per_s": round(steady, 2), "raw_step_clips_per_s": round(ideal, 2),
                       "trainer_vs_raw": round(steady / ideal, 3), "loader_clips_per_s": round(loader, 1),
                       "trainer_steps": tr["per_step_clips_per_s"], "wall_s": tr["wall_s"]}
                results.append(row)
                print(json.dumps(row), flush=True)
    print("\n| config | ranks | clips/step | trainer clips/s | raw step clips/s (ranks at once) | trainer / raw | "
          "loader alone clips/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['ranks']} | {r['clips_per_step']} | {r['trainer_clips_per_s']} | "
              f"{r['raw_step_clips_per_s']} | {r['trainer_vs_raw']:.0%} | {r['loader_clips_per_s']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    worst = min(r["trainer_vs_raw"] for r in results)
    print(f"summary: trainer reaches {worst:.0%}-{max(r['trainer_vs_raw'] for r in results):.0%} of the raw step "
          f"(target >= 90%); loader alone {min(r['loader_clips_per_s'] for r in results)} clips/s at least")
    return 0


if __name__ == "__main__":
    sys.exit(main())
