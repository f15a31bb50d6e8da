r"""Train the built-in VQ-VAE frame tokenizer (van den Oord et al. 2017) on frames of your own videos.

    python -m video2token.train_tokenizer --video-root data/demo --anno data/demo/pretrain_videos.txt \
        --fps 8 --frame-size 64 --vocab-size 512 --output weights/vqvae_demo

Frames are sampled from the listed videos at --fps, resized and center-cropped to
--frame-size, and cached in memory as uint8; a seeded --val-fraction of the videos (10%, at
least one; or exactly --val-videos) is held out for the held-out PSNR, never trained on, and a
warning says how many. OUTPUT is checked (a finished run needs --resume) before any video is
decoded. OUTPUT ends up as a tokenizer directory (`config.json` + `model.safetensors`, which
`python -m video2token.extract --tokenizer-path OUTPUT` recognises) plus:

    last/                     the resumable checkpoint, written atomically every --save-every steps
        model.safetensors     model state (codebook buffers included)
        optimizer.safetensors AdamW tensors, flattened as `state.<param index>.<name>`
        trainer_state.json    step, elapsed time, RNG and sampler states (lists of ints), loss-scaler
                              state, and the model/train/data configs a resume must match
    metrics.jsonl, tensorboard/, curves.png   the run log (`video2token.runlog`)
    samples.png               held-out originals over reconstructions

`--resume` continues from `last/` (after a kill -9 too) and ends with the same weights as an
uninterrupted run. Nothing is pickled. Library functions raise `TokenizerTrainError`; only
`main` turns it into `error: ...` and exit code 2.
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
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from video2token.atomic import atomic_dir, recover_dir, remove_tmp_leftovers
from video2token.cli import HelpFormatter
from video2token.devices import default_device
from video2token.precision import Precision, add_precision_flag, read_cpu_bf16, resolve_precision
from video2token.runlog import MetricsLogger, plot_curves
from video2token.tokenizers.vqvae import save_vqvae
from video2token.vqvae_model import (DOWNSAMPLES, VQVAE, VQVAEConfig, codebook_stats, frames_to_tensor, psnr,
                                     tensor_to_frames)

CHECKPOINT_DIR = "last"
MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer_state.json"
CHECKPOINT_FORMAT = "vqvae-train-checkpoint"
CHECKPOINT_VERSION = 2
#: the single pickled file versions before 2 wrote; recognised only to say so
LEGACY_CHECKPOINT = "train_state.pt"
SAMPLES_PNG = "samples.png"
CURVES_PNG = "curves.png"
CURVE_KEYS = ("recon_mse", "commit", "psnr", "usage", "perplexity", "lr")


class TokenizerTrainError(RuntimeError):
    """A flag, input file or output directory the tokenizer trainer cannot work with."""


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
    #: autocast around encoder and decoder (`video2token.precision`); the quantizer always runs in fp32.
    #: "auto" is resolved for the device before training, and the resolved name is what a checkpoint stores.
    precision: str = "auto"
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
    #: videos held out; None: `val_fraction` of them (at least one, never all)
    val_videos: int | None = None
    val_fraction: float = 0.1


def training_precision(requested: str, device: torch.device, *, cpu_bf16: bool | None = None) -> Precision:
    """`--precision` (and VIMPAC_CPU_BF16, `cpu_bf16`) -> the precision training runs in; fp16 is refused on CPU
    (no fp16 training there)."""
    try:
        precision = resolve_precision(requested, device, cpu_bf16=cpu_bf16)
    except ValueError as e:
        raise TokenizerTrainError(str(e)) from e
    if precision.name == "fp16" and device.type != "cuda":
        raise TokenizerTrainError(f"--precision fp16 is not supported for training on {device.type}; "
                                  f"use --precision bf16 or fp32 (or auto)")
    return precision


# ----------------------------------------------------------------------------- data


def load_frames(paths: list[str], *, fps: float, frame_size: int, max_frames_per_video: int,
                desc: str = "decoding", progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode every video at `fps`, center-crop to `frame_size`: uint8 (N, S, S, 3), plus the
    list of files that could not be read (skipped with a note, never silently)."""
    from video2token.video import VideoError, read_video

    chunks, failed = [], []
    for path in tqdm(paths, desc=desc, unit="video", leave=False, disable=not progress):
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


