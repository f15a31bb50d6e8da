"""Frame tokenizers behind one interface: `load_tokenizer(kind, path)`.

kinds: "dalle" (the DALL-E dVAE, `encoder.pkl` [+ `decoder.pkl`], loaded through a
restricted unpickler) and "vqvae" (the project's own VQ-VAE: a directory with
`config.json` + `model.safetensors`). Kind "auto" reads which one `path` is
(`detect_kind`), and an explicit kind that disagrees with what `path` is fails saying what
it is, instead of a confusing error from the other loader.
"""
from __future__ import annotations

import json
import os

from .base import Tokenizer, TokenizerError

KINDS = ("dalle", "vqvae")
DALLE_CONVERTED_FORMAT = "vimpac-dalle-dvae"  # config.json "format" of `dalle convert` output


def _read_json_object(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def detect_kind(path: str) -> tuple[str | None, str]:
    """(kind or None, what `path` is in words), from the files alone (nothing is loaded).

    dalle: an http(s) URL, a `*.pkl` file, a directory with `encoder.pkl`, or a `dalle convert`
    directory (config.json with format "vimpac-dalle-dvae"). vqvae: a directory with
    `model.safetensors` and/or a config.json without that format (a VQVAEConfig).
    """
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        return "dalle", "a URL (DALL-E encoder.pkl download)"
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        return None, "a path that does not exist"
    if os.path.isfile(path):
        if path.endswith(".pkl"):
            return "dalle", "a pickle file (DALL-E encoder.pkl)"
        return None, "a file that is neither a DALL-E encoder.pkl nor a tokenizer directory"
    cfg_path = os.path.join(path, "config.json")
    cfg = _read_json_object(cfg_path) if os.path.isfile(cfg_path) else None
    if cfg is not None and cfg.get("format") == DALLE_CONVERTED_FORMAT:
        return "dalle", "a converted DALL-E directory (config.json format vimpac-dalle-dvae)"
    if os.path.isfile(os.path.join(path, "encoder.pkl")):
        return "dalle", "a DALL-E directory (encoder.pkl)"
    if os.path.isfile(os.path.join(path, "model.safetensors")) or (cfg is not None and "vocab_size" in cfg):
        return "vqvae", "a VQ-VAE tokenizer directory (config.json + model.safetensors)"
    return None, ("a directory with neither a DALL-E encoder.pkl nor a VQ-VAE config.json + "
                  "model.safetensors")


def resolve_kind(kind: str, path: str) -> str:
    """`kind` itself when it agrees with `path` (or `path` is unrecognised: its loader says
    what is missing); the detected kind for "auto"; else a TokenizerError saying what `path` is."""
    if kind != "auto" and kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected auto or one of {KINDS}")
    detected, what = detect_kind(path)
    if kind == "auto":
        if detected is None:
            raise TokenizerError(f"cannot tell the tokenizer kind of {path}: it is {what}; pass the "
                                 "DALL-E encoder.pkl (or its directory) or a VQ-VAE directory made by "
                                 "`python -m video2token.train_tokenizer`")
        return detected
    if detected is not None and detected != kind:
        raise TokenizerError(f"--tokenizer {kind} but {path} is {what}: pass --tokenizer {detected} "
                             "(or leave --tokenizer at auto)")
    return kind


def load_tokenizer(kind: str, path: str, *, decoder_path: str | None = None, device: str | None = None,
                   batch_size: int | None = None, precision: str = "auto", cpu_bf16: bool | None = None) -> Tokenizer:
    """Load a tokenizer of `kind` (one of KINDS, or "auto": see `detect_kind`) from `path`
    (a file, directory or URL, depending on kind).

    `precision` is a `--precision` value (video2token.precision): auto, fp32, bf16 or fp16, and
    `cpu_bf16` the user's VIMPAC_CPU_BF16 (read by the entry point); the tokenizer's
    `policy.describe()` says what it resolved to and why."""
    kind = resolve_kind(kind, path)
    if kind == "dalle":
        from .dalle import DalleTokenizer
        tok = DalleTokenizer.load(path, decoder_path=decoder_path, device=device, precision=precision,
                                   cpu_bf16=cpu_bf16)
    elif kind == "vqvae":
        from .vqvae import VQVAETokenizer
        tok = VQVAETokenizer.load(path, device=device, precision=precision, cpu_bf16=cpu_bf16)
    if batch_size is not None:
        tok.batch_size = int(batch_size)
    return tok


__all__ = ["Tokenizer", "TokenizerError", "load_tokenizer", "detect_kind", "resolve_kind", "KINDS"]
