"""Train the built-in VQ-VAE frame tokenizer (van den Oord et al. 2017) on frames of your own videos.

    python -m video2token.train_tokenizer --video-root data/demo --anno data/demo/pretrain_videos.txt \
        --fps 8 --frame-size 64 --vocab-size 512 --output weights/vqvae_demo

Frames are sampled from the listed videos at --fps, resized and center-cropped to
--frame-size, and cached in memory as uint8; the frames of --val-videos videos are held out
for the held-out PSNR. Every --save-every steps an atomic checkpoint (`train_state.pt`) is
written; `--resume` continues from it (step, optimizer, RNG states) and ends with the same
weights as an uninterrupted run. OUTPUT ends up as a tokenizer directory
(`config.json` + `model.safetensors`, loadable with `--tokenizer vqvae --tokenizer-path
OUTPUT`) plus `metrics.jsonl`, `samples.png` (held-out originals over reconstructions) and
`curves.png` (loss and PSNR).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from video2token.atomic import atomic_path, remove_tmp_leftovers
from video2token.tokenizers.vqvae import save_vqvae
from video2token.vqvae_model import DOWNSAMPLES, VQVAE, VQVAEConfig, codebook_stats, frames_to_tensor, psnr, tensor_to_frames

CHECKPOINT = "train_state.pt"
METRICS = "metrics.jsonl"
SAMPLES_PNG = "samples.png"
CURVES_PNG = "curves.png"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model's own settings live in VQVAEConfig)."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    #: cosine decay from lr to lr * min_lr_ratio at `steps`
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    #: "bf16": autocast around encoder and decoder (AMX fast path on CPU); the quantizer stays fp32
    precision: str = "bf16"
    #: "flip": random horizontal flips; "full": also random 90-degree rotations and RGB channel
    #: permutations, which multiply the few backgrounds/colours of a small training set
    augment: str = "full"
    eval_every: int = 250
    save_every: int = 250
    log_every: int = 10


@dataclass(frozen=True)
class DataConfig:
    """Which frames are trained on; a resumed run must use the same."""

    video_root: str
    anno: tuple[str, ...]
    fps: float
    frame_size: int
    max_frames_per_video: int = 32
    val_videos: int = 8


# ----------------------------------------------------------------------------- data


def load_frames(paths: list[str], *, fps: float, frame_size: int, max_frames_per_video: int,
                desc: str = "decoding") -> tuple[np.ndarray, list[str]]:
    """Decode every video at `fps`, center-crop to `frame_size`: uint8 (N, S, S, 3), plus the
    list of files that could not be read (skipped with a note, never silently)."""
    from video2token.video import VideoError, read_video

    chunks, failed = [], []
    for path in tqdm(paths, desc=desc, unit="video", leave=False):
        try:
            frames, _ = read_video(path, fps, frame_size, frame_size, crop_type="center")
        except VideoError as e:
            failed.append(f"{path}: {e}")
            continue
        if len(frames) > max_frames_per_video:  # evenly spread, deterministic
            frames = frames[np.linspace(0, len(frames) - 1, max_frames_per_video).round().astype(np.int64)]
        chunks.append(frames)
    if not chunks:
        return np.zeros((0, frame_size, frame_size, 3), np.uint8), failed
    return np.concatenate(chunks), failed


def split_videos(paths: list[str], val_videos: int, seed: int) -> tuple[list[str], list[str]]:
    """(train paths, held-out paths): a seeded choice of `val_videos` videos is held out, but
    never all of them."""
    n_val = min(val_videos, max(len(paths) - 1, 0))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(order[:n_val].tolist())
    val_set = set(val)
    return [p for i, p in enumerate(paths) if i not in val_set], [paths[i] for i in val]


def prepare_data(data: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from video2token.annotations import AnnotationError, read_annotations

    try:
        anno = read_annotations(list(data.anno), data.video_root)
    except (AnnotationError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    for s in anno.skipped[:5]:
        print(f"note: skipped {s.source}: {s.reason}", file=sys.stderr)
    paths = [it.path for it in anno.items]
    if not paths:
        raise SystemExit(f"error: no videos listed in {', '.join(data.anno)}")
    train_paths, val_paths = split_videos(paths, data.val_videos, seed)
    kw = dict(fps=data.fps, frame_size=data.frame_size, max_frames_per_video=data.max_frames_per_video)
    train, failed = load_frames(train_paths, desc="decoding train videos", **kw)
    val, failed_val = load_frames(val_paths, desc="decoding held-out videos", **kw)
    for f in (failed + failed_val)[:5]:
        print(f"note: unreadable video skipped: {f}", file=sys.stderr)
    if len(train) == 0:
        raise SystemExit(f"error: no frames could be decoded from the {len(train_paths)} training videos")
    print(f"data: {len(train)} train frames from {len(train_paths) - len(failed)} videos, {len(val)} held-out frames "
          f"from {len(val_paths) - len(failed_val)} videos, {data.frame_size}x{data.frame_size} px at {data.fps:g} fps"
          + (f", {len(failed) + len(failed_val)} unreadable" if failed or failed_val else ""))
    return train, val


# ----------------------------------------------------------------------------- training pieces


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


AUGMENTS = ("none", "flip", "full")
_RGB_PERMS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Per-frame random augmentation of x (B, 3, S, S); draws from `generator` only (resumable)."""
    if mode == "none":
        return x
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
    if mode == "full":
        rot = torch.randint(0, 4, (b,), generator=generator)
        perm = _RGB_PERMS[torch.randint(0, len(_RGB_PERMS), (b,), generator=generator)]  # (B, 3)
        x = torch.stack([torch.rot90(xi, int(k), dims=(1, 2)) for xi, k in zip(x, rot)])
        x = x.gather(1, perm.to(x.device)[:, :, None, None].expand_as(x))
    return x


def autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(model: VQVAE, frames: np.ndarray, *, device: torch.device, precision: str,
             batch_size: int = 64) -> dict[str, float]:
    """Held-out PSNR (uint8, rounded like a decoded picture), codebook usage and perplexity."""
    was_training = model.training
    model.eval()
    recon, codes = [], []
    for i in range(0, len(frames), batch_size):
        x = frames_to_tensor(torch.from_numpy(frames[i:i + batch_size]).to(device))
        with autocast(device, precision):
            z = model.encoder(x)
        _, c, _ = model.quantize(z)
        with autocast(device, precision):
            y = model.decode_codes(c)
        recon.append(tensor_to_frames(y).cpu())
        codes.append(c.cpu())
    model.train(was_training)
    usage, ppl = codebook_stats(torch.cat(codes), model.config.vocab_size)
    return {"psnr": psnr(torch.from_numpy(frames), torch.cat(recon)), "usage": usage, "perplexity": ppl}


def save_checkpoint(path: str, *, model: VQVAE, optimizer: torch.optim.Optimizer, step: int, sampler: torch.Generator,
                    train_cfg: TrainConfig, data_cfg: DataConfig, elapsed: float) -> None:
    """Atomic (temp + fsync + rename): a kill leaves the previous checkpoint or this one."""
    state = {
        "version": CHECKPOINT_VERSION,
        "step": step,
        "elapsed": elapsed,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_sampler": sampler.get_state(),
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(train_cfg),
        "data_config": {**dataclasses.asdict(data_cfg), "anno": list(data_cfg.anno)},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise SystemExit(f"error: {path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise SystemExit(f"error: {path}: not a train_tokenizer checkpoint of version {CHECKPOINT_VERSION}")
    return state


def _diff(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}"
            for k in sorted(set(saved) | set(now)) if k not in ignore and saved.get(k) != now.get(k)]


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, step: int) -> None:
    """Drop lines logged after the checkpoint a resumed run restarts from (atomic rewrite)."""
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def plot_curves(metrics: list[dict], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in metrics if r.get("split") == "train"]
    val = [r for r in metrics if r.get("split") == "val"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax1.plot([r["step"] for r in train], [r["recon_mse"] for r in train], label="reconstruction MSE")
    ax1.plot([r["step"] for r in train], [r["commit"] for r in train], label="commitment")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_title("loss")
    ax1.legend()
    ax2.plot([r["step"] for r in train], [r["psnr"] for r in train], label="train batch")
    ax2.plot([r["step"] for r in val], [r["psnr"] for r in val], "o-", label="held-out")
    ax2.set_xlabel("step")
    ax2.set_ylabel("dB")
    ax2.set_title("PSNR")
    ax2.legend()
    ax3.plot([r["step"] for r in train], [r["usage"] for r in train], label="train batch")
    ax3.plot([r["step"] for r in val], [r["usage"] for r in val], "o-", label="held-out")
    ax3.set_ylim(0, 1.05)
    ax3.set_xlabel("step")
    ax3.set_title("codebook usage (fraction of codes)")
    ax3.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


@torch.no_grad()
def draw_samples(model: VQVAE, frames: np.ndarray, out_png: str, *, device: torch.device, precision: str,
                 n: int = 8, title: str = "") -> None:
    from video2token.visualize import draw_grid

    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(np.int64)
    originals = frames[idx]
    was_training = model.training
    model.eval()
    x = frames_to_tensor(torch.from_numpy(originals).to(device))
    with autocast(device, precision):
        z = model.encoder(x)
    _, codes, _ = model.quantize(z)
    with autocast(device, precision):
        recon = tensor_to_frames(model.decode_codes(codes)).cpu().numpy()
    model.train(was_training)
    draw_grid([originals, recon], ["original", "reconstruction"], out_png, title=title)


# ----------------------------------------------------------------------------- the loop


def train(*, model_cfg: VQVAEConfig, train_cfg: TrainConfig, data_cfg: DataConfig, output: str, resume: bool,
          device: torch.device, train_frames: np.ndarray, val_frames: np.ndarray, progress: bool = True) -> dict:
    """Train (or continue) and write the tokenizer directory; returns the final metrics."""
    os.makedirs(output, exist_ok=True)
    remove_tmp_leftovers(output)
    ckpt_path = os.path.join(output, CHECKPOINT)
    metrics_path = os.path.join(output, METRICS)

    torch.manual_seed(train_cfg.seed)
    model = VQVAE(model_cfg).to(device)
    model.train()
    # The codebook is updated by EMA (buffers), not by the optimizer.
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                  betas=(0.9, 0.99))
    sampler = torch.Generator().manual_seed(train_cfg.seed)
    step, elapsed = 0, 0.0

    if resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path)
        problems = _diff(state["model_config"], model_cfg.to_dict())
        problems += _diff(state["data_config"], {**dataclasses.asdict(data_cfg), "anno": list(data_cfg.anno)})
        problems += _diff(state["train_config"], dataclasses.asdict(train_cfg),
                          ignore=("steps", "eval_every", "save_every", "log_every"))
        if problems:
            raise SystemExit(f"error: {ckpt_path} was made with different settings; resume with the same flags "
                             f"(only --steps may change):\n  " + "\n  ".join(problems))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        sampler.set_state(state["rng_sampler"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        truncate_metrics(metrics_path, step)
        print(f"resume: continuing from step {step} ({ckpt_path})")
    elif resume:
        print(f"resume: no checkpoint in {output}, starting from step 0")
        if os.path.exists(metrics_path):
            os.remove(metrics_path)
    elif os.path.isfile(ckpt_path):
        raise SystemExit(f"error: {output} already holds a training run ({CHECKPOINT}); pass --resume to continue it "
                         f"or choose another --output")
    elif os.path.exists(metrics_path):
        os.remove(metrics_path)

    frames_t = torch.from_numpy(train_frames)  # (N, S, S, 3) uint8, shared, never copied whole
    n_train = len(frames_t)
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter() - elapsed
    bar = tqdm(total=train_cfg.steps, initial=step, desc="train vqvae", unit="step", disable=not progress, mininterval=1.0,
               dynamic_ncols=True)
    metrics_file = open(metrics_path, "a", encoding="utf-8")
    try:
        while step < train_cfg.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train_cfg)
            idx = torch.randint(0, n_train, (train_cfg.batch_size,), generator=sampler)
            x = augment_batch(frames_to_tensor(frames_t[idx].to(device)), train_cfg.augment, sampler)  # (B, 3, S, S)
            with autocast(device, train_cfg.precision):
                recon, codes, commit = model(x)
            recon_mse = F.mse_loss(recon.float(), x)
            loss = recon_mse + commit
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            step += 1

            if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                usage, ppl = codebook_stats(codes.detach(), model_cfg.vocab_size)
                mse = recon_mse.item()
                row = {"split": "train", "step": step, "loss": loss.item(), "recon_mse": mse, "commit": commit.item(),
                       "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),  # pixels in [-1, 1]: peak-to-peak 2
                       "usage": usage, "perplexity": ppl, "lr": optimizer.param_groups[0]["lr"],
                       "time": time.perf_counter() - t_start}
                metrics_file.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}", usage=f"{usage:.2f}",
                                ppl=f"{ppl:.0f}", val=f"{last_eval.get('psnr', float('nan')):.1f}", refresh=False)
            if len(val_frames) and (step % train_cfg.eval_every == 0 or step == train_cfg.steps):
                last_eval = evaluate(model, val_frames, device=device, precision=train_cfg.precision)
                metrics_file.write(json.dumps({"split": "val", "step": step, **last_eval,
                                               "time": time.perf_counter() - t_start}) + "\n")
            if step % train_cfg.save_every == 0 or step == train_cfg.steps:
                metrics_file.flush()
                os.fsync(metrics_file.fileno())
                save_checkpoint(ckpt_path, model=model, optimizer=optimizer, step=step, sampler=sampler,
                                train_cfg=train_cfg, data_cfg=data_cfg, elapsed=time.perf_counter() - t_start)
                save_vqvae(model, output)
            bar.update(1)
    finally:
        bar.close()
        metrics_file.close()

    wall = time.perf_counter() - t_start
    final = evaluate(model, val_frames if len(val_frames) else train_frames[:256], device=device,
                     precision=train_cfg.precision)
    held = "held-out" if len(val_frames) else "train (no held-out videos)"
    draw_samples(model, val_frames if len(val_frames) else train_frames, os.path.join(output, SAMPLES_PNG),
                 device=device, precision=train_cfg.precision,
                 title=f"{held} frames: originals over reconstructions, step {step}, PSNR {final['psnr']:.2f} dB")
    plot_curves(read_metrics(metrics_path), os.path.join(output, CURVES_PNG))
    print(f"train_tokenizer: {step} steps in {wall / 60:.1f} min of training; {held} PSNR {final['psnr']:.2f} dB, "
          f"codebook usage {final['usage'] * 100:.0f}% of {model_cfg.vocab_size}, perplexity {final['perplexity']:.0f}; "
          f"tokenizer -> {output}")
    return {"step": step, "train_seconds": wall, **final}


