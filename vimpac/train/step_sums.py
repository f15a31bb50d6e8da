"""Named metric sums over micro-batches (and ranks), kept where their values are made.

A task's metric contributions are either facts the loader already knows on the host (masked
positions, [PAD] counts, the copy baseline: plain numbers or CPU tensors) or results of the
forward on the accelerator (losses, correct predictions: 0-dim device tensors). Each kind is
summed where it lives, so adding a contribution never waits for the device; `totals()` reads
both once, at a log interval or an epoch's end (one host sync there, none inside a step).
"""
from __future__ import annotations

from typing import Mapping

import torch


class StepSums:
    """Named sums over micro-batches (and ranks after `reduce`); tasks turn them into metrics."""

    def __init__(self, names: tuple[str, ...], device: torch.device | str = "cpu") -> None:
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.device = torch.device(device)
        self.host = torch.zeros(len(names), dtype=torch.float64)
        # fp32 on the device: float64 is slow on many GPUs; sums of a log window stay well within fp32
        self.dev = torch.zeros(len(names), dtype=torch.float32, device=self.device)

    def add(self, contrib: Mapping[str, float | torch.Tensor]) -> None:
        on_device: list[tuple[int, torch.Tensor]] = []
        for k, v in contrib.items():
            i = self.index[k]
            if isinstance(v, torch.Tensor) and v.device.type != "cpu":
                on_device.append((i, v.detach().float().reshape(())))
            else:
                self.host[i] += float(v)
        if on_device:
            idx = torch.tensor([i for i, _ in on_device], device=self.device)
            self.dev.index_add_(0, idx, torch.stack([v.to(self.device) for _, v in on_device]))

    def merge(self, other: "StepSums") -> None:
        self.host += other.host
        self.dev += other.dev.to(self.device)

    def reduce(self, dist) -> None:
        """Sum over ranks (collective; nccl reduces device tensors only)."""
        if dist.world_size > 1:
            both = torch.cat([self.host.to(dist.device), self.dev.double().to(dist.device)])
            torch.distributed.all_reduce(both)
            n = len(self.names)
            self.host = both[:n].cpu()
            self.dev = both[n:].to(self.device, torch.float32)

    def totals(self) -> dict[str, float]:
        """Every sum as a float (reads the device once)."""
        values = self.host + self.dev.double().cpu()
        return dict(zip(self.names, values.tolist()))
