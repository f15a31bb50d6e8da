"""The default torch device of a job: one GPU per process under torchrun or SLURM, else the first."""
from __future__ import annotations

import os

import torch


def default_device() -> str:
    """`cuda:LOCAL_RANK` when a launcher set LOCAL_RANK (torchrun) or SLURM_LOCALID (srun) and CUDA is
    visible, `cuda` when it is visible otherwise, else `cpu`. With several processes on one node, each
    then encodes on its own GPU instead of all of them on cuda:0."""
    if not torch.cuda.is_available():
        return "cpu"
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return f"cuda:{int(value) % torch.cuda.device_count()}"
    return "cuda"
