"""VIMPAC pre-training: mask-then-predict + contrastive learning on video-token stores, with DeepSpeed.

Tan, Lei, Wolf, Bansal (2021), "VIMPAC: Video Pre-Training via Masked Token Prediction and
Contrastive Learning", arXiv 2106.11250. Loss = --mlm-weight x masked-token CE + --nce-weight x
symmetric InfoNCE over the global batch; both tasks read the same block-masked clips.

    # one process (CPU or one GPU)
    python -m vimpac.pretrain --train-tokens STORE --valid-tokens STORE --output snap/pretrain/x
    # two CPU ranks (gloo); on GPUs: deepspeed --num_gpus 4 vimpac/pretrain.py ... or torchrun
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m vimpac.pretrain ...
    # two stages (paper: 90 epochs at 128 px, then 10 at 256 px, one schedule):
    python -m vimpac.pretrain --dataset-name howto100m --frame-size 128 --epochs 100 --interval 90 --output O
    python -m vimpac.pretrain --dataset-name howto100m --frame-size 256 --epochs 100 --output O --resume

Outputs under --output: metrics.jsonl, tensorboard/, last/ (checkpoint; its model.safetensors +
config.json are what fine-tuning loads), curves.png, mask_examples.png, summary.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from video2token.atomic import atomic_write_json
from video2token.cli import HelpFormatter
from video2token.precision import read_cpu_bf16

from vimpac.data import registry
from vimpac.data.pretrain_clips import MASKINGS, ClipSampling
from vimpac.model.config import CONFIG_NAMES, POS_EMB_KINDS, ModelConfig, apply_halving, named_config
from vimpac.train.entry import run_guarded
from vimpac.train.errors import TrainError
from vimpac.train.flags import add_data_flags, add_optimisation_flags, add_run_flags, loop_config
from vimpac.train.hooks import LoopHooks
from vimpac.train.loop import TrainLoop
from vimpac.train.pretrain_task import PretrainData, PretrainObjective, PretrainTask

BATCH, BS_PER_GPU = 1024, 32  # the paper's global batch; per rank on a 32 GB V100


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.pretrain", description=__doc__,
                                formatter_class=HelpFormatter)
    d = add_data_flags(p, dataset_default=None, dataset_help=f"locate stores under --data-root by name "
                       f"({', '.join(registry.dataset_names())})", clip_len_default=5,
                       clip_len_help="frames per clip (T)")
    d.add_argument("--nce-relevance-range", type=int, default=-1,
                   help="max distance (stored frames) between a video's two clips; -1: anywhere (the paper's best)")
    d.add_argument("--mask-blocks", type=int, default=5, help="block-mask cuboids per clip (5: ~15%% at T=5, 16x16)")
    d.add_argument("--masking", choices=MASKINGS, default="block",
                   help="block: --mask-blocks cuboids (the paper); iid: single positions at the same expected ratio")
    d.add_argument("--mask-rand-replace", action="store_true", help="BERT 80/10/10 replacement of masked tokens")

    m = p.add_argument_group("model")
    m.add_argument("--config", choices=CONFIG_NAMES, default="small", help="named model size (paper table 6)")
    m.add_argument("--model", default="efflayoutT,H|W", help="'efflayout' + layout string, e.g. efflayoutT,H|W")
    m.add_argument("--pos-emb", choices=POS_EMB_KINDS, default="hw_separation",
                   help="positional embedding: T + H + W tables, T + (h*w), or one (T*h*w) table")
    m.add_argument("--layers", type=int, default=None, help="override the config's layers")
    m.add_argument("--hid-dim", type=int, default=None, help="override the config's width (heads of 64, MLP 4x)")
    m.add_argument("--heads", type=int, default=None, help="attention heads when --hid-dim is overridden")
    m.add_argument("--dropout", type=float, default=0.1, help="dropout on the residual branches")
    m.add_argument("--nce-proj-layers", type=int, default=None, help="contrastive head layers (default: the config's)")
    m.add_argument("--nce-proj-hid-dim", type=int, default=None, help="contrastive head width (default: the config's)")
    m.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    m.add_argument("--pre-activation", action="store_true", help="pre-LN layers + final LayerNorm (original's option)")
    m.add_argument("--halve-att", action="store_true", help="half the attention width (heads of half size)")
    m.add_argument("--halve-mlp", action="store_true", help="half the MLP width")
    m.add_argument("--nce-bn-after-proj", action="store_true", help="BatchNorm after the contrastive projection")
    m.add_argument("--load", default=None, help="initialise weights from a checkpoint directory (fresh schedule)")

    o = p.add_argument_group("objective")
    o.add_argument("--mlm-weight", type=float, default=1.0, help="weight of the masked-token loss")
    o.add_argument("--nce-weight", type=float, default=1.0, help="weight of the contrastive loss (0: MP only)")
    o.add_argument("--nce-temperature", type=float, default=0.2, help="InfoNCE temperature")
    add_optimisation_flags(p, lr=1e-3, beta2=0.98, weight_decay=0.05, batch_size=BATCH, bs_per_gpu=BS_PER_GPU, epochs=10,
                           epochs_help="length of the schedule")
    r = add_run_flags(p)
    r.add_argument("--eval-max-batches", type=int, default=None, help="cap on eval micro-batches per rank")
    r.add_argument("--num-test-clips", type=int, default=1,
                   help="accepted from the original scripts: pre-training evaluates one clip pair per video")
    return p


def parse_layout_flag(model: str) -> str:
    prefix = "efflayout"
    if not model.startswith(prefix) or len(model) == len(prefix):
        raise TrainError(f"--model {model!r}: expected '{prefix}' followed by a layout, e.g. '{prefix}T,H|W'")
    return model[len(prefix):]


def model_config_from_flags(a: argparse.Namespace, *, vocab_size: int, grid: tuple[int, int]) -> ModelConfig:
    overrides: dict[str, Any] = dict(vocab_size=vocab_size, clip_len=a.clip_len, grid_h=grid[0], grid_w=grid[1],
                                     layout=parse_layout_flag(a.model), pos_emb=a.pos_emb, dropout=a.dropout,
                                     grad_checkpointing=a.grad_checkpointing)
    if a.layers is not None:
        overrides["layers"] = a.layers
    if a.hid_dim is not None:
        heads = a.heads or max(1, a.hid_dim // 64)
        if a.hid_dim % heads:
            raise TrainError(f"--hid-dim {a.hid_dim} is not divisible by --heads {heads}")
        overrides.update(hid_dim=a.hid_dim, heads=heads, head_dim=a.hid_dim // heads, mlp_dim=4 * a.hid_dim)
    elif a.heads is not None:
        raise TrainError("--heads goes with --hid-dim (the named --config fixes its own heads)")
    if a.nce_proj_layers is not None:
        overrides["nce_proj_layers"] = a.nce_proj_layers
    if a.nce_proj_hid_dim is not None:
        overrides["nce_proj_hid_dim"] = a.nce_proj_hid_dim
    if a.pre_activation:
        overrides.update(pre_ln=True, embed_norm=False)  # the original's pre-activation has no embedding LayerNorm
    if a.nce_bn_after_proj:
        overrides["nce_bn_after_proj"] = True
    try:
        return apply_halving(named_config(a.config, **overrides), halve_att=a.halve_att, halve_mlp=a.halve_mlp)
    except ValueError as e:
        hint = " (set --heads with --hid-dim)" if "head" in str(e) else ""
        raise TrainError(f"{e}{hint}") from None


def locate_stores(a: argparse.Namespace) -> tuple[list[str], list[str]]:
    if a.train_tokens:
        return a.train_tokens, a.valid_tokens or []
    if not a.dataset_name:
        raise TrainError("give the data: --train-tokens STORE [--valid-tokens STORE], or --dataset-name NAME")
    if a.frame_size is None:
        raise TrainError("--dataset-name needs --frame-size (the stores' names include it)")
    kw = dict(frame_size=a.frame_size, tokenizer=a.tokenizer, fps=a.fps, root=a.data_root)
    try:
        train = registry.store_paths(a.dataset_name, "train", **kw)
        valid = a.valid_tokens or registry.store_paths(a.dataset_name, "valid", **kw)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None
    return train, valid


def build_task(a: argparse.Namespace) -> PretrainTask:
    train, valid = locate_stores(a)
    try:
        sampling = ClipSampling(clip_len=a.clip_len, frame_rate=a.frame_rate, mask_blocks=a.mask_blocks,
                                relevance_range=None if a.nce_relevance_range < 0 else a.nce_relevance_range,
                                mask_rand_replace=a.mask_rand_replace, masking=a.masking)
    except ValueError as e:
        raise TrainError(str(e)) from None
    data = PretrainData(train=tuple(train), valid=tuple(valid), sampling=sampling, frame_size=a.frame_size,
                        vocab_size=a.vocab_size, seed=a.seed, verify_stores=not a.no_verify_stores)
    objective = PretrainObjective(mlm_weight=a.mlm_weight, nce_weight=a.nce_weight, temperature=a.nce_temperature,
                                  eval_max_batches=a.eval_max_batches)
    return PretrainTask(data, objective, lambda vocab, grid: model_config_from_flags(a, vocab_size=vocab, grid=grid),
                        load=a.load)


def main(argv: list[str] | None = None, *, hooks: LoopHooks | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    cpu_bf16 = read_cpu_bf16(p, os.environ)

    def run() -> tuple[dict[str, Any], bool]:
        cfg = loop_config(a, epochs=a.epochs, default_batch=BATCH, default_bs_per_gpu=BS_PER_GPU, cpu_bf16=cpu_bf16)
        loop = TrainLoop(cfg, build_task(a), hooks=hooks)
        return loop.fit(), loop.main

    result = run_guarded(run)
    if result is None:
        return 2
    summary, prints = result
    if prints:
        tr, va = summary["train"] or {}, summary["valid"]
        train = f"train mp_loss {tr['mp_loss']:.4f} mask_acc {tr['mask_acc']:.4f}" if tr else "no train step"
        valid = f"valid mask_acc {va['mask_acc']:.4f} vs copy baseline {va['copy_acc']:.4f}" if va else "no eval"
        print(f"done: step {summary['steps']} (epoch {summary['epoch']}/{summary['epochs']}), "
              f"{summary['steps_this_run']} steps in {summary['seconds']} s = {summary['videos_per_s']} videos/s "
              f"({summary['precision']}), {summary['skipped_steps']} skipped; {train}; {valid}; "
              f"checkpoint {summary['checkpoint']}", flush=True)
        atomic_write_json(os.path.join(a.output, "summary.json"), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
