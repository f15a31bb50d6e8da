"""One precision policy for every stage that computes (extraction, tokenizer training, pre-training,
fine-tuning, prediction, benchmarks).

`--precision auto` (the default everywhere) picks what the hardware computes natively:
- CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 (training adds dynamic loss
  scaling; a V100 has no fast bf16);
- CPU: bf16 only where the CPU has native bf16 instructions (AMX or AVX512-BF16, as torch's
  cpuinfo reports them), else fp32: on AVX2-only CPUs bf16 is emulated and 5-100x slower.

Explicit `fp32`, `bf16` and `fp16` are honoured as asked (a caller may still refuse a combination
it cannot run, e.g. fp16 training on CPU). `describe()` gives the one log line every run prints.
This module lives in video2token because video2token may not import vimpac; vimpac imports it.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_capabilities() -> dict:
    """What torch's cpuinfo reports about this CPU (empty on torch builds without the query)."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is None:
        return {}
    try:
        return dict(query())
    except Exception:  # a platform where cpuinfo cannot read the CPU: assume nothing
        return {}


def cpu_native_bf16(caps: dict | None = None) -> tuple[bool, str]:
    """(native, which instructions) for bf16 matmuls on this CPU, from torch's report, not CPU names."""
    caps = cpu_capabilities() if caps is None else caps
    if caps:
        have = [k for k in ("amx_bf16", "avx512_bf16") if caps.get(k)]
        return bool(have), "+".join(have) if have else "no AMX-BF16 / AVX512-BF16"
    # older torch: the dispatcher's ISA level is all it says; only AVX512 builds may have bf16 units
    isa = torch.backends.cpu.get_cpu_capability()
    native = isa.startswith("AVX512") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return native, f"oneDNN bf16 {'supported' if native else 'not native'} ({isa})"


def cuda_native_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8  # Ampere and newer have bf16 tensor cores; Volta / Turing do not


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caps = cpu_capabilities()
    name = caps.get("cpu_name") or "CPU"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why it was chosen."""

    name: str              # "fp32" | "bf16" | "fp16" (never "auto")
    device: torch.device
    requested: str         # what the flag said
    native_bf16: bool
    device_name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def lowp(self) -> bool:
        """True for bf16 / fp16 (autocast regions), False for fp32."""
        return self.name != "fp32"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the chosen half type over fp32 weights; nothing for fp32."""
        if self.lowp:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                yield
        else:
            yield

    def describe(self) -> str:
        return (f"precision {self.name} on {self.device.type} ({self.device_name}); native bf16: "
                f"{'yes' if self.native_bf16 else 'no'}; {self.reason}")


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> Precision:
    """Turn a `--precision` value into a concrete precision for `device`."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = cuda_native_bf16(device)
        why_native = f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}"
        auto = ("bf16", f"auto: the GPU computes bf16 natively ({why_native})") if native else \
            ("fp16", f"auto: no native bf16 on this GPU ({why_native}), fp16 with loss scaling")
    else:
        native, why_native = cpu_native_bf16()
        auto = ("bf16", f"auto: the CPU computes bf16 natively ({why_native})") if native else \
            ("fp32", f"auto: bf16 would be emulated on this CPU ({why_native}), fp32 is faster")
    if requested == "auto":
        name, reason = auto
    else:
        name, reason = requested, f"as requested (auto would pick {auto[0]})"
    return Precision(name=name, device=device, requested=requested, native_bf16=native,
                     device_name=device_name(device), reason=reason)


def add_precision_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: str = "auto",
                       aliases: bool = True) -> None:
    """`--precision {auto,fp32,bf16,fp16}` plus the aliases `--bf16`, `--fp16`, `--fp32` (the last one given wins)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=default,
                        help="compute precision; auto: bf16 where the hardware computes it natively (GPUs since "
                             "Ampere, CPUs with AMX or AVX512-BF16), fp16 on older GPUs, else fp32")
    if aliases:
        for name in ("bf16", "fp16", "fp32"):
            parser.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                                help=f"same as --precision {name}")


def autocast(name: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast for an already resolved precision name ("fp32" | "bf16" | "fp16") on `device`."""
    if name not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)} here, got {name!r}")
    device = torch.device(device)
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[name])
