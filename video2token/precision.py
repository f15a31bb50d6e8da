"""One precision policy for every stage that computes (extraction, tokenizer training, pre-training,
fine-tuning, prediction, benchmarks).

`--precision auto` (the default everywhere) picks what the hardware computes natively:
- CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 (training adds dynamic loss
  scaling; a V100 has no fast bf16);
- CPU: bf16 only where the CPU has native bf16 instructions (AMX or AVX512-BF16, as torch's
  cpuinfo reports them) and torch uses them (ATen's AVX512 kernels, oneDNN's bf16), else fp32: on
  AVX2-only CPUs bf16 is emulated and 5-100x slower.

Capping the instruction set (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`) makes an AMX
machine answer like an AVX2-only one. `VIMPAC_CPU_BF16=1` / `=0` overrides the CPU's answer
outright (e.g. to run the fp32 branch on an AMX machine); the run's log line says so. Every entry
point reads it once (`read_cpu_bf16`, in its main) and passes it down as `cpu_bf16`: nothing
below a command line reads the environment.

Explicit `fp32`, `bf16` and `fp16` are honoured as asked (a caller may still refuse a combination
it cannot run, e.g. fp16 training on CPU). `describe()` gives the one log line every run prints.
This module lives in video2token because video2token may not import vimpac; vimpac imports it.
"""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


CPU_BF16_ENV = "VIMPAC_CPU_BF16"  # "1" / "0": override the CPU's native-bf16 answer (and so what auto picks)


def cpu_capabilities() -> dict:
    """What torch reports about this CPU: cpuinfo's flags (empty on torch builds without the query), plus
    `isa`, the ATen dispatcher's level (capped by ATEN_CPU_CAPABILITY), and `onednn_bf16`, whether oneDNN
    runs bf16 here (False under ONEDNN_MAX_CPU_ISA=AVX2 even on an AMX CPU)."""
    caps: dict = {}
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is not None:
        try:
            caps = dict(query())
        except Exception:  # a platform where cpuinfo cannot read the CPU: assume nothing
            caps = {}
    caps["isa"] = torch.backends.cpu.get_cpu_capability()
    try:
        caps["onednn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # torch built without oneDNN
        caps["onednn_bf16"] = False
    return caps


def cpu_bf16_override(environ: Mapping[str, str]) -> bool | None:
    """The user's override of the native-bf16 check in `environ`: VIMPAC_CPU_BF16=1 (native) / 0 (not), else None."""
    value = environ.get(CPU_BF16_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "yes", "true"):
        return True
    if value in ("0", "no", "false"):
        return False
    raise ValueError(f"{CPU_BF16_ENV} must be 1 or 0 (or unset), got {value!r}")


def read_cpu_bf16(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> bool | None:
    """VIMPAC_CPU_BF16 for an entry point's main to pass down as `cpu_bf16` (call it once, with os.environ);
    a bad value is a usage error of `parser` (exit 2), like a bad flag."""
    try:
        return cpu_bf16_override(environ)
    except ValueError as e:
        parser.error(str(e))


def cpu_native_bf16(caps: dict | None = None, *, forced: bool | None = None) -> tuple[bool, str]:
    """(native, why) for bf16 on this CPU, from what torch and oneDNN report, never from CPU names.

    Native needs bf16 units (cpuinfo's amx_bf16 or avx512_bf16) that torch actually uses: an AVX512
    ATen dispatch level and oneDNN's bf16 support (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can cap
    either, which is how an AMX machine emulates an AVX2-only one). `caps` None: this CPU's
    (`cpu_capabilities`). `forced`: the user's VIMPAC_CPU_BF16 (`read_cpu_bf16`), the answer when not None.
    """
    if forced is not None:
        return forced, f"forced by {CPU_BF16_ENV}={int(forced)}"
    if caps is None:
        caps = cpu_capabilities()
    isa = caps.get("isa")
    flags = [k for k in ("amx_bf16", "avx512_bf16") if caps.get(k)]
    has_cpuinfo = any(k in caps for k in ("amx_bf16", "avx512_bf16"))
    if not has_cpuinfo:
        # older torch: the dispatcher's level and oneDNN are all it says; only AVX512 builds may have bf16 units
        native = bool(isa and isa.startswith("AVX512") and caps.get("onednn_bf16"))
        return native, f"oneDNN bf16 {'supported' if native else 'not native'} ({isa})"
    if not flags:
        return False, "no AMX-BF16 / AVX512-BF16"
    why = "+".join(flags)
    capped = []
    if isa is not None and not isa.startswith("AVX512"):
        capped.append(f"ATen dispatch capped at {isa}")
    if caps.get("onednn_bf16") is False:
        capped.append("oneDNN bf16 off (ONEDNN_MAX_CPU_ISA)")
    if capped:
        return False, f"{why} present but unused: {', '.join(capped)}"
    return True, why


def cuda_native_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8  # Ampere and newer have bf16 tensor cores; Volta / Turing do not


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpu_capabilities().get("cpu_name") or "CPU"
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

    @property
    def tf32(self) -> bool:
        """fp32 on a GPU with TF32 tensor cores (Ampere and newer): matmuls and convolutions use TF32."""
        return self.name == "fp32" and self.device.type == "cuda" and self.native_bf16

    def configure_backends(self) -> None:
        """Process-wide backend settings this precision implies (called once by each run's entry point):
        TF32 matmuls and convolutions for fp32 on GPUs that have it, as PyTorch's fp32 default does not."""
        if self.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def describe(self) -> str:
        return (f"precision {self.name}{' (TF32 matmuls)' if self.tf32 else ''} on {self.device.type} "
                f"({self.device_name}); native bf16: {'yes' if self.native_bf16 else 'no'}; {self.reason}")


def resolve_precision(requested: str, device: torch.device | str = "cpu", *, cpu_bf16: bool | None = None) -> Precision:
    """Turn a `--precision` value into a concrete precision for `device`.

    cpu_bf16: the user's VIMPAC_CPU_BF16 (`read_cpu_bf16`), which replaces the CPU's own native-bf16
    answer when not None; the reason then says so. The environment itself is never read here.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    if device.type == "cuda":
        native = cuda_native_bf16(device)
        why_native = f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}"
        auto = ("bf16", f"auto: the GPU computes bf16 natively ({why_native})") if native else \
            ("fp16", f"auto: no native bf16 on this GPU ({why_native}), fp16 with loss scaling")
    else:
        native, why_native = cpu_native_bf16(forced=cpu_bf16)
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
                             "Ampere, CPUs with AMX or AVX512-BF16), fp16 on older GPUs, else fp32; "
                             f"{CPU_BF16_ENV}=1 / 0 in the environment overrides the CPU's answer")
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
