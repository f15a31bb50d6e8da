"""CUDA against CPU fp32: the model in fp32 / bf16 / fp16, block masks, InfoNCE, checkpoints across devices,
and the dtype a Linear computes in inside the DeepSpeed engine for each precision flag.

Marked `cuda` and skipped without a CUDA device, so `make test` on a CPU machine skips them;
`scripts/gpu_check.sh` runs them on the GPU machine (`pytest -m cuda tests/test_cuda.py`).
Only the public API (`from vimpac import ...`) is used.

Tolerances, stated once in PRECISIONS below, were set at about 5-10x the error of the same
precision against fp32 measured on CPU (torch 2.13, same tiny model): bf16 autocast 1.7e-3
on hidden states and 5e-3 on gradients, fp16 autocast 2e-4 / 1.3e-3, fp16 weights 9e-4 / 1.3e-3.
Errors are relative L2 norms, ||x - ref|| / ||ref||.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from vimpac import (ModelConfig, VimpacForPretraining, block_mask, load_checkpoint, named_config, save_checkpoint,
                    symmetric_infonce)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@dataclass(frozen=True)
class Tolerance:
    loss: float     # relative error of mp_loss + InfoNCE
    hidden: float   # relative error of the backbone's hidden states and [CLS]
    mp_grad: float  # relative error of all gradients of the masked-prediction loss


# fp32 is bounded by CPU-vs-CUDA summation order (fp64 vs fp32 on CPU: 2e-7 hidden, 1.5e-4 gradients
# of the full loss, which the contrastive head's BatchNorm amplifies at initialisation).
PRECISIONS = {
    "fp32": Tolerance(loss=1e-4, hidden=1e-4, mp_grad=1e-3),
    "bf16": Tolerance(loss=5e-3, hidden=1.5e-2, mp_grad=3e-2),        # torch.autocast(bfloat16): the trainer's bf16
    "fp16": Tolerance(loss=1e-3, hidden=2e-3, mp_grad=1e-2),          # torch.autocast(float16)
    "fp16-weights": Tolerance(loss=3e-3, hidden=5e-3, mp_grad=1e-2),  # model.half(), as DeepSpeed's fp16 mode
}
FP16_LOSS_SCALE = 128.0  # static loss scale for the fp16-weights backward (DeepSpeed scales dynamically)


@pytest.fixture(autouse=True)
def _ieee_fp32_matmuls():
    """fp32 means fp32: no TF32 in CUDA matmuls while these tests run (restored afterwards)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)


def small_cfg() -> ModelConfig:
    """The Small model's width and heads on a short clip: 2 layers, T=4, 8x8 codes, no dropout."""
    return named_config("small", vocab_size=512, clip_len=4, grid_h=8, grid_w=8, layers=2, dropout=0.0,
                        nce_proj_hid_dim=256)


def masked_batch(cfg: ModelConfig, videos: int = 4, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """(codes_in, mask, targets) for `videos` videos x 2 clips, each (2*videos, T, h, w), on CPU."""
    g = torch.Generator().manual_seed(seed)
    shape = (2 * videos, cfg.clip_len, cfg.grid_h, cfg.grid_w)
    targets = torch.randint(0, cfg.vocab_size, shape, generator=g)
    mask = block_mask(shape, 3, generator=g)
    codes_in = targets.masked_fill(mask, cfg.special_tokens.mask)
    return codes_in, mask, targets


@dataclass
class StepResult:
    loss: float               # mp_loss + InfoNCE
    hidden: torch.Tensor      # (B, N, D) fp32 on CPU
    cls: torch.Tensor         # (B, D)
    mp_grads: torch.Tensor    # all gradients of mp_loss, flattened, fp32 on CPU
    full_grads: torch.Tensor  # all gradients of mp_loss + InfoNCE


def _grads(model: torch.nn.Module, scale: float) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten().cpu() / scale for p in model.parameters() if p.grad is not None])


