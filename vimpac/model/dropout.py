"""Dropout for the transformer's embeddings and residual branches, cheap on CPU.

`F.dropout` on CPU draws one Bernoulli float per element from torch's Mersenne Twister; in a
bf16 training step on CPU that was ~10% of the time. Here, on CPU, the keep mask comes from 16-bit
random integers (p is rounded to a multiple of 2^-16) drawn by numpy's SFC64 generator, ~3x
faster than torch's for the same bits, seeded from torch's generator on every call, so
`torch.manual_seed` still makes runs repeat and no random state lives outside torch. The
mask is 0/1 in the branch's dtype and the 1/(1-p) scale is applied in the sum's dtype (in fp32
for a bf16 branch on an fp32 residual: a bf16 scale would be 1.109375 instead of 1.1111).
On other devices: torch's Bernoulli.
"""
from __future__ import annotations

import numpy as np
import torch


def keep_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """0/1 tensor shaped and typed like `like`: 1 with probability 1-p."""
    if like.device.type != "cpu":
        return torch.empty_like(like).bernoulli_(1.0 - p)
    n = like.numel()
    seed = int(torch.randint(0, 2 ** 62, (1,)))
    words = np.random.Generator(np.random.SFC64(seed)).integers(0, 2 ** 64 - 1, (n + 3) // 4, dtype=np.uint64,
                                                                endpoint=True)
    r = torch.from_numpy(words.view(np.int16)[:n]).view(like.shape)  # uniform in [-32768, 32767]
    return (r >= round(p * 65536) - 32768).view(torch.uint8).to(like.dtype)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    return (x * keep_mask(x, p)).mul_(1.0 / (1.0 - p))


def residual_dropout(x: torch.Tensor, delta: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x + dropout(delta): dropout on the residual branch (SDPA's own dropout is slow on CPU)."""
    if not training or p == 0.0:
        return x + delta
    return torch.add(x, delta * keep_mask(delta, p), alpha=1.0 / (1.0 - p))
