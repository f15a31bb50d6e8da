"""Naive reference for benchmarks/train_step.py: the VIMPAC Small model written the way the original code works.

Same sizes and layout as `vimpac.model.transformer` (post-LN, T then H|W blocks, [CLS] in every row), but:
explicit matmul-softmax attention, [CLS] concatenated into every row *before* the QKV
projection (so each copy is projected again), and masked-token logits for every token with the
loss taken through an ignore index. Benchmark-only: not part of the package.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


class NaiveAttention(nn.Module):
    """Parallel parts over single axes; heads split between the parts."""

    def __init__(self, dim: int, heads: int, head_dim: int, axes: tuple[str, ...]) -> None:
        super().__init__()
        self.axes, self.heads, self.head_dim = axes, heads, head_dim
        self.part_heads = [heads // len(axes) + (1 if i < heads % len(axes) else 0) for i in range(len(axes))]
        self.q = nn.Linear(dim, heads * head_dim)
        self.k = nn.Linear(dim, heads * head_dim)
        self.v = nn.Linear(dim, heads * head_dim)
        self.o = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, T, h, w, D), cls (B, D)
        tok_parts, cls_parts = [], []
        h0 = 0
        for axis, g in zip(self.axes, self.part_heads):
            dim = 1 + "THW".index(axis)
            rows = x.movedim(dim, 3)  # (B, a, b, L, D)
            b_, a, bb, length, d = rows.shape
            seq = torch.cat([cls[:, None, None, None, :].expand(b_, a, bb, 1, d), rows], dim=3)  # (B, a, b, 1+L, D)
            sl = slice(h0 * self.head_dim, (h0 + g) * self.head_dim)

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.unflatten(-1, (g, self.head_dim)).transpose(-2, -3)  # (B, a, b, g, 1+L, hd)

            q, k, v = (heads(F.linear(seq, lin.weight[sl], lin.bias[sl])) for lin in (self.q, self.k, self.v))
            att = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(-1)
            out = (att @ v).transpose(-2, -3).flatten(-2)  # (B, a, b, 1+L, g*hd)
            cls_parts.append(out[:, :, :, 0].mean(dim=(1, 2)))
            tok_parts.append(out[:, :, :, 1:].movedim(3, dim))
            h0 += g
        tok = self.o(torch.cat(tok_parts, -1))
        return tok, self.o(torch.cat(cls_parts, -1))


class NaiveLayer(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int, blocks, dropout: float) -> None:
        super().__init__()
        self.attn = nn.ModuleList(NaiveAttention(dim, heads, head_dim, parts) for parts in blocks)
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-12) for _ in blocks)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for attn, norm in zip(self.attn, self.norms):
            dx, dc = attn(x, cls)
            x, cls = norm(x + self.drop(dx)), norm(cls + self.drop(dc))
        x = self.mlp_norm(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))
        cls = self.mlp_norm(cls + self.drop(self.fc2(F.gelu(self.fc1(cls)))))
        return x, cls


class NaivePretrainModel(nn.Module):
    """Embeddings (T + H + W positions), layers, MP head over all tokens, CL head. Sizes from a ModelConfig."""

    def __init__(self, cfg) -> None:
        super().__init__()
        st = cfg.special_tokens
        d = cfg.hid_dim
        self.cls_id, self.vocab = st.cls, cfg.vocab_size
        self.emb = nn.Embedding(st.num_embeddings, d)
        self.pos_t = nn.Parameter(torch.randn(cfg.clip_len, d) * 0.02)
        self.pos_h = nn.Parameter(torch.randn(cfg.grid_h, d) * 0.02)
        self.pos_w = nn.Parameter(torch.randn(cfg.grid_w, d) * 0.02)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = [tuple(p) for p in cfg.blocks]
        if any(len(p) != 1 for parts in blocks for p in parts):
            raise ValueError("the naive reference supports single-axis parts only (e.g. 'T,H|W')")
        self.layers = nn.ModuleList(NaiveLayer(d, cfg.heads, cfg.head_dim, cfg.mlp_dim, [tuple(p[0] for p in parts)
                                                                                      for parts in blocks], cfg.dropout)
                                    for _ in range(cfg.layers))
        self.mp_dense, self.mp_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
        self.mp_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        layers = [nn.Linear(d, cfg.nce_proj_hid_dim), nn.BatchNorm1d(cfg.nce_proj_hid_dim), nn.ReLU()]
        self.cl_head = nn.Sequential(*layers, nn.Linear(cfg.nce_proj_hid_dim, cfg.nce_proj_out_dim))

    def forward(self, codes_in: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor):
        b, t, h, w = codes_in.shape
        x = self.emb(codes_in) + self.pos_t[:t, None, None] + self.pos_h[:, None] + self.pos_w
        x = self.drop(self.norm(x))  # (B, T, h, w, D)
        cls = self.drop(self.norm(self.emb.weight[self.cls_id].expand(b, -1)))
        for layer in self.layers:
            x, cls = layer(x, cls)
        # logits for every token, loss through an ignore index (the original's MP head)
        y = self.mp_norm(F.gelu(self.mp_dense(x)))
        logits = F.linear(y, self.emb.weight[: self.vocab], self.mp_bias)  # (B, T, h, w, V)
        labels = torch.where(mask, targets, torch.full_like(targets, IGNORE))
        mp_loss = F.cross_entropy(logits.reshape(-1, self.vocab).float(), labels.reshape(-1), ignore_index=IGNORE)
        return mp_loss, self.cl_head(cls)
