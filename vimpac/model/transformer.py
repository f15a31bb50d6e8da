"""The VIMPAC spatio-temporal token transformer (Tan et al., 2021, arXiv 2106.11250).

Read top to bottom: code + positional embeddings -> layers of factorised attention blocks
(layout string, e.g. "T,H|W") and an MLP -> heads (masked-token, contrastive, classification).

Shapes: `codes` (B, T, h, w) long; tokens are flattened in (T, h, w) order to N = T*h*w;
hidden states `tok` (B, N, D) and the [CLS] vector `cls` (B, D) travel separately.

[CLS] (paper section 3.2): before each attention block, [CLS] is copied to every row that
block attends over (a row = the tokens along the attended axes, e.g. one pixel's T frames),
each copy attends over [CLS, row], and the copies' outputs are averaged back into one
vector. Rows are folded into the batch dimension, so one SDPA call serves all rows. Training
on CPU with short rows (every part's rows up to CPU_MATH_MAX_LEN long, no attention dropout),
a block's parts run in `row_attention.ShortRowAttention` instead: the same sums in fp32,
with a hand-written backward that skips autograd's copies.

[PAD] frames (clips shorter than T) never act as keys for valid tokens: blocks that attend
over T get a key mask; rows of spatial blocks that lie inside a [PAD] frame hold only [PAD]
tokens, so their [CLS] copies are left out of the average. A clip with trailing [PAD]
frames therefore gives the same [CLS] output as the shorter clip alone (eval mode).

`python -m vimpac.modeling --config small --vocab-size 8192` prints parameter counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from vimpac.model.config import ModelConfig
from vimpac.model.dropout import dropout, residual_dropout
from vimpac.model.masked import IGNORE_INDEX, MaskedTargets
from vimpac.model.row_attention import ShortRowAttention, average_cls_copies, pad_terms, part_geometry

@dataclass
class PadInfo:
    """Which frames hold real codes; None everywhere when the batch has no [PAD] frame."""

    frame_valid: torch.Tensor  # (B, T) bool


# ----------------------------------------------------------------------------- embeddings

class _PositionalTables(nn.Module):
    """Positional tables of a (T, h, w) grid; they keep their axes (T, h, w, D) so that
    pos_embed.resample_pos_embed can interpolate them. [CLS] gets no position."""

    def _make_tables(self, *, hid_dim: int, clip_len: int, grid_h: int, grid_w: int, pos_emb: str) -> None:
        self.pos_emb = pos_emb
        if pos_emb == "default":
            self.pos_thw = nn.Parameter(torch.zeros(clip_len, grid_h, grid_w, hid_dim))
        elif pos_emb == "temporal_separation":
            self.pos_t = nn.Parameter(torch.zeros(clip_len, hid_dim))
            self.pos_hw = nn.Parameter(torch.zeros(grid_h, grid_w, hid_dim))
        elif pos_emb == "hw_separation":
            self.pos_t = nn.Parameter(torch.zeros(clip_len, hid_dim))
            self.pos_h = nn.Parameter(torch.zeros(grid_h, hid_dim))
            self.pos_w = nn.Parameter(torch.zeros(grid_w, hid_dim))
        else:
            raise ValueError(f"unknown pos_emb {pos_emb!r}")

    def positions(self, t: int) -> torch.Tensor:
        """(t, h, w, D) positional embedding for the first t frames."""
        if self.pos_emb == "default":
            return self.pos_thw[:t]
        if self.pos_emb == "temporal_separation":
            return self.pos_t[:t, None, None] + self.pos_hw[None]
        return self.pos_t[:t, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]

    def _finish(self, tok: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tok (B, T, h, w, D) + positions, cls (B, D) -> LayerNorm + dropout -> (B, N, D), (B, D)."""
        b, t = tok.shape[:2]
        tok = tok + self.positions(t)
        tok = dropout(self.norm(tok.reshape(b, -1, tok.shape[-1])), self.dropout, self.training)  # (B, N, D)
        cls = dropout(self.norm(cls), self.dropout, self.training)  # (B, D)
        return tok, cls


