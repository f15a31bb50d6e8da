"""Measurements of the GPU check, each in its own process: environment, encoder speed, decoding alone, FLOPs.

    python scripts/gpu_check/probes.py env
    python scripts/gpu_check/probes.py encode --tokenizer-path DIR --video V.mp4 --size 128 --fps 25 \
        --batch-size 64 --device cuda
    python scripts/gpu_check/probes.py decode --video-root DIR --anno LIST --size 128 --fps 25 --workers 16
    python scripts/gpu_check/probes.py flops --specs "small:T,H|W" "small:T,H,W" small:THW "large_half:T,H|W" \
        --vocab 8192 --clip-len 5 --grid 16 --device cuda [--tiny]

Each prints one JSON object on its last line. `decode` runs the extraction job's decode workers
(video2token.decode_pool, the job's read settings: fps, shorter side, center crop, fingerprint)
over the job's list with no encoder, so decoding's own frames/s stands beside the encoder's and
the job's. FLOPs are counted by torch.utils.flop_counter on one forward + backward of the
pre-training model (both clips of each video, masked-token and InfoNCE losses) on the device, per
model config and layout; the analytic count of benchmarks/train_step.py is given beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: dense bf16/fp16 tensor-core peak (TFLOP/s, no sparsity) by a substring of the device name; first match wins
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
               ("A100", 312.0), ("L40S", 362.0), ("V100", 125.0))


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pci.bus_id",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]
    return {"gpus": [{"name": r[0], "driver": r[1], "memory_total_mib": r[2], "bus": r[3]} for r in rows if len(r) == 4],
            "rc": out.returncode}


def env() -> dict:
    import torch

    info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "torch_file": torch.__file__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "nvidia_smi": nvidia_smi(),
            "packages": {n: _version(n) for n in ("deepspeed", "av", "decord", "dall-e", "vector-quantize-pytorch",
                                                  "pydantic", "numpy", "h5py", "triton", "typing-extensions")}}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    multiprocessors=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
        peak = next((v for k, v in PEAK_TFLOPS if k in p.name), None)
        info["peak_tflops"] = peak
        info["peak_tflops_note"] = ("dense bf16/fp16 tensor-core peak for this name (H100 SXM: 989.4)" if peak
                                    else "unknown device: no MFU")
    return info


def encode_speed(tokenizer_path: str, video: str, *, size: int, fps: float, batch_size: int, device: str,
                 frames: int, min_seconds: float, cpu_bf16: bool | None = None) -> dict:
    """Frames/s of the tokenizer's encode alone (uint8 frames in host memory -> codes), after a warm-up;
    cpu_bf16: VIMPAC_CPU_BF16, read by main."""
    import numpy as np
    import torch

    from video2token.tokenizers import load_tokenizer
    from video2token.video import read_video

    decoded, _ = read_video(video, fps=fps, shorter_side=size, crop_size=size, crop_type="center")
    batch = np.concatenate([decoded] * (frames // len(decoded) + 1))[:frames]  # (frames, size, size, 3) uint8
    tok = load_tokenizer("dalle", tokenizer_path, device=device, batch_size=batch_size, cpu_bf16=cpu_bf16)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    codes = tok.encode(batch[:2 * batch_size])  # warm-up: kernels, cudnn autotuning
    sync()
    done, t0 = 0, time.perf_counter()
    while True:
        tok.encode(batch)
        done += len(batch)
        sync()
        if time.perf_counter() - t0 >= min_seconds:
            break
    dt = time.perf_counter() - t0
    return {"encoder_frames_per_s": round(done / dt, 1), "frames": done, "seconds": round(dt, 2),
            "batch_size": batch_size, "frame_size": size, "codes_shape": list(codes.shape[1:]),
            "vocab_size": tok.vocab_size, "device": device, "tokenizer": {k: v for k, v in tok.describe().items()
                                                                         if k in ("name", "precision", "vocab_size")}}


def decode_speed(video_root: str, anno: str, *, size: int, fps: float, workers: int) -> dict:
    """Frames/s of the extraction job's decoding alone: its DecodePool over the listed videos with the job's read
    settings (`video2token.extract.run`'s read_kwargs), results received and dropped (no encoder, no store)."""
    from video2token.annotations import read_annotations
    from video2token.decode_pool import DecodePool, read_inline
    from video2token.video import DEFAULT_MAX_FRAMES

    items = read_annotations([anno], video_root, fmt="list").items
    read_kwargs = dict(fps=fps, shorter_side=size, crop_size=size, crop_type="center", hflip=False, decoder=None,
                       max_frames=DEFAULT_MAX_FRAMES)
    tasks = [(k, it.path) for k, it in enumerate(items)]
    frames, failed = 0, []
    t0 = time.perf_counter()
    t_ready = t0
    if workers > 0:
        with DecodePool(workers, read_kwargs, timeout=600.0) as pool:
            t_ready = time.perf_counter()
            for res in pool.imap(iter(tasks)):
                if res.stage == "ok":
                    frames += len(res.frames)
                else:
                    failed.append(f"{res.key}: {res.stage} {res.reason}"[:200])
    else:
        for k, path in tasks:
            res = read_inline(path, read_kwargs, key=k)
            frames += len(res.frames) if res.stage == "ok" else 0
    t1 = time.perf_counter()
    return {"decode_frames_per_s": round(frames / (t1 - t0), 1),
            "decode_frames_per_s_after_start": round(frames / max(t1 - t_ready, 1e-9), 1),
            "frames": frames, "videos": len(tasks), "failed": failed[:5], "workers": workers,
            "seconds": round(t1 - t0, 2), "worker_start_s": round(t_ready - t0, 2), "frame_size": size}


def train_flops(specs: list[str], *, vocab: int, clip_len: int, grid: int, videos: int, device: str,
                tiny: bool, mask_blocks: int) -> dict:
    """FLOPs of one training step per video (2 clips, forward + backward), per "config:layout" spec."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vimpac import VimpacForPretraining, block_mask, named_config, symmetric_infonce
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        from train_step import train_flops_per_clip  # the analytic count (matmuls only)
    except Exception:  # another engineer's file: its absence must not stop the count
        train_flops_per_clip = None
    from fixtures import TINY_MODEL

    out = {}
    for spec in specs:
        config, _, layout = spec.partition(":")
        torch.manual_seed(0)
        cfg = named_config(config, vocab_size=vocab, clip_len=clip_len, grid_h=grid, grid_w=grid, layout=layout,
                           **(TINY_MODEL if tiny else {}))
        model = VimpacForPretraining(cfg).to(device).train()
        g = torch.Generator().manual_seed(0)
        shape = (2 * videos, clip_len, grid, grid)
        targets = torch.randint(0, vocab, shape, generator=g)
        mask = block_mask(shape, mask_blocks, generator=g)
        codes_in = targets.masked_fill(mask, cfg.special_tokens.mask)
        codes_in, mask, targets = codes_in.to(device), mask.to(device), targets.to(device)
        with FlopCounterMode(display=False) as counter:  # counts do not depend on the dtype
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                o = model(codes_in, mask, targets)
                loss = o.mp_loss + symmetric_infonce(o.cls_proj[0::2], o.cls_proj[1::2]).loss
            loss.backward()
        per_video = counter.get_total_flops() / videos
        row = {"flops_per_video": per_video, "gflops_per_video": round(per_video / 1e9, 2),
               "mask_ratio": round(mask.float().mean().item(), 4),
               "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
        if train_flops_per_clip is not None:
            try:
                analytic = 2 * train_flops_per_clip(cfg, clip_len, grid, grid, mask.float().mean().item())
                row["analytic_gflops_per_video"] = round(analytic / 1e9, 2)
            except Exception as e:  # noqa: BLE001 - a changed signature is reported, not fatal
                row["analytic_error"] = repr(e)
        out[spec] = row
        del model
    return {"specs": out, "videos_counted": videos, "device": device,
            "counter": "torch.utils.flop_counter.FlopCounterMode, forward + backward, both clips"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/gpu_check/probes.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer-path", required=True)
    e.add_argument("--video", required=True)
    e.add_argument("--size", type=int, required=True)
    e.add_argument("--fps", type=float, required=True)
    e.add_argument("--batch-size", type=int, required=True)
    e.add_argument("--device", required=True)
    e.add_argument("--frames", type=int, default=512, help="frames per timed encode call")
    e.add_argument("--min-seconds", type=float, default=3.0)
    dc = sub.add_parser("decode")
    dc.add_argument("--video-root", required=True)
    dc.add_argument("--anno", required=True, help="the job's list file (MMAction2 list format)")
    dc.add_argument("--size", type=int, required=True)
    dc.add_argument("--fps", type=float, required=True)
    dc.add_argument("--workers", type=int, required=True)
    f = sub.add_parser("flops")
    f.add_argument("--specs", nargs="+", required=True, help="CONFIG:LAYOUT, e.g. small:T,H|W")
    f.add_argument("--vocab", type=int, required=True)
    f.add_argument("--clip-len", type=int, required=True)
    f.add_argument("--grid", type=int, required=True)
    f.add_argument("--videos", type=int, default=4)
    f.add_argument("--mask-blocks", type=int, default=5)
    f.add_argument("--device", required=True)
    f.add_argument("--tiny", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "env":
        result = env()
    elif a.cmd == "encode":
        from video2token.precision import read_cpu_bf16  # torch: only the commands that need it import it

        result = encode_speed(a.tokenizer_path, a.video, size=a.size, fps=a.fps, batch_size=a.batch_size,
                              device=a.device, frames=a.frames, min_seconds=a.min_seconds,
                              cpu_bf16=read_cpu_bf16(p, os.environ))
    elif a.cmd == "decode":
        result = decode_speed(a.video_root, a.anno, size=a.size, fps=a.fps, workers=a.workers)
    else:
        result = train_flops(a.specs, vocab=a.vocab, clip_len=a.clip_len, grid=a.grid, videos=a.videos,
                             device=a.device, tiny=a.tiny, mask_blocks=a.mask_blocks)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
