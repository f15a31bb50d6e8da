"""The DALL-E dVAE (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation") as a frame tokenizer.

VIMPAC tokenizes every frame with this frozen discrete VAE: 8192 codes, stride 8. Weights
are the released `encoder.pkl` / `decoder.pkl` (whole pickled modules of the `dall-e`
package), read through a restricted unpickler (`safe_pickle`), or a directory written by

    python -m video2token.tokenizers.dalle convert --encoder encoder.pkl [--decoder decoder.pkl] --out DIR

(`config.json` + `encoder.safetensors` [+ `decoder.safetensors`]: no pickle at all).

Precision follows the project's policy (`video2token.precision`): `auto` is bf16 where the
hardware computes it natively (CPUs with AMX / AVX512-BF16, Ampere+ GPUs), fp16 on older GPUs,
fp32 elsewhere (AVX2-only CPUs, where emulated bf16 is many times slower than fp32). Both
paths re-express the package's encoder graph, faster than its own forward:

- fp32 (`ExactDalleEncoder`, CPU): the package's oneDNN convolutions without its layout
  reorders; logits bitwise equal to the package's fp32 forward, so exactly its codes.
- bf16 / fp16 (`FastDalleEncoder`): weights cast once, channels-last, the residual gain
  folded into the last conv of each block; the low-precision logits only shortlist
  `RESCORE_TOPK` codes per position, re-scored in fp32, so precision costs little agreement
  with the fp32 argmax (measured in tests/test_tokenizer_dalle.py and benchmarks/README.md).

The precision used is part of `describe()`, so stores encoded differently never mix silently.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_path, atomic_write_text
from ..checksum import sha256_file
from ..devices import default_device
from ..precision import Precision, resolve_precision
from . import DALLE_CONVERTED_FORMAT
from .base import Tokenizer, TokenizerError
from .safe_pickle import safe_torch_load

DOWNSAMPLE = 8  # three 2x max-pools in the dVAE encoder
RESCORE_TOPK = 4  # low-precision logits shortlist this many codes; fp32 picks among them
RESCORE_CHUNK = 2048  # positions per fp32 re-scoring step: bounds the gathered (p, k, C) fp32 rows to 64 MB at C=2048
CACHE_DIR = Path("~/.cache/vimpac/dalle")
CONVERTED_FORMAT = DALLE_CONVERTED_FORMAT
ENCODER_HPARAMS = ("n_hid", "n_blk_per_group", "input_channels", "vocab_size")
DECODER_HPARAMS = ("n_init", "n_hid", "n_blk_per_group", "output_channels", "vocab_size")


# ----------------------------------------------------------------------------- fast encoders

def _is_power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


class _Conv:
    """One dall_e Conv2d's weights, cast once: w (out, in, k, k) channels-last, b (out,)."""

    def __init__(self, conv: nn.Module, dtype: torch.dtype, scale: float = 1.0):
        self.w = (conv.w.detach() * scale).to(dtype).contiguous(memory_format=torch.channels_last)
        self.b = (conv.b.detach() * scale).to(dtype)
        self.padding = (conv.kw - 1) // 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.padding)


