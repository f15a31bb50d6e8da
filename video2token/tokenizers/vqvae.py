"""The project's own VQ-VAE (`video2token.vqvae_model`) behind the `Tokenizer` interface.

A tokenizer directory holds exactly two files: `config.json` (the `VQVAEConfig` fields) and
`model.safetensors` (the state dict, codebook included). Nothing is unpickled.

Precision follows the project's policy (`video2token.precision`, default `auto`): the encoder
and decoder run under bf16 autocast where the hardware computes bf16 natively (CPUs with AMX
or AVX512-BF16: ~2x faster there; Ampere+ GPUs), fp16 autocast on older GPUs, and in fp32
elsewhere (AVX2-only CPUs emulate bf16, many times slower than fp32). The nearest-code search
always runs in fp32 (see `VQVAE.quantize`). bf16 can still move an encoder output across the
boundary between two codes (about 1.5% of codes on held-out demo frames, with the same PSNR;
measured by `benchmarks/tokenizer.py`), so pass `precision="fp32"` where agreement with fp32
codes matters more than speed. The precision is part of `describe()`, so stores encoded
differently are never mixed silently. Either way, the same frames give the same codes on
every run, whatever the batch they come in.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from video2token.atomic import atomic_path, atomic_write_text, fsync_dir
from video2token.checksum import sha256_file
from video2token.devices import default_device
from video2token.precision import resolve_precision
from video2token.vqvae_model import VQVAE, VQVAEConfig, frames_to_tensor, tensor_to_frames

from .base import Tokenizer, TokenizerError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_vqvae(model: VQVAE, out_dir: str) -> None:
    """Write `out_dir/model.safetensors` then `out_dir/config.json`, each atomically.

    The weights go first: a kill in between leaves a directory without config.json, which
    `VQVAETokenizer.load` reports as incomplete, never a config paired with stale weights of
    another shape (the config of one training run does not change between saves).
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(os.path.join(out_dir, WEIGHTS_FILE)) as tmp:
        save_file(state, tmp, metadata={"format": "pt", "model": "video2token.vqvae_model.VQVAE"})
    atomic_write_text(os.path.join(out_dir, CONFIG_FILE),
                      json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    fsync_dir(out_dir)


def read_config(path: str) -> VQVAEConfig:
    """`path/config.json` -> VQVAEConfig, with errors naming the file and the bad key."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise TokenizerError(f"VQ-VAE tokenizer directory {path} is incomplete: {CONFIG_FILE} is missing")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{cfg_path}: not a valid JSON file ({e})") from e
    if not isinstance(raw, dict):
        raise TokenizerError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return VQVAEConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise TokenizerError(f"{cfg_path}: invalid VQ-VAE config: {e}") from e


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[VQVAE, str]:
    """Rebuild the model from a tokenizer directory; returns (model in eval mode, sha256 of the weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isdir(path):
        what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        raise TokenizerError(f"VQ-VAE tokenizer directory {path} {what} (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    config = read_config(path)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise TokenizerError(f"VQ-VAE tokenizer directory {path} is incomplete: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise TokenizerError(f"{weights}: not a readable safetensors file ({e})") from e
    model = VQVAE(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        parts = [f"missing keys {missing[:5]}" if missing else "", f"unexpected keys {unexpected[:5]}" if unexpected else "",
                 "shape mismatch for " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                                   for k in bad_shape[:5]) if bad_shape else ""]
        raise TokenizerError(f"{weights} does not match {os.path.join(path, CONFIG_FILE)}: "
                             + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return model.to(device).eval(), sha256_file(weights)


class VQVAETokenizer(Tokenizer):
    name = "vqvae"

    def __init__(self, model: VQVAE, *, path: str, sha256: str, device: torch.device, precision: str = "auto",
                 batch_size: int = 64, cpu_bf16: bool | None = None):
        self.policy = resolve_precision(precision, device, cpu_bf16=cpu_bf16)
        self.model = model
        self.config = model.config
        self.vocab_size = model.config.vocab_size
        self.downsample = model.config.downsample
        self.path = path
        self.sha256 = sha256
        self.device = torch.device(device)
        self.precision = self.policy.name  # "fp32" | "bf16" | "fp16", recorded by describe()
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str, device: str | torch.device | None = None,
             precision: str = "auto", *, cpu_bf16: bool | None = None) -> "VQVAETokenizer":
        """Load `path/config.json` + `path/model.safetensors`. device None = video2token.devices.default_device();
        `precision` is a `--precision` value (auto, fp32, bf16, fp16) and `cpu_bf16` the user's VIMPAC_CPU_BF16
        (see video2token.precision)."""
        path = os.path.abspath(os.fspath(path))
        dev = torch.device(device if device is not None else default_device())
        model, sha = load_model(path, dev)
        return cls(model, path=path, sha256=sha, device=dev, precision=precision, cpu_bf16=cpu_bf16)

    @property
    def has_decoder(self) -> bool:
        return True

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        self.check_frames(frames)
        n, h, w, _ = frames.shape
        out = np.empty((n, h // self.downsample, w // self.downsample), dtype=np.int64)
        for i in range(0, n, self.batch_size):
            x = frames_to_tensor(torch.from_numpy(frames[i:i + self.batch_size]).to(self.device))
            with self.policy.autocast():
                z = self.model.encoder(x)  # (B, D, h, w)
            out[i:i + len(x)] = self.model.quantize(z)[1].cpu().numpy()
        return out

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"vqvae: expected integer codes of shape (N, h, w), got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"vqvae: codes must be in [0, {self.vocab_size}), got range [{codes.min()}, {codes.max()}]")
        n, h, w = codes.shape
        out = np.empty((n, h * self.downsample, w * self.downsample, 3), dtype=np.uint8)
        for i in range(0, n, self.batch_size):
            c = torch.from_numpy(codes[i:i + self.batch_size].astype(np.int64)).to(self.device)
            with self.policy.autocast():
                x = self.model.decode_codes(c)
            out[i:i + len(c)] = tensor_to_frames(x).cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "downsample": self.downsample, "path": self.path,
                "sha256": self.sha256, "precision": self.precision, "config": self.config.to_dict()}
