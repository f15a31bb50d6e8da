"""Tests for vimpac.model.losses: masked-token loss at masked positions only, symmetric InfoNCE, 2-rank gloo equivalence."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vimpac.model.config import ModelConfig
from vimpac.model.losses import all_gather_with_grad, masked_token_loss, symmetric_infonce
from vimpac.data.masking import apply_mask, block_mask
from vimpac.model.transformer import VimpacForPretraining

REPO = Path(__file__).resolve().parents[1]


def test_masked_token_loss_and_accuracy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0], [5.0, 0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 1, 0])
    loss, acc = masked_token_loss(logits, targets)
    manual = -(logits.log_softmax(-1)[torch.arange(3), targets]).mean()
    torch.testing.assert_close(loss, manual)
    assert acc.item() == pytest.approx(2 / 3)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    # nothing masked: a zero loss that still backpropagates
    empty = torch.zeros(0, 3, requires_grad=True)
    loss, acc = masked_token_loss(empty, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and acc.item() == 0.0
    with pytest.raises(ValueError, match=r"logits \(M, V\)"):
        masked_token_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_pretraining_loss_only_at_masked_positions_equals_full_logits():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=29, clip_len=3, grid_h=4, grid_w=4, layers=1, hid_dim=32, heads=4, head_dim=8,
                      mlp_dim=64, nce_proj_hid_dim=16, nce_proj_out_dim=8, dropout=0.0)
    model = VimpacForPretraining(cfg).eval()
    codes = torch.randint(0, cfg.vocab_size, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    codes[1, 2] = cfg.special_tokens.pad
    codes_in, mask = apply_mask(codes, block_mask(codes.shape, 3, torch.Generator().manual_seed(1)),
                                cfg.special_tokens)
    with torch.no_grad():
        out = model(codes_in, mask, codes)
        # the original: logits for every token, loss over masked ones via an ignore index
        all_logits = model.mp_head(out.hidden.reshape(-1, cfg.hid_dim), model.backbone.embeddings.code.weight)
        labels = torch.where(mask, codes, torch.full_like(codes, -100)).reshape(-1)
        ref = F.cross_entropy(all_logits, labels, ignore_index=-100)
    assert all_logits.shape[-1] == cfg.vocab_size  # special tokens are never predicted
    assert out.num_masked == int(mask.sum()) < mask.numel()
    torch.testing.assert_close(out.mp_loss, ref)


def test_symmetric_infonce_single_process():
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(6, 8, generator=g)
    z_b = torch.randn(6, 8, generator=g)
    out = symmetric_infonce(z_a, z_b, temperature=0.2)
    a, b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    s = a @ b.t() / 0.2
    target = torch.arange(6)
    manual = (F.cross_entropy(s, target) + F.cross_entropy(s.t(), target)) / 2 * 0.2
    torch.testing.assert_close(out.loss, manual)
    # identical views -> every positive wins; the loss is much lower than for random pairs
    same = symmetric_infonce(z_a, z_a * 3.0, temperature=0.2)
    assert same.acc.item() == 1.0 and same.loss < out.loss
    assert all_gather_with_grad(z_a) == (z_a, 0)  # no process group: identity
    with pytest.raises(ValueError, match="temperature"):
        symmetric_infonce(z_a, z_b, temperature=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_infonce_two_gloo_ranks_equal_single_process(tmp_path):
    world, batch, din, dout, temperature = 2, 8, 12, 6, 0.2
    g = torch.Generator().manual_seed(0)
    data = {"x_a": torch.randn(batch, din, generator=g), "x_b": torch.randn(batch, din, generator=g),
            "weight": torch.randn(dout, din, generator=g) * 0.3, "bias": torch.randn(dout, generator=g) * 0.1,
            "temperature": torch.tensor(temperature)}
    torch.save(data, tmp_path / "in.pt")

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "_dist_infonce_worker.py"), str(r), str(world),
                               str(port), str(tmp_path / "in.pt"), str(tmp_path / f"out{r}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    try:
        logs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    ranks = [torch.load(tmp_path / f"out{r}.pt", weights_only=True) for r in range(world)]

    # single process on the concatenated batch
    proj = torch.nn.Linear(din, dout)
    with torch.no_grad():
        proj.weight.copy_(data["weight"])
        proj.bias.copy_(data["bias"])
    x_a = data["x_a"].clone().requires_grad_()
    x_b = data["x_b"].clone().requires_grad_()
    single = symmetric_infonce(proj(x_a), proj(x_b), temperature=temperature)
    single.loss.backward()

    # each rank scores its own queries against the global batch: the rank mean is the global loss
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), single.loss.detach())
    # gradients flow back through the gather: after DDP-style averaging they match exactly
    for r in ranks:
        torch.testing.assert_close(r["grad_w"], proj.weight.grad)
    # and per-input gradients are the global ones scaled by the world size (DDP divides by it)
    grad_x_a = torch.cat([r["grad_x_a"] for r in ranks]) / world
    grad_x_b = torch.cat([r["grad_x_b"] for r in ranks]) / world
    torch.testing.assert_close(grad_x_a, x_a.grad)
    torch.testing.assert_close(grad_x_b, x_b.grad)
    # negatives really come from the other rank: a rank-local loss would differ
    local = symmetric_infonce(proj(x_a[: batch // 2]), proj(x_b[: batch // 2]), temperature=temperature)
    assert not torch.allclose(local.loss, ranks[0]["loss"])