class FastDalleEncoder:
    """The `dall_e.Encoder` forward as plain convs in `dtype` (bf16 / fp16); codes via fp32 re-scoring.

    Same maths as the package: per block x + post_gain * res_path(x), with post_gain
    folded into conv_4 (exact up to rounding), max-pool after groups 1-3. With dtype fp32
    (CUDA only: on CPU `ExactDalleEncoder` is faster and exact) the argmax is taken directly.
    """

    def __init__(self, encoder: nn.Module, *, dtype: torch.dtype):
        self.dtype = dtype
        self.vocab_size = int(encoder.vocab_size)
        blocks = encoder.blocks
        self.stem = _Conv(blocks.input, dtype)
        # groups: list of (blocks, pool) with blocks = list of (id_conv or None, [conv_1..conv_4])
        self.groups: list[tuple[list[tuple[_Conv | None, list[_Conv]]], bool]] = []
        for g in range(1, encoder.group_count + 1):
            group = getattr(blocks, f"group_{g}")
            group_blocks = []
            for name, blk in group.named_children():
                if not name.startswith("block_"):
                    continue
                id_conv = None if isinstance(blk.id_path, nn.Identity) else _Conv(blk.id_path, dtype)
                res = [_Conv(getattr(blk.res_path, f"conv_{i}"), dtype, blk.post_gain if i == 4 else 1.0)
                       for i in range(1, 5)]
                group_blocks.append((id_conv, res))
            self.groups.append((group_blocks, hasattr(group, "pool")))
        # the 1x1 logits conv as a matmul over channels-last pixels: (V, C) weights
        out = blocks.output.conv
        self.head_w32 = out.w.detach().float()[:, :, 0, 0].contiguous()  # (V, C)
        self.head_b32 = out.b.detach().float()  # (V,)
        self.head_w = self.head_w32.to(dtype)
        self.head_b = self.head_b32.to(dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """mapped pixels (N, 3, H, W) float -> ReLU'd features (N, C, H/8, W/8) in `dtype`."""
        x = self.stem(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        for group_blocks, pool in self.groups:
            for id_conv, res in group_blocks:
                skip = x if id_conv is None else id_conv(x)
                h = res[0](F.relu(x) if id_conv is None else x.relu_())  # ReLU in place once x is used
                for conv in res[1:]:
                    h = conv(h.relu_())
                x = h.add_(skip)
            if pool:
                x = F.max_pool2d(x, kernel_size=2)
        return x.relu_()

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """mapped pixels (N, 3, H, W) -> int64 codes (N, H/8, W/8)."""
        feats = self.features(x)  # (N, C, h, w), channels-last
        n, c, h, w = feats.shape
        feats = feats.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (P, C), a view
        logits = F.linear(feats, self.head_w, self.head_b)  # (P, V) in `dtype`
        if self.dtype == torch.float32:
            return logits.argmax(1).view(n, h, w)
        cand = logits.topk(min(RESCORE_TOPK, self.vocab_size), dim=1).indices  # (P, k)
        best = torch.empty(n * h * w, dtype=torch.long, device=feats.device)
        for s in range(0, n * h * w, RESCORE_CHUNK):
            cs = cand[s:s + RESCORE_CHUNK]  # (p, k)
            f32 = feats[s:s + RESCORE_CHUNK].float().unsqueeze(-1)  # (p, C, 1)
            scores = torch.bmm(self.head_w32[cs], f32).squeeze(-1) + self.head_b32[cs]  # (p, k)
            best[s:s + RESCORE_CHUNK] = cs.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
        return best.view(n, h, w)


def torch_conv_uses_onednn(shape: tuple[int, ...], kernel: int) -> bool:
    """Whether `F.conv2d` on a dense fp32 CPU input of `shape` (N, C, H, W) with a k x k kernel
    (stride 1, no dilation, 1 group) runs oneDNN, mirroring torch's `ConvParams::use_mkldnn`
    (aten/src/ATen/native/Convolution.cpp): single-threaded 1x1 convs on fewer than 16 images,
    and tiny single-image inputs, go to torch's own kernels instead."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    n, c, h, w = shape
    return ((n >= 16 or kernel != 1 or torch.get_num_threads() > 1)
            and (kernel > 3 or n > 1 or n * c * h * w > 20480))


class _OneDnnConv:
    """One dall_e Conv2d for `ExactDalleEncoder`: fp32 weights (scaled by a power of two, which
    is exact), also held as a oneDNN tensor."""

    def __init__(self, conv: nn.Module, scale: float = 1.0):
        w, b = conv.w.detach().float(), conv.b.detach().float()
        self.w = (w * scale if scale != 1.0 else w).contiguous()  # scale 1: the module's own tensors
        self.b = (b * scale if scale != 1.0 else b).contiguous()
        self.kernel = int(conv.kw)
        self.padding = [(self.kernel - 1) // 2] * 2
        self.w_onednn = self.w.to_mkldnn() if torch.backends.mkldnn.is_available() else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) fp32, a oneDNN tensor or dense NCHW -> the same kind of tensor."""
        if x.is_mkldnn and torch_conv_uses_onednn(tuple(x.shape), self.kernel):
            return torch.mkldnn_convolution(x, self.w_onednn, self.b, self.padding, [1, 1], [1, 1], 1)
        # the package's own call, on the same dense NCHW input: the same kernel torch picks for it
        y = F.conv2d(x.to_dense() if x.is_mkldnn else x, self.w, self.b, padding=self.padding)
        return y.to_mkldnn() if x.is_mkldnn else y


class ExactDalleEncoder:
    """The `dall_e.Encoder` fp32 forward on CPU, bit for bit, faster.

    The package runs every conv on dense NCHW tensors, which torch hands to oneDNN: each call
    reorders its input, weights and output to and from oneDNN's blocked layout. Here the
    activations stay in that layout (oneDNN tensors) from the stem to the logits, so the same
    oneDNN kernels compute the same sums without the reorders; ReLU and the residual add run
    in place, and post_gain (1/n_layers^2, a power of two for the released 2 blocks per
    group) is folded into conv_4, which scales every product and sum exactly. Convs that torch
    would not give to oneDNN (see `torch_conv_uses_onednn`) run the package's dense call. So
    the logits equal the package's bitwise and the codes are its argmax (tested, also at one
    thread and batch 1).
    """

    def __init__(self, encoder: nn.Module):
        self.vocab_size = int(encoder.vocab_size)
        blocks = encoder.blocks
        self.stem = _OneDnnConv(blocks.input)
        # groups: list of (blocks, pool) with blocks = list of (id_conv or None, [conv_1..conv_4], gain)
        self.groups: list[tuple[list[tuple[_OneDnnConv | None, list[_OneDnnConv], float]], bool]] = []
        for g in range(1, encoder.group_count + 1):
            group = getattr(blocks, f"group_{g}")
            group_blocks = []
            for name, blk in group.named_children():
                if not name.startswith("block_"):
                    continue
                gain = float(blk.post_gain)
                fold = _is_power_of_two(gain)  # else multiply after conv_4, as the package does
                id_conv = None if isinstance(blk.id_path, nn.Identity) else _OneDnnConv(blk.id_path)
                res = [_OneDnnConv(getattr(blk.res_path, f"conv_{i}"), gain if i == 4 and fold else 1.0)
                       for i in range(1, 5)]
                group_blocks.append((id_conv, res, 1.0 if fold else gain))
            self.groups.append((group_blocks, hasattr(group, "pool")))
        self.head = _OneDnnConv(blocks.output.conv)
        self.onednn = torch.backends.mkldnn.is_available()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """mapped pixels (N, 3, H, W) fp32 -> logits (N, V, H/8, W/8), dense NCHW fp32."""
        x = x.float().contiguous()
        x = self.stem(x.to_mkldnn() if self.onednn else x)
        for group_blocks, pool in self.groups:
            for id_conv, res, gain in group_blocks:
                skip = x if id_conv is None else id_conv(x)
                h = res[0](torch.relu(x) if id_conv is None else x.relu_())  # ReLU in place once x is used
                for conv in res[1:]:
                    h = conv(h.relu_())
                if gain != 1.0:
                    h = h.mul_(gain)
                x = h.add_(skip)
            if pool:
                x = F.max_pool2d(x, kernel_size=2)
        logits = self.head(x.relu_())
        return logits.to_dense() if logits.is_mkldnn else logits

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """mapped pixels (N, 3, H, W) -> int64 codes (N, H/8, W/8): the argmax of the fp32 logits."""
        return self.logits(x).argmax(1)


# ----------------------------------------------------------------------------- tokenizer

class DalleTokenizer(Tokenizer):
    """uint8 frames (N, H, W, 3) -> DALL-E dVAE codes (N, H/8, W/8), and back."""

    name = "dalle"
    downsample = DOWNSAMPLE

    def __init__(self, encoder: nn.Module, *, decoder: nn.Module | None = None, path: str = "",
                 sha256: str = "", decoder_path: str | None = None, decoder_sha256: str | None = None,
                 device: str | torch.device = "cpu", precision: str = "auto", batch_size: int = 32,
                 extra: dict[str, Any] | None = None, cpu_bf16: bool | None = None):
        self.device = torch.device(device)
        self.policy: Precision = resolve_precision(precision, self.device, cpu_bf16=cpu_bf16)
        self.precision = self.policy.name  # "fp32" | "bf16" | "fp16", recorded by describe()
        self.encoder = encoder.eval().to(self.device)
        self.decoder = None if decoder is None else decoder.eval().to(self.device)
        self.vocab_size = int(encoder.vocab_size)
        if self.decoder is not None and int(self.decoder.vocab_size) != self.vocab_size:
            raise TokenizerError(f"decoder {decoder_path} has vocab_size {self.decoder.vocab_size}, "
                                 f"encoder {path} has {self.vocab_size}")
        self.batch_size = int(batch_size)
        self.path, self.sha256 = path, sha256
        self.decoder_path, self.decoder_sha256 = decoder_path, decoder_sha256
        self.extra = dict(extra or {})
        if self.precision == "fp32" and self.device.type == "cpu":
            self.fast_encoder: ExactDalleEncoder | FastDalleEncoder = ExactDalleEncoder(self.encoder)
        else:  # on CUDA the package itself runs fp16 convs, so fp32 there is plain fp32 convs
            self.fast_encoder = FastDalleEncoder(self.encoder, dtype=self.policy.dtype)

    # --- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, decoder_path: str | None = None, device: str | None = None, *,
             precision: str = "auto", batch_size: int = 32,
             cache_dir: str | Path | None = None, cpu_bf16: bool | None = None) -> "DalleTokenizer":
        """Load from `path`: an `encoder.pkl` file, an http(s) URL of one (downloaded once to
        `cache_dir`, default ~/.cache/vimpac/dalle), a directory with `encoder.pkl`
        [+ `decoder.pkl`], or a directory made by `convert`. `device` None: video2token.devices.default_device()
        (cuda:LOCAL_RANK under torchrun / srun); `precision` is a `--precision` value (auto, fp32, bf16, fp16),
        `cpu_bf16` the user's VIMPAC_CPU_BF16 (video2token.precision)."""
        device = device or default_device()
        cache = Path(cache_dir).expanduser() if cache_dir is not None else CACHE_DIR.expanduser()
        enc_file = _fetch(path, cache) if _is_url(path) else Path(path).expanduser()
        dec_file = None
        if decoder_path is not None:
            dec_file = _fetch(decoder_path, cache) if _is_url(decoder_path) else Path(decoder_path).expanduser()
            if not dec_file.is_file():
                raise TokenizerError(f"DALL-E decoder file not found: {dec_file}")
        if not enc_file.exists():
            raise TokenizerError(f"DALL-E encoder not found: {enc_file} (expected encoder.pkl, a "
                                 f"directory containing it, or a directory made by `convert`)")
        common = dict(device=device, precision=precision, batch_size=batch_size, cpu_bf16=cpu_bf16)
        if enc_file.is_dir() and (enc_file / "config.json").is_file():
            return cls._load_converted(enc_file, dec_file, **common)
        if enc_file.is_dir():
            if not (enc_file / "encoder.pkl").is_file():
                raise TokenizerError(f"{enc_file}: directory has neither encoder.pkl nor config.json "
                                     f"(+ encoder.safetensors)")
            if dec_file is None and (enc_file / "decoder.pkl").is_file():
                dec_file = enc_file / "decoder.pkl"
            enc_file = enc_file / "encoder.pkl"
        encoder = _load_pickled(enc_file, "Encoder")
        decoder = None if dec_file is None else _load_pickled(dec_file, "Decoder")
        return cls(encoder, decoder=decoder, path=str(enc_file), sha256=sha256_file(enc_file),
                   decoder_path=None if dec_file is None else str(dec_file),
                   decoder_sha256=None if dec_file is None else sha256_file(dec_file), **common)

    @classmethod
    def _load_converted(cls, directory: Path, dec_file: Path | None, **common: Any) -> "DalleTokenizer":
        from dall_e import Decoder, Encoder
        cfg_file = directory / "config.json"
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{cfg_file}: not valid JSON (line {e.lineno}): {e.msg}") from e
        if cfg.get("format") != CONVERTED_FORMAT:
            raise TokenizerError(f"{cfg_file}: key 'format' is {cfg.get('format')!r}, expected {CONVERTED_FORMAT!r}")
        encoder = _build_from_safetensors(Encoder, _require(cfg, "encoder", cfg_file), ENCODER_HPARAMS,
                                          directory / "encoder.safetensors", cfg_file, "encoder")
        decoder = None
        if dec_file is not None:
            decoder = _load_pickled(dec_file, "Decoder")
        elif cfg.get("decoder") is not None:
            dec_file = directory / "decoder.safetensors"
            decoder = _build_from_safetensors(Decoder, cfg["decoder"], DECODER_HPARAMS, dec_file, cfg_file, "decoder")
        enc_file = directory / "encoder.safetensors"
        return cls(encoder, decoder=decoder, path=str(directory), sha256=sha256_file(enc_file),
                   decoder_path=None if dec_file is None else str(dec_file),
                   decoder_sha256=None if dec_file is None else sha256_file(dec_file),
                   extra={"source": cfg.get("source", {})}, **common)

    # --- the Tokenizer interface --------------------------------------------------------

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, H, W, 3) -> int64 codes (N, H/8, W/8)."""
        self.check_frames(frames)
        n, h, w, _ = frames.shape
        codes = np.empty((n, h // DOWNSAMPLE, w // DOWNSAMPLE), dtype=np.int64)
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                x = self._map_pixels(frames[s:s + self.batch_size])
                codes[s:s + self.batch_size] = self._encode_batch(x).cpu().numpy()
        return codes

    def encoder_logits(self, frames: np.ndarray) -> torch.Tensor:
        """The package's fp32 forward: uint8 frames (N, H, W, 3) -> logits (N, V, H/8, W/8)."""
        self.check_frames(frames)
        with torch.inference_mode():
            return self.encoder(self._map_pixels(frames))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes (N, h, w) -> uint8 frames (N, 8h, 8w, 3), as the dall-e usage notebook."""
        from dall_e import unmap_pixels
        if self.decoder is None:
            return super().decode(codes)
        codes = np.asarray(codes)
        if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"dalle: expected integer codes of shape (N, h, w), got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"dalle: codes must be in [0, {self.vocab_size}), got [{codes.min()}, {codes.max()}]")
        n, h, w = codes.shape
        frames = np.empty((n, h * DOWNSAMPLE, w * DOWNSAMPLE, 3), dtype=np.uint8)
        blocks = self.decoder.blocks
        # The input conv of a one-hot map is a row lookup: no (N, 8192, h, w) one-hot tensor.
        table = blocks.input.w.detach()[:, :, 0, 0].t().float()  # (V, n_init)
        bias = blocks.input.b.detach().float()
        with torch.inference_mode():
            for s in range(0, n, self.batch_size):
                z = torch.from_numpy(codes[s:s + self.batch_size].astype(np.int64)).to(self.device)
                hid = (table[z] + bias).permute(0, 3, 1, 2)  # (B, n_init, h, w), channels-last layout
                with self.policy.autocast():
                    stats = blocks[1:](hid).float()  # (B, 2*3, H, W)
                rgb = unmap_pixels(torch.sigmoid(stats[:, :3]))  # (B, 3, H, W) in [0, 1]
                frames[s:s + self.batch_size] = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return frames

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "downsample": self.downsample,
                "path": self.path, "sha256": self.sha256, "decoder_path": self.decoder_path,
                "decoder_sha256": self.decoder_sha256, "precision": self.precision, **self.extra}

    # --- internals ----------------------------------------------------------------------

    def _map_pixels(self, frames: np.ndarray) -> torch.Tensor:
        from dall_e import map_pixels
        x = torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(self.device)  # copies read-only views
        # (B, H, W, 3) -> (B, 3, H, W) view: already channels-last in memory
        return map_pixels(x.permute(0, 3, 1, 2).float().div_(255))

    def _encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast_encoder.codes(x)


# ----------------------------------------------------------------------------- loading helpers

def _is_url(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def _fetch(url: str, cache_dir: Path) -> Path:
    """Download `url` once into `cache_dir` (temp file + rename, so no half files)."""
    name = Path(urlparse(url).path).name or "download.pkl"
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if target.is_file():
        return target
    import requests
    from tqdm import tqdm
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with requests.get(url, stream=True, timeout=60) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length", 0)) or None
            with atomic_path(str(target)) as tmp:
                with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
    except requests.RequestException as e:
        raise TokenizerError(f"could not download {url}: {e}") from e
    print(f"downloaded {url} -> {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def _load_pickled(path: Path, kind: Literal["Encoder", "Decoder"]) -> nn.Module:
    from dall_e import Decoder, Encoder
    expected = Encoder if kind == "Encoder" else Decoder
    if not path.is_file():
        raise TokenizerError(f"DALL-E {kind.lower()} file not found: {path}")
    obj = safe_torch_load(path)
    if not isinstance(obj, expected):
        raise TokenizerError(f"{path}: expected a pickled dall_e {kind}, found {type(obj).__module__}."
                             f"{type(obj).__qualname__}")
    return obj


def _require(cfg: dict[str, Any], key: str, cfg_file: Path) -> Any:
    if key not in cfg:
        raise TokenizerError(f"{cfg_file}: missing key {key!r}")
    return cfg[key]


def _build_from_safetensors(cls: type, hparams: dict[str, Any], names: tuple[str, ...], weights: Path,
                            cfg_file: Path, section: str) -> nn.Module:
    from safetensors.torch import load_file
    missing = [k for k in names if k not in hparams]
    if missing:
        raise TokenizerError(f"{cfg_file}: section {section!r} is missing keys {missing}")
    if not weights.is_file():
        raise TokenizerError(f"DALL-E {section} weights not found: {weights}")
    module = cls(**{k: int(hparams[k]) for k in names})
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"{weights}: does not match the {section} in {cfg_file}: {e}") from e
    return module


def convert(encoder: str | Path, out: str | Path, *, decoder: str | Path | None = None) -> Path:
    """One-time conversion of pickles to `out/config.json` + `*.safetensors` (pickle-free)."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"format": CONVERTED_FORMAT, "version": 1, "decoder": None, "source": {}}
    parts = [("encoder", Path(encoder), "Encoder", ENCODER_HPARAMS)]
    if decoder is not None:
        parts.append(("decoder", Path(decoder), "Decoder", DECODER_HPARAMS))
    for section, src, kind, names in parts:
        module = _load_pickled(src, kind)
        cfg[section] = {k: int(getattr(module, k)) for k in names}
        cfg["source"][f"{section}_sha256"] = sha256_file(src)
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        with atomic_path(str(out / f"{section}.safetensors")) as tmp:
            save_file(state, tmp)
    atomic_write_text(str(out / "config.json"), json.dumps(cfg, indent=2) + "\n")
    print(f"converted {encoder}{' + ' + str(decoder) if decoder else ''} -> {out} "
          f"(config.json, {', '.join(s + '.safetensors' for s, *_ in parts)})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m video2token.tokenizers.dalle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="pickles -> safetensors + config.json (loads through the restricted unpickler)")
    conv.add_argument("--encoder", required=True, help="encoder.pkl")
    conv.add_argument("--decoder", default=None, help="decoder.pkl (optional)")
    conv.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    if args.command == "convert":
        convert(args.encoder, args.out, decoder=args.decoder)


if __name__ == "__main__":
    main()
