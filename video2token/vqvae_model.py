"""A small convolutional VQ-VAE for video frames (van den Oord et al. 2017, "Neural Discrete
Representation Learning"), the project's own frame tokenizer.

Encoder: log2(downsample) stride-2 convolutions then residual blocks, a 1x1 projection to
`code_dim`; quantizer: one codebook of `vocab_size` vectors; decoder: the mirror image with
transposed convolutions. A (H, W) frame becomes (H/d, W/d) integer codes.

The quantizer is `vector_quantize_pytorch.VectorQuantize`: it gives EMA codebook updates,
k-means initialisation from the first batch of encoder outputs and replacement of dead codes
by batch vectors, which together keep most of the codebook in use (without them a 512-code
book collapsed to ~19 codes in our prototype). It always runs in fp32 with autocast disabled:
the nearest-code search is an argmin over ||z - e||^2 and bf16 would flip near-ties.

Pixels are scaled to [-1, 1]; the reconstruction loss is MSE in that space.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import VectorQuantize

DOWNSAMPLES = (4, 8, 16)
MIN_VOCAB, MAX_VOCAB = 2, 65536


@dataclass(frozen=True)
class VQVAEConfig:
    """Everything needed to rebuild the model; stored as the tokenizer's config.json."""

    vocab_size: int = 512
    downsample: int = 8
    #: space-to-depth factor of the stem: the first convolution already runs at H/patch_size,
    #: because full-resolution convolutions (and their backward) dominate CPU time
    patch_size: int = 2
    #: channels after the stem; doubled at each stride-2 stage up to `max_channels`
    channels: int = 64
    max_channels: int = 128
    num_res_blocks: int = 2
    #: dimension of a codebook vector
    code_dim: int = 32
    #: EMA decay of the codebook statistics
    codebook_decay: float = 0.9
    #: a code whose EMA usage falls below this many vectors per batch is re-seeded from the batch
    dead_code_threshold: float = 1.0
    kmeans_init: bool = True
    kmeans_iters: int = 10
    commitment_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {self.downsample}")
        if self.patch_size not in (1, 2, 4) or self.patch_size > self.downsample:
            raise ValueError(f"patch_size must be 1, 2 or 4 and <= downsample ({self.downsample}), got {self.patch_size}")
        if not MIN_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be in [{MIN_VOCAB}, {MAX_VOCAB}], got {self.vocab_size}")
        for name in ("channels", "max_channels", "code_dim", "kmeans_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if not 0.0 <= self.codebook_decay < 1.0:
            raise ValueError(f"codebook_decay must be in [0, 1), got {self.codebook_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQVAEConfig":
        """Strict: unknown keys are an error (a config from another model must not load silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQ-VAE config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    @property
    def stage_channels(self) -> list[int]:
        """Channels at each resolution, from the stem (H/patch_size) down to H/downsample."""
        n = int(math.log2(self.downsample // self.patch_size))
        return [min(self.channels * 2 ** i, self.max_channels) for i in range(n + 1)]


class ResBlock(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 1x1 conv, added back (the VQ-VAE paper's block)."""

    def __init__(self, *, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Upsample2x(nn.Module):
    """Sub-pixel convolution (3x3 conv to 4x channels, then pixel shuffle): on CPU it is several
    times faster than a transposed convolution and has no checkerboard pattern."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class Encoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, code_dim, H/d, W/d)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        chans = config.stage_channels
        self.patch_size = config.patch_size
        self.conv_in = nn.Conv2d(3 * config.patch_size ** 2, chans[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1) for c_in, c_out in zip(chans, chans[1:]))
        self.res = nn.Sequential(*[ResBlock(channels=chans[-1]) for _ in range(config.num_res_blocks)])
        self.conv_out = nn.Conv2d(chans[-1], config.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(F.pixel_unshuffle(x, self.patch_size))  # (B, C0, H/p, W/p)
        for conv in self.down:
            x = conv(F.relu(x))
        x = F.relu(self.res(x))  # (B, C, H/d, W/d)
        return self.conv_out(x)


class Decoder(nn.Module):
    """(B, code_dim, h, w) -> (B, 3, h*d, w*d), unbounded (clamped only when converted to pixels)."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        chans = config.stage_channels[::-1]
        self.patch_size = config.patch_size
        self.conv_in = nn.Conv2d(config.code_dim, chans[0], 3, padding=1)
        self.res = nn.Sequential(*[ResBlock(channels=chans[0]) for _ in range(config.num_res_blocks)])
        self.up = nn.ModuleList(Upsample2x(in_channels=c_in, out_channels=c_out) for c_in, c_out in zip(chans, chans[1:]))
        self.conv_out = nn.Conv2d(chans[-1], 3 * config.patch_size ** 2, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.res(self.conv_in(z))
        for up in self.up:
            x = up(F.relu(x))
        x = self.conv_out(F.relu(x))  # (B, 3 p^2, H/p, W/p)
        return F.pixel_shuffle(x, self.patch_size)


class VQVAE(nn.Module):
    """Encoder -> fp32 vector quantizer -> decoder, with the inverse map codes -> pixels."""

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = VectorQuantize(
            dim=config.code_dim,
            codebook_size=config.vocab_size,
            decay=config.codebook_decay,
            kmeans_init=config.kmeans_init,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
            sync_codebook=False,  # never touch torch.distributed from the model
        )
        if config.kmeans_init:
            # The library starts a k-means codebook at zero until the first training batch; a
            # random one instead keeps an untrained model (tests, benchmarks) a usable tokenizer.
            nn.init.kaiming_uniform_(self.quantizer._codebook.embed)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output (B, D, h, w) -> (quantized (B, D, h, w) fp32, codes (B, h, w) long, commitment loss).

        Training mode goes through the library (EMA updates, k-means init, dead-code resets);
        eval mode is a plain nearest-code lookup that never changes the codebook, so codes
        depend only on the frame, not on the batch it came in.
        """
        h, w = z.shape[-2:]
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = rearrange(z.float(), "b d h w -> b (h w) d")
            if self.training:
                quantized, codes, commit = self.quantizer(flat)
            else:
                codes = nearest_code(flat, self.quantizer.codebook)
                quantized, commit = self.quantizer.codebook[codes], flat.new_zeros(())
        quantized = rearrange(quantized, "b (h w) d -> b d h w", h=h, w=w)
        codes = rearrange(codes, "b (h w) -> b h w", h=h, w=w)
        return quantized, codes, commit

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes (B, H/d, W/d) long."""
        return self.quantize(self.encoder(x))[1]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) long -> (B, 3, h*d, w*d) in ~[-1, 1]."""
        z = self.quantizer.codebook[codes]  # (B, h, w, D) fp32
        return self.decoder(rearrange(z, "b h w d -> b d h w"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (reconstruction (B, 3, H, W), codes (B, h, w), commitment loss)."""
        quantized, codes, commit = self.quantize(self.encoder(x))
        return self.decoder(quantized), codes, commit


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook vector (squared Euclidean), fp32: x (..., D), codebook (V, D) -> (...) long."""
    dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(-1)  # (..., V)
    return dist.argmin(-1)


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return rearrange(frames, "b h w c -> b c h w").float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in ~[-1, 1] -> uint8 (B, H, W, 3), rounded and clamped."""
    x = x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two uint8 frame batches (any equal shapes), over all pixels."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def codebook_stats(codes: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity = exp(entropy of the code histogram))."""
    counts = torch.bincount(codes.flatten(), minlength=vocab_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return float((counts > 0).double().mean()), float(torch.exp(-(nz * nz.log()).sum()))