def forward_backward(model: VimpacForPretraining, batch: tuple[torch.Tensor, ...], device: str,
                     precision: str) -> StepResult:
    """Forward + both losses, then two backwards: mp_loss alone and mp_loss + InfoNCE."""
    if precision in ("bf16", "fp16"):
        ctx = torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    else:
        ctx = contextlib.nullcontext()
    scale = FP16_LOSS_SCALE if precision == "fp16-weights" else 1.0
    batch = tuple(t.to(device) for t in batch)
    model.zero_grad(set_to_none=True)
    with ctx:
        out = model(*batch)
        nce = symmetric_infonce(out.cls_proj[0::2], out.cls_proj[1::2])
    (out.mp_loss.float() * scale).backward(retain_graph=True)
    mp_grads = _grads(model, scale)
    model.zero_grad(set_to_none=True)
    ((out.mp_loss.float() + nce.loss.float()) * scale).backward()
    return StepResult(loss=(out.mp_loss + nce.loss).item(), hidden=out.hidden.detach().float().cpu(),
                      cls=out.cls.detach().float().cpu(), mp_grads=mp_grads, full_grads=_grads(model, scale))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def reference():
    """The CPU fp32 model (train mode, no dropout), its batch and its result."""
    torch.manual_seed(0)
    cfg = small_cfg()
    model = VimpacForPretraining(cfg).train()
    batch = masked_batch(cfg)
    return model, batch, forward_backward(model, batch, "cpu", "fp32")


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_model_forward_backward_on_cuda_matches_cpu_fp32(reference, precision):
    cpu_model, batch, ref = reference
    model = copy.deepcopy(cpu_model).cuda()
    if precision == "fp16-weights":
        model = model.half()
    got = forward_backward(model, batch, "cuda", precision)
    tol = PRECISIONS[precision]
    errors = {"loss": abs(got.loss - ref.loss) / abs(ref.loss), "hidden": rel_err(got.hidden, ref.hidden),
              "cls": rel_err(got.cls, ref.cls), "mp_grad": rel_err(got.mp_grads, ref.mp_grads)}
    print(f"{precision}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert errors["loss"] <= tol.loss, errors
    assert errors["hidden"] <= tol.hidden and errors["cls"] <= tol.hidden, errors
    assert errors["mp_grad"] <= tol.mp_grad, errors
    assert bool(torch.isfinite(got.full_grads).all()), "non-finite gradient through the contrastive head"
    if precision == "fp32":  # the contrastive path too; low precision is loose there (BatchNorm on near-equal [CLS])
        assert rel_err(got.full_grads, ref.full_grads) <= 2e-3


def test_model_modes_and_pad_on_cuda():
    """Train and eval mode both run on CUDA; eval is deterministic; [PAD] frames are accepted (bf16)."""
    torch.manual_seed(0)
    cfg = small_cfg().replace(dropout=0.1)
    model = VimpacForPretraining(cfg).cuda()
    codes_in, mask, targets = (t.cuda() for t in masked_batch(cfg))
    codes_in[:, -1] = cfg.special_tokens.pad  # the clip's last frame is padding
    mask[:, -1] = False
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model.train()
        out = model(codes_in, mask, targets)
        assert out.hidden.shape[0] == codes_in.shape[0] and bool(torch.isfinite(out.mp_loss))
        model.eval()
        with torch.no_grad():
            a, b = model(codes_in, mask, targets), model(codes_in, mask, targets)
    assert torch.equal(a.hidden, b.hidden) and bool(torch.isfinite(a.hidden.float()).all())


# ----------------------------------------------------------------------------- masks and losses

def test_block_mask_on_cuda():
    shape = (4096, 5, 16, 16)
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = block_mask(shape, 5, generator=g)
    assert mask.device.type == "cuda" and mask.dtype == torch.bool and tuple(mask.shape) == shape
    assert torch.equal(block_mask(shape, 5, generator=torch.Generator(device="cuda").manual_seed(0)), mask)
    # the same distribution as on CPU (different random streams): mean masked ratio within 0.01
    cpu = block_mask(shape, 5, generator=torch.Generator().manual_seed(0))
    ratio, cpu_ratio = mask.float().mean().item(), cpu.float().mean().item()
    assert abs(ratio - cpu_ratio) < 0.01, (ratio, cpu_ratio)
    assert bool(mask.flatten(1).any(1).all())  # every clip has a masked position
    # a CPU generator with device="cuda": the same mask as on CPU, moved
    moved = block_mask((8, 5, 16, 16), 5, generator=torch.Generator().manual_seed(3), device="cuda")
    assert moved.device.type == "cuda"
    assert torch.equal(moved.cpu(), block_mask((8, 5, 16, 16), 5, generator=torch.Generator().manual_seed(3)))


def test_symmetric_infonce_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(32, 256, generator=g), torch.randn(32, 256, generator=g)
    results = {}
    for device in ("cpu", "cuda"):
        a, b = z_a.to(device, copy=True).requires_grad_(), z_b.to(device, copy=True).requires_grad_()
        out = symmetric_infonce(a, b, temperature=0.2)
        out.loss.backward()
        results[device] = (out.loss.item(), out.acc.item(), a.grad.cpu(), b.grad.cpu())
    (loss_c, acc_c, ga_c, gb_c), (loss_g, acc_g, ga_g, gb_g) = results["cpu"], results["cuda"]
    assert loss_g == pytest.approx(loss_c, rel=1e-5) and acc_g == acc_c
    assert rel_err(ga_g, ga_c) < 1e-4 and rel_err(gb_g, gb_c) < 1e-4
    # bf16 projections (autocast output) are scored in fp32 inside
    low = symmetric_infonce(z_a.cuda().bfloat16(), z_b.cuda().bfloat16(), temperature=0.2)
    assert low.loss.dtype == torch.float32 and low.loss.item() == pytest.approx(loss_c, rel=1e-2)
    # identical pairs: every positive wins
    same = symmetric_infonce(z_a.cuda(), z_a.cuda(), temperature=0.2)
    assert same.acc.item() == 1.0


# ----------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("weights", ["fp32", "fp16"])
def test_checkpoint_from_cuda_loads_on_cpu_and_back(tmp_path, weights):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = VimpacForPretraining(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tuple(t.cuda() for t in masked_batch(cfg))
    out = model(*batch)  # one step, so the weights are not the initial ones
    out.mp_loss.backward()
    opt.step()
    if weights == "fp16":
        model = model.half()  # DeepSpeed fp16 keeps fp16 copies on the device
    path = str(tmp_path / "ckpt")
    save_checkpoint(path, model_state=model.state_dict(), model_config=cfg, train_config={"precision": weights},
                    step=1, epoch=0)

    ck = load_checkpoint(path, weights_only=True)
    assert ck.model_config == cfg
    for name, t in ck.model_state.items():
        assert t.device.type == "cpu", name
        if t.is_floating_point():
            assert t.dtype == torch.float32, name  # checkpoints hold fp32 whatever the device copy was
        torch.testing.assert_close(t, model.state_dict()[name].cpu().to(t.dtype), rtol=0, atol=0, msg=name)

    cpu_model = VimpacForPretraining(ck.model_config).eval()
    cpu_model.load_state_dict(ck.model_state)
    back = VimpacForPretraining(ck.model_config).cuda().eval()
    back.load_state_dict(ck.model_state)
    for name, t in back.state_dict().items():
        assert t.device.type == "cuda"
        assert torch.equal(t.cpu(), ck.model_state[name]), name
    with torch.no_grad():
        on_cpu = cpu_model(*masked_batch(cfg)).hidden
        on_cuda = back(*batch).hidden.cpu()
    assert rel_err(on_cuda, on_cpu) < PRECISIONS["fp32"].hidden


# ----------------------------------------------------------------------------- precision inside the engine

#: one process builds the trainer's DeepSpeed engine for each precision (ZeRO as the trainer picks it: 0, and 1
#: under fp16), runs one step of the tiny Small model the way the trainer does (the precision's autocast around
#: `engine(...)`) and reports what the loop's first-Linear probe logs and what a hook on that Linear saw
ENGINE_PROBE = r"""
import json, sys, torch
from torch import nn
from vimpac import VimpacForPretraining, block_mask, named_config, symmetric_infonce
from vimpac.model.masked import MaskedTargets
from vimpac.data.pretrain_clips import MASK_PAD_TO
from vimpac.train.runtime import BatchPlan, Launch, init_distributed
from vimpac.train.deepspeed_setup import build_ds_config, choose_zero_stage, init_engine, split_clipping
from vimpac.train.loop import report_first_linear_dtype
from video2token.precision import resolve_precision

device = sys.argv[1]
dist = init_distributed(Launch(rank=0, world_size=1, local_rank=0, local_world_size=1, launched=False,
                               cpu=device == "cpu"))
out = {}
for name in sys.argv[2:]:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # each precision sets its own
    try:
        prec = resolve_precision(name, dist.device.type)
        prec.configure_backends()
        zero = choose_zero_stage(prec.name, None, cpu=dist.device.type == "cpu")
        torch.manual_seed(0)
        cfg = named_config("small", vocab_size=512, clip_len=4, grid_h=8, grid_w=8, layers=2, dropout=0.0,
                           nce_proj_hid_dim=256)
        model = VimpacForPretraining(cfg).to(dist.device)
        logged, seen = [], []
        report_first_linear_dtype(model, logged.append, "probe")
        first = next(m for m in model.modules() if isinstance(m, nn.Linear))
        first.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
        ds = build_ds_config(BatchPlan(4, 4, 1, 1), clip_grad_norm=1.0, zero_stage=zero, precision=prec.name)
        ds, _ = split_clipping(ds, zero)
        engine = init_engine(model, torch.optim.AdamW(model.parameters(), lr=1e-4), None, ds)
        g = torch.Generator().manual_seed(1)
        shape = (8, cfg.clip_len, cfg.grid_h, cfg.grid_w)
        targets = torch.randint(0, cfg.vocab_size, shape, generator=g)
        mask = block_mask(shape, 3, generator=g)
        codes_in = targets.masked_fill(mask, cfg.special_tokens.mask).to(dist.device)
        masked = MaskedTargets.from_mask(mask, targets, pad_to=MASK_PAD_TO).to(dist.device)
        with prec.autocast():
            o = engine(codes_in, mask.to(dist.device), masked=masked, frame_valid=None)
            loss = o.mp_loss + symmetric_infonce(o.cls_proj.float()[0::2], o.cls_proj.float()[1::2]).loss
        engine.backward(loss)
        engine.step()
        out[name] = {"precision": prec.name, "zero_stage": zero, "inside_engine": seen[0], "logged": logged[0],
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                     "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                     "loss_finite": bool(torch.isfinite(loss.detach()).item()), "describe": prec.describe()}
    except Exception as e:  # the other precisions still report
        out[name] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""
ENGINE_DTYPES = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}


def run_engine_probe(device: str, precisions: list[str]) -> dict:
    """ENGINE_PROBE in a fresh process (it creates the process group) -> {precision: what it saw}."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", ENGINE_PROBE, device, *precisions], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def engine_dtypes():
    return run_engine_probe("cuda", list(ENGINE_DTYPES))


@pytest.mark.parametrize("precision", list(ENGINE_DTYPES))
def test_linear_inside_the_engine_computes_in_the_flags_dtype(engine_dtypes, precision):
    got = engine_dtypes[precision]
    assert "error" not in got, got["error"]
    want = ENGINE_DTYPES[precision]
    tf32 = torch.cuda.get_device_capability()[0] >= 8  # Ampere and newer have TF32 tensor cores
    tf32_note = f", TF32 {'on' if got['tf32_matmul'] else 'off'}" if precision == "fp32" else ""
    print(f"engine {precision}: first Linear computes in {got['inside_engine']} inside engine(...) "
          f"(ZeRO-{got['zero_stage']}{tf32_note})")
    assert got["inside_engine"] == want, got
    assert f"computes in {want}" in got["logged"], got["logged"]  # the run log says what really happens
    assert got["zero_stage"] == (1 if precision == "fp16" else 0)
    assert got["loss_finite"], got
    if precision == "fp32":
        assert got["tf32_matmul"] is tf32 and got["tf32_cudnn"] is tf32, got