class VideoTokenEmbedding(_PositionalTables):
    """Code embedding + positional embedding, LayerNorm (optional), dropout. [CLS] is a row of the code table."""

    def __init__(self, *, num_embeddings: int, hid_dim: int, clip_len: int, grid_h: int, grid_w: int,
                 pos_emb: str, dropout: float, layer_norm_eps: float, norm: bool = True) -> None:
        super().__init__()
        self.code = nn.Embedding(num_embeddings, hid_dim)
        self._make_tables(hid_dim=hid_dim, clip_len=clip_len, grid_h=grid_h, grid_w=grid_w, pos_emb=pos_emb)
        self.norm = nn.LayerNorm(hid_dim, eps=layer_norm_eps) if norm else nn.Identity()
        self.dropout = dropout

    def forward(self, codes: torch.Tensor, cls_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """codes (B, T, h, w) long ([MASK] / [PAD] in place) -> tok (B, N, D), cls (B, D)."""
        return self._finish(self.code(codes), self.code.weight[cls_id].expand(codes.shape[0], -1))


#: pixels in [0, 255] are mapped to [-1, 1] inside the patch embedding (the loader sends uint8)
PIXEL_SCALE = 2.0 / 255.0


class VideoPatchEmbedding(_PositionalTables):
    """BEVT-style pixel input (Wang et al., CVPR 2022): each frame cut into patch x patch pixel squares
    aligned with the tokenizer's stride (so patch (t, i, j) has code (t, i, j) as its target), a linear
    projection of each patch, a learned [MASK] embedding in place of masked patches (BEiT), a learned
    [CLS]; then the same positional tables, LayerNorm and dropout as the token embedding."""

    def __init__(self, *, patch_size: int, hid_dim: int, clip_len: int, grid_h: int, grid_w: int,
                 pos_emb: str, dropout: float, layer_norm_eps: float, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(3 * patch_size * patch_size, hid_dim)
        self.mask_token = nn.Parameter(torch.zeros(hid_dim))
        self.cls_token = nn.Parameter(torch.zeros(hid_dim))
        self._make_tables(hid_dim=hid_dim, clip_len=clip_len, grid_h=grid_h, grid_w=grid_w, pos_emb=pos_emb)
        self.norm = nn.LayerNorm(hid_dim, eps=layer_norm_eps) if norm else nn.Identity()
        self.dropout = dropout

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, H, W, 3) uint8 -> patches (B, T, h, w, p*p*3) in [-1, 1], in the proj's dtype."""
        b, t, hh, ww, c = frames.shape
        p = self.patch_size
        x = frames.reshape(b, t, hh // p, p, ww // p, p, c).permute(0, 1, 2, 4, 3, 5, 6)  # (B, T, h, w, p, p, 3)
        x = x.reshape(b, t, hh // p, ww // p, p * p * c)
        return x.to(self.proj.weight.dtype).mul_(PIXEL_SCALE).sub_(1.0)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, H, W, 3) uint8, mask (B, T, h, w) bool or None -> tok (B, N, D), cls (B, D)."""
        tok = self.proj(self.patches(frames))  # (B, T, h, w, D)
        if mask is not None:
            tok = torch.where(mask[..., None], self.mask_token.to(tok.dtype), tok)
        return self._finish(tok, self.cls_token.expand(frames.shape[0], -1))


# ----------------------------------------------------------------------------- attention

def _split_heads(heads: int, parts: int) -> list[int]:
    """Heads per parallel part, as even as possible (8 heads over 3 parts -> 3, 3, 2)."""
    return [heads // parts + (1 if i < heads % parts else 0) for i in range(parts)]


class FactorizedAttention(nn.Module):
    """One attention block: parallel parts over axis sets (e.g. H|W), heads split between parts."""

    def __init__(self, *, hid_dim: int, heads: int, head_dim: int, parts: tuple[str, ...],
                 attn_dropout: float) -> None:
        super().__init__()
        self.parts = parts
        self.head_dim = head_dim
        self.heads = heads
        self.part_heads = _split_heads(heads, len(parts))
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hid_dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, hid_dim)

    def forward(self, tok: torch.Tensor, cls: torch.Tensor, grid: tuple[int, int, int],
                pad: PadInfo | None) -> tuple[torch.Tensor, torch.Tensor]:
        b = tok.shape[0]
        t, h, w = grid
        dropout_p = self.attn_dropout if self.training else 0.0
        qkv_tok, qkv_cls = self.qkv(tok), self.qkv(cls)
        if dropout_p == 0.0 and self._short_rows(qkv_tok, grid):
            out_tok, out_cls = ShortRowAttention.apply(qkv_tok, qkv_cls, grid, self.parts, tuple(self.part_heads),
                                                       self.head_dim, None if pad is None else pad.frame_valid)
            return self.proj(out_tok), self.proj(out_cls)
        qkv_tok = qkv_tok.view(b, t, h, w, 3, self.heads, self.head_dim)
        qkv_cls = qkv_cls.view(b, 3, self.heads, self.head_dim)
        tok_outs, cls_outs = [], []
        # split (not slicing) so the backward is one cat instead of zero-filled slice gradients
        for axes, q_t, q_c in zip(self.parts, qkv_tok.split(self.part_heads, dim=-2),
                                  qkv_cls.split(self.part_heads, dim=-2)):
            out_t, out_c = _row_attention(q_t, q_c, axes, pad, dropout_p)
            tok_outs.append(out_t)
            cls_outs.append(out_c)
        # (B, T, h, w, heads, hd) -> (B, N, heads*hd): concatenating the parts' heads
        out_tok = (torch.cat(tok_outs, dim=-2) if len(tok_outs) > 1 else tok_outs[0].contiguous()).view(b, t * h * w, -1)
        out_cls = torch.cat(cls_outs, dim=1).reshape(b, -1)
        return self.proj(out_tok), self.proj(out_cls)

    def _short_rows(self, qkv_tok: torch.Tensor, grid: tuple[int, int, int]) -> bool:
        """Training on CPU and every part's rows ([CLS] included) short: `ShortRowAttention` serves the block."""
        longest = max(part_geometry(axes, grid, slice(0)).length for axes in self.parts)
        return _cpu_short_rows(qkv_tok, 1 + longest)


#: On CPU, rows up to this length (with [CLS]) train faster through the math path (fp32
#: matmul-softmax, `_math_attention`; SDPA's math backend when attention dropout is on): the
#: fused CPU kernel's backward is 2-10x slower than the math path for short bf16 rows
#: (measured on 2 AMX cores; the crossover lies between 129 and 257); in fp32 the two are equal.
CPU_MATH_MAX_LEN = 192


def _cpu_short_rows(x: torch.Tensor, seq_len: int) -> bool:
    """Training on CPU with rows short enough for the math path (see CPU_MATH_MAX_LEN)."""
    return x.device.type == "cpu" and seq_len <= CPU_MATH_MAX_LEN and torch.is_grad_enabled() and x.requires_grad


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None,
          dropout_p: float) -> torch.Tensor:
    """scaled_dot_product_attention, pinned to the math backend for short rows when training on CPU."""
    if _cpu_short_rows(q, q.shape[-2]):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v written out, in q's dtype: SDPA's math backend without its extra passes.

    The math backend scales q and k by hd^-1/4 each (two passes over q and k, forward and backward)
    and, on CPU, converts bf16 inputs to fp32 and back; here the short (1+L)-wide scores are
    scaled once, and the caller hands in fp32 q, k, v made by the [CLS] concatenation itself.
    attn_mask: bool, True where a key may be attended (broadcast like SDPA's).
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # autocast would run the matmuls in bf16
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (..., 1+L, 1+L)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return torch.matmul(scores.softmax(dim=-1), v)


def _row_attention(qkv_tok: torch.Tensor, qkv_cls: torch.Tensor, axes: str, pad: PadInfo | None,
                   dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention along `axes` with [CLS] prepended to every row.

    qkv_tok (B, T, h, w, 3, g, hd), qkv_cls (B, 3, g, hd) -> tokens (B, T, h, w, g, hd), cls (B, g, hd).
    """
    b, t, h, w, _, g, hd = qkv_tok.shape
    geo = part_geometry(axes, (t, h, w), slice(0, g))
    oth, att, oth_sizes, att_sizes = geo.oth, geo.att, geo.oth_sizes, geo.att_sizes
    rows, length = geo.rows, geo.length
    # (B, T, h, w, 3, g, hd) -> (3, B, *rows, g, *att, hd)
    x = qkv_tok.permute(4, 0, *oth, 5, *att, 6)
    if len(att) > 1:
        x = x.reshape(3, b, *oth_sizes, g, length, hd)
    c = qkv_cls.permute(1, 0, 2, 3).reshape(3, b, *([1] * len(oth)), g, 1, hd).expand(3, b, *oth_sizes, g, 1, hd)
    # training on CPU, short rows: attention written out in fp32 (what SDPA's math backend computes
    # for bf16 on CPU); an fp32 [CLS] makes the concatenation convert the rows in the same pass
    math_path = dropout_p == 0.0 and _cpu_short_rows(qkv_tok, 1 + length)
    if math_path and c.dtype in (torch.bfloat16, torch.float16):
        c = c.float()
    seq = torch.cat([c, x], dim=-2).view(3, b * rows, g, 1 + length, hd)  # rows folded into batch
    q, k, v = seq.unbind(0)

    attn_mask, row_weight = pad_terms(None if pad is None else pad.frame_valid, geo, axes, b, (t, h, w),
                                      qkv_tok.dtype)

    if math_path:
        out = _math_attention(q, k, v, attn_mask).to(qkv_tok.dtype)
    else:
        out = _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    out = out.view(b, rows, g, 1 + length, hd)
    cls_out = average_cls_copies(out[:, :, :, 0], row_weight)  # (B, rows, g, hd) -> (B, g, hd)
    # (B, rows, g, L, hd) -> (B, *rows, g, *att, hd) -> (B, T, h, w, g, hd), all views: the
    # caller's concatenation of the parts' heads is the only copy
    tok_out = out[:, :, :, 1:].view(b, *oth_sizes, g, *att_sizes, hd)
    inv = [0] * 6
    for src, dst in enumerate([0, *oth, 4, *att, 5]):
        inv[dst] = src
    return tok_out.permute(*inv), cls_out


class Mlp(nn.Module):
    def __init__(self, *, hid_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hid_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hid_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VimpacLayer(nn.Module):
    """Attention blocks from the layout (e.g. T then H|W), then an MLP; each with residual + LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.dropout = cfg.dropout
        self.attn = nn.ModuleList(
            FactorizedAttention(hid_dim=cfg.hid_dim, heads=cfg.heads, head_dim=cfg.head_dim, parts=parts,
                                attn_dropout=cfg.attn_dropout) for parts in cfg.blocks)
        self.attn_norm = nn.ModuleList(nn.LayerNorm(cfg.hid_dim, eps=cfg.layer_norm_eps) for _ in cfg.blocks)
        self.mlp = Mlp(hid_dim=cfg.hid_dim, mlp_dim=cfg.mlp_dim)
        self.mlp_norm = nn.LayerNorm(cfg.hid_dim, eps=cfg.layer_norm_eps)

    def _residual(self, x: torch.Tensor, delta: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        x = residual_dropout(x, delta, self.dropout, self.training)
        return x if self.pre_ln else norm(x)

    def forward(self, tok: torch.Tensor, cls: torch.Tensor, grid: tuple[int, int, int],
                pad: PadInfo | None) -> tuple[torch.Tensor, torch.Tensor]:
        for attn, norm in zip(self.attn, self.attn_norm):
            if self.pre_ln:
                d_tok, d_cls = attn(norm(tok), norm(cls), grid, pad)
            else:
                d_tok, d_cls = attn(tok, cls, grid, pad)
            tok, cls = self._residual(tok, d_tok, norm), self._residual(cls, d_cls, norm)
        if self.pre_ln:
            tok = residual_dropout(tok, self.mlp(self.mlp_norm(tok)), self.dropout, self.training)
            cls = residual_dropout(cls, self.mlp(self.mlp_norm(cls)), self.dropout, self.training)
        else:
            tok = self._residual(tok, self.mlp(tok), self.mlp_norm)
            cls = self._residual(cls, self.mlp(cls), self.mlp_norm)
        return tok, cls


# ----------------------------------------------------------------------------- backbone

@dataclass
class BackboneOutput:
    hidden: torch.Tensor        # (B, N, D), N = T*h*w in (T, h, w) order
    cls: torch.Tensor           # (B, D)
    frame_valid: torch.Tensor | None  # (B, T) bool; None when the batch has no [PAD] frame


class VimpacBackbone(nn.Module):
    """Embeddings + layers. Accepts clips of up to `cfg.clip_len` frames on a (grid_h, grid_w) code map."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.special = cfg.special_tokens
        self.pixels = cfg.input == "pixels"
        grid = dict(hid_dim=cfg.hid_dim, clip_len=cfg.clip_len, grid_h=cfg.grid_h, grid_w=cfg.grid_w,
                    pos_emb=cfg.pos_emb, dropout=cfg.dropout, layer_norm_eps=cfg.layer_norm_eps, norm=cfg.embed_norm)
        self.embeddings: VideoTokenEmbedding | VideoPatchEmbedding = (
            VideoPatchEmbedding(patch_size=cfg.patch_size, **grid) if self.pixels
            else VideoTokenEmbedding(num_embeddings=self.special.num_embeddings, **grid))
        self.layers = nn.ModuleList(VimpacLayer(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.hid_dim, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        self.apply(lambda m: _init_weights(m, cfg.init_std))
        for name, p in self.embeddings.named_parameters():
            if name.startswith("pos_") or name in ("mask_token", "cls_token"):
                nn.init.normal_(p, std=cfg.init_std)

    def check_codes(self, codes: torch.Tensor) -> PadInfo | None:
        """Validate `codes` (B, T, h, w) and find [PAD] frames (one host sync for all checks)."""
        cfg = self.cfg
        if not isinstance(codes, torch.Tensor) or codes.dim() != 4 or codes.dtype != torch.long:
            raise ValueError(f"codes must be a long tensor (B, T, h, w), got "
                             f"{getattr(codes, 'dtype', type(codes))} {tuple(getattr(codes, 'shape', ()))}")
        _, t, h, w = codes.shape
        if t > cfg.clip_len or (h, w) != (cfg.grid_h, cfg.grid_w):
            raise ValueError(f"codes of shape (T={t}, h={h}, w={w}) do not fit the model's (clip_len={cfg.clip_len}, "
                             f"grid={cfg.grid_h}x{cfg.grid_w}); resample the positional embeddings "
                             f"(vimpac.model.pos_embed, --different-shape) to change the input shape")
        is_pad = codes == self.special.pad
        frame_pad = is_pad.all(dim=(2, 3))  # (B, T)
        partial = is_pad.any(dim=(2, 3)) & ~frame_pad
        lo, hi, n_partial, any_pad = torch.stack(
            [codes.min(), codes.max(), partial.sum(), frame_pad.sum()]).tolist()
        if lo < 0 or hi >= self.special.num_embeddings:
            raise ValueError(f"codes must be in [0, {self.special.num_embeddings}) (vocab {cfg.vocab_size} + special "
                             f"tokens), got values in [{lo}, {hi}]")
        if n_partial:
            raise ValueError(f"{n_partial} frame(s) are partly [PAD] (id {self.special.pad}); [PAD] must fill whole frames")
        return PadInfo(frame_valid=~frame_pad) if any_pad else None

    def check_frames(self, frames: torch.Tensor) -> None:
        """Validate pixel input (B, T, H, W, 3) against the model's grid (shapes only: no host sync)."""
        cfg, p = self.cfg, self.cfg.patch_size
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"a pixel model (input 'pixels') takes frames (B, T, H, W, 3), got "
                             f"{getattr(frames, 'dtype', type(frames))} {tuple(getattr(frames, 'shape', ()))}")
        _, t, hh, ww, _ = frames.shape
        if t > cfg.clip_len or (hh, ww) != (cfg.grid_h * p, cfg.grid_w * p):
            raise ValueError(f"frames of shape (T={t}, {hh}x{ww} px) do not fit the model's (clip_len={cfg.clip_len}, "
                             f"{cfg.grid_h * p}x{cfg.grid_w * p} px = {cfg.grid_h}x{cfg.grid_w} patches of {p} px); "
                             f"resample the positional embeddings (--different-shape) to change the input shape")

    def forward(self, inputs: torch.Tensor, *, mask: torch.Tensor | None = None,
                frame_valid: torch.Tensor | None | str = "auto") -> BackboneOutput:
        """inputs: codes (B, T, h, w) long with [MASK] / [PAD] in place (token model), or frames
        (B, T, H, W, 3) uint8 (pixel model; `mask` (B, T, h, w) bool puts the [MASK] embedding in place).

        frame_valid (B, T) bool: which frames hold video (False: [PAD]); None: every frame does. "auto":
        a token model reads it from the codes and validates them (one host sync), a pixel model takes
        every frame as valid. The trainer's loader passes it, so a training step never waits on the host.
        """
        if self.pixels:
            self.check_frames(inputs)
            pad = None if isinstance(frame_valid, str) or frame_valid is None else PadInfo(frame_valid)
            grid = (inputs.shape[1], self.cfg.grid_h, self.cfg.grid_w)
            tok, cls = self.embeddings(inputs, mask)
        else:
            if isinstance(frame_valid, str):
                pad = self.check_codes(inputs)
            else:
                pad = None if frame_valid is None else PadInfo(frame_valid)
            grid = tuple(inputs.shape[1:])
            tok, cls = self.embeddings(inputs, self.special.cls)
        for layer in self.layers:
            if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                tok, cls = checkpoint(layer, tok, cls, grid, pad, use_reentrant=False)
            else:
                tok, cls = layer(tok, cls, grid, pad)
        if self.final_norm is not None:
            tok, cls = self.final_norm(tok), self.final_norm(cls)
        return BackboneOutput(hidden=tok, cls=cls, frame_valid=None if pad is None else pad.frame_valid)


def _init_weights(module: nn.Module, std: float) -> None:
    """BERT init: N(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- heads

class MaskedTokenHead(nn.Module):
    """dense + GELU + LayerNorm, then a decoder over the codes + own bias. Token models tie the decoder to
    the code embedding (real codes only); pixel models have no code embedding and own `decoder`."""

    def __init__(self, *, hid_dim: int, vocab_size: int, layer_norm_eps: float, tied: bool = True) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.dense = nn.Linear(hid_dim, hid_dim)
        self.norm = nn.LayerNorm(hid_dim, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.decoder = None if tied else nn.Parameter(torch.zeros(vocab_size, hid_dim))

    def forward(self, hidden: torch.Tensor, code_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (M, D) at masked positions, code_embedding (num_embeddings, D) when tied -> logits (M, vocab)."""
        x = self.norm(F.gelu(self.dense(hidden)))
        weight = self.decoder if self.decoder is not None else code_embedding[: self.vocab_size]
        return F.linear(x, weight, self.bias)


class ContrastiveHead(nn.Module):
    """MLP with BatchNorm on [CLS] (SimCLR-style projector); `layers` Linear layers.

    last_bias: bias on the last Linear; bn_after_proj: a BatchNorm after it (SimCLR's option).
    """

    def __init__(self, *, in_dim: int, hid_dim: int, out_dim: int, layers: int, last_bias: bool = True,
                 bn_after_proj: bool = False) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hid_dim), nn.BatchNorm1d(hid_dim), nn.ReLU(inplace=True)]
            d = hid_dim
        mods.append(nn.Linear(d, out_dim, bias=last_bias))
        if bn_after_proj:
            mods.append(nn.BatchNorm1d(out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.net(cls)  # (B, out_dim); L2-normalised inside the loss


#: classifier weight inits: "zero" (the paper's and the original's), "normal" (N(0, init_std), BERT's classifier)
HEAD_INITS = ("zero", "normal")


class ClassificationHead(nn.Module):
    """Fine-tuning classifier on [CLS]: one linear layer, zero bias; weight zero (default) or N(0, init_std).

    A zero weight starts at uniform predictions and is the paper's choice. On a random or barely
    trained post-LN backbone it can stall: [CLS] hardly varies between videos (0.24% of its norm
    in the tests' 2-layer model), so Adam's first, sign-like steps give every class row +- the
    same mean-[CLS] direction, the backbone's gradient spans that one direction, and the final
    LayerNorm turns the one-dimensional feature into two points, merging two classes (README,
    fine-tuning). A normal weight gives each class its own direction from the first step.
    """

    def __init__(self, *, in_dim: int, num_classes: int, dropout: float = 0.0, init: str = "zero",
                 init_std: float = 0.02) -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"classifier init must be one of {HEAD_INITS}, got {init!r}")
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        if init == "zero":
            nn.init.zeros_(self.fc.weight)
        else:
            nn.init.normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(cls))  # (B, num_classes)


# ----------------------------------------------------------------------------- wrappers

@dataclass
class PretrainOutput:
    mp_loss: torch.Tensor      # () mean cross-entropy over masked positions (weighted when the targets are)
    mp_acc: torch.Tensor       # () accuracy over masked positions (no grad)
    cls_proj: torch.Tensor | None  # (B, nce_proj_out_dim) contrastive projection, not normalised (None: skipped)
    cls: torch.Tensor          # (B, D)
    hidden: torch.Tensor       # (B, N, D)
    num_masked: torch.Tensor   # () long: masked positions counted (padding entries of MaskedTargets are not)
    mp_correct: torch.Tensor   # () masked positions predicted right (no grad)


class VimpacForPretraining(nn.Module):
    """Backbone + masked-token head + contrastive head. InfoNCE stays outside (it needs the global batch)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = VimpacBackbone(cfg)
        self.mp_head = MaskedTokenHead(hid_dim=cfg.hid_dim, vocab_size=cfg.vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                                       tied=cfg.input == "tokens")
        self.cl_head = ContrastiveHead(in_dim=cfg.hid_dim, hid_dim=cfg.nce_proj_hid_dim, out_dim=cfg.nce_proj_out_dim,
                                       layers=cfg.nce_proj_layers, last_bias=cfg.nce_proj_bias,
                                       bn_after_proj=cfg.nce_bn_after_proj)
        self.mp_head.apply(lambda m: _init_weights(m, cfg.init_std))
        if self.mp_head.decoder is not None:
            nn.init.normal_(self.mp_head.decoder, std=cfg.init_std)
        self.cl_head.apply(lambda m: _init_weights(m, cfg.init_std))

    def _decoder_input(self) -> torch.Tensor | None:
        return None if self.backbone.pixels else self.backbone.embeddings.code.weight

    def masked_logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, N, D), mask (B, T, h, w) -> logits (M, vocab) at the M masked positions only."""
        picked = hidden[mask.reshape(mask.shape[0], -1)]  # (M, D): gather first, then project
        return self.mp_head(picked, self._decoder_input())

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor | None = None, *,
                masked: MaskedTargets | None = None, frame_valid: torch.Tensor | None | str = "auto",
                contrastive: bool = True) -> PretrainOutput:
        """inputs: codes_in (B, T, h, w) with [MASK]/[PAD] in place, or frames (B, T, H, W, 3) uint8 (pixel model);
        mask (B, T, h, w) bool; targets (B, T, h, w) codes. `masked` (the loader's MaskedTargets) replaces
        finding the masked positions here (a host sync); `frame_valid`: see VimpacBackbone.forward.
        contrastive=False skips the contrastive head (cls_proj None; its BatchNorm statistics untouched), e.g.
        for BEVT's image stream, which has masked prediction only."""
        from vimpac.model.losses import masked_token_loss

        grid_shape = inputs.shape[:4] if self.backbone.pixels else inputs.shape
        if mask.dtype != torch.bool or mask.shape[0] != inputs.shape[0] or mask.dim() != 4:
            raise ValueError(f"mask must be bool (B, T, h, w) for inputs {tuple(inputs.shape)}; got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if masked is None:
            if targets is None or targets.shape != mask.shape or (not self.backbone.pixels and mask.shape != grid_shape):
                raise ValueError(f"mask (bool) and targets must have the shape of codes_in {tuple(grid_shape)}; got "
                                 f"mask {mask.dtype} {tuple(mask.shape)}, targets "
                                 f"{None if targets is None else tuple(targets.shape)}")
            masked = MaskedTargets.from_mask(mask, targets)
        out = self.backbone(inputs, mask=mask if self.backbone.pixels else None, frame_valid=frame_valid)
        picked = out.hidden.reshape(-1, out.hidden.shape[-1]).index_select(0, masked.index)  # (M, D)
        logits = self.mp_head(picked, self._decoder_input())
        mp_loss, mp_acc = masked_token_loss(logits, masked.target, masked.weight)
        num_masked = (masked.target != IGNORE_INDEX).sum()
        cls_proj = self.cl_head(out.cls) if contrastive else None
        return PretrainOutput(mp_loss=mp_loss, mp_acc=mp_acc, cls_proj=cls_proj, cls=out.cls, hidden=out.hidden,
                              num_masked=num_masked, mp_correct=(mp_acc * num_masked).detach())


class VimpacForClassification(nn.Module):
    """Backbone + linear classifier on [CLS] (fine-tuning), zero-initialised unless head_init="normal"."""

    def __init__(self, cfg: ModelConfig, *, num_classes: int, head_dropout: float = 0.0,
                 head_init: str = "zero") -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = VimpacBackbone(cfg)
        self.head = ClassificationHead(in_dim=cfg.hid_dim, num_classes=num_classes, dropout=head_dropout,
                                       init=head_init, init_std=cfg.init_std)

    def forward(self, inputs: torch.Tensor, *, frame_valid: torch.Tensor | None | str = "auto") -> torch.Tensor:
        """codes (B, T, h, w) or frames (B, T, H, W, 3) (pixel model) -> logits (B, num_classes)."""
        return self.head(self.backbone(inputs, frame_valid=frame_valid).cls)


# ----------------------------------------------------------------------------- summary CLI

def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_table(model: VimpacForPretraining) -> list[tuple[str, int]]:
    """(part, parameter count) rows; the tied decoder weight is counted once, in the code embedding."""
    bb = model.backbone
    emb = bb.embeddings
    pos = sum(p.numel() for n, p in emb.named_parameters() if n.startswith("pos_"))
    inp = (("embeddings.patch (proj, [MASK], [CLS])", count_params(emb.proj) + emb.mask_token.numel()
            + emb.cls_token.numel()) if bb.pixels else ("embeddings.code", emb.code.weight.numel()))
    rows = [inp, ("embeddings.pos", pos), ("embeddings.norm", count_params(emb.norm)),
            ("layers.attention", sum(count_params(layer.attn) for layer in bb.layers)),
            ("layers.mlp", sum(count_params(layer.mlp) for layer in bb.layers)),
            ("layers.norms", sum(count_params(layer.attn_norm) + count_params(layer.mlp_norm) for layer in bb.layers)
             + (count_params(bb.final_norm) if bb.final_norm is not None else 0)),
            ("mp_head" + (" (own decoder)" if bb.pixels else " (decoder tied)"), count_params(model.mp_head)),
            ("cl_head", count_params(model.cl_head))]
    assert sum(n for _, n in rows) == count_params(model), "param table misses a part"
    return rows
