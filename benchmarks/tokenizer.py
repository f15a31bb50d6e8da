"""The built-in VQ-VAE tokenizer: quality after a few minutes of CPU training, and encode speed.

    PYTHONPATH=. python benchmarks/tokenizer.py [--out benchmarks/out/tokenizer] [--steps N] [--threads N]
    PYTHONPATH=. python benchmarks/tokenizer.py --tokenizer DIR     # skip training, measure DIR
    PYTHONPATH=. python benchmarks/tokenizer.py --speed-only [--tokenizer DIR] [--threads N]
                                                    # encode frames/s only (random weights without DIR)

`--precision` (default auto: bf16 where this CPU computes it natively, else fp32) is the precision of
the tokenizer used for the "real footage" clips and the determinism check; held-out quality and
encode speed are always measured in both bf16 and fp32 (and fp16 when asked for), so the table
shows what each costs on this machine, named in its header.

1. Renders the project's demo videos (`video2token.synthetic`, defaults: 200 pool videos,
   64x64, 8 fps, 2 s) and trains `python -m video2token.train_tokenizer` on the pool and train
   lists (280 videos) with its default hyper-parameters, vocab 512, downsample 8 (target: <= 5 minutes of training).
2. Held-out quality: PSNR and codebook usage on the frames of the 40 demo "val" videos (never
   seen in training), for bf16 and fp32 encoding, and how often the two give different codes.
3. "Real footage": there are no real videos on this machine, so a 48-frame clip is made by
   panning and zooming a crop window over the photographs that ship with matplotlib
   (grace_hopper.jpg, Minduka_Present_Blue_Pack.png). It is a photo, not a video: no motion
   blur or compression, but real textures the demo videos lack.
4. Encode throughput (frames/s) at 64 and 128 px, and determinism (same frames -> same codes).
   `--speed-only` does this step alone, on a random-weight tokenizer of the trainer's default
   architecture when no --tokenizer is given (speed does not depend on the weights).

Results go to OUT/results.json, OUT/real_footage.png and the training outputs in OUT/tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from video2token.precision import add_precision_flag, read_cpu_bf16, resolve_precision  # noqa: E402
from benchmarks.machine import machine_line  # noqa: E402
from video2token.tokenizers.vqvae import VQVAETokenizer, save_vqvae  # noqa: E402
from video2token.video import read_video  # noqa: E402
from video2token.visualize import draw_grid, frame_psnr  # noqa: E402
from video2token.vqvae_model import VQVAE, VQVAEConfig, codebook_stats  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DATA = os.path.join(os.path.dirname(__import__("matplotlib").__file__), "mpl-data", "sample_data")
PHOTOS = {"grace_hopper.jpg": "portrait", "Minduka_Present_Blue_Pack.png": "gift box"}


def pan_zoom_clip(photo: str, size: int, num_frames: int = 48) -> np.ndarray:
    """uint8 (num_frames, size, size, 3): a square window drifting across the photo while zooming in
    from its full shorter side to half of it, resized to `size` with antialiasing."""
    from PIL import Image

    img = Image.open(photo).convert("RGB")
    w, h = img.size
    frames = []
    for t in np.linspace(0.0, 1.0, num_frames):
        side = min(w, h) * (1.0 - 0.5 * t)
        x0, y0 = (w - side) * t, (h - side) * (0.5 + 0.45 * np.sin(2 * np.pi * t))
        box = (x0, y0, x0 + side, y0 + side)
        frames.append(np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box)))
    return np.stack(frames)


def demo_frames(root: str, list_file: str, fps: float, size: int) -> np.ndarray:
    paths = [os.path.join(root, line.split()[0]) for line in open(os.path.join(root, list_file)) if line.strip()]
    return np.concatenate([read_video(p, fps, size, size)[0] for p in paths])


def quality(tok: VQVAETokenizer, frames: np.ndarray) -> dict:
    codes = tok.encode(frames)
    usage, ppl = codebook_stats(torch.from_numpy(codes), tok.vocab_size)
    p = frame_psnr(frames, tok.decode(codes))
    mse = ((frames.astype(np.float64) - tok.decode(codes).astype(np.float64)) ** 2).mean()
    return {"psnr": float(10 * np.log10(255.0 ** 2 / mse)), "psnr_frame_median": float(np.median(p)),
            "usage": usage, "perplexity": ppl, "codes": codes}


def encode_speed(tok: VQVAETokenizer, size: int, batch: int = 64, seconds: float = 8.0) -> float:
    frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tok.batch_size = batch
    tok.encode(frames)  # warm-up: kernel selection
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tok.encode(frames)
        n += batch
    return n / (time.perf_counter() - t0)


def speed_precisions(chosen: str) -> list[str]:
    """bf16 and fp32 always (the comparison this benchmark reports), plus the chosen one."""
    return ["bf16", "fp32"] + ([chosen] if chosen not in ("bf16", "fp32") else [])


def encode_speeds(tok_dir: str, precisions: list[str], seconds: float) -> dict:
    return {f"encode_fps_{size}px_{prec}": encode_speed(VQVAETokenizer.load(tok_dir, device="cpu", precision=prec),
                                                        size, seconds=seconds)
            for prec in precisions for size in (64, 128)}


def speed_only(a: argparse.Namespace, chosen: str, cpu_bf16: bool | None) -> int:
    tok_dir = a.tokenizer
    if tok_dir is None:  # the trainer's default architecture (the benchmark trains vocab 512, stride 8)
        tok_dir = os.path.join(a.out, "random_vqvae")
        torch.manual_seed(0)
        save_vqvae(VQVAE(VQVAEConfig(vocab_size=512, downsample=8)).eval(), tok_dir)
    results = {"machine": machine_line(cpu_bf16), "threads": torch.get_num_threads(), "tokenizer": tok_dir,
               "trained": a.tokenizer is not None, **encode_speeds(tok_dir, speed_precisions(chosen), a.encode_seconds)}
    with open(os.path.join(a.out, "speed.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nVQ-VAE encode, batch 64, {'trained' if results['trained'] else 'random-weight'} tokenizer "
          f"(vocab 512, stride 8); {results['machine']}; {results['threads']} threads")
    print("| frame px | " + " | ".join(f"{p} frames/s" for p in speed_precisions(chosen)) + " | bf16 / fp32 |")
    print("|---|" + "---|" * (len(speed_precisions(chosen)) + 1))
    for size in (64, 128):
        fps = [results[f"encode_fps_{size}px_{p}"] for p in speed_precisions(chosen)]
        print(f"| {size} | " + " | ".join(f"{v:.0f}" for v in fps) + f" | {fps[0] / fps[1]:.2f}x |")
    print(f"tokenizer speed: results -> {os.path.join(a.out, 'speed.json')}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "out", "tokenizer"))
    p.add_argument("--tokenizer", default=None, help="measure this tokenizer directory instead of training one")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the trainer's default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training and encoding")
    p.add_argument("--speed-only", action="store_true", help="measure encode frames/s only (step 4)")
    p.add_argument("--encode-seconds", type=float, default=8.0, help="timed seconds per encode-speed cell")
    add_precision_flag(p)
    a = p.parse_args()
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    if a.threads:
        torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    chosen = resolve_precision(a.precision, "cpu", cpu_bf16=cpu_bf16)
    print(chosen.describe(), flush=True)
    if a.speed_only:
        return speed_only(a, chosen.name, cpu_bf16)
    results: dict = {"machine": machine_line(cpu_bf16), "precision": chosen.describe(),
                     "threads": torch.get_num_threads(),
                     "load_avg_start": os.getloadavg()}

    demo = os.path.join(a.out, "demo")
    if not os.path.isfile(os.path.join(demo, "motion_val_videos.txt")):
        from video2token.synthetic import make_dataset
        make_dataset(demo, show_progress=False)  # the demo's defaults: 64x64, 8 fps, 2 s
    tok_dir = a.tokenizer
    if tok_dir is None:
        tok_dir = os.path.join(a.out, "tokenizer")
        cmd = [sys.executable, "-m", "video2token.train_tokenizer", "--video-root", demo,
               "--anno", os.path.join(demo, "pretrain_videos.txt"), os.path.join(demo, "motion_train_videos.txt"), "--fps", "8", "--frame-size", "64",
               "--vocab-size", "512", "--downsample", "8", "--output", tok_dir, "--resume"]
        cmd += ["--steps", str(a.steps)] if a.steps else []
        cmd += ["--threads", str(a.threads)] if a.threads else []
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": REPO})
        rows = [json.loads(line) for line in open(os.path.join(tok_dir, "metrics.jsonl"))]
        train_rows = [r for r in rows if r["split"] == "train"]
        results["train_steps"] = train_rows[-1]["step"]
        results["train_minutes"] = train_rows[-1]["time"] / 60
        results["load_avg_after_train"] = os.getloadavg()

    val = demo_frames(demo, "motion_val_videos.txt", 8, 64)
    for precision in ("bf16", "fp32"):
        tok = VQVAETokenizer.load(tok_dir, device="cpu", precision=precision)
        q = quality(tok, val)
        results[f"heldout_{precision}"] = {k: v for k, v in q.items() if k != "codes"}
        results[f"heldout_codes_{precision}"] = q["codes"]
    agree = float((results.pop("heldout_codes_bf16") == results.pop("heldout_codes_fp32")).mean())
    results["heldout_frames"] = len(val)
    results["bf16_fp32_code_agreement"] = agree

    tok = VQVAETokenizer.load(tok_dir, device="cpu", precision=chosen.name)
    pictures, titles = [], []
    for photo in PHOTOS:
        for size in (64, 128):
            clip = pan_zoom_clip(os.path.join(SAMPLE_DATA, photo), size)
            q = quality(tok, clip)
            results[f"real_{photo}_{size}px"] = {k: v for k, v in q.items() if k != "codes"}
            if size == 64:
                idx = np.linspace(0, len(clip) - 1, 6).round().astype(int)
                pictures += [clip[idx], tok.decode(q["codes"][idx])]
                titles += [PHOTOS[photo], f"decoded {q['psnr']:.1f} dB"]
    draw_grid(pictures, titles, os.path.join(a.out, "real_footage.png"),
              title="pan/zoom clips over matplotlib's sample photos, 64 px, vocab 512 trained on demo videos")

    frames = val[:64]
    again = VQVAETokenizer.load(tok_dir, device="cpu", precision=chosen.name)
    results["deterministic"] = bool(np.array_equal(tok.encode(frames), again.encode(frames)))
    results.update(encode_speeds(tok_dir, speed_precisions(chosen.name), a.encode_seconds))
    results["load_avg_end"] = os.getloadavg()

    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    h = results["heldout_bf16"]
    print(f"\n{results['machine']}; {results['threads']} threads; real-footage clips and determinism in "
          f"{chosen.name}")
    print("\n| measure | value |\n|---|---|")
    if "train_minutes" in results:
        print(f"| training | {results['train_steps']} steps in {results['train_minutes']:.1f} min, "
              f"{results['threads']} threads |")
    print(f"| held-out PSNR (demo val, {len(val)} frames, bf16 / fp32 encode) | {h['psnr']:.2f} / "
          f"{results['heldout_fp32']['psnr']:.2f} dB |")
    print(f"| held-out codebook usage / perplexity | {h['usage'] * 100:.0f}% / {h['perplexity']:.0f} |")
    print(f"| bf16 vs fp32 codes equal | {agree * 100:.2f}% |")
    for photo in PHOTOS:
        for size in (64, 128):
            print(f"| pan/zoom clip over {photo}, {size} px | {results[f'real_{photo}_{size}px']['psnr']:.2f} dB |")
    for size in (64, 128):
        print(f"| encode frames/s {size} px (bf16 / fp32) | {results[f'encode_fps_{size}px_bf16']:.0f} / "
              f"{results[f'encode_fps_{size}px_fp32']:.0f} |")
    print(f"| deterministic | {results['deterministic']} |")
    print(f"| load average start / end | {results['load_avg_start'][0]:.1f} / {results['load_avg_end'][0]:.1f} |")
    print(f"tokenizer benchmark: results -> {os.path.join(a.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
