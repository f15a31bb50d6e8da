"""Frame tokenizers behind one interface: `load_tokenizer(kind, path)`.

kinds: "dalle" (the DALL-E dVAE, `encoder.pkl` [+ `decoder.pkl`], loaded through a
restricted unpickler) and "vqvae" (the project's own VQ-VAE: a directory with
`config.json` + `model.safetensors`).
"""
from __future__ import annotations

from .base import Tokenizer, TokenizerError

KINDS = ("dalle", "vqvae")


def load_tokenizer(kind: str, path: str, *, decoder_path: str | None = None, device: str | None = None,
                   batch_size: int | None = None, precision: str = "auto") -> Tokenizer:
    """Load a tokenizer of `kind` from `path` (a file, directory or URL, depending on kind).

    `precision` is a `--precision` value (video2token.precision): auto, fp32, bf16 or fp16;
    the tokenizer's `policy.describe()` says what it resolved to and why."""
    if kind == "dalle":
        from .dalle import DalleTokenizer
        tok = DalleTokenizer.load(path, decoder_path=decoder_path, device=device, precision=precision)
    elif kind == "vqvae":
        from .vqvae import VQVAETokenizer
        tok = VQVAETokenizer.load(path, device=device, precision=precision)
    else:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    if batch_size is not None:
        tok.batch_size = int(batch_size)
    return tok


__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "KINDS"]
