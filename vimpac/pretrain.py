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
    # with the original's kNN monitor (cosine kNN top-1 of [CLS] on a labelled split, every evaluation):
    python -m vimpac.pretrain ... --knn-monitor --knn-train-tokens STORE --knn-valid-tokens STORE

Outputs under --output: metrics.jsonl, tensorboard/, last/ (checkpoint; its model.safetensors +
config.json are what fine-tuning loads), curves.png, mask_examples.png, summary.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from video2token.atomic import atomic_write_json
from video2token.cli import HelpFormatter
from video2token.precision import read_cpu_bf16

from vimpac.data import registry
from vimpac.data.image_stream import STREAMS
from vimpac.data.pretrain_clips import MASKINGS, PAIR_VIEWS, ClipSampling, PairOptions
from vimpac.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE
from vimpac.model.config import INPUT_KINDS
from vimpac.train.architecture import DEFAULT_CLIP_LEN, ArchitectureFlags, add_architecture_flags
from vimpac.train.entry import launch_for, run_guarded, say
from vimpac.train.errors import TrainError
from vimpac.train.flags import (add_data_flags, add_no_effect_flags, add_optimisation_flags, add_run_flags,
                                loop_config, no_effect_notes)
from vimpac.train.hooks import LoopHooks
from vimpac.train.loop import TrainLoop
from vimpac.train.pretrain_task import ImageStreamSpec, KnnMonitor, PretrainData, PretrainObjective, PretrainTask

