"""Benchmark one VIMPAC pre-training step (Tan et al., 2021): this package's model vs a reference.

One step = forward + masked-token loss + contrastive loss + backward + AdamW, on a batch of
`--batch-size` clips (pairs of clips from the same video) of T x h x w random codes, block-masked
as in pre-training. The reference is the original VIMPAC code (github.com/airsplay/vimpac) when
`--original-repo` points at a checkout of it, imported at run time (nothing of it is copied
here); without it, benchmarks/naive_model.py, which imitates it. Ours runs at `--precision`
(auto: bf16 where the CPU computes it natively, else fp32; video2token.precision); the reference
runs at every precision this machine computes natively (fp32, plus bf16 on AMX / AVX512-BF16),
never at an emulated one. All models are timed in one process, step by step in turn; peak RSS
comes from one fresh process per model.

  python benchmarks/train_step.py                                   # small, batch 4, T=5, 16x16, auto
  python benchmarks/train_step.py --original-repo ../vimpac-original  # vs the original code
  python benchmarks/train_step.py --precision fp32 --original-repo ../vimpac-original
  python benchmarks/train_step.py --precision auto --json           # one JSON object: clips_per_s, precision, ...
  python benchmarks/train_step.py --sweep --threads 1               # step time vs T, grid and layout -> PNG

The original code: `git clone https://github.com/airsplay/vimpac ../vimpac-original` (its model
imports only torch). An AVX2-only CPU, emulated on an AMX one (the precision policy then picks fp32):

  MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/train_step.py ...

The run prints the machine (CPU model, native bf16, threads, torch) and the precision first, and
says which reference precisions it skips (bf16 where it would be emulated). `--budget-s` (default
420) cuts timed rounds and the peak-RSS runs so a slow CPU still finishes in under 10 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vimpac.model.config import CONFIG_NAMES, ModelConfig, named_config  # noqa: E402
from vimpac.model.losses import symmetric_infonce  # noqa: E402
from vimpac.data.masking import apply_mask, block_mask, expected_block_mask_ratio  # noqa: E402
from vimpac.data.pretrain_clips import MASK_PAD_TO  # noqa: E402
from vimpac.model.masked import MaskedTargets  # noqa: E402
from vimpac.model.transformer import VimpacForPretraining  # noqa: E402
from video2token.precision import Precision, autocast, read_cpu_bf16, resolve_precision  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

SWEEP_LAYOUTS = ("T,H|W", "T,H,W", "THW")
SWEEP_T = (5, 10, 20)
SWEEP_GRIDS = (16, 32)


# ----------------------------------------------------------------------------- FLOPs

PATCH = 8  # pixel input: the DALL-E / VQ-VAE stride, so a clip of 16x16 codes is 128x128 px


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


# ----------------------------------------------------------------------------- the original VIMPAC code

def import_original(repo: str | Path) -> SimpleNamespace:
    """The original VIMPAC's `vimpac.modeling` and `vimpac.nce_support`, imported from a checkout at `repo`.

    Its package is also named `vimpac`: this repo's `vimpac.*` modules are set aside while the
    checkout is first on sys.path, the original's modules are then filed under `_original_vimpac.*`
    and ours put back. The original's modules import only torch.
    """
    root = Path(repo).resolve()
    if not (root / "vimpac" / "modeling.py").is_file():
        raise FileNotFoundError(f"--original-repo {repo}: no vimpac/modeling.py there; expected a checkout of "
                                f"https://github.com/airsplay/vimpac")
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "vimpac" or k.startswith("vimpac.")}
    sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module("vimpac.modeling")
        nce_support = importlib.import_module("vimpac.nce_support")
        positional = importlib.import_module("vimpac.positional_embedding")
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "vimpac" or k.startswith("vimpac.")]:
            sys.modules["_original_" + k] = sys.modules.pop(k)
        sys.modules.update(ours)
    return SimpleNamespace(modeling=modeling, nce_support=nce_support, option2args=positional.option2args,
                           root=root)


def build_original(orig: SimpleNamespace, cfg: ModelConfig) -> torch.nn.Module:
    """The original's model as its pretrain.py (`Trainer.__init__`) builds it, sizes from `cfg`.

    Shims: `TransformerLayout` and `PositionalEmbedding` call `dist.get_rank()` while being built,
    so a 1-rank gloo group exists during construction only; with no group left afterwards the
    CL head's `SyncBatchNorm` runs as plain BatchNorm on CPU (over one rank they are the same).
    """
    if any(len(part) != 1 for parts in cfg.blocks for part in parts):
        raise ValueError(f"the original code supports single-axis parts only (e.g. 'T,H|W'), not {cfg.layout!r}")
    # its sizes: heads from the flag arithmetic, attention width hid or hid/2, MLP width 4x or 2x hid
    halve = SimpleNamespace(halve_att=cfg.attn_dim == cfg.hid_dim // 2, halve_mlp=cfg.mlp_dim == 2 * cfg.hid_dim)
    if cfg.attn_dim not in (cfg.hid_dim, cfg.hid_dim // 2) or cfg.mlp_dim not in (2 * cfg.hid_dim, 4 * cfg.hid_dim):
        raise ValueError(f"config {cfg.name!r} has no equivalent in the original code (attention {cfg.attn_dim}, "
                         f"MLP {cfg.mlp_dim} for width {cfg.hid_dim})")
    import torch.distributed as dist

    m = orig.modeling
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its construction prints; stdout carries our JSON
            backbone = m.TransformerLayout(
                height=cfg.grid_h, width=cfg.grid_w, length=cfg.clip_len, vocab_size=cfg.vocab_size + 5,
                hid_dim=cfg.hid_dim, layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout,
                use_cls_token=True, pre_activation=False, output_mode="both",
                pos_emb_args=orig.option2args(cfg.pos_emb), grad_checkpoint=False, layout=cfg.layout,
                args=halve)
            mlm_head = m.BertLMPredictionHead(hid_dim=cfg.hid_dim, output_labels=cfg.vocab_size + 5,
                                              tied_embedding=backbone.embedding)
            cls_head = m.CLSMLPHead(num_layers=cfg.nce_proj_layers, input_dim=cfg.hid_dim,
                                    hid_dim=cfg.nce_proj_hid_dim, output_dim=256, norm_type="bn",
                                    activation="relu", bn_after_proj=False)
    finally:
        if created:
            dist.destroy_process_group()
    return m.ModelWithHead(model=backbone, mlm_head=mlm_head, cls_head=cls_head)


# ----------------------------------------------------------------------------- one measurement

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(*, impl: str, cfg: ModelConfig, batch_size: int, precision: str, num_blocks: int,
              device: torch.device, seed: int = 0, original_repo: str | None = None) -> Callable[[], None]:
    """Build a model, AdamW and one block-masked batch; return a function running one training step.

    impl: "vimpac" (this package), "naive" (benchmarks/naive_model.py) or "original" (the original
    code from `original_repo`, its own losses: cross-entropy over every position with ignore index
    -100, DistributedNCELoss over one rank). precision: "fp32", "bf16" or "fp16" (autocast).
    """
    torch.manual_seed(seed)
    if impl == "pixels":  # BEVT mode: frames in (patches of the tokenizer's stride 8), codes as targets
        cfg = cfg.replace(input="pixels", patch_size=PATCH)
    if impl in ("vimpac", "pixels"):
        model = VimpacForPretraining(cfg)
    elif impl == "naive":
        from naive_model import NaivePretrainModel  # benchmarks/ is on sys.path when run as a script
        model = NaivePretrainModel(cfg)
    elif impl == "original":
        if original_repo is None:
            raise ValueError("impl 'original' needs original_repo")
        orig = import_original(original_repo)
        model = build_original(orig, cfg)
    else:
        raise ValueError(f"unknown impl {impl!r}")
    model = model.to(device).train()
    # the same optimizer for every model, so the step compares model code only
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05,
                            fused=device.type in ("cpu", "cuda"))
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, cfg.clip_len, cfg.grid_h, cfg.grid_w)
    codes = torch.randint(0, cfg.vocab_size, shape, generator=g)
    codes_in, mask = apply_mask(codes, block_mask(shape, num_blocks, g), cfg.special_tokens)
    codes, codes_in, mask = codes.to(device), codes_in.to(device), mask.to(device)
    if impl == "pixels":  # the model reads uint8 frames; the masked patches get its [MASK] embedding
        codes_in = torch.randint(0, 256, (*shape, PATCH, PATCH, 3), dtype=torch.uint8, generator=g)
        codes_in = codes_in.permute(0, 1, 2, 4, 3, 5, 6).reshape(*shape[:2], shape[2] * PATCH, shape[3] * PATCH, 3)
        codes_in = codes_in.to(device)

    if impl == "original":
        # the original's batch order: first clips of every video, then the second clips (its NCE
        # loss chunks the batch in halves); its [MASK] id is 8196 (vocab + 4), labels -100 where not masked
        order = torch.cat([torch.arange(0, batch_size, 2), torch.arange(1, batch_size, 2)]).to(device)
        codes, codes_in, mask = codes[order], codes_in[order], mask[order]
        codes_in = torch.where(mask, torch.full_like(codes_in, cfg.vocab_size + 4), codes_in)
        labels = torch.where(mask, codes, torch.full_like(codes, -100))
        criterion = torch.nn.CrossEntropyLoss()
        nce = orig.nce_support.DistributedNCELoss()

        def forward_loss() -> torch.Tensor:
            cls_hiddens, logits = model(codes_in)
            mlm_loss = criterion(logits.flatten(0, -2), labels.flatten())
            return mlm_loss + nce(cls_hiddens, hidden_norm=True, temperature=0.2, dist=False)
    else:
        # what the trainer's loader hands the model: the masked positions and their codes, found on the host
        masked = MaskedTargets.from_mask(mask.cpu(), codes.cpu(), pad_to=MASK_PAD_TO).to(device)

        def forward_loss() -> torch.Tensor:
            if impl in ("vimpac", "pixels"):
                out = model(codes_in, mask, masked=masked, frame_valid=None)
                mp_loss, proj = out.mp_loss, out.cls_proj
            else:
                mp_loss, proj = model(codes_in, mask, codes)
            return mp_loss + symmetric_infonce(proj[0::2], proj[1::2], temperature=0.2).loss

    def step() -> None:
        with autocast(precision, device):
            loss = forward_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], *, warmup: int, rounds: int,
                     device: torch.device, budget_s: float = float("inf"),
                     cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Wall step times per name; each round runs one step of every entry, so load from other
    processes on a shared machine hits all of them alike. Rounds stop early (one timed round at
    least) when the next one would end past `budget_s` seconds from the start. `cpu_times`, if
    given, receives each step's process CPU time (with 1 thread: the work done, minus the time
    other jobs held the core)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    for i in range(warmup + rounds):
        round_start = time.perf_counter()
        for name, step in steps.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                if cpu_times is not None:
                    cpu_times.setdefault(name, []).append(time.process_time() - c0)
        now = time.perf_counter()
        if i >= warmup and now + (now - round_start) - start > budget_s:
            break
    return times


def _summary(times: list[float], batch_size: int, cpu: list[float] | None = None) -> dict:
    out = {"step_s": [round(t, 4) for t in times], "step_s_median": round(statistics.median(times), 4),
           "clips_per_s": round(batch_size / statistics.median(times), 3),
           "clips_per_s_best": round(batch_size / min(times), 3)}
    if cpu:
        out["step_cpu_s_median"] = round(statistics.median(cpu), 4)
    return out


def worker(args: argparse.Namespace, cfg: ModelConfig, device: torch.device) -> dict:
    """--worker-mode time: all specs in one process, interleaved; mem: one spec alone, with its peak memory."""
    specs = [tuple(spec.split("@")) for spec in args.worker.split(",")]
    common = dict(cfg=cfg, batch_size=args.batch_size, num_blocks=args.num_blocks, device=device,
                  original_repo=args.original_repo)
    if args.worker_mode == "time":
        steps = {f"{impl}@{prec}": make_step(impl=impl, precision=prec, **common) for impl, prec in specs}
        cpu: dict[str, list[float]] = {}
        times = time_interleaved(steps, warmup=args.warmup, rounds=args.steps, device=device,
                                 budget_s=args.budget_s, cpu_times=cpu)
        return {name: _summary(t, args.batch_size, cpu.get(name)) for name, t in times.items()}
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
           "--layout", args.layout, "--threads", str(args.threads), "--budget-s", str(args.budget_s)]
    if args.original_repo:
        cmd += ["--original-repo", args.original_repo]
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

def reference_precisions(device: torch.device, cpu_bf16: bool | None = None) -> list[str]:
    """The precisions the reference runs at: fp32 and what `auto` picks here, i.e. only native ones
    (bf16 on an AVX2-only CPU is emulated: a step would take minutes and say nothing)."""
    auto = resolve_precision("auto", device, cpu_bf16=cpu_bf16).name
    return ["fp32"] if auto == "fp32" else ["fp32", auto]


def machine_line(prec: Precision, device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return (f"machine: {name} ({prec.device_name}), {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}; native bf16: {'yes' if prec.native_bf16 else 'no'}; precision {prec.name} "
            f"({prec.reason})")


def skipped_references(ref_impl: str, prec: Precision, reference: str) -> dict[str, str]:
    """Reference precisions left out on this machine, with the reason (printed and in the JSON)."""
    if reference == "none":
        return {}
    skipped = {}
    if prec.device.type == "cpu" and not prec.native_bf16:
        skipped["bf16"] = ("bf16 is emulated on this CPU (no native bf16): a step takes minutes and would not "
                           "finish in the benchmark's budget, nor tell anything about this model")
    if reference == "same":  # only --precision's own value was asked for
        skipped = {p: why for p, why in skipped.items() if p == prec.name}
    return skipped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=CONFIG_NAMES, default="small")
    ap.add_argument("--batch-size", type=int, default=4, help="clips per step (pairs of clips per video)")
    ap.add_argument("--clip-len", type=int, default=5)
    ap.add_argument("--grid", type=int, default=16, help="code-map side h = w")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--layout", default="T,H|W")
    ap.add_argument("--input", choices=("tokens", "pixels"), default="tokens",
                    help="pixels: this package's model in BEVT mode (frames of grid x 8 px in), timed against the "
                         "same model on tokens (the reference is then the token model, at the same precision)")
    ap.add_argument("--num-blocks", type=int, default=5)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="this package's model; auto: bf16 where the hardware computes it natively, else fp32")
    ap.add_argument("--reference", choices=("native", "same", "none"), default="native",
                    help="reference at every precision native here (fp32, plus bf16 on AMX / AVX512-BF16) / "
                         "at --precision only (if native) / not at all")
    ap.add_argument("--original-repo", metavar="PATH",
                    help="checkout of github.com/airsplay/vimpac: the reference is the original code, imported "
                         "from there at run time (default: benchmarks/naive_model.py, which imitates it)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per model (interleaved between models)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs (one process per model)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="timed rounds stop early (one at least) and the peak-RSS runs are skipped when they would "
                         "go past this many seconds, so the whole run stays under 10 minutes on a slow CPU")
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
    if args.original_repo:
        args.original_repo = str(Path(args.original_repo).resolve())
        if not (Path(args.original_repo) / "vimpac" / "modeling.py").is_file():
            ap.error(f"--original-repo {args.original_repo}: no vimpac/modeling.py there (clone "
                     f"https://github.com/airsplay/vimpac)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()  # workers inherit the parent's count
    device = torch.device(args.device)
    cfg = named_config(args.config, vocab_size=args.vocab_size, clip_len=args.clip_len, grid_h=args.grid,
                       grid_w=args.grid, layout=args.layout)

    if args.worker:
        print(json.dumps(worker(args, cfg, device)))
        return
    cpu_bf16 = read_cpu_bf16(ap, os.environ)
    prec = resolve_precision(args.precision, device, cpu_bf16=cpu_bf16)
    args.precision = prec.name
    if args.sweep:
        sweep(args, device)
        return

    from tqdm import tqdm
    ref_impl = "original" if args.original_repo else "naive"
    native = reference_precisions(device, cpu_bf16)
    ref_precs = {"native": native, "same": [p for p in native if p == prec.name], "none": []}[args.reference]
    specs = [f"vimpac@{prec.name}"] + [f"{ref_impl}@{p}" for p in ref_precs]
    skipped = skipped_references(ref_impl, prec, args.reference)
    if args.input == "pixels":
        ref_impl, specs, skipped = "vimpac", [f"pixels@{prec.name}", f"vimpac@{prec.name}"], {}
    log = sys.stderr if args.json else sys.stdout
    print(machine_line(prec, device), file=log, flush=True)
    for p, why in skipped.items():
        print(f"reference {ref_impl} at {p}: skipped, {why}", file=log, flush=True)
    started = time.perf_counter()
    bar = tqdm(total=len(specs) * (1 + (not args.no_memory)), desc="train step", unit="run", disable=args.json)
    timing = _run_worker(args, specs, "time")  # interleaved, the numbers to compare
    bar.update(len(specs))
    memory = {}
    if not args.no_memory:
        # one process per model, 1 warm-up + 1 step: about 2 steps plus start-up each
        need = sum(2 * timing[spec]["step_s_median"] + 20 for spec in specs)
        if time.perf_counter() - started + need > args.budget_s:
            print(f"peak-RSS runs skipped: about {need:.0f} s more would pass the {args.budget_s:.0f} s budget",
                  file=log, flush=True)
        else:
            for spec in specs:  # peak memory needs one process per model
                memory[spec] = _run_worker(argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1}), [spec],
                                           "mem")
                bar.update()
    bar.close()
    results = {spec: {**timing[spec], **{k: memory[spec][k] for k in ("peak_rss_mb", "peak_gpu_mb")
                                         if k in memory.get(spec, {})}}
               for spec in specs}
    ours = results[specs[0]]
    frac = expected_block_mask_ratio((cfg.clip_len, cfg.grid_h, cfg.grid_w), args.num_blocks)
    flops = train_flops_per_clip(cfg, cfg.clip_len, cfg.grid_h, cfg.grid_w, frac)
    achieved = flops * ours["clips_per_s"] / 1e12
    ref_tflops = matmul_tflops(prec.dtype if prec.lowp else torch.float32, device)
    summary = {"impl": "vimpac", "precision": prec.name, "precision_requested": prec.requested,
               "precision_reason": prec.reason, "native_bf16": prec.native_bf16, "cpu": cpu_model(),
               "device": str(device), "device_name": prec.device_name, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "wall_s": round(time.perf_counter() - started, 1), "config": args.config,
               "batch_size": args.batch_size, "clip_len": cfg.clip_len, "grid": cfg.grid_h, "layout": cfg.layout,
               **ours, "gflop_per_clip": round(flops / 1e9, 1), "achieved_tflops": round(achieved, 3),
               "matmul_tflops": round(ref_tflops, 3), "fraction_of_matmul": round(achieved / ref_tflops, 3),
               "reference": ref_impl, "reference_skipped": skipped,
               "input": args.input,
               ref_impl: {spec.split("@")[1]: r for spec, r in results.items() if spec != specs[0]}}
    for p, r in summary[ref_impl].items():
        summary[f"speedup_vs_{ref_impl}_{p}"] = round(ours["clips_per_s"] / r["clips_per_s"], 2)
        if "step_cpu_s_median" in r and "step_cpu_s_median" in ours:  # steadier on a shared machine at 1 thread
            summary[f"cpu_time_ratio_vs_{ref_impl}_{p}"] = round(r["step_cpu_s_median"] / ours["step_cpu_s_median"], 2)
    if summary[ref_impl]:
        best_p, best = max(summary[ref_impl].items(), key=lambda kv: kv[1]["clips_per_s"])
        summary[f"speedup_vs_{ref_impl}_best"] = round(ours["clips_per_s"] / best["clips_per_s"], 2)
        summary[f"{ref_impl}_best_precision"] = best_p
    if args.json:
        print(json.dumps(summary))
        return
    print("| model | precision | clips/s (median) | clips/s (best) | CPU s/step (median) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for spec, r in results.items():
        impl, p = spec.split("@")
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"
        cpu = f"{r['step_cpu_s_median']:.2f}" if "step_cpu_s_median" in r else "-"
        print(f"| {impl} | {p} | {r['clips_per_s']:.2f} | {r['clips_per_s_best']:.2f} | {cpu} | {rss} |")
    speedups = ", ".join([f"vs {k.removeprefix('speedup_vs_')}: {v}x" for k, v in summary.items()
                          if k.startswith("speedup")]
                         + [f"CPU time vs {k.removeprefix('cpu_time_ratio_vs_')}: {v}x" for k, v in summary.items()
                            if k.startswith("cpu_time_ratio")])
    print(f"train step ({args.config}, batch {args.batch_size}, T={cfg.clip_len}, {cfg.grid_h}x{cfg.grid_w}, "
          f"{args.device}, {summary['threads']} threads): {ours['clips_per_s']:.2f} clips/s {prec.name}, "
          f"{achieved:.3f} TFLOP/s = {achieved / ref_tflops:.0%} of a {prec.name} matmul ({ref_tflops:.2f} TFLOP/s)"
          + (f"; {speedups}" if speedups else ""))


if __name__ == "__main__":
    main()