def build_parser() -> argparse.ArgumentParser:
    d_m, d_t = VQVAEConfig(), TrainConfig()
    p = argparse.ArgumentParser(description="Train the built-in VQ-VAE frame tokenizer.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--video-root", required=True, help="directory the annotation paths are relative to")
    g.add_argument("--anno", nargs="+", required=True, help="annotation list file(s) naming the videos")
    g.add_argument("--fps", type=float, required=True, help="frames sampled per second of video")
    g.add_argument("--frame-size", type=int, required=True, help="shorter side resize + square center crop (px)")
    g.add_argument("--max-frames-per-video", type=int, default=32, help="cap on frames cached per video")
    g.add_argument("--val-videos", type=int, default=8, help="videos held out for the held-out PSNR")
    g = p.add_argument_group("model")
    g.add_argument("--vocab-size", type=int, required=True, help="codebook size")
    g.add_argument("--downsample", type=int, default=d_m.downsample, choices=DOWNSAMPLES)
    g.add_argument("--channels", type=int, default=d_m.channels)
    g.add_argument("--max-channels", type=int, default=d_m.max_channels)
    g.add_argument("--code-dim", type=int, default=d_m.code_dim)
    g.add_argument("--patch-size", type=int, default=d_m.patch_size, choices=(1, 2, 4))
    g.add_argument("--num-res-blocks", type=int, default=d_m.num_res_blocks)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d_t.steps)
    g.add_argument("--batch-size", type=int, default=d_t.batch_size)
    g.add_argument("--lr", type=float, default=d_t.lr)
    g.add_argument("--warmup-steps", type=int, default=d_t.warmup_steps)
    g.add_argument("--seed", type=int, default=d_t.seed)
    g.add_argument("--precision", default=None, choices=("bf16", "fp32"),
                   help="autocast for encoder/decoder (default: bf16 on CPU, fp32 on GPU); the quantizer is always fp32")
    g.add_argument("--augment", default=d_t.augment, choices=AUGMENTS,
                   help="flip: horizontal flips; full: also 90-degree rotations and RGB channel permutations")
    g.add_argument("--eval-every", type=int, default=d_t.eval_every)
    g.add_argument("--save-every", type=int, default=d_t.save_every, help="checkpoint interval (steps)")
    g.add_argument("--log-every", type=int, default=d_t.log_every)
    p.add_argument("--output", required=True, help="tokenizer directory to write")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/train_state.pt when it exists")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.frame_size % args.downsample:
        raise SystemExit(f"error: --frame-size {args.frame_size} is not a multiple of --downsample {args.downsample}")
    for name in ("steps", "batch_size", "eval_every", "save_every", "log_every", "max_frames_per_video"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    try:
        model_cfg = VQVAEConfig(vocab_size=args.vocab_size, downsample=args.downsample, channels=args.channels,
                                max_channels=args.max_channels, code_dim=args.code_dim, patch_size=args.patch_size,
                                num_res_blocks=args.num_res_blocks)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    precision = args.precision or ("bf16" if device.type == "cpu" else "fp32")
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                            seed=args.seed, augment=args.augment, precision=precision,
                            eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every)
    data_cfg = DataConfig(video_root=os.path.abspath(args.video_root), anno=tuple(os.path.abspath(a) for a in args.anno),
                          fps=args.fps, frame_size=args.frame_size, max_frames_per_video=args.max_frames_per_video,
                          val_videos=args.val_videos)
    train_frames, val_frames = prepare_data(data_cfg, train_cfg.seed)
    train(model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data_cfg, output=args.output, resume=args.resume,
          device=device, train_frames=train_frames, val_frames=val_frames, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