def held_out_count(num_videos: int, *, val_videos: int | None, val_fraction: float) -> int:
    """How many of `num_videos` are held out: `val_videos` when given, else round(val_fraction *
    num_videos) but at least one; never all of them (a single video is trained on, none held out)."""
    if val_videos is not None:
        wanted = val_videos
    else:
        wanted = max(1, round(val_fraction * num_videos)) if val_fraction > 0 else 0
    return min(wanted, max(num_videos - 1, 0))


def split_videos(paths: list[str], val_videos: int, seed: int) -> tuple[list[str], list[str]]:
    """(train paths, held-out paths): a seeded choice of `val_videos` videos is held out, but
    never all of them."""
    n_val = min(val_videos, max(len(paths) - 1, 0))
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(order[:n_val].tolist())
    val_set = set(val)
    return [p for i, p in enumerate(paths) if i not in val_set], [paths[i] for i in val]


def prepare_data(data: DataConfig, seed: int, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(train frames, held-out frames), uint8 (N, S, S, 3) each."""
    from video2token.annotations import AnnotationError, read_annotations

    try:
        anno = read_annotations(list(data.anno), data.video_root)
    except (AnnotationError, ValueError) as e:
        raise TokenizerTrainError(f"--anno: {e}") from e
    for s in anno.skipped[:5]:
        print(f"note: skipped {s.source}: {s.reason}", file=sys.stderr)
    paths = [it.path for it in anno.items]
    if not paths:
        raise TokenizerTrainError(f"--anno: no videos listed in {', '.join(data.anno)}")
    n_val = held_out_count(len(paths), val_videos=data.val_videos, val_fraction=data.val_fraction)
    if data.val_videos is None:
        print(f"warning: holding out {n_val} of {len(paths)} videos ({data.val_fraction:.0%}, --val-fraction) for the "
              f"held-out PSNR; they are not trained on (--val-videos N sets the number)", file=sys.stderr)
    elif n_val < data.val_videos:
        print(f"warning: holding out {n_val} of {len(paths)} videos, not --val-videos {data.val_videos}: "
              f"at least one video must be trained on", file=sys.stderr)
    train_paths, val_paths = split_videos(paths, n_val, seed)
    kw = dict(fps=data.fps, frame_size=data.frame_size, max_frames_per_video=data.max_frames_per_video,
              progress=progress)
    train, failed = load_frames(train_paths, desc="decoding train videos", **kw)
    val, failed_val = load_frames(val_paths, desc="decoding held-out videos", **kw)
    for f in (failed + failed_val)[:5]:
        print(f"note: unreadable video skipped: {f}", file=sys.stderr)
    if len(train) == 0:
        raise TokenizerTrainError(f"no frames could be decoded from the {len(train_paths)} training videos listed in "
                                  f"{', '.join(data.anno)}")
    print(f"data: {len(train)} train frames from {len(train_paths) - len(failed)} videos, {len(val)} held-out frames "
          f"from {len(val_paths) - len(failed_val)} videos, {data.frame_size}x{data.frame_size} px at {data.fps:g} fps"
          + (f", {len(failed) + len(failed_val)} unreadable" if failed or failed_val else ""))
    return train, val


# ----------------------------------------------------------------------------- checkpoint


@dataclass
class TrainCheckpoint:
    path: str
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]  # flattened, see flatten_optimizer_state
    trainer_state: dict[str, Any]             # the whole trainer_state.json

    @property
    def step(self) -> int:
        return int(self.trainer_state["step"])


def flatten_optimizer_state(state: Mapping[int, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter `state_dict()["state"]` -> {"state.<param index>.<name>": tensor}."""
    out = {}
    for idx, per_param in state.items():
        for name, value in per_param.items():
            if not torch.is_tensor(value):
                raise TokenizerTrainError(f"optimizer state {idx}.{name} is a {type(value).__name__}, not a tensor")
            out[f"state.{int(idx)}.{name}"] = value.detach().cpu().contiguous().clone()
    return out


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Inverse of flatten_optimizer_state."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, idx, name = key.split(".", 2)
        if prefix != "state" or not idx.isdigit():
            raise TokenizerTrainError(f"unexpected optimizer tensor name {key!r}")
        state.setdefault(int(idx), {})[name] = value
    return state


def _rng_list(state: torch.Tensor) -> list[int]:
    return state.tolist()


def _rng_tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _configs(model_cfg: VQVAEConfig, train_cfg: TrainConfig, data_cfg: DataConfig) -> dict[str, dict]:
    """The configs as they read back from JSON (tuples become lists)."""
    return {"model_config": model_cfg.to_dict(), "train_config": dataclasses.asdict(train_cfg),
            "data_config": {**dataclasses.asdict(data_cfg), "anno": list(data_cfg.anno)}}


def save_checkpoint(ckpt_dir: str, *, model: VQVAE, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    step: int, sampler: torch.Generator, train_cfg: TrainConfig, data_cfg: DataConfig,
                    elapsed: float) -> None:
    """Atomic (`atomic_dir`): a kill at any moment leaves the previous checkpoint or this one."""
    model_state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    trainer_state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "elapsed": float(elapsed),
        "rng_torch": _rng_list(torch.get_rng_state()),
        "rng_cuda": [_rng_list(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "rng_sampler": _rng_list(sampler.get_state()),
        "grad_scaler": scaler.state_dict(),  # {} unless fp16
        **_configs(model.config, train_cfg, data_cfg),
    }
    with atomic_dir(ckpt_dir) as tmp:
        save_file(model_state, os.path.join(tmp, MODEL_FILE), metadata={"format": CHECKPOINT_FORMAT})
        save_file(flatten_optimizer_state(optimizer.state_dict()["state"]), os.path.join(tmp, OPTIM_FILE),
                  metadata={"format": CHECKPOINT_FORMAT})
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(trainer_state, f)


def load_checkpoint(ckpt_dir: str) -> TrainCheckpoint:
    """Read a checkpoint directory (after restoring it if a kill hit `atomic_dir`'s swap)."""
    recover_dir(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        raise TokenizerTrainError(f"checkpoint {ckpt_dir} does not exist")
    state_path = os.path.join(ckpt_dir, STATE_FILE)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise TokenizerTrainError(f"{state_path} is missing: not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerTrainError(f"{state_path}: not a readable JSON file ({e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TokenizerTrainError(f"{state_path}: not a train_tokenizer checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TokenizerTrainError(f"{state_path}: checkpoint version {state.get('version')!r}, this train_tokenizer "
                                  f"reads version {CHECKPOINT_VERSION}")
    tensors = {}
    for name in (MODEL_FILE, OPTIM_FILE):
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            raise TokenizerTrainError(f"{path} is missing: not a complete checkpoint")
        try:
            tensors[name] = load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise TokenizerTrainError(f"{path}: not a readable safetensors file ({e})") from e
    return TrainCheckpoint(path=ckpt_dir, model_state=tensors[MODEL_FILE], optimizer_state=tensors[OPTIM_FILE],
                           trainer_state=state)


def _diff(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now.get(k)!r}"
            for k in sorted(set(saved) | set(now)) if k not in ignore and saved.get(k) != now.get(k)]


def check_output(output: str, *, resume: bool, model_cfg: VQVAEConfig, train_cfg: TrainConfig,
                 data_cfg: DataConfig) -> TrainCheckpoint | None:
    """Decide, before any video is decoded, whether OUTPUT starts a run or continues one.

    Returns the checkpoint to resume from, or None for a fresh run. Raises TokenizerTrainError for an
    output that holds a run without --resume, a pre-version-2 pickle checkpoint, or a checkpoint made
    with other settings (only --steps and the logging/saving intervals may change).
    """
    legacy = os.path.join(output, LEGACY_CHECKPOINT)
    if os.path.isfile(legacy):
        raise TokenizerTrainError(
            f"{legacy} is a checkpoint from an older version of train_tokenizer (a torch pickle, no longer read); "
            f"this version checkpoints to {os.path.join(output, CHECKPOINT_DIR)}/ and cannot resume from it. The "
            f"tokenizer in {output} (config.json + model.safetensors) still loads; to train again choose another "
            f"--output, or delete {legacy} to start over in {output}")
    ckpt_dir = os.path.join(output, CHECKPOINT_DIR)
    recover_dir(ckpt_dir)
    if not os.path.exists(ckpt_dir):
        if resume:
            print(f"resume: no checkpoint in {output}, starting from step 0")
        return None
    if not resume:
        raise TokenizerTrainError(f"{output} already holds a training run ({ckpt_dir}); pass --resume to continue it "
                                  f"or choose another --output")
    ckpt = load_checkpoint(ckpt_dir)
    saved, now = ckpt.trainer_state, _configs(model_cfg, train_cfg, data_cfg)
    problems = _diff(saved.get("model_config", {}), now["model_config"])
    # an explicit --val-videos makes the fraction irrelevant (checkpoints from before --val-fraction lack it)
    problems += _diff(saved.get("data_config", {}), now["data_config"],
                      ignore=("val_fraction",) if data_cfg.val_videos is not None else ())
    problems += _diff(saved.get("train_config", {}), now["train_config"],
                      ignore=("steps", "eval_every", "save_every", "log_every"))
    if problems:
        raise TokenizerTrainError(f"{ckpt_dir} was made with different settings; resume with the same flags "
                                  f"(only --steps may change):\n  " + "\n  ".join(problems))
    return ckpt


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


@torch.no_grad()
def reconstruct(model: VQVAE, frames: np.ndarray, *, device: torch.device, precision: Precision,
                batch_size: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """frames uint8 (N, S, S, 3) -> (reconstructions uint8 (N, S, S, 3), codes (N, h, w) long), in eval mode."""
    was_training = model.training
    model.eval()
    recon, codes = [], []
    for i in range(0, len(frames), batch_size):
        x = frames_to_tensor(torch.from_numpy(frames[i:i + batch_size]).to(device))
        with precision.autocast():
            z = model.encoder(x)
        _, c, _ = model.quantize(z)  # fp32 inside, whatever the autocast
        with precision.autocast():
            y = model.decode_codes(c)
        recon.append(tensor_to_frames(y).cpu())
        codes.append(c.cpu())
    model.train(was_training)
    return torch.cat(recon).numpy(), torch.cat(codes)


def evaluate(model: VQVAE, frames: np.ndarray, *, device: torch.device, precision: Precision) -> dict[str, float]:
    """Held-out PSNR (uint8, rounded like a decoded picture), codebook usage and perplexity."""
    recon, codes = reconstruct(model, frames, device=device, precision=precision)
    usage, ppl = codebook_stats(codes, model.config.vocab_size)
    return {"psnr": psnr(torch.from_numpy(frames), torch.from_numpy(recon)), "usage": usage, "perplexity": ppl}


def draw_samples(model: VQVAE, frames: np.ndarray, out_png: str, *, device: torch.device, precision: Precision,
                 n: int = 8, title: str = "") -> None:
    from video2token.visualize import draw_grid

    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(np.int64)
    originals = frames[idx]
    recon, _ = reconstruct(model, originals, device=device, precision=precision)
    draw_grid([originals, recon], ["original", "reconstruction"], out_png, title=title)


# ----------------------------------------------------------------------------- the loop


def train(*, model_cfg: VQVAEConfig, train_cfg: TrainConfig, data_cfg: DataConfig, output: str,
          start: TrainCheckpoint | None, device: torch.device, train_frames: np.ndarray, val_frames: np.ndarray,
          progress: bool = True) -> dict:
    """Train (or continue from `start`, what `check_output` returned) and write the tokenizer directory;
    returns the final metrics."""
    precision = training_precision(train_cfg.precision, device)
    train_cfg = dataclasses.replace(train_cfg, precision=precision.name)
    ckpt_dir = os.path.join(output, CHECKPOINT_DIR)
    recover_dir(ckpt_dir)  # before the cleanup below, which would delete the `.old.tmp` it restores
    if start is None and os.path.exists(ckpt_dir):
        raise TokenizerTrainError(f"{output} already holds a training run ({ckpt_dir}); resume it with the checkpoint "
                                  f"check_output returns or choose another output")
    os.makedirs(output, exist_ok=True)
    remove_tmp_leftovers(output)

    torch.manual_seed(train_cfg.seed)
    model = VQVAE(model_cfg).to(device)
    model.train()
    # The codebook is updated by EMA (buffers), not by the optimizer.
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                  betas=(0.9, 0.99))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    sampler = torch.Generator().manual_seed(train_cfg.seed)
    step, elapsed = 0, 0.0

    if start is not None:
        st = start.trainer_state
        model.load_state_dict(start.model_state)
        # param_groups come from train_cfg (checked equal by check_output); lr is set every step
        optimizer.load_state_dict({"state": unflatten_optimizer_state(start.optimizer_state),
                                   "param_groups": optimizer.state_dict()["param_groups"]})
        scaler.load_state_dict(st["grad_scaler"])
        torch.set_rng_state(_rng_tensor(st["rng_torch"]))
        if st["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_rng_tensor(s) for s in st["rng_cuda"]])
        sampler.set_state(_rng_tensor(st["rng_sampler"]))
        step, elapsed = start.step, float(st["elapsed"])
        print(f"resume: continuing from step {step} ({start.path})")

    metrics = MetricsLogger(output, resume_step=step if start is not None else None)
    frames_t = torch.from_numpy(train_frames)  # (N, S, S, 3) uint8, shared, never copied whole
    n_train = len(frames_t)
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter() - elapsed
    bar = tqdm(total=train_cfg.steps, initial=step, desc="train vqvae", unit="step", disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    try:
        while step < train_cfg.steps:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train_cfg)
            idx = torch.randint(0, n_train, (train_cfg.batch_size,), generator=sampler)
            x = augment_batch(frames_to_tensor(frames_t[idx].to(device)), train_cfg.augment, sampler)  # (B, 3, S, S)
            with precision.autocast():
                recon, codes, commit = model(x)
            recon_mse = F.mse_loss(recon.float(), x)
            loss = recon_mse + commit
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if train_cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1

            if step % train_cfg.log_every == 0 or step == train_cfg.steps:
                usage, ppl = codebook_stats(codes.detach(), model_cfg.vocab_size)
                mse = recon_mse.item()
                row = {"loss": loss.item(), "recon_mse": mse, "commit": commit.item(),
                       "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)),  # pixels in [-1, 1]: peak-to-peak 2
                       "usage": usage, "perplexity": ppl, "lr": optimizer.param_groups[0]["lr"],
                       "time": time.perf_counter() - t_start}
                metrics.log("train", None, step, **row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}", usage=f"{usage:.2f}",
                                ppl=f"{ppl:.0f}", val=f"{last_eval.get('psnr', float('nan')):.1f}", refresh=False)
            if len(val_frames) and (step % train_cfg.eval_every == 0 or step == train_cfg.steps):
                last_eval = evaluate(model, val_frames, device=device, precision=precision)
                metrics.log("valid", None, step, **last_eval, time=time.perf_counter() - t_start)
            if step % train_cfg.save_every == 0 or step == train_cfg.steps:
                metrics.sync()
                save_checkpoint(ckpt_dir, model=model, optimizer=optimizer, scaler=scaler, step=step, sampler=sampler,
                                train_cfg=train_cfg, data_cfg=data_cfg, elapsed=time.perf_counter() - t_start)
                save_vqvae(model, output)
            bar.update(1)
    finally:
        bar.close()
        metrics.close()

    wall = time.perf_counter() - t_start
    final = evaluate(model, val_frames if len(val_frames) else train_frames[:256], device=device, precision=precision)
    held = "held-out" if len(val_frames) else "train (no held-out videos)"
    draw_samples(model, val_frames if len(val_frames) else train_frames, os.path.join(output, SAMPLES_PNG),
                 device=device, precision=precision,
                 title=f"{held} frames: originals over reconstructions, step {step}, PSNR {final['psnr']:.2f} dB")
    plot_curves(metrics.path, os.path.join(output, CURVES_PNG), keys=CURVE_KEYS, log_scale=("recon_mse", "commit"))
    print(f"train_tokenizer: {step} steps in {wall / 60:.1f} min of training; {held} PSNR {final['psnr']:.2f} dB, "
          f"codebook usage {final['usage'] * 100:.0f}% of {model_cfg.vocab_size}, perplexity {final['perplexity']:.0f}; "
          f"tokenizer -> {output}")
    return {"step": step, "train_seconds": wall, **final}


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    d_m, d_t = VQVAEConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="python -m video2token.train_tokenizer", description=__doc__,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--video-root", required=True, help="directory the annotation paths are relative to")
    g.add_argument("--anno", nargs="+", required=True, help="annotation list file(s) naming the videos")
    g.add_argument("--fps", type=float, required=True, help="frames sampled per second of video")
    g.add_argument("--frame-size", type=int, required=True, help="shorter side resize + square center crop (px)")
    g.add_argument("--max-frames-per-video", type=int, default=32, help="cap on frames cached per video")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the videos held out for the held-out PSNR (at least one video)")
    g.add_argument("--val-videos", type=int, default=None,
                   help="hold out exactly this many videos instead of --val-fraction (0: none)")
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
    add_precision_flag(g)  # autocast for encoder/decoder; the quantizer is always fp32; fp16 only on CUDA
    g.add_argument("--augment", default=d_t.augment, choices=AUGMENTS,
                   help="flip: horizontal flips; full: also 90-degree rotations and RGB channel permutations")
    g.add_argument("--eval-every", type=int, default=d_t.eval_every)
    g.add_argument("--save-every", type=int, default=d_t.save_every, help="checkpoint interval (steps)")
    g.add_argument("--log-every", type=int, default=d_t.log_every)
    p.add_argument("--output", required=True, help="tokenizer directory to write")
    p.add_argument("--resume", action="store_true", help=f"continue from OUTPUT/{CHECKPOINT_DIR}/ when it exists")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK under torchrun / srun, cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def configs_from_args(args: argparse.Namespace) -> tuple[VQVAEConfig, TrainConfig, DataConfig]:
    """Flags -> configs; `args.precision` must already be resolved (see `main`)."""
    if args.frame_size % args.downsample:
        raise TokenizerTrainError(f"--frame-size {args.frame_size} is not a multiple of --downsample {args.downsample}")
    for name in ("steps", "batch_size", "eval_every", "save_every", "log_every", "max_frames_per_video"):
        if getattr(args, name) < 1:
            raise TokenizerTrainError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.val_fraction < 1:
        raise TokenizerTrainError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.val_videos is not None and args.val_videos < 0:
        raise TokenizerTrainError(f"--val-videos must be >= 0, got {args.val_videos}")
    try:
        model_cfg = VQVAEConfig(vocab_size=args.vocab_size, downsample=args.downsample, channels=args.channels,
                                max_channels=args.max_channels, code_dim=args.code_dim, patch_size=args.patch_size,
                                num_res_blocks=args.num_res_blocks)
    except ValueError as e:
        raise TokenizerTrainError(str(e)) from e
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                            seed=args.seed, augment=args.augment, precision=args.precision,
                            eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every)
    data_cfg = DataConfig(video_root=os.path.abspath(args.video_root), anno=tuple(os.path.abspath(a) for a in args.anno),
                          fps=args.fps, frame_size=args.frame_size, max_frames_per_video=args.max_frames_per_video,
                          val_videos=args.val_videos, val_fraction=args.val_fraction)
    return model_cfg, train_cfg, data_cfg


def run(args: argparse.Namespace, *, cpu_bf16: bool | None = None) -> dict:
    """Train as the flags say; `cpu_bf16`: the user's VIMPAC_CPU_BF16 (video2token.precision)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or default_device())
    precision = training_precision(args.precision, device, cpu_bf16=cpu_bf16)
    print(precision.describe(), flush=True)
    args = argparse.Namespace(**{**vars(args), "precision": precision.name})
    model_cfg, train_cfg, data_cfg = configs_from_args(args)
    start = check_output(args.output, resume=args.resume, model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data_cfg)
    train_frames, val_frames = prepare_data(data_cfg, train_cfg.seed, progress=not args.no_progress)
    return train(model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data_cfg, output=args.output, start=start,
                 device=device, train_frames=train_frames, val_frames=val_frames, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    try:
        run(args, cpu_bf16=cpu_bf16)
    except TokenizerTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