BATCH, BS_PER_GPU = 1024, 32  # the paper's global batch; per rank on a 32 GB V100
KNN_DATASET = "ucf101"  # the original's kNN monitor: UCF101 split 1, hard-coded
#: the original VIMPAC's flags pre-training accepts but cannot honour, and why
NO_EFFECT = {
    "--eval-only": "pre-training has no evaluate-only mode (the original's ignored the flag too); evaluate a "
                   "fine-tuned model with vimpac.finetune --eval-only",
    "--split-id": "pre-training reads no labelled split (the --knn-monitor's default stores are UCF101 split 1, as "
                  "in the original)",
    "--different-shape": "pre-training fits the positional tables to a new --clip-len / --frame-size by itself "
                         "(--load, --resume)",
    "--num-test-clips": "pre-training evaluates one clip pair per video",
    "--last-test-clips": "pre-training evaluates one clip pair per video",
    "--last-dropout": "pre-training has no classifier",
    "--label-smoothing": "the original smoothed fine-tuning's classification loss only; pre-training's losses are "
                         "masked-token cross-entropy and InfoNCE",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.pretrain", description=__doc__,
                                formatter_class=HelpFormatter)
    d = add_data_flags(p, dataset_default=None, dataset_help=f"locate stores under --data-root by name "
                       f"({', '.join(registry.dataset_names())})", clip_len_default=DEFAULT_CLIP_LEN,
                       clip_len_help="frames per clip (T)")
    d.add_argument("--nce-relevance-range", type=int, default=-1,
                   help="max distance (stored frames) between a video's two clips; -1: anywhere (the paper's best)")
    d.add_argument("--mask-blocks", type=int, default=5, help="block-mask cuboids per clip (5: ~15%% at T=5, 16x16)")
    d.add_argument("--masking", choices=MASKINGS, default="block",
                   help="block: --mask-blocks cuboids (the paper); tube: --mask-blocks rectangles through every frame "
                        "(BEVT); iid: single positions at the block masks' expected ratio")
    d.add_argument("--input", choices=INPUT_KINDS, default="tokens",
                   help="tokens: the model reads the codes (VIMPAC); pixels: it reads the frames (stores extracted "
                        "with --keep-frames) and predicts the codes of masked patches (BEVT); no tokenizer at inference")
    d.add_argument("--mask-rand-replace", action="store_true", help="BERT 80/10/10 replacement of masked tokens")

    m = p.add_argument_group("model")
    add_architecture_flags(m, from_load=False)
    m.add_argument("--dropout", type=float, default=0.1, help="dropout on the residual branches")
    m.add_argument("--nce-proj-layers", type=int, default=None, help="contrastive head layers (default: the config's)")
    m.add_argument("--nce-proj-hid-dim", type=int, default=None, help="contrastive head width (default: the config's)")
    m.add_argument("--nce-bn-after-proj", action="store_true", help="BatchNorm after the contrastive projection")
    m.add_argument("--load", default=None, help="initialise weights from a checkpoint directory (fresh schedule)")

    b = p.add_argument_group("background-robust options (when each video's looks give the pair away)")
    b.add_argument("--fgbg-merge", type=float, default=0.0,
                   help="probability that a video's second clip keeps only its changing tokens and takes another "
                        "video's static ones (FAME-style foreground/background merging, on the codes)")
    b.add_argument("--static-frac", type=float, default=1.0,
                   help="a position is background when its most frequent code fills this share of the clip's frames "
                        "(1.0: any change makes it foreground; lower it when compression makes codes flicker)")
    b.add_argument("--bg-erase", type=float, default=0.0,
                   help="share of the second clip's positions frozen to one of its frames (Background Erasing at "
                        "token level; 0: off)")
    b.add_argument("--mp-change-weight", type=float, default=1.0,
                   help="masked-prediction weight of targets the copy baseline gets wrong (1: a plain mean)")
    b.add_argument("--pair-views", choices=PAIR_VIEWS, default="same",
                   help="with several --train-tokens views: both clips of a video from one random view (same), or "
                        "from two different views (distinct: e.g. colour views made with extract --channel-order, so "
                        "the pair cannot be matched by colour)")
    b.add_argument("--reverse-negatives", action="store_true",
                   help="each video's first clip played backwards is an extra InfoNCE negative: only the direction "
                        "of motion tells it apart (1.5x the clips per step)")

    i = p.add_argument_group("image stream (BEVT: masked prediction on single frames, same weights)")
    i.add_argument("--stream", choices=STREAMS, default="video",
                   help="video: clip pairs only (VIMPAC); image: single frames only (BEVT stage 1); joint: both, "
                        "--image-ratio image micro-batches per video micro-batch (BEVT stage 2)")
    i.add_argument("--image-tokens", nargs="+", default=None,
                   help="stores whose every frame is an image (default: --train-tokens; an image list extracted as "
                        "1-frame videos works too)")
    i.add_argument("--image-ratio", type=float, default=1.0, help="joint: image micro-batches per video micro-batch")
    i.add_argument("--image-batch", type=int, default=None,
                   help="images per image micro-batch (default: 2 x the video micro-batch, the frames of one clip pair "
                        "per video)")
    i.add_argument("--image-mask-blocks", type=int, default=None, help="rectangles per image (default: --mask-blocks)")
    i.add_argument("--image-weight", type=float, default=1.0, help="weight of the image stream's loss")

    o = p.add_argument_group("objective")
    o.add_argument("--mlm-weight", type=float, default=1.0, help="weight of the masked-token loss")
    o.add_argument("--nce-weight", type=float, default=1.0, help="weight of the contrastive loss (0: MP only)")
    o.add_argument("--nce-temperature", type=float, default=0.2, help="InfoNCE temperature")
    add_optimisation_flags(p, lr=1e-3, beta2=0.98, weight_decay=0.05, batch_size=BATCH, bs_per_gpu=BS_PER_GPU, epochs=10,
                           epochs_help="length of the schedule")
    r = add_run_flags(p)
    r.add_argument("--eval-max-batches", type=int, default=None, help="cap on eval micro-batches per rank")

    k = p.add_argument_group("kNN monitor (the original's --knn-monitor)")
    k.add_argument("--knn-monitor", action="store_true",
                   help="at every evaluation, the weighted kNN top-1/top-5 of the backbone's [CLS] (one centre clip "
                        "per video): --knn-train-tokens is the memory bank, --knn-valid-tokens the queries; logged "
                        "as knn_top1 / knn_top5 with the valid metrics and drawn in curves.png")
    k.add_argument("--knn-train-tokens", nargs="+", default=None,
                   help=f"labelled store(s) of the memory bank (views of one split); default: the {KNN_DATASET} "
                        f"split-1 train store at --frame-size under --data-root (the original's)")
    k.add_argument("--knn-valid-tokens", nargs="+", default=None,
                   help=f"labelled store(s) of the queries; default: the {KNN_DATASET} split-1 test store")
    k.add_argument("--knn-k", type=int, default=DEFAULT_K, help="neighbours that vote (capped by the bank's size)")
    k.add_argument("--knn-temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="a neighbour's vote is exp(cosine similarity / temperature)")
    add_no_effect_flags(p, NO_EFFECT)
    return p


def knn_from_flags(a: argparse.Namespace) -> KnnMonitor | None:
    """--knn-monitor's stores: the ones given, else the registry's UCF101 split-1 stores at --frame-size."""
    if not a.knn_monitor:
        if a.knn_train_tokens or a.knn_valid_tokens:
            raise TrainError("--knn-train-tokens / --knn-valid-tokens are the kNN monitor's stores: add --knn-monitor")
        return None
    if a.knn_train_tokens or a.knn_valid_tokens:
        if not (a.knn_train_tokens and a.knn_valid_tokens):
            raise TrainError("--knn-monitor: give both --knn-train-tokens STORE... (memory bank) and "
                             "--knn-valid-tokens STORE... (queries)")
        train, valid = a.knn_train_tokens, a.knn_valid_tokens
    else:
        if a.frame_size is None:
            raise TrainError(f"--knn-monitor needs labelled stores: --knn-train-tokens STORE --knn-valid-tokens STORE, "
                             f"or --frame-size for the {KNN_DATASET} split-1 stores under --data-root")
        kw = dict(frame_size=a.frame_size, purpose="finetune", split_id=1, tokenizer=a.tokenizer, root=a.data_root)
        try:  # the center view of each split, as the original's one-view monitor
            train = registry.store_paths(KNN_DATASET, "train", flag="--knn-train-tokens", **kw)[:1]
            valid = registry.store_paths(KNN_DATASET, "valid", flag="--knn-valid-tokens", **kw)[:1]
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(f"--knn-monitor: {e}") from None
    return KnnMonitor(train=tuple(train), valid=tuple(valid), k=a.knn_k, temperature=a.knn_temperature)


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


def image_stream(a: argparse.Namespace, train: list[str]) -> ImageStreamSpec | None:
    """The image stream's settings from the flags (None: --stream video)."""
    if a.stream == "video":
        given = [f for f, v in (("--image-tokens", a.image_tokens), ("--image-batch", a.image_batch),
                                ("--image-mask-blocks", a.image_mask_blocks)) if v is not None]
        if given:
            raise TrainError(f"{', '.join(given)} configure the image stream: add --stream image (stage 1) or "
                             f"--stream joint (stage 2)")
        return None
    if a.image_ratio <= 0:
        raise TrainError(f"--image-ratio must be > 0, got {a.image_ratio}")
    if a.image_batch is not None and a.image_batch < 1:
        raise TrainError(f"--image-batch must be >= 1, got {a.image_batch}")
    return ImageStreamSpec(stores=tuple(a.image_tokens or train), only=a.stream == "image", ratio=a.image_ratio,
                           batch=a.image_batch,
                           mask_blocks=a.mask_blocks if a.image_mask_blocks is None else a.image_mask_blocks)


def build_task(a: argparse.Namespace) -> PretrainTask:
    train, valid = locate_stores(a)
    try:
        sampling = ClipSampling(clip_len=a.clip_len, frame_rate=a.frame_rate, mask_blocks=a.mask_blocks,
                                relevance_range=None if a.nce_relevance_range < 0 else a.nce_relevance_range,
                                mask_rand_replace=a.mask_rand_replace, masking=a.masking, pair_views=a.pair_views)
    except ValueError as e:
        raise TrainError(str(e)) from None
    try:
        pairs = PairOptions(fgbg_merge=a.fgbg_merge, static_frac=a.static_frac, bg_erase=a.bg_erase,
                            change_weight=a.mp_change_weight, reverse_negatives=a.reverse_negatives)
    except ValueError as e:
        flags = {"fgbg_merge": "--fgbg-merge", "static_frac": "--static-frac", "bg_erase": "--bg-erase",
                 "change_weight": "--mp-change-weight"}
        raise TrainError(f"{flags.get(str(e).split()[0], 'pair options')}: {e}") from None
    data = PretrainData(train=tuple(train), valid=tuple(valid), sampling=sampling, frame_size=a.frame_size,
                        vocab_size=a.vocab_size, seed=a.seed, verify_stores=not a.no_verify_stores, input=a.input,
                        image=image_stream(a, train), pairs=pairs)
    objective = PretrainObjective(mlm_weight=a.mlm_weight, nce_weight=a.nce_weight, temperature=a.nce_temperature,
                                  eval_max_batches=a.eval_max_batches, image_weight=a.image_weight)
    arch = ArchitectureFlags.from_flags(a)
    return PretrainTask(data, objective,
                        lambda vocab, grid: arch.model_config(vocab_size=vocab, grid=grid, clip_len=a.clip_len,
                                                              dropout=a.dropout,
                                                              grad_checkpointing=a.grad_checkpointing),
                        load=a.load, knn=knn_from_flags(a))


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
    say(launch, [f"[pretrain] {note}" for note in no_effect_notes(a, NO_EFFECT)])

    def run() -> tuple[dict[str, Any], bool]:
        cfg = loop_config(a, epochs=a.epochs, default_batch=BATCH, default_bs_per_gpu=BS_PER_GPU, cpu_bf16=cpu_bf16)
        loop = TrainLoop(cfg, build_task(a), hooks=hooks, launch=launch)
        return loop.fit(), loop.main

    result = run_guarded(run, launch)
    if result is None:
        return 2
    summary, prints = result
    if prints:
        tr, va = summary["train"] or {}, summary["valid"] or {}
        train = "; ".join(f"train {p}mp_loss {tr[p + 'mp_loss']:.4f} {p}mask_acc {tr[p + 'mask_acc']:.4f}"
                          for p in ("", "image_") if p + "mp_loss" in tr) or "no train step"
        valid = ", ".join(([f"valid mask_acc {va['mask_acc']:.4f} vs copy baseline {va['copy_acc']:.4f}"]
                           if "mask_acc" in va else []) + ([f"kNN top-1 {va['knn_top1']:.2f}"] if "knn_top1" in va
                                                          else [])) or "no eval"
        print(f"done: step {summary['steps']} (epoch {summary['epoch']}/{summary['epochs']}), "
              f"{summary['steps_this_run']} steps in {summary['seconds']} s = {summary['videos_per_s']} videos/s "
              f"({summary['precision']}), {summary['skipped_steps']} skipped; {train}; {valid}; "
              f"checkpoint {summary['checkpoint']}", flush=True)
        atomic_write_json(os.path.join(a.output, "summary.json"), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
