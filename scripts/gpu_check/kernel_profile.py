"""Where a training step's time goes: torch.profiler over a few steps, device time per kernel class.

    python scripts/gpu_check/kernel_profile.py bare --device cuda --batch-size 32 --precision bf16 --out P.json
    python scripts/gpu_check/kernel_profile.py trainer --start-after 40 --steps 4 --out P.json -- \
        <python -m vimpac.pretrain flags>

`bare` profiles benchmarks/train_step.py's step (forward + losses + backward + fused AdamW on one
tensor batch, no data, no DeepSpeed); `trainer` runs `vimpac.pretrain`'s main unchanged and
profiles optimizer steps start_after+1 .. start_after+steps through the loop's `after_step` hook
(data loading, the DeepSpeed engine and logging included). Each writes a summary to --out and
prints it as the last line.

On a GPU the summary is CUDA time per kernel class (`kernel_class`) over the wall time of the
profiled steps; idle is the wall time no kernel ran (the union of the kernels' intervals). On a
CPU (the check's dry run) there are no kernels: the classes are the self CPU time of the aten ops
the profiler records on the calling threads, and idle is the rest of the wall time (Python, the
loader's hand-off, waiting). The profiler adds overhead of its own: compare its ms/step with the
unprofiled rate.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Iterable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: kernel classes of the report, in its column order
CLASSES = ("matmul", "attention", "elementwise/copy", "norm/reduction", "other")

_ATTENTION = re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product|mha_fwd|mha_bwd", re.I)
_MATMUL = re.compile(r"gemm|gemv|cublas|cutlass|xmma|nvjet|wgmma|matmul|splitk|s16816|s1688|h16816|implicit_conv"
                     r"|^aten::(mm|addmm|bmm|baddbmm|addbmm|_addmm_activation|_?convolution|conv\dd|mkldnn_\w*linear"
                     r"|_weight_int\w*mm)$", re.I)
_NORM = re.compile(r"layer_?norm|batch_?norm|group_?norm|rms_?norm|welford|lpnorm|norm_kernel|softmax|reduce"
                   r"|reduction|nll_loss|cross_entropy|^aten::(sum|mean|max|min|amax|amin|argmax|argmin|norm|var"
                   r"|std|all|any|cumsum|logsumexp|linalg_vector_norm|_foreach_norm|topk|sort)$", re.I)
_ELEMENTWISE = re.compile(r"elementwise|copy|memcpy|memset|fill|cat|index|gather|scatter|where|dropout|gelu|relu"
                          r"|multi_tensor_apply|adam|foreach|clamp|masked|embedding|transpose|permute|contiguous"
                          r"|^aten::(add|add_|mul|mul_|sub|sub_|div|div_|neg|exp|log|sqrt|rsqrt|pow|tanh|sigmoid"
                          r"|to|_to_copy|clone|zero_|zeros|ones|empty\w*|lerp_|addcmul_|addcdiv_|bernoulli_"
                          r"|randint|rand|randn|normal_|uniform_|eq|ne|lt|gt|le|ge|logical_\w+|bitwise_\w+|abs"
                          r"|sign|maximum|minimum|ceil|floor|round|stack|split|chunk|unbind|narrow|slice|select"
                          r"|repeat\w*|expand|flip|roll|isfinite|isnan|nan_to_num|reciprocal|square)$", re.I)


def kernel_class(name: str) -> str:
    """The class (one of CLASSES) of a CUDA kernel's name, or of an aten op's name on CPU.

    Attention first (fused kernels such as `fmha_cutlassF_...` also name cutlass), then matmul
    (cuBLAS / CUTLASS / Hopper `nvjet` and `sm90_xmma` GEMMs), norm and reduction (LayerNorm,
    BatchNorm, softmax, reduce kernels, the cross-entropy's), elementwise and copies (pointwise
    kernels, casts, memcpy / memset, concatenation, the optimizer's multi-tensor kernels);
    Triton kernels by their kind (`triton_tem_` templates are matmuls, `triton_red_` / `triton_per_`
    reductions, `triton_poi_` pointwise); NCCL's communication kernels and anything else are other.
    """
    low = name.strip().lower()
    if low.startswith("nccl"):
        return "other"
    m = re.match(r"triton_(tem|red|per|poi)_", low)
    if m:
        if m.group(1) == "tem":
            return "attention" if _ATTENTION.search(low) else "matmul"
        return "norm/reduction" if m.group(1) in ("red", "per") else "elementwise/copy"
    for cls, pattern in (("attention", _ATTENTION), ("matmul", _MATMUL), ("norm/reduction", _NORM),
                         ("elementwise/copy", _ELEMENTWISE)):
        if pattern.search(low):
            return cls
    return "other"


def interval_union(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by [start, end) intervals (kernels on several streams may overlap)."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def summarize(times: Iterable[tuple[str, float]], *, busy_us: float, wall_us: float, steps: int, source: str,
              top: int = 8) -> dict:
    """(name, microseconds) of kernels or ops, the busy time and the wall time of `steps` steps -> the summary:
    per class its share of the wall time and ms per step, idle = (wall - busy) / wall, the `top` names by time."""
    per_class = dict.fromkeys(CLASSES, 0.0)
    per_name: dict[str, float] = {}
    for name, us in times:
        per_class[kernel_class(name)] += us
        per_name[name] = per_name.get(name, 0.0) + us
    wall_us = max(wall_us, 1e-9)
    steps = max(steps, 1)
    idle = max(0.0, wall_us - busy_us)
    return {"source": source, "steps": steps, "wall_ms_per_step": round(wall_us / steps / 1e3, 3),
            "busy_ms_per_step": round(busy_us / steps / 1e3, 3),
            "share": {**{c: round(us / wall_us, 4) for c, us in per_class.items()}, "idle": round(idle / wall_us, 4)},
            "ms_per_step": {c: round(us / steps / 1e3, 3) for c, us in per_class.items()},
            "top": [{"name": n[:120], "class": kernel_class(n), "ms_per_step": round(us / steps / 1e3, 3),
                     "share": round(us / wall_us, 4)}
                    for n, us in sorted(per_name.items(), key=lambda kv: -kv[1])[:top]]}


#: chrome-trace categories of device activity (torch.profiler's kineto export)
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def device_times(trace: dict) -> tuple[list[tuple[str, float]], float]:
    """A chrome trace (dict) -> ([(kernel name, us)], busy us as the union of the kernels' intervals)."""
    items, spans = [], []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") == "X" and str(ev.get("cat", "")).lower() in DEVICE_CATEGORIES:
            ts, dur = float(ev.get("ts", 0.0)), float(ev.get("dur", 0.0))
            items.append((str(ev.get("name", "?")), dur))
            spans.append((ts, ts + dur))
    return items, interval_union(spans)


# ----------------------------------------------------------------------------- profiling (torch from here on)

class StepProfiler:
    """torch.profiler started and stopped around a window of steps (synchronising the device at both ends)."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.prof = None
        self.t0 = 0.0

    def _sync(self) -> None:
        import torch

        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def _profiler(self):
        from torch.profiler import ProfilerActivity, profile

        # on a GPU, kernels only: recording every CPU op would slow a launch-bound step and inflate idle
        activities = [ProfilerActivity.CUDA] if self.device_type == "cuda" else [ProfilerActivity.CPU]
        return profile(activities=activities, record_shapes=False, with_stack=False, profile_memory=False)

    def warm_up(self) -> None:
        """Start and stop a profiler once, so the window's start does not pay the tracer's (CUPTI's) set-up."""
        self._sync()
        prof = self._profiler()
        prof.start()
        prof.stop()

    def start(self) -> None:
        self._sync()
        self.prof = self._profiler()
        self.prof.start()
        self.t0 = time.perf_counter()

    def stop(self, steps: int) -> dict:
        self._sync()
        wall_us = (time.perf_counter() - self.t0) * 1e6
        self.prof.stop()
        if self.device_type == "cuda":
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "trace.json")
                self.prof.export_chrome_trace(path)
                with open(path, encoding="utf-8") as f:
                    trace = json.load(f)
            items, busy = device_times(trace)
            source = "CUDA kernels (torch.profiler, CUPTI, kernels only)"
        else:  # no kernels on a CPU: the aten ops' self CPU time
            items = [(e.key, float(e.self_cpu_time_total)) for e in self.prof.key_averages()
                     if not e.key.startswith(("ProfilerStep", "[memory]"))]
            busy = min(sum(us for _, us in items), wall_us)
            source = "CPU ops, self CPU time (no CUDA here: aten op names, not kernels)"
        out = summarize(items, busy_us=busy, wall_us=wall_us, steps=steps, source=source)
        out["events"] = len(items)
        if not items:
            out["error"] = f"the profiler recorded no {'kernels' if self.device_type == 'cuda' else 'ops'}"
        return out


def profile_bare(*, device: str, config: str, batch_size: int, precision: str, clip_len: int, grid: int, vocab: int,
                 warmup: int, steps: int, tiny: bool) -> dict:
    """benchmarks/train_step.py's step of this package's model: `warmup` steps, `steps` timed without the
    profiler, then `steps` profiled."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fixtures import TINY_MODEL
    from train_step import make_step

    from vimpac.model.config import named_config

    dev = torch.device(device)
    cfg = named_config(config, vocab_size=vocab, clip_len=clip_len, grid_h=grid, grid_w=grid,
                       **(TINY_MODEL if tiny else {}))
    step = make_step(impl="vimpac", cfg=cfg, batch_size=batch_size, precision=precision, num_blocks=5, device=dev)
    prof = StepProfiler(dev.type)
    for _ in range(warmup):
        step()
    prof.warm_up()
    prof._sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    prof._sync()
    plain_ms = (time.perf_counter() - t0) / steps * 1e3
    prof.start()
    for _ in range(steps):
        step()
    out = prof.stop(steps)
    out.update(what=f"bare step ({config}, {batch_size} clips, T={clip_len}, {grid}x{grid}, {precision})",
               unprofiled_ms_per_step=round(plain_ms, 3), clips_per_s_unprofiled=round(batch_size / plain_ms * 1e3, 2))
    return out


def profile_trainer(argv: list[str], *, start_after: int, steps: int, out_path: str) -> int:
    """`vimpac.pretrain` with `argv`, profiling optimizer steps start_after+1 .. start_after+steps; the summary
    goes to out_path when the window closes (a run that ends before writes none)."""
    from vimpac import pretrain
    from vimpac.train.hooks import LoopHooks
    from vimpac.train.runtime import Launch

    device_type = Launch.from_environ().device_type
    prof = StepProfiler(device_type)

    def after_step(step: int) -> None:
        if step == 1 and start_after > 1:  # inside the warm-up steps the steady rate leaves out
            prof.warm_up()
        if step == start_after:
            prof.start()
        elif step == start_after + steps and prof.prof is not None:
            summary = prof.stop(steps)
            summary["what"] = f"trainer steps {start_after + 1}-{start_after + steps}"
            _write_json(out_path, summary)
            print(f"[kernel_profile] {json.dumps(summary)}", flush=True)

    return pretrain.main(argv, hooks=LoopHooks(after_step=after_step))


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path + ".tmp", "wt", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="python scripts/gpu_check/kernel_profile.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bare")
    b.add_argument("--device", required=True)
    b.add_argument("--config", default="small")
    b.add_argument("--batch-size", type=int, default=32, help="clips per step")
    b.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    b.add_argument("--clip-len", type=int, default=5)
    b.add_argument("--grid", type=int, default=16)
    b.add_argument("--vocab", type=int, default=8192)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--steps", type=int, default=4)
    b.add_argument("--tiny", action="store_true")
    b.add_argument("--out", required=True)
    t = sub.add_parser("trainer", help="profile a vimpac.pretrain run; its flags after --")
    t.add_argument("--start-after", type=int, required=True, help="the optimizer step the window starts after")
    t.add_argument("--steps", type=int, default=4)
    t.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "trainer":
        if not rest:
            p.error("trainer: give vimpac.pretrain's flags after --")
        return profile_trainer(rest, start_after=a.start_after, steps=a.steps, out_path=a.out)
    if rest:
        p.error(f"bare takes no flags after --, got {rest}")
    summary = profile_bare(device=a.device, config=a.config, batch_size=a.batch_size, precision=a.precision,
                           clip_len=a.clip_len, grid=a.grid, vocab=a.vocab, warmup=a.warmup, steps=a.steps,
                           tiny=a.tiny)
    _write_json(a.out, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
