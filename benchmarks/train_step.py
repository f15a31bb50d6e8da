"""Benchmark one VIMPAC pre-training step (Tan et al., 2021): this package's model vs a naive reference.

One step = forward + masked-token loss + symmetric InfoNCE + backward + AdamW, on a batch of
`--batch-size` clips (pairs of clips from the same video: clips 2i and 2i+1) of T x h x w random
codes, block-masked as in pre-training. Each measurement runs in a fresh subprocess so that
peak RSS belongs to that model alone.

  python benchmarks/train_step.py --config small --batch-size 4 --clip-len 5 --grid 16 --precision bf16 --json
  python benchmarks/train_step.py --precision fp32 --reference same
  python benchmarks/train_step.py --sweep --precision bf16     # step time vs T, grid and layout -> PNG
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vimpac.model.config import CONFIG_NAMES, ModelConfig, named_config  # noqa: E402
from vimpac.model.losses import symmetric_infonce  # noqa: E402
from vimpac.data.masking import apply_mask, block_mask, expected_block_mask_ratio  # noqa: E402
from vimpac.model.transformer import VimpacForPretraining  # noqa: E402

SWEEP_LAYOUTS = ("T,H|W", "T,H,W", "THW")
SWEEP_T = (5, 10, 20)
SWEEP_GRIDS = (16, 32)


# ----------------------------------------------------------------------------- FLOPs

def train_flops_per_clip(cfg: ModelConfig, t: int, h: int, w: int, masked_frac: float) -> float:
    """Matmul FLOPs of one clip's forward + backward in this package's model (backward = 2x forward).

    Counts the projections ([CLS] projected once per block), the attention over [CLS] + row for
    every row, the MLP, and the MP head on masked positions only; elementwise work is ignored.
    """
    n, d, inner = t * h * w, cfg.hid_dim, cfg.attn_dim
    sizes = {"T": t, "H": h, "W": w}
    fwd = 0.0
    for parts in cfg.blocks:
        fwd += 2 * (n + 1) * d * 4 * inner  # qkv + output projection
        per_part = [cfg.heads // len(parts) + (1 if i < cfg.heads % len(parts) else 0) for i in range(len(parts))]
        for axes, g in zip(parts, per_part):
            length = 1
            for a in axes:
                length *= sizes[a]
            rows = n // length
            fwd += 4 * rows * g * (length + 1) ** 2 * cfg.head_dim  # QK^T and AV
    fwd += 4 * (n + 1) * d * cfg.mlp_dim
    fwd *= cfg.layers
    m = masked_frac * n
    fwd += 2 * m * d * d + 2 * m * d * cfg.vocab_size
    return 3 * fwd


def matmul_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` TFLOP/s of a plain n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


# ----------------------------------------------------------------------------- one measurement

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(impl: str, cfg: ModelConfig) -> torch.nn.Module:
    if impl == "vimpac":
        return VimpacForPretraining(cfg)
    from naive_model import NaivePretrainModel  # benchmarks/ is on sys.path when run as a script
    return NaivePretrainModel(cfg)


def make_step(*, impl: str, cfg: ModelConfig, batch_size: int, precision: str, num_blocks: int,
              device: torch.device, seed: int = 0) -> Callable[[], None]:
    """Build a model, AdamW and one block-masked batch; return a function running one training step."""
    torch.manual_seed(seed)
    model = _build(impl, cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05,
                            fused=device.type in ("cpu", "cuda"))
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, cfg.clip_len, cfg.grid_h, cfg.grid_w)
    codes = torch.randint(0, cfg.vocab_size, shape, generator=g)
    codes_in, mask = apply_mask(codes, block_mask(shape, num_blocks, g), cfg.special_tokens)
    codes, codes_in, mask = codes.to(device), codes_in.to(device), mask.to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    def step() -> None:
        with autocast():
            if impl == "vimpac":
                out = model(codes_in, mask, codes)
                mp_loss, proj = out.mp_loss, out.cls_proj
            else:
                mp_loss, proj = model(codes_in, mask, codes)
            nce = symmetric_infonce(proj[0::2], proj[1::2], temperature=0.2)
            loss = mp_loss + nce.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], *, warmup: int, rounds: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Step times per name; each round runs one step of every entry, so load from other
    processes on a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + rounds):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def _summary(times: list[float], batch_size: int) -> dict:
    return {"step_s": [round(t, 4) for t in times], "step_s_median": round(statistics.median(times), 4),
            "clips_per_s": round(batch_size / statistics.median(times), 3),
            "clips_per_s_best": round(batch_size / min(times), 3)}


def worker(args: argparse.Namespace, cfg: ModelConfig, device: torch.device) -> dict:
    """--worker-mode time: all specs in one process, interleaved; mem: one spec alone, with its peak memory."""
    specs = [tuple(spec.split("@")) for spec in args.worker.split(",")]
    common = dict(cfg=cfg, batch_size=args.batch_size, num_blocks=args.num_blocks, device=device)
    if args.worker_mode == "time":
        steps = {f"{impl}@{prec}": make_step(impl=impl, precision=prec, **common) for impl, prec in specs}
        times = time_interleaved(steps, warmup=args.warmup, rounds=args.steps, device=device)
        return {name: _summary(t, args.batch_size) for name, t in times.items()}
    (impl, prec), = specs
    step = make_step(impl=impl, precision=prec, **common)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = psutil.Process().memory_info().rss / 2 ** 20
    # two steps at least: AdamW allocates its state in the first, activations peak in the second
    times = time_interleaved({"s": step}, warmup=max(1, args.warmup), rounds=args.steps, device=device)["s"]
    result = {**_summary(times, args.batch_size),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "rss_before_steps_mb": round(rss_before, 1)}
    if device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return result


def _run_worker(args: argparse.Namespace, specs: list[str], mode: str) -> dict:
    """Run a worker in a fresh interpreter (clean peak RSS), return its JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", ",".join(specs), "--worker-mode", mode,
           "--config", args.config, "--batch-size", str(args.batch_size), "--clip-len", str(args.clip_len),
           "--grid", str(args.grid), "--vocab-size", str(args.vocab_size), "--num-blocks", str(args.num_blocks),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--device", args.device,
           "--layout", args.layout, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {specs} ({mode}) failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sweep

