"""VIMPAC fine-tuning: a linear classifier on [CLS] of a pre-trained token transformer, multi-view testing.

Tan, Lei, Wolf, Bansal (2021), arXiv 2106.11250, section 4.1 / table 4: train on random extracted
views (2 resizes x 3 crops x flip), test on uniform temporal clips x crops with averaged scores;
positional embeddings are interpolated when the input shape differs from pre-training.

    python -m vimpac.finetune --load snap/pretrain/small/last --dataset-name ucf101 --split-id 1 \\
        --frame-size 128 --output snap/finetune/ucf101
    python -m vimpac.finetune --load snap/pretrain/small/last --dataset-name custom \\
        --train-tokens STORE [VIEW ...] --valid-tokens STORE [CROP ...] --output O
    python -m vimpac.finetune ... --valid-tokens VAL_STORE --test-tokens TEST_STORE   # choose on val, report test
    python -m vimpac.finetune ... --different-shape --clip-len 10 --frame-size 256 --frame-rate 4
    python -m vimpac.finetune --eval-only --output O [--load O/best] --num-test-clips 10
    # no --load: random weights, the architecture from the flags (the paper's "no pre-training" rows)
    python -m vimpac.finetune --dataset-name ucf101 --frame-size 128 --model "efflayoutT,H|W" \\
        --pos-emb hw_separation --layers 6 --hid-dim 512 --clip-len 5 --output snap/finetune/ucf101_scratch

Outputs under --output: metrics.jsonl, tensorboard/, curves.png, last/ (resumable checkpoint),
best/ (weights of the best valid top-1), results.json, per_class_accuracy.csv, predictions.csv,
confusion_matrix.png (the reports are of the final model on --valid-tokens). With --test-tokens,
results.json's "test" holds the final model's scores on those stores, evaluated once after
training: --valid-tokens stays what is logged per epoch and what picks best/. `best/` (or
`last/`) is what `vimpac.predict` and `vimpac.export` read.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Mapping, Sequence

import torch

from video2token.precision import read_cpu_bf16, resolve_precision

from video2token.cli import HelpFormatter

from vimpac.data import registry
from vimpac.data.labelled import LabelledData, LabelledSource
from vimpac.model.checkpoint import CheckpointError, read_checkpoint_config
from vimpac.model.config import INPUT_KINDS
from vimpac.model.loading import resolve_checkpoint
from vimpac.model.transformer import HEAD_INITS
from vimpac.eval.finetuned import RESULTS, EvalSettings, evaluate_finetuned, parse_clip_counts
from vimpac.train.architecture import DEFAULT_CLIP_LEN, ArchitectureFlags, add_architecture_flags
from vimpac.train.entry import launch_for, run_guarded, say
from vimpac.train.errors import TrainError
from vimpac.train.finetune_task import BEST, ClassifierInit, FinetuneTask
from vimpac.train.flags import (add_data_flags, add_no_effect_flags, add_optimisation_flags, add_run_flags,
                                loop_config, no_effect_notes)
from vimpac.train.hooks import LoopHooks
from vimpac.train.loop import TrainLoop
from vimpac.train.runtime import Launch

BATCH, BS_PER_GPU = 128, 16  # the paper's fine-tuning batch (table 4)
_PRETRAIN_ONLY = "a pre-training flag"
#: the original VIMPAC's flags fine-tuning accepts but cannot honour, and why
NO_EFFECT = {
    "--mask-blocks": f"fine-tuning masks no tokens ({_PRETRAIN_ONLY})",
    "--mask-rand-replace": f"fine-tuning masks no tokens ({_PRETRAIN_ONLY})",
    "--mlm-weight": f"fine-tuning's loss is the classifier's cross-entropy ({_PRETRAIN_ONLY})",
    "--nce-weight": f"fine-tuning's loss is the classifier's cross-entropy ({_PRETRAIN_ONLY})",
    "--nce-proj-layers": f"a classifier has no contrastive head ({_PRETRAIN_ONLY})",
    "--nce-proj-hid-dim": f"a classifier has no contrastive head ({_PRETRAIN_ONLY})",
    "--nce-bn-after-proj": f"a classifier has no contrastive head ({_PRETRAIN_ONLY})",
    "--nce-relevance-range": f"fine-tuning draws one clip per video, not a pair ({_PRETRAIN_ONLY})",
    "--knn-monitor": "fine-tuning reports its test accuracy at every evaluation; the kNN monitor is pre-training's "
                     "(the original's fine-tuning ignored the flag too)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.finetune", description=__doc__,
                                formatter_class=HelpFormatter)
    d = add_data_flags(p, dataset_default="custom", dataset_help=f"one of {', '.join(registry.finetune_names())}",
                       clip_len_default=None,
                       clip_len_help=f"frames per clip (default: --load's T; without --load {DEFAULT_CLIP_LEN})")
    d.add_argument("--split-id", type=int, default=1, help="official split (1..3 for ucf101 and hmdb51)")
    d.add_argument("--test-tokens", nargs="+", default=None, metavar="STORE",
                   help="test store(s), one per crop: the final model is evaluated on them once after training, "
                        "same clips x crops protocol, as results.json's \"test\" (never used to pick best/)")
    d.add_argument("--num-test-clips", type=int, default=10, help="uniform temporal clips per test crop")
    d.add_argument("--last-test-clips", default=None, help="e.g. 2,5,10: also evaluate these clip counts at the end")

    m = p.add_argument_group("model")
    m.add_argument("--load", default=None,
                   help="pre-training output: a checkpoint dir or its model.safetensors; without it the model below "
                        "starts from random weights (the no-pre-training baseline, as the original)")
    m.add_argument("--different-shape", action="store_true",
                   help="allow another --clip-len / --frame-size than pre-training (interpolates positional tables)")
    m.add_argument("--dropout", type=float, default=0.1, help="backbone dropout")
    m.add_argument("--last-dropout", type=float, default=0.0, help="dropout before the classifier (paper: 0.0)")
    m.add_argument("--head-init", choices=("auto", *HEAD_INITS), default="auto",
                   help="classifier weight init: zero (the paper's and the original's) or normal (N(0, init_std "
                        "0.02), BERT's); auto: zero on pre-trained weights (--load), normal on a random backbone "
                        "(--from-scratch, no --load), where a zero head can merge two classes and stall (README, "
                        "fine-tuning); --head-init zero reproduces the original's no-pre-training runs exactly")
    m.add_argument("--linear-probe", action="store_true", help="freeze the backbone, train the classifier only")
    m.add_argument("--input", choices=INPUT_KINDS, default=None,
                   help="tokens or pixels (BEVT; stores extracted with --keep-frames); default: what --load was "
                        "trained on (a checkpoint of the other kind is refused)")
    m.add_argument("--from-scratch", action="store_true",
                   help="the same architecture as --load, randomly initialised (the no-pre-training baseline)")
    add_architecture_flags(m, from_load=True)

    add_optimisation_flags(p, lr=1e-4, beta2=0.999, weight_decay=0.01, batch_size=BATCH, bs_per_gpu=BS_PER_GPU, epochs=None,
                           epochs_help="default: the dataset's (paper table 4), else 50")
    o = p.add_argument_group("objective")
    o.add_argument("--label-smoothing", type=float, default=None,
                   help="smoothed training cross-entropy: (1 - s) x NLL + s x the mean over classes (the "
                        "original's; evaluation scores are unchanged)")
    r = add_run_flags(p)
    r.add_argument("--eval-only", action="store_true", help="evaluate --load (a fine-tuned checkpoint) or OUTPUT/best")
    r.add_argument("--eval-batch-size", type=int, default=4, help="videos per eval batch (each: clips x crops)")
    r.add_argument("--eval-max-videos", type=int, default=None, help="cap on test videos (quick checks)")
    add_no_effect_flags(p, NO_EFFECT)
    return p


def labelled_data(a: argparse.Namespace) -> LabelledData:
    return LabelledData(LabelledSource(
        dataset_name=a.dataset_name, split_id=a.split_id, train_tokens=tuple(a.train_tokens or ()),
        valid_tokens=tuple(a.valid_tokens or ()), test_tokens=tuple(a.test_tokens or ()), data_root=a.data_root,
        tokenizer=a.tokenizer, fps=a.fps, frame_size=a.frame_size, frame_rate=a.frame_rate,
        num_test_clips=a.num_test_clips, need_train=not a.eval_only, verify=not a.no_verify_stores,
        verify_later=not a.eval_only))


#: data flags `--eval-only` takes from the evaluated run when the command line gives no test stores
RUN_DATA_FLAGS = ("valid_tokens", "test_tokens", "dataset_name", "split_id", "data_root", "tokenizer", "fps",
                  "frame_size", "frame_rate")


def reuse_run_stores(a: argparse.Namespace, path: str) -> None:
    """--eval-only without --valid-tokens / --dataset-name: the test stores of the run that wrote `path`."""
    try:
        flags = read_checkpoint_config(resolve_checkpoint(path)).get("train") or {}  # config.json only
    except CheckpointError as e:
        raise TrainError(f"--eval-only: {e}") from None
    if not flags.get("valid_tokens") and flags.get("dataset_name", "custom") == "custom":
        raise TrainError(f"--eval-only: {path} does not record its test stores; pass --valid-tokens or --dataset-name")
    for key in RUN_DATA_FLAGS:
        if key in flags:
            setattr(a, key, flags[key])
    print(f"[finetune] --eval-only: the test stores of the run that wrote {path}", flush=True)


def check_vocab(a: argparse.Namespace, data: LabelledData) -> None:
    if a.vocab_size is not None and a.vocab_size != data.vocab_size:
        raise TrainError(f"--vocab-size {a.vocab_size} but the token stores hold {data.vocab_size} codes; drop the "
                         f"flag or use stores of that tokenizer")


def run(a: argparse.Namespace, hooks: LoopHooks | None, launch: Launch, cpu_bf16: bool | None = None
        ) -> tuple[dict, bool]:
    """Fine-tune (or only evaluate) -> (results, whether this process prints); `cpu_bf16`: VIMPAC_CPU_BF16."""
    try:
        clip_counts = parse_clip_counts(a.last_test_clips)
    except ValueError as e:
        raise TrainError(str(e)) from None
    eval_path = a.load or os.path.join(a.output, BEST)
    if a.eval_only and not a.valid_tokens and a.dataset_name == "custom":
        reuse_run_stores(a, eval_path)
    data = labelled_data(a)
    check_vocab(a, data)
    settings = EvalSettings(batch_size=a.eval_batch_size, max_videos=a.eval_max_videos, progress=a.tqdm is not False)
    if a.eval_only:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = resolve_precision(a.precision, device, cpu_bf16=cpu_bf16)
        print(f"[finetune] {precision.describe()}", flush=True)
        return evaluate_finetuned(eval_path, data, settings, precision=precision.name, device=device, out=a.output,
                                  clip_len=a.clip_len, clip_counts=clip_counts), True
    init = ClassifierInit(load=a.load, clip_len=a.clip_len, different_shape=a.different_shape, dropout=a.dropout,
                          last_dropout=a.last_dropout, linear_probe=a.linear_probe, from_scratch=a.from_scratch,
                          grad_checkpointing=a.grad_checkpointing,
                          architecture=ArchitectureFlags.from_flags(a, contrastive_head=False), input=a.input,
                          head_init=a.head_init)
    task = FinetuneTask(data, init, settings, seed=a.seed, clip_counts=clip_counts, output=a.output,
                        label_smoothing=a.label_smoothing or 0.0)
    cfg = loop_config(a, epochs=a.epochs or data.default_epochs, default_batch=BATCH, default_bs_per_gpu=BS_PER_GPU,
                      cpu_bf16=cpu_bf16)
    loop = TrainLoop(cfg, task, hooks=hooks, launch=launch)
    return loop.fit(), loop.main


def main(argv: list[str] | None = None, *, hooks: LoopHooks | None = None, environ: Mapping[str, str] | None = None,
         hostnames: Callable[[str], Sequence[str]] | None = None) -> int:
    """environ (default os.environ) and hostnames (default `scontrol show hostnames`): the launch's sources."""
    p = build_parser()
    a = p.parse_args(argv)
    env = os.environ if environ is None else environ
    cpu_bf16 = read_cpu_bf16(p, env)
    launch = launch_for(slurm=a.slurm_multinode_dist, environ=env, hostnames=hostnames)
    if launch is None:
        return 2
    say(launch, [f"[finetune] {note}" for note in no_effect_notes(a, NO_EFFECT)])
    result = run_guarded(lambda: run(a, hooks, launch, cpu_bf16), launch)
    if result is None:
        return 2
    summary, prints = result
    if prints:
        fin, best = summary["final"], summary["best"]
        print(f"done: final top-1 {fin['top1']:.2f} top-5 {fin['top5']:.2f}, best top-1 {best['top1']:.2f} "
              f"({fin['num_test_clips']} clips x {fin['num_crops']} crops, {fin['num_videos']} videos)"
              + (f"; test top-1 {summary['test']['top1']:.2f} ({summary['test']['num_videos']} videos)"
                 if "test" in summary else "") + f"; results {os.path.join(a.output, RESULTS)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
