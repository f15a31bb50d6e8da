"""VIMPAC fine-tuning: a linear classifier on [CLS] of a pre-trained token transformer, multi-view testing.

Tan, Lei, Wolf, Bansal (2021), arXiv 2106.11250, section 4.1 / table 4: train on random extracted
views (2 resizes x 3 crops x flip), test on uniform temporal clips x crops with averaged scores;
positional embeddings are interpolated when the input shape differs from pre-training.

    python -m vimpac.finetune --load snap/pretrain/small/last --dataset-name ucf101 --split-id 1 \
        --frame-size 128 --output snap/finetune/ucf101
    python -m vimpac.finetune --load snap/pretrain/small/last --dataset-name custom \
        --train-tokens STORE [VIEW ...] --valid-tokens STORE [CROP ...] --output O
    python -m vimpac.finetune ... --different-shape --clip-len 10 --frame-size 256 --frame-rate 4
    python -m vimpac.finetune --eval-only --output O [--load O/best] --num-test-clips 10

Outputs under --output: metrics.jsonl, tensorboard/, curves.png, last/ (resumable checkpoint),
best/ (weights of the best valid top-1), results.json, per_class_accuracy.csv, predictions.csv,
confusion_matrix.png. `best/` (or `last/`) is what `vimpac.predict` and `vimpac.export` read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import vimpac.data.registry as base_registry
import vimpac.data.finetune_registry as finetune_registry
from vimpac.model.checkpoint import (CheckpointError, gather_optimizer_state, load_checkpoint, restore_optimizer_state,
                         save_checkpoint)
from vimpac.model.config import ModelConfig
from vimpac.data.pretrain_clips import DataError, EpochBatchSampler, check_compatible_stores
from vimpac.train.runtime import (SCHEDULES, EngineError, LRSchedule, autocast_context, build_ds_config, build_optimizer,
                     build_scheduler, check_precision, init_distributed, init_engine, load_overrides, plan_batches)
from vimpac.eval.scores import EvalResult, class_names, evaluate, write_reports
from vimpac.data.finetune_clips import ClipSpec, EvalClips, TrainClips, check_labels, collate
from vimpac.train.memory import HeapTrimmer
from vimpac.metrics import MetricsLogger, plot_curves
from vimpac.model.transformer import VimpacForClassification
from vimpac.model.pos_embed import PosEmbedShapeError, adapt_pos_embeds
from vimpac.pretrain import (TrainError, check_frame_size, grad_norm_stage0, open_stores, rng_state, seed_everything,
                       set_rng_state)

TASK_KIND = "video-classification"
LAST, BEST = "last", "best"
RESULTS = "results.json"
CODE_TABLE = "backbone.embeddings.code.weight"


# ----------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset-name", default="custom", help=f"one of {', '.join(finetune_registry.finetune_names())}")
    d.add_argument("--split-id", type=int, default=1, help="official split (1..3 for ucf101 and hmdb51)")
    d.add_argument("--train-tokens", nargs="+", default=None, help="train store(s): one per extracted view")
    d.add_argument("--valid-tokens", nargs="+", default=None, help="test store(s): one per test crop")
    d.add_argument("--data-root", default=base_registry.DEFAULT_ROOT)
    d.add_argument("--tokenizer", default="dalle", help="tokenizer part of the store names (--dataset-name)")
    d.add_argument("--fps", type=float, default=None, help="fps part of the store names (default: the dataset's)")
    d.add_argument("--frame-size", type=int, default=None, help="frame side in px the stores were extracted at")
    d.add_argument("--clip-len", type=int, default=None, help="frames per clip (default: the pre-training T)")
    d.add_argument("--frame-rate", type=int, default=1, help="take every N-th stored frame (e.g. 4 on a 16-FPS store)")
    d.add_argument("--num-test-clips", type=int, default=10, help="uniform temporal clips per test crop")
    d.add_argument("--last-test-clips", default=None, help="e.g. 2,5,10: also evaluate these clip counts at the end")
    d.add_argument("--num-workers", type=int, default=2)

    m = p.add_argument_group("model")
    m.add_argument("--load", default=None, help="pre-training output: a checkpoint dir or its model.safetensors")
    m.add_argument("--different-shape", action="store_true",
                   help="allow another --clip-len / --frame-size than pre-training (interpolates positional tables)")
    m.add_argument("--dropout", type=float, default=0.1, help="backbone dropout (the classifier has none)")
    m.add_argument("--linear-probe", action="store_true", help="freeze the backbone, train the classifier only")
    m.add_argument("--from-scratch", action="store_true",
                   help="the same architecture as --load, randomly initialised (the no-pre-training baseline)")
    m.add_argument("--grad-checkpointing", action="store_true")

    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=1e-4)
    o.add_argument("--beta1", type=float, default=0.9)
    o.add_argument("--beta2", type=float, default=0.999)
    o.add_argument("--weight-decay", type=float, default=0.01)
    o.add_argument("--clip-grad-norm", type=float, default=1.0)
    o.add_argument("--lr-scheduler", choices=SCHEDULES, default="linear")
    o.add_argument("--warm-up", type=float, default=0.1)
    o.add_argument("--epochs", type=int, default=None, help="default: the dataset's (paper table 4), else 50")
    o.add_argument("--interval", type=int, default=None, help="stop this run after N epochs (continue with --resume)")
    o.add_argument("--batch-size", type=int, default=128, help="global batch (videos per optimizer step)")
    o.add_argument("--bs-per-gpu", type=int, default=16)
    o.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default="fp32")
    o.add_argument("--fp16", dest="precision", action="store_const", const="fp16")
    o.add_argument("--fp32", dest="precision", action="store_const", const="fp32")
    o.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2))
    o.add_argument("--deepspeed-config", default=None)

    r = p.add_argument_group("run")
    r.add_argument("--output", required=True)
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last")
    r.add_argument("--eval-only", action="store_true", help="evaluate --load (a fine-tuned checkpoint) or OUTPUT/best")
    r.add_argument("--seed", type=int, default=9595)
    r.add_argument("--tqdm", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--eval-per-epochs", type=int, default=1)
    r.add_argument("--eval-batch-size", type=int, default=4, help="videos per eval batch (each: clips x crops)")
    r.add_argument("--eval-max-videos", type=int, default=None, help="cap on test videos (quick checks)")
    r.add_argument("--log-steps", type=int, default=1)
    r.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_clip_counts(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TrainError(f"--last-test-clips {text!r}: expected comma-separated integers like 2,5,10") from None
    if not counts or min(counts) < 1:
        raise TrainError(f"--last-test-clips {text!r}: counts must be >= 1")
    return counts


# ----------------------------------------------------------------------------- loading

def resolve_checkpoint(path: str) -> str:
    """--load accepts a checkpoint dir, its model.safetensors/config.json, or a run output holding best/ or last/."""
    if os.path.isfile(path):
        path = os.path.dirname(path) or "."
    if not os.path.exists(os.path.join(path, "config.json")):
        for sub in (BEST, LAST):
            if os.path.exists(os.path.join(path, sub, "config.json")):
                return os.path.join(path, sub)
    return path


def remap_vocab(table: torch.Tensor, old_vocab: int, new_vocab: int, *, std: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Code-embedding rows for another vocabulary: codes first (kept up to the smaller size, new ones random),
    then the special tokens moved after the new codes (their ids follow the vocabulary)."""
    specials = table[old_vocab:]  # [MASK], [PAD], [CLS], spares
    keep = min(old_vocab, new_vocab)
    extra = torch.randn(max(new_vocab - old_vocab, 0), table.shape[1], generator=generator) * std
    return torch.cat([table[:keep], extra.to(table.dtype), specials])


