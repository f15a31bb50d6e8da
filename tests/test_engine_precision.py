"""Precision inside the DeepSpeed engine is what the flag says, and a step needs no host sync to sum metrics.

DeepSpeed 0.19.8's `engine.forward` switches an outer *CUDA* autocast off unless the config has a
`torch_autocast` section (runtime/torch_autocast.py::autocast_if_enabled). On CPU it reads CUDA's
autocast state, so the bug hides there; the engine test below makes DeepSpeed see an outer autocast
(its `torch.is_autocast_enabled` patched to True), which is the CUDA situation, and checks the dtype a
Linear really computes in inside the engine. The same check on a real GPU is in tests/test_cuda.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from video2token import precision as policy
from vimpac.train.deepspeed_setup import build_ds_config, check_autocast, split_clipping
from vimpac.train.runtime import BatchPlan, EngineError
from vimpac.train.step_sums import StepSums

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = BatchPlan(global_batch=4, micro_batch=2, accumulation=2, world_size=1)


@pytest.mark.parametrize("precision, enabled", [("bf16", True), ("fp32", False), ("fp16", False)])
def test_config_autocast_section_follows_the_precision(precision, enabled):
    cfg = build_ds_config(PLAN, clip_grad_norm=1.0, zero_stage=1 if precision == "fp16" else 0, precision=precision)
    assert cfg["torch_autocast"]["enabled"] is enabled  # the section is always there: DeepSpeed never guesses
    if enabled:
        assert cfg["torch_autocast"]["dtype"] == "bfloat16"
        assert cfg["torch_autocast"]["lower_precision_safe_modules"] == []  # gradients reduced in fp32
    assert cfg["timers"]["throughput"] == {"enabled": False, "synchronized": False}  # no device sync per micro-step


def test_config_refuses_an_override_that_would_change_the_compute_dtype():
    with pytest.raises(EngineError, match="torch_autocast"):
        build_ds_config(PLAN, clip_grad_norm=1.0, zero_stage=0, precision="bf16",
                        overrides={"torch_autocast": {"enabled": False}})
    with pytest.raises(EngineError, match="torch_autocast"):
        build_ds_config(PLAN, clip_grad_norm=1.0, zero_stage=0, precision="fp32",
                        overrides={"torch_autocast": {"enabled": True, "dtype": "bfloat16"}})
    with pytest.raises(EngineError, match="torch_autocast"):
        check_autocast({}, "bf16")  # a config without the section: exactly the CUDA fp32 trap


def test_clipping_moves_to_the_trainer_under_zero0_only():
    cfg = build_ds_config(PLAN, clip_grad_norm=0.5, zero_stage=0, precision="fp32")
    ds, clip = split_clipping(cfg, 0)
    assert ds["gradient_clipping"] == 0.0 and clip == 0.5
    cfg = build_ds_config(PLAN, clip_grad_norm=0.5, zero_stage=1, precision="fp32")
    ds, clip = split_clipping(cfg, 1)
    assert ds["gradient_clipping"] == 0.5 and clip == 0.0


ENGINE_PROBE = r"""
import json, sys, torch
from unittest import mock
from torch import nn
from vimpac.train.runtime import Launch, init_distributed, BatchPlan
from vimpac.train.deepspeed_setup import build_ds_config, init_engine, split_clipping
import deepspeed.runtime.torch_autocast as ds_autocast

init_distributed(Launch(rank=0, world_size=1, local_rank=0, local_world_size=1, launched=False, cpu=True))
out = {}
for precision, with_section in (("bf16", True), ("bf16", False), ("fp32", True)):
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
    cfg = build_ds_config(BatchPlan(2, 2, 1, 1), clip_grad_norm=1.0, zero_stage=0, precision=precision)
    if not with_section:
        cfg.pop("torch_autocast")  # the config this project built before: what DeepSpeed then does
    cfg, _ = split_clipping(cfg, 0)
    engine = init_engine(model, torch.optim.AdamW(model.parameters()), None, cfg)
    # DeepSpeed reads CUDA's autocast state; make it see the trainer's outer autocast, as on a GPU
    with mock.patch.object(ds_autocast.torch, "is_autocast_enabled", lambda *a: True):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        with ctx:
            engine(torch.randn(2, 8))
    out[f"{precision}:{with_section}"] = seen[0]
print(json.dumps(out))
"""


def test_linear_inside_the_engine_computes_in_the_flags_dtype():
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", ENGINE_PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dtypes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert dtypes["bf16:True"] == "torch.bfloat16"   # this project's config keeps the trainer's autocast
    assert dtypes["bf16:False"] == "torch.float32"   # without the section DeepSpeed switches it off (the bug)
    assert dtypes["fp32:True"] == "torch.float32"


def test_tf32_for_fp32_on_ampere_and_newer(monkeypatch):
    monkeypatch.setattr(policy, "cuda_native_bf16", lambda device: True)
    monkeypatch.setattr(policy.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(policy.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    p = policy.resolve_precision("fp32", "cuda")
    assert p.tf32 and "TF32" in p.describe()
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        p.configure_backends()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert not policy.resolve_precision("bf16", "cuda").tf32
    monkeypatch.setattr(policy, "cuda_native_bf16", lambda device: False)  # a V100: no TF32 either
    assert not policy.resolve_precision("fp32", "cuda").tf32
    assert not policy.resolve_precision("fp32", "cpu").tf32



def test_step_sums_keep_device_values_on_the_device(monkeypatch):
    sums = StepSums(("loss", "count"), device="cpu")
    sums.add({"loss": torch.tensor(2.5), "count": 3})
    sums.add({"loss": 1.5, "count": torch.tensor(1)})
    assert sums.totals() == {"loss": 4.0, "count": 4.0}
    other = StepSums(("loss", "count"))
    other.add({"loss": 1.0, "count": 1})
    sums.merge(other)
    assert sums.totals() == {"loss": 5.0, "count": 5.0}
    # a contribution on an accelerator is summed there: adding it never reads it back (`.item()`, `float()`)
    meta = torch.tensor(7.0, device="meta")
    sums_meta = StepSums(("loss", "count"), device="meta")
    sums_meta.add({"loss": meta, "count": 2})  # would raise on a host read of a meta tensor
    assert float(sums_meta.host[1]) == 2.0 and sums_meta.dev.device.type == "meta"


def test_compiled_layers_match_eager_and_keep_parameter_names():
    from vimpac.model.config import ModelConfig
    from vimpac.model.transformer import VimpacForPretraining
    from vimpac.train.loop import compile_layers

    cfg = ModelConfig(vocab_size=31, clip_len=3, grid_h=4, grid_w=4, layers=2, hid_dim=32, heads=2, head_dim=16,
                      mlp_dim=64, nce_proj_hid_dim=16, nce_proj_out_dim=8, dropout=0.0)
    torch.manual_seed(0)
    model = VimpacForPretraining(cfg).eval()
    codes = torch.randint(0, 31, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.backbone(codes, frame_valid=None).hidden
    names = list(model.state_dict())
    # aot_eager traces and runs the graph without a C++ compiler; fullgraph: no graph break in a layer
    assert compile_layers(model, backend="aot_eager", fullgraph=True) == 2
    with torch.no_grad():
        out = model.backbone(codes, frame_valid=None).hidden
    torch.testing.assert_close(out, ref)
    assert list(model.state_dict()) == names  # checkpoints of a compiled run load anywhere
