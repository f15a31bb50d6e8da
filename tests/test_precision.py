"""The one precision policy (video2token.precision): auto by hardware, explicit values honoured, one flag spelling.

CPUs are faked by monkeypatching what torch reports (`cpu_capabilities`), GPUs by monkeypatching
torch.cuda's capability query, so every branch runs on any machine (AMX, AVX2-only, capped, no GPU).
VIMPAC_CPU_BF16 is read by the entry points only and passed down as `cpu_bf16`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from video2token import precision as policy
from video2token.precision import add_precision_flag, resolve_precision

AVX2_EPYC = {"cpu_name": "AMD EPYC", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AMX_XEON = {"cpu_name": "Intel Xeon", "avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_bf16": True}
AVX512_BF16_ONLY = {"cpu_name": "AMD EPYC 9004", "avx2": True, "avx512_f": True, "avx512_bf16": True,
                    "amx_bf16": False}


@pytest.fixture
def fake_cpu(monkeypatch):
    def use(caps: dict) -> None:
        monkeypatch.setattr(policy, "cpu_capabilities", lambda: dict(caps))
    return use


def test_auto_on_avx2_only_is_fp32_with_a_reason(fake_cpu):
    fake_cpu(AVX2_EPYC)
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and not p.lowp and p.dtype == torch.float32 and not p.native_bf16
    assert "emulated" in p.reason and "no AMX-BF16 / AVX512-BF16" in p.reason
    line = p.describe()
    assert line.startswith("precision fp32 on cpu (AMD EPYC") and "native bf16: no" in line


@pytest.mark.parametrize("caps, why", [(AMX_XEON, "amx_bf16+avx512_bf16"), (AVX512_BF16_ONLY, "avx512_bf16")])
def test_auto_with_native_bf16_is_bf16(fake_cpu, caps, why):
    fake_cpu(caps)
    p = resolve_precision("auto", "cpu")
    assert p.name == "bf16" and p.dtype == torch.bfloat16 and p.native_bf16
    assert f"natively ({why})" in p.reason and "native bf16: yes" in p.describe()


@pytest.mark.parametrize("caps", [AVX2_EPYC, AMX_XEON], ids=["avx2", "amx"])
@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_explicit_values_are_honoured(fake_cpu, caps, requested):
    fake_cpu(caps)
    auto = resolve_precision("auto", "cpu").name
    p = resolve_precision(requested, "cpu")
    assert p.name == requested and p.requested == requested
    assert p.reason == f"as requested (auto would pick {auto})"


@pytest.mark.parametrize("isa, onednn, native", [("AVX512", True, True), ("AVX2", True, False),
                                                  ("AVX512", False, False), ("DEFAULT", False, False)])
def test_older_torch_without_cpuinfo_falls_back_to_isa_and_onednn(fake_cpu, isa, onednn, native):
    fake_cpu({"isa": isa, "onednn_bf16": onednn})  # torch without torch.cpu.get_capabilities
    p = resolve_precision("auto", "cpu")
    assert p.native_bf16 is native and p.name == ("bf16" if native else "fp32") and f"({isa})" in p.reason


@pytest.mark.parametrize("cap, why", [({"isa": "AVX2", "onednn_bf16": True}, "ATen dispatch capped at AVX2"),
                                      ({"isa": "AVX512", "onednn_bf16": False}, "oneDNN bf16 off")])
def test_capped_instruction_set_counts_as_not_native(fake_cpu, cap, why):
    """ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 on an AMX CPU: bf16 units present, unused."""
    fake_cpu({**AMX_XEON, **cap})
    p = resolve_precision("auto", "cpu")
    assert p.name == "fp32" and not p.native_bf16 and why in p.reason and "present but unused" in p.reason


def test_uncapped_amx_with_isa_report_is_native(fake_cpu):
    fake_cpu({**AMX_XEON, "isa": "AVX512", "onednn_bf16": True})
    assert resolve_precision("auto", "cpu").name == "bf16"


@pytest.mark.parametrize("value, caps, name", [("0", AMX_XEON, "fp32"), ("no", AMX_XEON, "fp32"),
                                               ("1", AVX2_EPYC, "bf16"), ("true", AVX2_EPYC, "bf16"),
                                               ("", AMX_XEON, "bf16"), ("auto", AVX2_EPYC, "fp32")])
def test_override_forces_either_answer(fake_cpu, value, caps, name):
    fake_cpu(caps)
    p = resolve_precision("auto", "cpu", cpu_bf16=policy.cpu_bf16_override({policy.CPU_BF16_ENV: value}))
    assert p.name == name
    if value in ("", "auto"):
        assert "forced" not in p.reason
    else:
        assert f"forced by VIMPAC_CPU_BF16={int(name == 'bf16')}" in p.reason


@pytest.mark.parametrize("value, caps, name", [("1", AVX2_EPYC, "fp32"), ("0", AMX_XEON, "bf16"),
                                               ("maybe", AMX_XEON, "bf16")])
def test_the_policy_never_reads_the_environment(fake_cpu, monkeypatch, value, caps, name):
    """Only an entry point reads VIMPAC_CPU_BF16 (and passes it as cpu_bf16): below it the variable changes nothing."""
    fake_cpu(caps)
    monkeypatch.setenv(policy.CPU_BF16_ENV, value)
    p = resolve_precision("auto", "cpu")
    assert p.name == name and "forced" not in p.reason
    assert policy.cpu_native_bf16()[0] is (name == "bf16")


def test_override_does_not_touch_explicit_values_or_given_caps(fake_cpu):
    fake_cpu(AVX2_EPYC)
    p = resolve_precision("fp32", "cpu", cpu_bf16=True)
    assert p.name == "fp32" and p.reason == "as requested (auto would pick bf16)"
    assert policy.cpu_native_bf16(AVX2_EPYC) == (False, "no AMX-BF16 / AVX512-BF16")
    assert policy.cpu_native_bf16(AVX2_EPYC, forced=True) == (True, "forced by VIMPAC_CPU_BF16=1")


def test_override_refuses_other_values(capsys):
    with pytest.raises(ValueError, match=r"VIMPAC_CPU_BF16 must be 1 or 0 \(or unset\), got 'maybe'"):
        policy.cpu_bf16_override({policy.CPU_BF16_ENV: "maybe"})
    parser = argparse.ArgumentParser(prog="python -m tool")
    with pytest.raises(SystemExit) as e:
        policy.read_cpu_bf16(parser, {policy.CPU_BF16_ENV: "maybe"})
    assert e.value.code == 2
    assert "python -m tool: error: VIMPAC_CPU_BF16 must be 1 or 0 (or unset), got 'maybe'" in capsys.readouterr().err
    assert policy.read_cpu_bf16(parser, {}) is None
    assert policy.read_cpu_bf16(parser, {policy.CPU_BF16_ENV: "0"}) is False


# the smallest argument list each entry point parses; a bad VIMPAC_CPU_BF16 must stop it right after parsing
ENTRY_POINTS = {
    "video2token.extract": ["--video-root", "v", "--anno", "a.txt", "--output", "o", "--fps", "2",
                            "--frame-shorter-side", "32", "--crop-size", "32", "--tokenizer-path", "t"],
    "video2token.train_tokenizer": ["--video-root", "v", "--anno", "a.txt", "--fps", "2", "--frame-size", "32",
                                    "--vocab-size", "16", "--output", "o"],
    "video2token.visualize": ["store", "video.mp4", "--out", "x.png"],
    "vimpac.pretrain": ["--output", "o"],
    "vimpac.finetune": ["--output", "o"],
    "vimpac.predict": ["--checkpoint", "c", "video.mp4"],
}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_entry_point_reads_the_override_at_its_boundary(module, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the checkout
    monkeypatch.setenv(policy.CPU_BF16_ENV, "maybe")
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(ENTRY_POINTS[module])
    assert e.value.code == 2 and "VIMPAC_CPU_BF16 must be 1 or 0 (or unset), got 'maybe'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value, name", [("0", "fp32"), ("1", "bf16")])
def test_a_cli_run_logs_the_forced_precision(tmp_path, value, name):
    """The variable reaches the policy through the entry point: predict logs its precision before loading anything."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), **{policy.CPU_BF16_ENV: value})
    r = subprocess.run([sys.executable, "-m", "vimpac.predict", "--checkpoint", str(tmp_path / "none"), "v.mp4"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    assert f"[predict] precision {name} on cpu" in r.stderr, r.stderr
    assert f"forced by VIMPAC_CPU_BF16={value}" in r.stderr


def test_real_cpu_report_has_the_isa_level():
    caps = policy.cpu_capabilities()
    assert caps["isa"] == torch.backends.cpu.get_cpu_capability() and isinstance(caps["onednn_bf16"], bool)
    native, why = policy.cpu_native_bf16()
    assert isinstance(native, bool) and why


@pytest.fixture
def fake_cuda(monkeypatch):
    def use(capability: tuple[int, int], name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return use


@pytest.mark.parametrize("capability, name, auto", [((8, 0), "NVIDIA A100", "bf16"), ((9, 0), "NVIDIA H100", "bf16"),
                                                     ((7, 0), "Tesla V100", "fp16"), ((7, 5), "Tesla T4", "fp16")])
def test_cuda_auto_is_bf16_from_ampere_else_fp16(fake_cuda, capability, name, auto):
    fake_cuda(capability, name)
    p = resolve_precision("auto", "cuda")
    assert p.name == auto and p.device.type == "cuda" and p.native_bf16 is (auto == "bf16")
    assert f"compute capability {capability[0]}.{capability[1]}" in p.reason
    assert ("loss scaling" in p.reason) is (auto == "fp16")
    assert p.describe().startswith(f"precision {auto} on cuda ({name})")


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_cuda_explicit_values_are_honoured(fake_cuda, requested):
    fake_cuda((7, 0), "Tesla V100")
    p = resolve_precision(requested, "cuda:0")
    assert p.name == requested and p.reason == "as requested (auto would pick fp16)"


def test_unknown_value_is_refused():
    with pytest.raises(ValueError, match=r"--precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        resolve_precision("half")


def test_autocast_is_off_for_fp32_and_bf16_for_bf16(fake_cpu):
    fake_cpu(AMX_XEON)
    x = torch.randn(4, 4)
    with resolve_precision("fp32").autocast():
        assert (x @ x).dtype == torch.float32
    with resolve_precision("bf16").autocast():
        assert (x @ x).dtype == torch.bfloat16


def _parse(*argv: str) -> str:
    p = argparse.ArgumentParser()
    add_precision_flag(p)
    return p.parse_args(list(argv)).precision


def test_flag_and_aliases():
    assert _parse() == "auto"
    assert _parse("--precision", "fp16") == "fp16"
    assert _parse("--bf16") == "bf16" and _parse("--fp16") == "fp16" and _parse("--fp32") == "fp32"
    assert _parse("--precision", "fp32", "--bf16") == "bf16"  # the last one given wins
    assert _parse("--bf16", "--precision", "auto") == "auto"
    for name in ("bf16", "fp16", "fp32"):
        p = argparse.ArgumentParser()
        add_precision_flag(p, default=name, aliases=False)
        assert p.parse_args([]).precision == name
        with pytest.raises(SystemExit):
            p.parse_args(["--bf16"])  # aliases=False: only --precision
    with pytest.raises(SystemExit):
        _parse("--precision", "tf32")


def test_autocast_helper_for_resolved_names():
    x = torch.randn(4, 4)
    with policy.autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
    with policy.autocast("bf16", torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16 here, got 'auto'"):
        policy.autocast("auto", "cpu")
