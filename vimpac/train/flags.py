"""Command-line flags shared by `vimpac.pretrain` and `vimpac.finetune` (one spelling per concept), and the
`LoopConfig` built from them once.

The upstream names users know are kept (`--clip-len`, `--frame-size`, `--bs-per-gpu`,
`--different-shape`), and every flag of the original VIMPAC's `vimpac/param.py` is accepted by
both entry points (`--vocab-size`, `--save-per-epochs`, `--fp16`, `--optim`, ...), each doing what
it did there or, where it cannot, listed with the reason in the entry point's `NO_EFFECT` table
(`add_no_effect_flags`), which the run prints when such a flag is given.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from video2token.precision import add_precision_flag

from vimpac.data.registry import DEFAULT_ROOT
from vimpac.train.loop import LoopConfig
from vimpac.train.optim import OPTIMIZERS, SCHEDULES

#: the original's argument shape of each flag one of the two stages accepts without an effect: its value's type,
#: or None for a switch
ORIGINAL_SHAPES: dict[str, type | None] = {
    "--eval-only": None, "--split-id": int, "--different-shape": None, "--num-test-clips": int,
    "--last-test-clips": str, "--last-dropout": float, "--label-smoothing": float, "--mask-blocks": int,
    "--mask-rand-replace": None, "--mlm-weight": float, "--nce-weight": float, "--nce-proj-layers": int,
    "--nce-proj-hid-dim": int, "--nce-bn-after-proj": None, "--nce-relevance-range": int, "--knn-monitor": None,
}


def add_data_flags(p: argparse.ArgumentParser, *, dataset_help: str, dataset_default: str | None,
                   clip_len_default: int | None, clip_len_help: str) -> argparse._ArgumentGroup:
    d = p.add_argument_group("data")
    d.add_argument("--train-tokens", nargs="+", default=None, help="train token store(s): one per extracted view")
    d.add_argument("--valid-tokens", nargs="+", default=None, help="valid/test token store(s): one per view (crop)")
    d.add_argument("--dataset-name", default=dataset_default, help=dataset_help)
    d.add_argument("--data-root", default=DEFAULT_ROOT, help="where --dataset-name's stores are")
    d.add_argument("--tokenizer", default="dalle", help="tokenizer part of the store names (--dataset-name)")
    d.add_argument("--fps", type=float, default=None, help="fps part of the store names (default: the dataset's)")
    d.add_argument("--frame-size", type=int, default=None, help="frame side in px the stores were extracted at")
    d.add_argument("--clip-len", type=int, default=clip_len_default, help=clip_len_help)
    d.add_argument("--frame-rate", type=int, default=1, help="take every N-th stored frame (e.g. 4 on a 16-FPS store)")
    d.add_argument("--vocab-size", type=int, default=None,
                   help="expected tokenizer vocabulary (the original scripts pass 8192); checked against the stores")
    d.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")
    d.add_argument("--no-verify-stores", action="store_true",
                   help="skip the SHA-256 check of every shard at start-up (split over the ranks, each shard "
                        "hashed once: about 0.7 GB/s per rank on a 2-core Xeon; the index checks still run): "
                        "only for storage you trust")
    return d


def add_optimisation_flags(p: argparse.ArgumentParser, *, lr: float, beta2: float, weight_decay: float,
                           batch_size: int, bs_per_gpu: int, epochs: int | None, epochs_help: str) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--optim", choices=OPTIMIZERS, default="adamw",
                   help="adamw: decoupled weight decay; adam: Adam without weight decay; sgd: momentum --beta1, "
                        "L2 --weight-decay (the original's choices; its pre-training always used AdamW, here both "
                        "stages honour the flag). --resume needs the optimizer the run was started with")
    o.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    o.add_argument("--beta1", type=float, default=0.9, help="Adam(W) beta1; SGD momentum")
    o.add_argument("--beta2", type=float, default=beta2, help="Adam(W) beta2")
    o.add_argument("--epsilon", type=float, default=1e-6, help="Adam(W) epsilon (the original's default: 1e-8)")
    o.add_argument("--weight-decay", type=float, default=weight_decay,
                   help="weight decay (AdamW: decoupled; SGD: L2), not on biases, norms and positional tables")
    o.add_argument("--clip-grad-norm", type=float, default=1.0, help="global gradient-norm clipping")
    o.add_argument("--lr-scheduler", choices=SCHEDULES, default="linear", help="decay after warm-up")
    o.add_argument("--warm-up", type=float, default=0.1, help="warm-up fraction of the whole schedule")
    o.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    o.add_argument("--interval", type=int, default=None, help="stop this run after N epochs (continue with --resume)")
    o.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch (videos per optimizer step) = --bs-per-gpu x accumulation x ranks; default "
                        f"{batch_size} (the paper's), capped by the number of training videos")
    o.add_argument("--bs-per-gpu", type=int, default=None,
                   help=f"micro batch per rank, must divide --batch-size / ranks (accumulation fills the rest); "
                        f"default: the largest divisor up to {bs_per_gpu}")
    o.add_argument("--gradient-accumulation", type=int, default=None,
                   help="micro-steps per optimizer step N: micro batch = --batch-size / ranks / N (the original's "
                        "flag; --bs-per-gpu, when given, wins)")
    add_precision_flag(o)
    o.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2),
                   help="DeepSpeed ZeRO stage (default 0; 1 under fp16, whose fp32 masters need ZeRO)")
    o.add_argument("--deepspeed-config", default=None, help="JSON merged over the generated DeepSpeed config")
    o.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer layer (fuses dropout, residual, LayerNorm, GELU and casts; "
                        "for GPUs: the first steps compile for a minute; on CPU the eager path is the tuned one)")
    o.add_argument("--max-nonfinite", type=int, default=5,
                   help="stop after this many non-finite (NaN/Inf loss or gradient) steps in a row; each is skipped")


def add_run_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    r = p.add_argument_group("run")
    r.add_argument("--output", required=True, help="run folder (checkpoints, metrics, reports)")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last (model, optimizer, data position)")
    r.add_argument("--seed", type=int, default=9595)
    r.add_argument("--tqdm", action=argparse.BooleanOptionalAction, default=None,
                   help="rank-0 progress bar (default: on)")
    r.add_argument("--eval-per-epochs", type=int, default=1, help="evaluate every N epochs (0: never)")
    r.add_argument("--save-steps", type=int, default=0, help="also checkpoint OUTPUT/last every N optimizer steps")
    r.add_argument("--save-per-epochs", type=int, default=0,
                   help="also keep the weights of every N-th epoch in OUTPUT/epochN (0: never; OUTPUT/last is "
                        "saved every epoch regardless)")
    r.add_argument("--log-steps", type=int, default=1, help="log train metrics every N steps")
    r.add_argument("--debug", action="store_true",
                   help="a quick run: at most 8 steps per epoch and 8 eval batches; logs every step's video indices")
    r.add_argument("--slurm-multinode-dist", action="store_true",
                   help="one srun task per GPU, no other launcher: rank, local rank and world size from "
                        "SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS, the master from the first host of "
                        "`scontrol show hostnames $SLURM_JOB_NODELIST`, port MASTER_PORT or 29500 (the original's)")
    # the deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same
    r.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return r


def loop_config(a: argparse.Namespace, *, epochs: int, default_batch: int, default_bs_per_gpu: int,
                cpu_bf16: bool | None = None) -> LoopConfig:
    """The loop's config from parsed flags (`epochs` resolved by the caller: fine-tuning has dataset defaults)
    and the user's VIMPAC_CPU_BF16 (`cpu_bf16`, read by the entry point's main)."""
    return LoopConfig(
        output=a.output, epochs=epochs, batch_size=a.batch_size, bs_per_gpu=a.bs_per_gpu, lr=a.lr,
        betas=(a.beta1, a.beta2), weight_decay=a.weight_decay, optim=a.optim, eps=a.epsilon,
        accumulation=a.gradient_accumulation, clip_grad_norm=a.clip_grad_norm,
        lr_scheduler=a.lr_scheduler, warm_up=a.warm_up, interval=a.interval, resume=a.resume,
        precision=a.precision, cpu_bf16=cpu_bf16, zero_stage=a.zero_stage, deepspeed_config=a.deepspeed_config,
        compile=a.compile,
        max_nonfinite=a.max_nonfinite, save_steps=a.save_steps, save_per_epochs=a.save_per_epochs,
        log_steps=a.log_steps, eval_per_epochs=a.eval_per_epochs, seed=a.seed, num_workers=a.num_workers,
        progress=a.tqdm is not False, debug=a.debug, flags=flag_record(a), default_batch=default_batch,
        default_bs_per_gpu=default_bs_per_gpu)


def flag_record(a: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The parsed flags as (name, value) pairs, recorded in every checkpoint's config.json."""
    return tuple(sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()))


def add_no_effect_flags(p: argparse.ArgumentParser, reasons: Mapping[str, str]) -> None:
    """Original VIMPAC flags this entry point accepts in their original shape but cannot honour: {flag: why}.

    Each parses to None when left out, so `no_effect_notes` can say which were given.
    """
    g = p.add_argument_group("accepted from the original VIMPAC, no effect here")
    for flag, reason in reasons.items():
        kind = ORIGINAL_SHAPES[flag]
        shape: dict[str, Any] = {"action": "store_true"} if kind is None else {"type": kind}
        g.add_argument(flag, default=None, help=f"no effect: {reason}", **shape)


def no_effect_notes(a: argparse.Namespace, reasons: Mapping[str, str]) -> list[str]:
    """One line per given flag of `reasons` (see `add_no_effect_flags`)."""
    return [f"{flag} has no effect here: {reason}" for flag, reason in reasons.items()
            if getattr(a, flag.lstrip("-").replace("-", "_")) is not None]
