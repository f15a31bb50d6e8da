"""video2token.devices.default_device: one GPU per process under a launcher, with CUDA faked."""
from __future__ import annotations

import torch

from video2token.devices import default_device


def test_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert default_device() == "cpu"


def test_local_rank_picks_its_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert default_device() == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert default_device() == "cuda:2"
    monkeypatch.setenv("LOCAL_RANK", "6")  # more processes than GPUs: they share, round robin
    assert default_device() == "cuda:2"
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert default_device() == "cuda:1"
