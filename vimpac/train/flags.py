"""Command-line flags shared by `vimpac.pretrain` and `vimpac.finetune` (one spelling per concept), and the
`LoopConfig` built from them once.

The upstream names users know are kept (`--clip-len`, `--frame-size`, `--bs-per-gpu`,
`--different-shape`), and the original VIMPAC scripts' flags are accepted (`--vocab-size`,
`--save-per-epochs`, `--fp16`, ...), each doing what it did there or saying why it has no effect.
"""
from __future__ import annotations

import argparse
from typing import Any

from video2token.precision import add_precision_flag

from vimpac.data.registry import DEFAULT_ROOT
from vimpac.train.loop import LoopConfig
from vimpac.train.optim import SCHEDULES


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
    o.add_argument("--lr", type=float, default=lr, help="peak learning rate (AdamW)")
    o.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    o.add_argument("--beta2", type=float, default=beta2, help="AdamW beta2")
    o.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW decoupled weight decay")
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
    add_precision_flag(o)
    o.add_argument("--zero-stage", type=int, default=None, choices=(0, 1, 2),
                   help="DeepSpeed ZeRO stage (default 0; 1 under fp16, whose fp32 masters need ZeRO)")
    o.add_argument("--deepspeed-config", default=None, help="JSON merged over the generated DeepSpeed config")
    o.add_argument("--max-nonfinite", type=int, default=5,
                   help="stop after this many non-finite (NaN/Inf loss or gradient) steps in a row; each is skipped")


def add_run_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    r = p.add_argument_group("run")
    r.add_argument("--output", required=True, help="run folder (checkpoints, metrics, reports)")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last (model, optimizer, data position)")
    r.add_argument("--seed", type=int, default=9595)
    r.add_argument("--tqdm", action=argparse.BooleanOptionalAction, default=True, help="rank-0 progress bar")
    r.add_argument("--eval-per-epochs", type=int, default=1, help="evaluate every N epochs (0: never)")
    r.add_argument("--save-steps", type=int, default=0, help="also checkpoint OUTPUT/last every N optimizer steps")
    r.add_argument("--save-per-epochs", type=int, default=0,
                   help="also keep the weights of every N-th epoch in OUTPUT/epochN (0: never; OUTPUT/last is "
                        "saved every epoch regardless)")
    r.add_argument("--log-steps", type=int, default=1, help="log train metrics every N steps")
    r.add_argument("--debug", action="store_true",
                   help="a quick run: at most 8 steps per epoch and 8 eval batches; logs every step's video indices")
    # the deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same
    r.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return r


def loop_config(a: argparse.Namespace, *, epochs: int, default_batch: int, default_bs_per_gpu: int) -> LoopConfig:
    """The loop's config from parsed flags (`epochs` resolved by the caller: fine-tuning has dataset defaults)."""
    return LoopConfig(
        output=a.output, epochs=epochs, batch_size=a.batch_size, bs_per_gpu=a.bs_per_gpu, lr=a.lr,
        betas=(a.beta1, a.beta2), weight_decay=a.weight_decay, clip_grad_norm=a.clip_grad_norm,
        lr_scheduler=a.lr_scheduler, warm_up=a.warm_up, interval=a.interval, resume=a.resume,
        precision=a.precision, zero_stage=a.zero_stage, deepspeed_config=a.deepspeed_config,
        max_nonfinite=a.max_nonfinite, save_steps=a.save_steps, save_per_epochs=a.save_per_epochs,
        log_steps=a.log_steps, eval_per_epochs=a.eval_per_epochs, seed=a.seed, num_workers=a.num_workers,
        progress=a.tqdm, debug=a.debug, flags=flag_record(a), default_batch=default_batch,
        default_bs_per_gpu=default_bs_per_gpu)


def flag_record(a: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    """The parsed flags as (name, value) pairs, recorded in every checkpoint's config.json."""
    return tuple(sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()))
