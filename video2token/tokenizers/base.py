"""The one interface every frame tokenizer implements (DALL-E dVAE, the built-in VQ-VAE).

A tokenizer maps uint8 RGB frames (N, H, W, 3) to integer codes (N, H/d, W/d) with
d = `downsample`, and back where a decoder exists. Extraction, visualization and
prediction only ever talk to this interface.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from ..precision import Precision


class TokenizerError(RuntimeError):
    """A tokenizer could not be loaded or used (missing file, unsafe pickle, bad config)."""


class Tokenizer(abc.ABC):
    #: short name stored in token-store metadata: "dalle" or "vqvae"
    name: str
    #: number of distinct codes; codes are in [0, vocab_size)
    vocab_size: int
    #: spatial stride: a (H, W) frame becomes (H/downsample, W/downsample) codes
    downsample: int
    #: frames per forward pass inside encode()/decode()
    batch_size: int = 32
    device: torch.device = torch.device("cpu")
    #: the compute precision, resolved from a `--precision` value for `device`
    #: (video2token.precision); its name is recorded by describe() as "precision"
    policy: Precision

    @property
    @abc.abstractmethod
    def has_decoder(self) -> bool:
        """True when decode() is available."""

    @abc.abstractmethod
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, H, W, 3) -> int64 codes (N, H/d, W/d). Deterministic.

        H and W must be multiples of `downsample` (a clear ValueError otherwise).
        """

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes (N, h, w) -> uint8 frames (N, h*d, w*d, 3)."""
        raise TokenizerError(f"tokenizer {self.name!r} was loaded without a decoder")

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able facts stored in token-store metadata: at least name, vocab_size,
        downsample, path and a checksum of the weights (so stores made with different
        weights are never mixed silently)."""

    def check_frames(self, frames: np.ndarray) -> None:
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: expected uint8 frames of shape (N, H, W, 3), got "
                f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}")
        _, h, w, _ = frames.shape
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"{self.name}: frame size {h}x{w} is not a multiple of the stride {self.downsample}")
