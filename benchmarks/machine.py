"""The machine line every benchmark prints: CPU model, threads, torch, native bf16 and why."""
from __future__ import annotations

import torch

from video2token.precision import cpu_native_bf16, device_name


def cpu_model() -> str:
    """lscpu's model name (from /proc/cpuinfo), else the policy's short device name."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return device_name(torch.device("cpu"))


def machine_line(cpu_bf16: bool | None = None) -> str:
    """`cpu_bf16`: the user's VIMPAC_CPU_BF16, read by the benchmark's main (video2token.precision.read_cpu_bf16)."""
    native, why = cpu_native_bf16(forced=cpu_bf16)
    return (f"{cpu_model()} ({device_name(torch.device('cpu'))}), {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}, native bf16: {'yes' if native else 'no'} ({why})")