def classifier_state(ckpt_state: dict[str, torch.Tensor], ckpt_cfg: ModelConfig, model: VimpacForClassification, *,
                     different_shape: bool, keep_head: bool, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Backbone weights of a pre-training (or fine-tuned) state dict fitted to `model` -> (state, notes)."""
    cfg = model.cfg
    state = {k: v for k, v in ckpt_state.items() if k.startswith("backbone.") or (keep_head and k.startswith("head."))}
    notes = []
    if ckpt_cfg.vocab_size != cfg.vocab_size and CODE_TABLE in state:
        gen = torch.Generator().manual_seed(0)
        state[CODE_TABLE] = remap_vocab(state[CODE_TABLE], ckpt_cfg.vocab_size, cfg.vocab_size, std=cfg.init_std,
                                        generator=gen)
        notes.append(f"vocabulary {ckpt_cfg.vocab_size} -> {cfg.vocab_size} codes")
    target = {k: v.shape for k, v in model.state_dict().items()}
    try:
        adapted = adapt_pos_embeds(state, target, different_shape=different_shape)
    except PosEmbedShapeError as e:
        raise TrainError(f"{where}: pre-trained on T={ckpt_cfg.clip_len}, {ckpt_cfg.grid_h}x{ckpt_cfg.grid_w} codes, "
                         f"fine-tuning on T={cfg.clip_len}, {cfg.grid_h}x{cfg.grid_w}: {e}") from None
    resampled = [k for k in state if adapted[k] is not state[k]]
    if resampled:
        notes.append(f"--different-shape: resampled {resampled}")
    if not keep_head:
        for k, v in model.state_dict().items():
            if k.startswith("head."):
                adapted[k] = v  # the zero-initialised classifier
    bad = [f"{k}: {tuple(adapted[k].shape)} vs {tuple(target[k])}" for k in adapted
           if k in target and tuple(adapted[k].shape) != tuple(target[k])]
    missing, unexpected = sorted(set(target) - set(adapted)), sorted(set(adapted) - set(target))
    if bad or missing or unexpected:
        raise TrainError(f"{where} does not fit the classifier: shape mismatches {bad[:3]}, missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return adapted, notes


def is_finetuned(config: dict) -> bool:
    return isinstance(config.get("train"), dict) and config["train"].get("task", {}).get("kind") == TASK_KIND


# ----------------------------------------------------------------------------- state

@dataclass
class FinetuneState:
    step: int = 0
    epoch: int = 0
    samples_in_epoch: int = 0
    adam_step: int = 0
    best_top1: float = -1.0
    best_top5: float = -1.0
    best_epoch: int = -1


class Finetuner:
    """Owns data, model, engine and state of one fine-tuning (or --eval-only) run."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.out = a.output
        self.ckpt_dir, self.best_dir = os.path.join(a.output, LAST), os.path.join(a.output, BEST)
        self.clip_counts = parse_clip_counts(a.last_test_clips)
        self._open_data()
        self.state = FinetuneState()
        if a.eval_only:
            self._init_eval_only()
            return
        resume = self._read_resume()
        check_precision(a.precision, a.zero_stage, cpu=not torch.cuda.is_available())
        self.plan = plan_batches(batch_size=a.batch_size, bs_per_gpu=a.bs_per_gpu,
                                 world_size=int(os.environ.get("WORLD_SIZE", "1")))
        self.dist = init_distributed()
        self.main = self.dist.is_main
        seed_everything(a.seed)  # same initial weights on every rank
        self.model = self._build_model(resume)
        micro_per_epoch = len(self.train_set) // (self.plan.micro_batch * self.plan.world_size)
        self.steps_per_epoch = micro_per_epoch // self.plan.accumulation
        if self.steps_per_epoch < 1:
            raise TrainError(f"{len(self.train_set)} training videos do not fill one global batch of "
                             f"{self.plan.global_batch}; lower --batch-size")
        self.sampler = EpochBatchSampler(len(self.train_set), micro_batch=self.plan.micro_batch,
                                         world_size=self.plan.world_size, rank=self.dist.rank, seed=a.seed,
                                         micro_steps_per_epoch=self.steps_per_epoch * self.plan.accumulation)
        if a.linear_probe:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.model.to(self.dist.device)
        optimizer = build_optimizer(self.model, lr=a.lr, betas=(a.beta1, a.beta2), weight_decay=a.weight_decay)
        st = self.state
        self.schedule = LRSchedule(kind=a.lr_scheduler, warmup=a.warm_up, epochs=self.epochs,
                                   steps_per_epoch=self.steps_per_epoch)
        self.scheduler = build_scheduler(optimizer, self.schedule)
        ds_config = build_ds_config(self.plan, clip_grad_norm=a.clip_grad_norm, zero_stage=a.zero_stage,
                                    precision=a.precision, overrides=load_overrides(a.deepspeed_config))
        self.engine = init_engine(self.model, optimizer, self.scheduler, ds_config)
        if resume is not None:
            restore_optimizer_state(self.engine, resume.optimizer_state, st.adam_step)
            self.scheduler.last_epoch = st.step
            lrs = [base * self.schedule(st.step) for base in self.scheduler.base_lrs]
            for g, lr in zip(self.scheduler.optimizer.param_groups, lrs):
                g["lr"] = lr
            self.scheduler._last_lr = lrs
            rngs = resume.trainer_state.get("rng", [])
            if len(rngs) == self.dist.world_size:
                set_rng_state(rngs[self.dist.rank])
        self.metrics = MetricsLogger(self.out, enabled=self.main, resume_step=st.step if resume is not None else None)

    # -- setup
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def _locate(self) -> tuple[list[str], list[str]]:
        a = self.a
        if a.dataset_name == "custom" or a.train_tokens:
            if not a.valid_tokens or (not a.train_tokens and not a.eval_only):
                raise TrainError("give both --train-tokens STORE [VIEW ...] and --valid-tokens STORE [CROP ...] "
                                 "(--eval-only: --valid-tokens only), or a registered --dataset-name with --frame-size")
            return a.train_tokens or [], a.valid_tokens
        if a.frame_size is None:
            raise TrainError("--dataset-name needs --frame-size (the stores' names include it)")
        try:
            kw = dict(frame_size=a.frame_size, split_id=a.split_id, tokenizer=a.tokenizer, fps=a.fps, root=a.data_root)
            train = finetune_registry.store_paths(a.dataset_name, "train", **kw) if not a.eval_only else []
            valid = a.valid_tokens or finetune_registry.store_paths(a.dataset_name, "valid", **kw)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None
        return train, valid

    def _open_data(self) -> None:
        a = self.a
        train_paths, valid_paths = self._locate()
        self.train_stores = open_stores(train_paths, "--train-tokens") if train_paths else []
        self.valid_stores = open_stores(valid_paths, "--valid-tokens")
        check_frame_size(self.train_stores + self.valid_stores, a.frame_size, "stores")
        try:
            vocab, grid = check_compatible_stores(self.valid_stores, "--valid-tokens")
            if self.train_stores:
                t_vocab, t_grid = check_compatible_stores(self.train_stores, "--train-tokens")
                if (t_vocab, t_grid) != (vocab, grid):
                    raise DataError(f"train stores have {t_vocab} codes on a {t_grid} map, valid stores {vocab} "
                                    f"codes on a {grid} map")
        except DataError as e:
            raise TrainError(str(e)) from None
        self.vocab_size, self.grid = vocab, grid
        first = (self.train_stores or self.valid_stores)[0]
        if a.dataset_name != "custom":
            spec = finetune_registry.get_finetune_spec(a.dataset_name)
            num_classes, self.default_epochs = spec.num_classes, spec.epochs
        else:
            names = first.label_names
            num_classes = len(names) if names else 1 + max(int(s.labels.max()) for s in
                                                           self.train_stores[:1] + self.valid_stores[:1])
            self.default_epochs = 50
        if first.label_names and len(first.label_names) != num_classes:
            raise TrainError(f"{first.path}: the store's label map has {len(first.label_names)} names but "
                             f"--dataset-name {a.dataset_name} has {num_classes} classes")
        self.num_classes = num_classes
        self.label_names = class_names(first.label_names, num_classes)
        self.epochs = a.epochs or self.default_epochs
        try:
            for stores, what in ((self.train_stores, "--train-tokens"), (self.valid_stores, "--valid-tokens")):
                if stores:
                    check_labels(stores, num_classes, what)
        except DataError as e:
            raise TrainError(str(e)) from None
        self.first_store = first

    def _clip_spec(self, clip_len: int) -> ClipSpec:
        try:
            return ClipSpec(clip_len=clip_len, frame_rate=self.a.frame_rate)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def _datasets(self, clip_len: int) -> None:
        clip = self._clip_spec(clip_len)
        self.clip = clip
        self.train_set = TrainClips(self.train_stores, clip, seed=self.a.seed) if self.train_stores else None
        self.valid_set = self.test_set(self.a.num_test_clips)

    def test_set(self, num_clips: int) -> EvalClips:
        try:
            return EvalClips(self.valid_stores, self.clip, num_clips=num_clips)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def task(self) -> dict[str, Any]:
        """Everything predict/export need besides the weights and the tokenizer's weights."""
        meta = self.first_store.meta
        return {"kind": TASK_KIND, "dataset": self.a.dataset_name, "split_id": self.a.split_id,
                "num_classes": self.num_classes, "label_names": self.label_names,
                "clip_len": self.clip.clip_len, "frame_rate": self.clip.frame_rate,
                "frame_size": int(meta.get("crop_size", self.grid[0] * meta["tokenizer"].get("downsample", 8))),
                "fps": float(meta.get("fps", 2.0)), "tokenizer": meta["tokenizer"],
                "test_crops": [str(s.meta.get("crop_type", "center")) for s in self.valid_stores],
                "test_hflip": [bool(s.meta.get("hflip", False)) for s in self.valid_stores],
                "num_test_clips": self.a.num_test_clips}

    def _load_source(self) -> tuple[ModelConfig, dict[str, torch.Tensor], dict, str]:
        if not self.a.load:
            raise TrainError("fine-tuning needs --load PRETRAIN_OUTPUT (a checkpoint dir with model.safetensors + "
                             "config.json)")
        path = resolve_checkpoint(self.a.load)
        try:
            ck = load_checkpoint(path, weights_only=True)
        except CheckpointError as e:
            raise TrainError(f"--load: {e}") from None
        return ck.model_config, ck.model_state, ck.config, path

    def _build_model(self, resume) -> VimpacForClassification:
        a = self.a
        if resume is not None:
            cfg = resume.model_config
            self._datasets(cfg.clip_len)
            self._check_fits(cfg, f"--resume {self.ckpt_dir}")
            model = VimpacForClassification(cfg, num_classes=self.num_classes)
            state, _ = classifier_state(resume.model_state, cfg, model, different_shape=False, keep_head=True,
                                        where=self.ckpt_dir)
            model.load_state_dict(state)
            return model
        src_cfg, src_state, src_config, path = self._load_source()
        clip_len = a.clip_len or src_cfg.clip_len
        self._datasets(clip_len)
        cfg = src_cfg.replace(vocab_size=self.vocab_size, clip_len=clip_len, grid_h=self.grid[0], grid_w=self.grid[1],
                              dropout=a.dropout, grad_checkpointing=a.grad_checkpointing)
        model = VimpacForClassification(cfg, num_classes=self.num_classes)
        if a.from_scratch:
            self.log(f"[finetune] architecture of {path}, random initial weights (--from-scratch); "
                     f"{self.num_classes}-class classifier")
            return model
        state, notes = classifier_state(src_state, src_cfg, model, different_shape=a.different_shape,
                                        keep_head=False, where=f"--load {path}")
        model.load_state_dict(state)
        self.log(f"[finetune] loaded the backbone of {path} ({'; '.join(notes) or 'same shape and vocabulary'}); "
                 f"new {self.num_classes}-class classifier")
        return model

    def _check_fits(self, cfg: ModelConfig, where: str) -> None:
        if cfg.vocab_size != self.vocab_size or (cfg.grid_h, cfg.grid_w) != tuple(self.grid):
            raise TrainError(f"{where}: model takes {cfg.vocab_size} codes on {cfg.grid_h}x{cfg.grid_w} maps, the "
                             f"stores hold {self.vocab_size} codes on {self.grid[0]}x{self.grid[1]} maps")

    def _read_resume(self):
        a = self.a
        if not a.resume:
            if os.path.exists(self.ckpt_dir):
                raise TrainError(f"{a.output} already holds a checkpoint ({self.ckpt_dir}); pass --resume to "
                                 f"continue that run, or choose another --output")
            return None
        try:
            ck = load_checkpoint(self.ckpt_dir)
        except CheckpointError as e:
            raise TrainError(f"--resume: no usable checkpoint in {a.output} ({e})") from None
        try:
            ts = ck.trainer_state
            self.state = FinetuneState(**{k: ts[k] for k in FinetuneState.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise TrainError(f"--resume: {self.ckpt_dir}/trainer_state.json is malformed ({e})") from None
        if self.state.epoch >= self.epochs:
            raise TrainError(f"--resume: the checkpoint already finished epoch {self.state.epoch} of --epochs "
                             f"{self.epochs}")
        return ck

    def _init_eval_only(self) -> None:
        a = self.a
        path = resolve_checkpoint(a.load) if a.load else self.best_dir
        try:
            ck = load_checkpoint(path, weights_only=True)
        except CheckpointError as e:
            raise TrainError(f"--eval-only: {e}") from None
        if not is_finetuned(ck.config):
            raise TrainError(f"--eval-only: {path} is not a fine-tuned checkpoint (no classifier); fine-tune first")
        cfg = ck.model_config
        self._datasets(a.clip_len or cfg.clip_len)
        self._check_fits(cfg, f"--eval-only {path}")
        if self.clip.clip_len != cfg.clip_len:
            raise TrainError(f"--eval-only: --clip-len {self.clip.clip_len} differs from the checkpoint's "
                             f"{cfg.clip_len}")
        self.model = VimpacForClassification(cfg, num_classes=self.num_classes)
        state, _ = classifier_state(ck.model_state, cfg, self.model, different_shape=False, keep_head=True, where=path)
        self.model.load_state_dict(state)
        self.eval_source = path

    # -- checkpoints
    def _save(self, directory: str, *, full: bool, result: dict | None = None) -> None:
        st = self.state
        moments = None
        if full:
            moments, st.adam_step = gather_optimizer_state(self.engine)
        model_state = self.engine.module.state_dict()
        if self.a.precision == "fp16":  # the module holds fp16 copies; save the fp32 masters (collective)
            from deepspeed.utils import safe_get_full_fp32_param

            for name, p in self.engine.module.named_parameters():
                if p.requires_grad:
                    model_state[name] = safe_get_full_fp32_param(p)
        rngs = [rng_state()]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if not self.main:
            if self.dist.world_size > 1:
                torch.distributed.barrier()
            return
        train_config = {**{k: v for k, v in vars(self.a).items()}, "task": self.task()}
        if result is not None:
            train_config["eval"] = result
        trainer_state = {**st.__dict__, "rng": rngs} if full else None
        try:
            save_checkpoint(directory, model_state=model_state, model_config=self.model.cfg,
                            train_config=train_config, step=st.step, epoch=st.epoch, optimizer_state=moments,
                            trainer_state=trainer_state)
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # other ranks read nothing until the checkpoint is complete

    def _loader(self):
        from torch.utils.data import DataLoader

        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=self.a.num_workers,
                          collate_fn=collate, generator=torch.Generator(),
                          prefetch_factor=4 if self.a.num_workers > 0 else None)

    def evaluate(self, num_clips: int | None = None) -> EvalResult:
        ds = self.valid_set if num_clips is None else self.test_set(num_clips)
        model = self.engine.module if hasattr(self, "engine") else self.model
        return evaluate(model, ds, batch_size=self.a.eval_batch_size, precision=self.a.precision,
                        max_videos=self.a.eval_max_videos, progress=self.main and self.a.tqdm,
                        desc=f"eval {ds.num_clips}x{ds.num_crops}")

    # -- train
    def fit(self) -> dict[str, Any]:
        a, st, plan = self.a, self.state, self.plan
        bar = None
        end_epoch = self.epochs if a.interval is None else min(self.epochs, st.epoch + a.interval)
        total = (end_epoch - st.epoch) * self.steps_per_epoch - st.samples_in_epoch // plan.global_batch
        if self.main and a.tqdm:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="step", desc="finetune", dynamic_ncols=True, mininterval=1.0)
        self.log(f"[finetune] {len(self.train_set)} train videos x {len(self.train_stores)} view(s), "
                 f"{len(self.valid_set)} test videos x {len(self.valid_stores)} crop(s), {self.num_classes} classes; "
                 f"{self.steps_per_epoch} steps/epoch of {plan.global_batch}; epochs {st.epoch}->{end_epoch} of {self.epochs}"
                 f"{' (linear probe)' if a.linear_probe else ''}")
        t0, steps_run, eval_seconds = time.time(), 0, 0.0
        trimmer = HeapTrimmer()
        last_eval: EvalResult | None = None
        module = self.engine.module
        while st.epoch < end_epoch:
            g = plan.micro_batch * plan.world_size
            self.sampler.set_position(st.epoch, st.samples_in_epoch // g)
            loss_sum, correct, seen, window = 0.0, 0, 0, 0
            for batch in self._loader():
                if a.linear_probe:
                    module.backbone.eval()  # frozen features: no dropout either
                codes, labels = batch["codes"].to(self.dist.device), batch["label"].to(self.dist.device)
                with autocast_context(a.precision, self.dist.device):
                    logits = self.engine(codes)  # (B, C)
                loss = F.cross_entropy(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise TrainError(f"non-finite loss at step {st.step + 1} (epoch {st.epoch}); lower --lr or try "
                                     f"--fp32, then --resume from {self.ckpt_dir}")
                self.engine.backward(loss)
                window += 1
                loss_sum += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(-1) == labels).sum())
                seen += len(labels)
                boundary = window == plan.accumulation
                grad_norm = grad_norm_stage0(self.engine) if boundary and a.zero_stage == 0 else float("nan")
                lr = self.scheduler.get_last_lr()[0]
                self.engine.step()
                if not boundary:
                    continue
                window = 0
                st.step += 1
                st.samples_in_epoch += plan.global_batch
                steps_run += 1
                trimmer.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
                if st.step % a.log_steps == 0:
                    self.metrics.log("train", st.epoch, st.step, loss=loss_sum / seen, acc=correct / seen, lr=lr,
                                     grad_norm=grad_norm)
                loss_sum, correct, seen = 0.0, 0, 0
            st.epoch += 1
            st.samples_in_epoch = 0
            if a.eval_per_epochs and (st.epoch % a.eval_per_epochs == 0 or st.epoch == self.epochs):
                t_eval = time.time()
                last_eval = self.evaluate()
                eval_seconds += time.time() - t_eval
                self.metrics.log("valid", st.epoch, st.step, top1=last_eval.top1, top5=last_eval.top5)
                self.log(f"[finetune] epoch {st.epoch}: valid top-1 {last_eval.top1:.2f} top-5 {last_eval.top5:.2f} "
                         f"({last_eval.num_clips} clips x {last_eval.num_crops} crops, {len(last_eval.labels)} videos)")
                if last_eval.top1 > st.best_top1:
                    st.best_top1, st.best_top5, st.best_epoch = last_eval.top1, last_eval.top5, st.epoch
                    self._save(self.best_dir, full=False, result=last_eval.summary())
            self._save(self.ckpt_dir, full=True)
        if bar is not None:
            bar.close()
        if last_eval is None:  # resumed at the very end, or evaluation switched off
            last_eval = self.evaluate()
        seconds = time.time() - t0
        train_seconds = max(seconds - eval_seconds, 1e-9)
        run = {"init": "scratch" if a.from_scratch else ("linear_probe" if a.linear_probe else "pretrained"),
               "load": a.load, "seed": a.seed, "train_videos": len(self.train_set), "epochs": self.epochs,
               "steps": st.step, "steps_this_run": steps_run, "seconds": round(seconds, 1),
               "train_clips_per_s": round(steps_run * plan.global_batch / train_seconds, 2)}
        summary = self.finish(last_eval, run)
        summary.update(steps=st.step, steps_this_run=steps_run, seconds=round(seconds, 1))
        self.metrics.close()
        if self.main:
            try:
                plot_curves(self.metrics.path, os.path.join(self.out, "curves.png"),
                            keys=("loss", "acc", "top1", "top5", "lr", "grad_norm"))
            except ValueError:
                pass
        return summary

    def finish(self, final: EvalResult, run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reports of the final model, extra clip counts, and results.json (final + best + this run's facts)."""
        st = self.state
        results: dict[str, Any] = {"final": final.summary()}
        if run is not None:
            results["run"] = run
        if st.best_epoch >= 0:
            results["best"] = {"top1": st.best_top1, "top5": st.best_top5, "epoch": st.best_epoch,
                               "num_test_clips": final.num_clips, "num_crops": final.num_crops}
        else:  # eval-only: the evaluated checkpoint is the best we know
            results["best"] = dict(results["final"])
        extra = {}
        for n in self.clip_counts:
            r = final if n == final.num_clips else self.evaluate(n)
            extra[str(n)] = r.summary()
            self.log(f"[finetune] {n} clips x {r.num_crops} crops: top-1 {r.top1:.2f} top-5 {r.top5:.2f}")
        if extra:
            results["last_test_clips"] = extra
        if self.main:
            files = write_reports(final, self.out, self.label_names)
            results["files"] = {k: os.path.basename(v) for k, v in files.items()}
            with open(os.path.join(self.out, RESULTS), "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
        return results


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        runner = Finetuner(a)
        if a.eval_only:
            result = runner.evaluate()
            summary = runner.finish(result)
        else:
            summary = runner.fit()
    except (TrainError, EngineError, CheckpointError, DataError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if runner.main:
        fin, best = summary["final"], summary["best"]
        print(f"done: final top-1 {fin['top1']:.2f} top-5 {fin['top5']:.2f}, best top-1 {best['top1']:.2f} "
              f"({fin['num_test_clips']} clips x {fin['num_crops']} crops, {fin['num_videos']} videos); "
              f"results {os.path.join(a.output, RESULTS)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