def sweep(args: argparse.Namespace, device: torch.device) -> None:
    """Step time vs T and grid for several layouts, one worker process per point.

    A point is skipped when the FLOP rate and memory per token measured at the layout's
    first point predict more than --max-step-s per step or more than --max-mem-gb of RSS.
    """
    from tqdm import tqdm
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = [(lay, g, t) for lay in SWEEP_LAYOUTS for g in SWEEP_GRIDS for t in SWEEP_T]
    rows: list[dict] = []
    first: dict[str, dict] = {}  # per layout: FLOP/s and activation MB per token at its first point
    for layout, grid, t in tqdm(points, desc="sweep", unit="point"):
        cfg = named_config(args.config, vocab_size=args.vocab_size, clip_len=t, grid_h=grid, grid_w=grid,
                           layout=layout)
        frac = expected_block_mask_ratio((t, grid, grid), args.num_blocks)
        flops = train_flops_per_clip(cfg, t, grid, grid, frac) * args.batch_size
        tokens = t * grid * grid * args.batch_size
        row = {"layout": layout, "clip_len": t, "grid": grid, "tokens": t * grid * grid, "gflop_per_step": flops / 1e9}
        if layout in first:
            f = first[layout]
            row["est_step_s"] = flops / f["flop_s"]
            row["est_rss_gb"] = (f["base_mb"] + f["mb_per_token"] * tokens) / 1024
        if row.get("est_step_s", 0) > args.max_step_s or row.get("est_rss_gb", 0) > args.max_mem_gb:
            row["skipped"] = True
        else:
            point = argparse.Namespace(**{**vars(args), "clip_len": t, "grid": grid, "layout": layout, "warmup": 1,
                                          "steps": args.sweep_steps})
            try:
                r = _run_worker(point, [f"vimpac@{args.precision}"], "mem")
                row.update(step_s=r["step_s_median"], peak_rss_mb=r["peak_rss_mb"])
                first.setdefault(layout, {"flop_s": flops / r["step_s_median"], "base_mb": r["rss_before_steps_mb"],
                                          "mb_per_token": (r["peak_rss_mb"] - r["rss_before_steps_mb"]) / tokens})
            except RuntimeError as err:  # e.g. killed for memory at the largest points
                row["error"] = str(err).splitlines()[0][:120]
        rows.append(row)

    fig, axes = plt.subplots(1, len(SWEEP_GRIDS), figsize=(5 * len(SWEEP_GRIDS), 4), sharey=True)
    for ax, grid in zip(axes, SWEEP_GRIDS):
        for color, layout in zip(("tab:blue", "tab:orange", "tab:green"), SWEEP_LAYOUTS):
            pts = [(r["clip_len"], r["step_s"]) for r in rows if r["layout"] == layout and r["grid"] == grid and "step_s" in r]
            ax.plot(*(zip(*pts) if pts else ([], [])), marker="o", color=color, label=layout)
        ax.set(title=f"grid {grid}x{grid}, batch {args.batch_size}, {args.precision}", xlabel="clip length T",
               xticks=SWEEP_T, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train step time (s)")
    axes[0].legend()
    fig.tight_layout()
    png = out_dir / f"train_step_scaling_{args.precision}.png"
    fig.savefig(png, dpi=120)
    (out_dir / f"train_step_scaling_{args.precision}.json").write_text(json.dumps(rows, indent=1))

    print("| layout | T | grid | tokens/clip | GFLOP/step | step (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "step_s" in r:
            cell, mem = f"{r['step_s']:.2f}", f"{r['peak_rss_mb']:.0f}"
        elif r.get("skipped"):
            cell, mem = f"skipped (est. {r['est_step_s']:.0f} s)", f"(est. {r['est_rss_gb'] * 1024:.0f})"
        else:
            cell, mem = f"error: {r.get('error')}", ""
        print(f"| {r['layout']} | {r['clip_len']} | {r['grid']}x{r['grid']} | {r['tokens']} | "
              f"{r['gflop_per_step']:.0f} | {cell} | {mem} |")
    done = sum("step_s" in r for r in rows)
    print(f"sweep: {done}/{len(rows)} points measured, curve written to {png}")


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=CONFIG_NAMES, default="small")
    ap.add_argument("--batch-size", type=int, default=4, help="clips per step (pairs of clips per video)")
    ap.add_argument("--clip-len", type=int, default=5)
    ap.add_argument("--grid", type=int, default=16, help="code-map side h = w")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--layout", default="T,H|W")
    ap.add_argument("--num-blocks", type=int, default=5)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--reference", choices=("both", "same", "none"), default="both",
                    help="naive reference at fp32 and bf16 / at --precision only / not at all")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per model (interleaved between models)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--sweep", action="store_true", help="scaling sweep over T, grid and layout (writes a PNG)")
    ap.add_argument("--sweep-steps", type=int, default=1)
    ap.add_argument("--max-step-s", type=float, default=60.0, help="sweep: skip points predicted to take longer")
    ap.add_argument("--max-mem-gb", type=float, default=8.0, help="sweep: skip points predicted to need more RSS")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # "impl@precision,..." (internal)
    ap.add_argument("--worker-mode", choices=("time", "mem"), default="time", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch_size < 2 or args.batch_size % 2:
        ap.error("--batch-size must be even and >= 2 (clips come in pairs for the contrastive loss)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()  # workers inherit the parent's count
    device = torch.device(args.device)
    cfg = named_config(args.config, vocab_size=args.vocab_size, clip_len=args.clip_len, grid_h=args.grid,
                       grid_w=args.grid, layout=args.layout)

    if args.worker:
        print(json.dumps(worker(args, cfg, device)))
        return
    if args.sweep:
        sweep(args, device)
        return

    from tqdm import tqdm
    specs = [f"vimpac@{args.precision}"]
    if args.reference == "both":
        specs += ["naive@fp32", "naive@bf16"]
    elif args.reference == "same":
        specs += [f"naive@{args.precision}"]
    bar = tqdm(total=1 + len(specs), desc="train step", unit="run", disable=args.json)
    timing = _run_worker(args, specs, "time")  # interleaved, the numbers to compare
    bar.update()
    memory = {}
    for spec in specs:  # peak memory needs one process per model
        memory[spec] = _run_worker(argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1}), [spec], "mem")
        bar.update()
    bar.close()
    results = {spec: {**timing[spec], "peak_rss_mb": memory[spec]["peak_rss_mb"],
                      **({"peak_gpu_mb": memory[spec]["peak_gpu_mb"]} if "peak_gpu_mb" in memory[spec] else {})}
               for spec in specs}
    ours = results[specs[0]]
    frac = expected_block_mask_ratio((cfg.clip_len, cfg.grid_h, cfg.grid_w), args.num_blocks)
    flops = train_flops_per_clip(cfg, cfg.clip_len, cfg.grid_h, cfg.grid_w, frac)
    achieved = flops * ours["clips_per_s"] / 1e12
    # best step vs best matmul: both estimate the machine when other jobs leave it alone
    achieved_best = flops * ours["clips_per_s_best"] / 1e12
    ref_tflops = matmul_tflops(torch.bfloat16, device)
    summary = {"impl": "vimpac", "precision": args.precision, "device": str(device),
               "threads": torch.get_num_threads(), "config": args.config, "batch_size": args.batch_size,
               "clip_len": cfg.clip_len, "grid": cfg.grid_h, "layout": cfg.layout, **ours,
               "gflop_per_clip": round(flops / 1e9, 1), "achieved_tflops": round(achieved, 3),
               "bf16_matmul_tflops": round(ref_tflops, 3), "fraction_of_bf16_matmul": round(achieved / ref_tflops, 3),
               "achieved_tflops_best": round(achieved_best, 3),
               "fraction_of_bf16_matmul_best": round(achieved_best / ref_tflops, 3),
               "naive": {spec.split("@")[1]: r for spec, r in results.items() if spec.startswith("naive")}}
    for prec, r in summary["naive"].items():
        summary[f"speedup_vs_naive_{prec}"] = round(ours["clips_per_s"] / r["clips_per_s"], 2)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"| model | precision | clips/s (median) | clips/s (best) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for spec, r in results.items():
        impl, prec = spec.split("@")
        print(f"| {impl} | {prec} | {r['clips_per_s']:.2f} | {r['clips_per_s_best']:.2f} | {r['peak_rss_mb']:.0f} |")
    speedups = ", ".join(f"{k.removeprefix('speedup_vs_')}: {v}x" for k, v in summary.items() if k.startswith("speedup"))
    print(f"train step ({args.config}, batch {args.batch_size}, T={cfg.clip_len}, {cfg.grid_h}x{cfg.grid_w}, "
          f"{args.device}, {summary['threads']} threads): {ours['clips_per_s']:.2f} clips/s {args.precision}, "
          f"{achieved:.3f} TFLOP/s = {achieved / ref_tflops:.0%} of a bf16 matmul ({ref_tflops:.2f} TFLOP/s; "
          f"best step: {achieved_best / ref_tflops:.0%}); "
          f"speedup {speedups}")


if __name__ == "__main__":
    main()
