"""Pre-training losses of VIMPAC (Tan et al., 2021): masked-token cross-entropy and symmetric InfoNCE.

InfoNCE follows SimCLR/CLIP-style cross-rank negatives: each rank scores its own queries
against the clips of the whole global batch (`all_gather_with_grad`), so the mean of the
per-rank losses equals the single-process loss on the concatenated batch, and after the
usual data-parallel gradient averaging the gradients match too. This file and the trainer
are the only places that touch torch.distributed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vimpac.model.masked import IGNORE_INDEX


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, V) at the masked positions, targets (M,) codes -> (mean cross-entropy, accuracy).

    Targets equal to IGNORE_INDEX (padding entries of `MaskedTargets`) count in neither. `weight` (M,)
    makes the loss a weighted mean (sum of w * CE / sum of w); accuracy stays unweighted. With no
    counted position the loss is a graph-connected zero (backward still works). No host sync.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (M, V) and targets (M,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if weight is not None and weight.shape != targets.shape:
        raise ValueError(f"weight must be (M,) like targets, got {tuple(weight.shape)}")
    if logits.shape[0] == 0:
        zero = logits.sum() * 0.0
        return zero.float(), zero.detach().float()
    logits = logits.float()  # the loss in fp32; argmax over the same copy (bf16 argmax is ~5x slower on CPU)
    counted = targets != IGNORE_INDEX
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")  # 0 where ignored
    w = counted.float() if weight is None else weight.float() * counted
    loss = (ce * w).sum() / w.sum().clamp_min(1e-12)
    with torch.no_grad():
        acc = ((logits.argmax(dim=-1) == targets) & counted).float().sum() / counted.sum().clamp_min(1)
    return loss, acc


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.batch = x.shape[0]
        world = dist.get_world_size(group)
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x.contiguous(), group=group)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        # every rank's loss used every slice: the gradient of my slice is the sum over ranks
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.batch
        return grad[start:start + ctx.batch], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """x (B, ...) on each rank -> (concatenation over ranks (W*B, ...), offset of this rank's rows).

    All ranks must pass the same B. Without an initialised process group: (x, 0).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x, 0
    return _AllGatherWithGrad.apply(x, group), dist.get_rank(group) * x.shape[0]


@dataclass
class InfoNCEOutput:
    loss: torch.Tensor  # () symmetric InfoNCE x temperature, over this rank's queries
    acc: torch.Tensor   # () fraction of queries whose positive scores highest (both directions)


def symmetric_infonce(z_a: torch.Tensor, z_b: torch.Tensor, *, temperature: float = 0.2, group=None,
                      negatives: torch.Tensor | None = None) -> InfoNCEOutput:
    """z_a, z_b (B, d): projections of two clips per video (row i of each from video i).

    Each query in z_a scores against every z_b in the global batch (and vice versa); the
    positive is the same video. Loss = (CE_ab + CE_ba) / 2 * temperature. `negatives` (B, d), e.g.
    the projections of the a clips played backwards, are scored by every query too (global batch),
    as extra negatives only.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"z_a and z_b must both be (B, d), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if negatives is not None and negatives.shape != z_a.shape:
        raise ValueError(f"negatives must be (B, d) like z_a, got {tuple(negatives.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z_a = F.normalize(z_a.float(), dim=-1)
    z_b = F.normalize(z_b.float(), dim=-1)
    all_a, offset = all_gather_with_grad(z_a, group)
    all_b, _ = all_gather_with_grad(z_b, group)
    target = torch.arange(z_a.shape[0], device=z_a.device) + offset
    keys_b, keys_a = all_b, all_a
    if negatives is not None:
        all_n, _ = all_gather_with_grad(F.normalize(negatives.float(), dim=-1), group)
        keys_b, keys_a = torch.cat([all_b, all_n]), torch.cat([all_a, all_n])
    logits_ab = z_a @ keys_b.t() / temperature  # (B, W*B [+ W*B])
    logits_ba = z_b @ keys_a.t() / temperature
    loss = (F.cross_entropy(logits_ab, target) + F.cross_entropy(logits_ba, target)) / 2 * temperature
    with torch.no_grad():
        acc = ((logits_ab.argmax(-1) == target).float().mean() + (logits_ba.argmax(-1) == target).float().mean()) / 2
    return InfoNCEOutput(loss=loss, acc=acc)
