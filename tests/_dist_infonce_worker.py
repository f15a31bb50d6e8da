"""Worker for tests/test_losses.py: one gloo rank of the 2-process symmetric-InfoNCE check.

usage: python tests/_dist_infonce_worker.py RANK WORLD PORT IN_FILE OUT_FILE
Each rank projects its shard of the batch with the shared linear layer, computes the
symmetric InfoNCE against the gathered global batch, backpropagates and averages the
parameter gradient over ranks (what DDP / DeepSpeed do), then saves its results.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from vimpac.model.losses import symmetric_infonce


def main() -> None:
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    in_file, out_file = sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = torch.load(in_file, weights_only=True)
        b = data["x_a"].shape[0] // world
        rows = slice(rank * b, (rank + 1) * b)
        proj = torch.nn.Linear(*data["weight"].shape[::-1])
        with torch.no_grad():
            proj.weight.copy_(data["weight"])
            proj.bias.copy_(data["bias"])
        x_a = data["x_a"][rows].clone().requires_grad_()
        x_b = data["x_b"][rows].clone().requires_grad_()
        out = symmetric_infonce(proj(x_a), proj(x_b), temperature=data["temperature"].item())
        out.loss.backward()
        grad_w = proj.weight.grad.clone()
        dist.all_reduce(grad_w)
        grad_w /= world
        torch.save({"loss": out.loss.detach(), "acc": out.acc, "grad_w": grad_w, "grad_x_a": x_a.grad,
                    "grad_x_b": x_b.grad}, out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
