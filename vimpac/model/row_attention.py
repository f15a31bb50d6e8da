"""Short-row attention for training on CPU: every part of a block in one autograd Function.

What it computes is `transformer._row_attention` for each part of a block (e.g. H|W): [CLS]
joins every row along the part's axes, each copy attends over [CLS, row], the copies' outputs
are averaged back into one vector. The scores, softmax and weighted sums run in fp32 (what
SDPA's math backend does for bf16 on CPU), whatever the dtype of the qkv projection.

Why a Function: written with autograd ops, a block's attention spends more time moving data
than multiplying. Per part, autograd makes fp32 copies of q, k, v with [CLS] prepended, converts
the output back, concatenates the parts' heads, and in the backward converts the incoming
gradient, stacks dq, dk, dv, undoes the permutation and concatenates the parts again, each a
full pass over the block's activations. Here the forward reads q, k, v once into the fp32 row
layout and writes each part's output straight into the block's output; the backward reads
the output gradient once per part and writes dq, dk, dv straight into the qkv gradient. Both
directions use the same six batched matmuls as autograd would.

Rows are short here (a clip's T frames, one row of the code map): at most
`transformer.CPU_MATH_MAX_LEN` keys with [CLS]. Attention dropout is not supported (the
caller takes SDPA for it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_AXIS_INDEX = {"T": 0, "H": 1, "W": 2}


@dataclass(frozen=True)
class PartGeometry:
    """How one part's rows sit in the (B, T, h, w) token grid."""

    oth: tuple[int, ...]        # row dims of (B, T, h, w), e.g. (2, 3) for T
    att: tuple[int, ...]        # attended dims, e.g. (1,)
    oth_sizes: tuple[int, ...]
    att_sizes: tuple[int, ...]
    heads: slice                # this part's heads among the block's

    @property
    def rows(self) -> int:
        return math.prod(self.oth_sizes)

    @property
    def length(self) -> int:
        return math.prod(self.att_sizes)

    def token_view(self, x: torch.Tensor, lead: int) -> torch.Tensor:
        """(*lead dims, B, T, h, w, g, hd) -> (*lead, B, *rows, g, *att, hd), a view."""
        dims = list(range(lead))
        return x.permute(*dims, *(lead + d for d in (0, *self.oth)), lead + 4, *(lead + d for d in self.att),
                         lead + 5)

    def row_view(self, seq: torch.Tensor, lead: int, b: int, g: int, hd: int) -> torch.Tensor:
        """The token positions (1:) of a (*lead, B*rows, g, 1+L, hd) tensor as (*lead, B, *rows, g, *att, hd)."""
        shape = seq.shape[:lead]
        return seq[..., 1:, :].view(*shape, b, *self.oth_sizes, g, *self.att_sizes, hd)


def part_geometry(axes: str, grid: tuple[int, int, int], heads: slice) -> PartGeometry:
    att = tuple(1 + _AXIS_INDEX[a] for a in axes)
    oth = tuple(d for d in (1, 2, 3) if d not in att)
    return PartGeometry(oth=oth, att=att, oth_sizes=tuple(grid[d - 1] for d in oth),
                        att_sizes=tuple(grid[d - 1] for d in att), heads=heads)


def pad_terms(frame_valid: torch.Tensor | None, geo: PartGeometry, axes: str, b: int, grid: tuple[int, int, int],
              dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What [PAD] frames change for one part: (key mask (B*rows, 1, 1, 1+L) bool, True where a key
    may be attended, or None; [CLS]-copy weights (B, rows) in `dtype`, or None)."""
    if frame_valid is None:
        return None, None
    t, h, w = grid
    tok_valid = frame_valid[:, :, None, None].expand(b, t, h, w).permute(0, *geo.oth, *geo.att)
    tok_valid = tok_valid.reshape(b, geo.rows, geo.length)  # (B, rows, L)
    if "T" in axes:
        # [PAD] frames are never keys; the [CLS] copy always is, so no row is fully masked.
        key_valid = torch.cat([tok_valid.new_ones(b, geo.rows, 1), tok_valid], dim=-1)
        return key_valid.view(b * geo.rows, 1, 1, 1 + geo.length), None
    # Rows inside a [PAD] frame see only [PAD] + [CLS]: their [CLS] copies are left out of the average.
    return None, tok_valid[..., 0].to(dtype)


def average_cls_copies(cls_rows: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    """The [CLS] copies' outputs (B, rows, g, hd) -> (B, g, hd): their mean, or weighted by `row_weight` (B, rows)."""
    if row_weight is None:
        return cls_rows.mean(dim=1)
    wsum = row_weight.sum(dim=1).clamp_min(1.0)  # a clip of only [PAD] frames: average nothing
    return torch.einsum("brgd,br->bgd", cls_rows, row_weight) / wsum[:, None, None]


class ShortRowAttention(torch.autograd.Function):
    """qkv_tok (B, N, 3*heads*hd), qkv_cls (B, 3*heads*hd) -> out_tok (B, N, heads*hd), out_cls (B, heads*hd).

    The last dims are laid out as the qkv Linear writes them: (3, heads, hd). Outputs have the
    dtypes of the inputs; everything in between is fp32 (fp64 for fp64 inputs).
    """

    @staticmethod
    def forward(ctx, qkv_tok: torch.Tensor, qkv_cls: torch.Tensor, grid: tuple[int, int, int],
                parts: tuple[str, ...], part_heads: tuple[int, ...], head_dim: int,
                frame_valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, width = qkv_tok.shape
        heads = width // (3 * head_dim)
        t, h, w = grid
        hd = head_dim
        x = qkv_tok.view(b, t, h, w, 3, heads, hd).permute(4, 0, 1, 2, 3, 5, 6)  # (3, B, T, h, w, heads, hd)
        c = qkv_cls.view(b, 3, heads, hd)
        out = qkv_tok.new_empty(b, t, h, w, heads, hd)
        scale = hd ** -0.5
        work = torch.promote_types(qkv_tok.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs (tests)
        out_cls = torch.empty(b, heads, hd, dtype=work, device=qkv_tok.device)
        saved, meta = [], []
        h0 = 0
        with torch.autocast(device_type=qkv_tok.device.type, enabled=False):
            for axes, g in zip(parts, part_heads):
                geo = part_geometry(axes, grid, slice(h0, h0 + g))
                rows, length = geo.rows, geo.length
                mask, row_weight = pad_terms(frame_valid, geo, axes, b, grid, work)
                # q, k, v in three buffers: each stays under glibc's mmap threshold (32 MB) for the
                # Small model's T rows, so it is reused from the heap instead of page-faulted in anew
                q, k, v = (torch.empty(b * rows, g, 1 + length, hd, dtype=work, device=qkv_tok.device) for _ in range(3))
                for i, dst in enumerate((q, k, v)):
                    geo.row_view(dst, 0, b, g, hd).copy_(geo.token_view(x[i, ..., geo.heads, :], 0))
                    dst[:, :, 0].view(b, rows, g, hd).copy_(c[:, i, geo.heads][:, None])
                p = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # (B*rows, g, 1+L, 1+L)
                if mask is not None:
                    p.masked_fill_(~mask, float("-inf"))
                p = p.softmax(dim=-1)
                o = torch.matmul(p, v)                                 # (B*rows, g, 1+L, hd)
                geo.token_view(out[..., geo.heads, :], 0).copy_(geo.row_view(o, 0, b, g, hd))
                out_cls[:, geo.heads] = average_cls_copies(o[:, :, 0].view(b, rows, g, hd), row_weight)
                saved += [q, k, v, p]
                meta.append((geo, row_weight))
                h0 += g
        ctx.save_for_backward(*saved)
        ctx.meta = meta
        ctx.dims = (b, t, h, w, heads, hd, scale)
        ctx.dtypes = (qkv_tok.dtype, qkv_cls.dtype)
        return out.view(b, n, heads * hd), out_cls.view(b, heads * hd).to(qkv_cls.dtype)

    @staticmethod
    def backward(ctx, g_out: torch.Tensor, g_cls: torch.Tensor):  # noqa: ANN205 (autograd's contract)
        b, t, h, w, heads, hd, scale = ctx.dims
        tok_dtype, cls_dtype = ctx.dtypes
        saved = ctx.saved_tensors
        dev = g_out.device
        g7 = g_out.reshape(b, t, h, w, heads, hd)
        work = saved[0].dtype
        gc = g_cls.reshape(b, heads, hd).to(work)
        grad_tok = torch.empty(b, t, h, w, 3, heads, hd, dtype=tok_dtype, device=dev)
        grad_cls = torch.empty(b, 3, heads, hd, dtype=work, device=dev)
        gx = grad_tok.permute(4, 0, 1, 2, 3, 5, 6)  # (3, B, T, h, w, heads, hd)
        with torch.autocast(device_type=dev.type, enabled=False):
            for i, (geo, row_weight) in enumerate(ctx.meta):
                q, k, v, p = saved[4 * i: 4 * i + 4]
                g = geo.heads.stop - geo.heads.start
                rows, length = geo.rows, geo.length
                d_o = torch.empty(b * rows, g, 1 + length, hd, dtype=work, device=dev)
                geo.row_view(d_o, 0, b, g, hd).copy_(geo.token_view(g7[..., geo.heads, :], 0))
                if row_weight is None:
                    d_o[:, :, 0].view(b, rows, g, hd).copy_((gc[:, geo.heads] / rows)[:, None])
                else:
                    wsum = row_weight.sum(dim=1).clamp_min(1.0)
                    d_o[:, :, 0].view(b, rows, g, hd).copy_(
                        gc[:, None, geo.heads] * (row_weight / wsum[:, None])[:, :, None, None])
                dv = torch.matmul(p.transpose(-1, -2), d_o)
                dp = torch.matmul(d_o, v.transpose(-1, -2))
                dp.sub_((dp * p).sum(dim=-1, keepdim=True)).mul_(p).mul_(scale)  # d scores (scaled)
                dq = torch.matmul(dp, k)
                dk = torch.matmul(dp.transpose(-1, -2), q)
                for j, d in enumerate((dq, dk, dv)):
                    geo.token_view(gx[j, ..., geo.heads, :], 0).copy_(geo.row_view(d, 0, b, g, hd))
                    grad_cls[:, j, geo.heads] = d[:, :, 0].view(b, rows, g, hd).sum(dim=1)
        return (grad_tok.view(b, t * h * w, 3 * heads * hd), grad_cls.view(b, -1).to(cls_dtype),
                None, None, None, None, None)
