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
config.json are what fine-tuning loads), curves.png, mask_examples.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from video2token.store import StoreError, TokenStore

import vimpac.data.registry as dataset_registry
from vimpac.model.checkpoint import (CheckpointError, gather_optimizer_state, load_checkpoint, restore_optimizer_state,
                         save_checkpoint)
from vimpac.model.config import CONFIG_NAMES, POS_EMB_KINDS, ModelConfig, named_config
from vimpac.eval.copy_baseline import copy_baseline_accuracy
from vimpac.data.pretrain_clips import (MASKINGS, ClipPairDataset, ClipSampling, DataError, EpochBatchSampler, check_compatible_stores,
                   collate_pairs)
from vimpac.train.runtime import (SCHEDULES, EngineError, LRSchedule, autocast_context, build_ds_config,
                     build_optimizer, build_scheduler, check_precision, init_distributed, init_engine,
                     load_overrides, plan_batches)
from vimpac.train.memory import HeapTrimmer
from vimpac.metrics import MetricsLogger, plot_curves
from vimpac.model.pos_embed import POS_TABLES, PosEmbedShapeError, adapt_pos_embeds, resample_pos_embed

CKPT_NAME = "last"
#: test hook: seconds to sleep after every optimizer step (lets a test kill -9 a run mid-epoch)
STEP_SLEEP_ENV = "VIMPAC_TEST_STEP_SLEEP"
#: test hook: make the loss NaN at these optimizer steps ("3,4,5"), to exercise the non-finite policy
NAN_STEPS_ENV = "VIMPAC_TEST_NAN_STEPS"


class TrainError(RuntimeError):
    """The run cannot start or continue (the message says why and what to do)."""


# ----------------------------------------------------------------------------- flags

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--train-tokens", nargs="+", default=None, help="train token store(s); several = views of one split")
    d.add_argument("--valid-tokens", nargs="+", default=None, help="valid token store(s)")
    d.add_argument("--dataset-name", default=None,
                   help=f"locate stores under --data-root by name ({', '.join(dataset_registry.dataset_names())})")
    d.add_argument("--data-root", default=dataset_registry.DEFAULT_ROOT)
    d.add_argument("--tokenizer", default="dalle", help="tokenizer part of the store names (--dataset-name)")
    d.add_argument("--fps", type=float, default=None, help="fps part of the store names (default: the dataset's)")
    d.add_argument("--frame-size", type=int, default=None, help="frame side in px the stores were extracted at")
    d.add_argument("--clip-len", type=int, default=5, help="frames per clip (T)")
    d.add_argument("--frame-rate", type=int, default=1, help="take every N-th stored frame")
    d.add_argument("--nce-relevance-range", type=int, default=-1,
                   help="max distance (stored frames) between a video's two clips; -1: anywhere (the paper's best)")
    d.add_argument("--mask-blocks", type=int, default=5, help="block-mask cuboids per clip (5: ~15%% at T=5, 16x16)")
    d.add_argument("--masking", choices=MASKINGS, default="block",
                   help="block: --mask-blocks cuboids (the paper); iid: single positions at the same expected ratio")
    d.add_argument("--mask-rand-replace", action="store_true", help="BERT 80/10/10 replacement of masked tokens")
    d.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")

    m = p.add_argument_group("model")
    m.add_argument("--config", choices=CONFIG_NAMES, default="small")
    m.add_argument("--model", default="efflayoutT,H|W", help="'efflayout' + layout string, e.g. efflayoutT,H|W")
    m.add_argument("--pos-emb", choices=POS_EMB_KINDS, default="hw_separation")
    m.add_argument("--layers", type=int, default=None, help="override the config's layers")
    m.add_argument("--hid-dim", type=int, default=None, help="override the config's width (heads of 64, MLP 4x)")
    m.add_argument("--heads", type=int, default=None, help="attention heads when --hid-dim is overridden")
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--nce-proj-layers", type=int, default=None)
    m.add_argument("--nce-proj-hid-dim", type=int, default=None)
    m.add_argument("--grad-checkpointing", action="store_true")

    o = p.add_argument_group("optimisation")
    o.add_argument("--mlm-weight", type=float, default=1.0)
    o.add_argument("--nce-weight", type=float, default=1.0)
    o.add_argument("--nce-temperature", type=float, default=0.2)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--beta1", type=float, default=0.9)
    o.add_argument("--beta2", type=float, default=0.98)
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--clip-grad-norm", type=float, default=1.0)
    o.add_argument("--lr-scheduler", choices=SCHEDULES, default="linear")
    o.add_argument("--warm-up", type=float, default=0.1, help="warm-up fraction of the whole schedule")
    o.add_argument("--epochs", type=int, default=10, help="length of the schedule")
    o.add_argument("--interval", type=int, default=None, help="stop this run after N epochs of the schedule")
    o.add_argument("--batch-size", type=int, default=1024, help="global batch (videos per optimizer step)")
    o.add_argument("--bs-per-gpu", type=int, default=32, help="micro batch per rank (accumulation fills the rest)")
    # the last precision flag wins, so a script's default can be overridden by an extra flag
    o.add_argument("--bf16", dest="precision", action="store_const", const="bf16", default="fp32",
                   help="bf16 autocast over fp32 weights (the CPU fast path with AMX)")
    o.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                   help="DeepSpeed fp16 with dynamic loss scaling (GPU only)")
    o.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="full precision")
    o.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2))
    o.add_argument("--deepspeed-config", default=None, help="JSON merged over the generated DeepSpeed config")
    o.add_argument("--max-nonfinite", type=int, default=5, help="stop after this many non-finite steps in a row")

    r = p.add_argument_group("run")
    r.add_argument("--output", required=True)
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last (model, optimizer, data position)")
    r.add_argument("--load", default=None, help="initialise weights from a checkpoint directory (fresh schedule)")
    r.add_argument("--seed", type=int, default=9595)
    r.add_argument("--tqdm", action=argparse.BooleanOptionalAction, default=True, help="rank-0 progress bar")
    r.add_argument("--debug", action="store_true", help="log the video indices of every step (resume checks)")
    r.add_argument("--eval-per-epochs", type=int, default=1, help="eval on the valid split every N epochs (0: never)")
    r.add_argument("--eval-max-batches", type=int, default=None, help="cap on eval micro-batches per rank")
    r.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N optimizer steps")
    r.add_argument("--log-steps", type=int, default=1, help="log train metrics every N steps")
    # the deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same
    r.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
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
    if a.nce_proj_layers is not None:
        overrides["nce_proj_layers"] = a.nce_proj_layers
    if a.nce_proj_hid_dim is not None:
        overrides["nce_proj_hid_dim"] = a.nce_proj_hid_dim
    try:
        return named_config(a.config, **overrides)
    except ValueError as e:
        raise TrainError(str(e)) from None


# ----------------------------------------------------------------------------- data

def open_stores(paths: list[str], what: str) -> list[TokenStore]:
    stores = []
    for path in paths:
        try:
            stores.append(TokenStore(path))
        except StoreError as e:
            raise TrainError(f"{what}: {e}") from None
    return stores


def locate_stores(a: argparse.Namespace) -> tuple[list[str], list[str]]:
    if a.train_tokens:
        return a.train_tokens, a.valid_tokens or []
    if not a.dataset_name:
        raise TrainError("give the data: --train-tokens STORE [--valid-tokens STORE], or --dataset-name NAME")
    if a.frame_size is None:
        raise TrainError("--dataset-name needs --frame-size (the stores' names include it)")
    try:
        train = dataset_registry.store_paths(a.dataset_name, "train", frame_size=a.frame_size, tokenizer=a.tokenizer,
                                             fps=a.fps, root=a.data_root)
        valid = a.valid_tokens or dataset_registry.store_paths(a.dataset_name, "valid", frame_size=a.frame_size,
                                                               tokenizer=a.tokenizer, fps=a.fps, root=a.data_root)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None
    return train, valid


def check_frame_size(stores: list[TokenStore], frame_size: int | None, what: str) -> None:
    if frame_size is None:
        return
    for s in stores:
        crop = s.meta.get("crop_size")
        if crop is not None and int(crop) != frame_size:
            raise TrainError(f"{what}: --frame-size {frame_size} but {s.path} was extracted at crop size {crop}")


# ----------------------------------------------------------------------------- state

@dataclass
class TrainState:
    step: int = 0               # optimizer steps done (skipped steps included: they keep the schedule)
    epoch: int = 0              # current epoch
    samples_in_epoch: int = 0   # videos of the epoch already consumed (all ranks): the data position
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0
    adam_step: int = 0
    stage_starts: list[dict] = field(default_factory=list)  # where each run (stage) started


def rng_state() -> dict[str, Any]:
    npst = np.random.get_state()
    st = {"torch": torch.get_rng_state().tolist(), "python": _listify(random.getstate()),
          "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state().tolist()
    return st


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(st["cuda"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resample_moments(moments: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Stage 2: AdamW moments of positional tables follow their tables to the new (T, h, w)."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    out = {}
    for key, v in moments.items():
        name = key.split("::")[0]
        want = shapes.get(name)
        if want is not None and tuple(v.shape) != tuple(want) and name.rsplit(".", 1)[-1] in POS_TABLES:
            v = resample_pos_embed(v, tuple(want)[:-1])
            if key.endswith("::exp_avg_sq"):
                v = v.clamp_min(0)  # interpolation keeps it >= 0; clamp guards rounding
        out[key] = v
    return out


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str
                 ) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Load a state dict, resampling positional tables to the model's shape -> (resampled names, loaded dict)."""
    target = {k: v.shape for k, v in model.state_dict().items()}
    try:
        adapted = adapt_pos_embeds(state, target, different_shape=True)
    except PosEmbedShapeError as e:
        raise TrainError(f"{where}: {e}") from None
    resampled = [k for k in state if k in adapted and adapted[k] is not state[k]]
    bad = [f"{k}: {tuple(adapted[k].shape)} vs {tuple(target[k])}" for k in adapted
           if k in target and tuple(adapted[k].shape) != tuple(target[k])]
    missing, unexpected = sorted(set(target) - set(adapted)), sorted(set(adapted) - set(target))
    if bad or missing or unexpected:
        raise TrainError(f"{where} does not fit this model: shape mismatches {bad[:3]}, missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; check --config/--layers/--hid-dim/--model/--pos-emb")
    model.load_state_dict(adapted)
    return resampled, adapted


def check_same_architecture(ckpt_cfg: ModelConfig, cfg: ModelConfig, where: str) -> None:
    """Everything but the input shape (stage 2 changes it) and run-time options must match."""
    free = {"clip_len", "grid_h", "grid_w", "dropout", "attn_dropout", "grad_checkpointing", "name"}
    a, b = ckpt_cfg.to_dict(), cfg.to_dict()
    diff = [f"{k}: {a[k]!r} (checkpoint) vs {b[k]!r} (flags)" for k in a if k not in free and a[k] != b[k]]
    if diff:
        if a["vocab_size"] != b["vocab_size"]:
            raise TrainError(f"{where}: vocabulary mismatch: the checkpoint was trained on {a['vocab_size']} codes but "
                             f"the token stores have {b['vocab_size']} (another tokenizer?)")
        raise TrainError(f"{where}: the flags describe another model than the checkpoint: " + "; ".join(diff))


# ----------------------------------------------------------------------------- one micro-step

@dataclass
class StepSums:
    """Sums over micro-batches (and ranks after `reduce`), turned into metrics by `metrics()`."""

    values: torch.Tensor = field(default_factory=lambda: torch.zeros(10, dtype=torch.float64))
    # 0 mp_loss*n, 1 mask correct, 2 copy correct, 3 masked, 4 cl_loss*n, 5 cl_acc*n, 6 n micro, 7 valid tokens,
    # 8 pad tokens, 9 all tokens

    def add(self, **kw: float) -> None:
        names = ("mp_loss", "mask_correct", "copy_correct", "masked", "cl_loss", "cl_acc", "micro", "valid", "pad",
                 "tokens")
        for k, v in kw.items():
            self.values[names.index(k)] += float(v)

    def reduce(self, world_size: int, device: torch.device) -> None:
        if world_size > 1:  # nccl reduces device tensors only
            v = self.values.to(device)
            torch.distributed.all_reduce(v)
            self.values = v.cpu()

    def metrics(self) -> dict[str, float]:
        v = self.values.tolist()
        n, masked = max(v[6], 1.0), max(v[3], 1.0)
        return {"mp_loss": v[0] / n, "mask_acc": v[1] / masked, "copy_acc": v[2] / masked, "cl_loss": v[4] / n,
                "cl_acc": v[5] / n, "mask_ratio": v[3] / max(v[7], 1.0), "pad_ratio": v[8] / max(v[9], 1.0)}


def forward_micro(engine, batch: dict[str, torch.Tensor], *, device: torch.device, precision: str,
                  mlm_weight: float, nce_weight: float, temperature: float, pad_id: int):
    """Loss of one micro-batch and its metric contributions (masked-token CE + InfoNCE + copy baseline)."""
    from vimpac.model.losses import symmetric_infonce

    codes = batch["codes"].to(device).flatten(0, 1)        # (2B, T, h, w): clip a, clip b of video 0, ...
    codes_in = batch["codes_in"].to(device).flatten(0, 1)
    mask = batch["mask"].to(device).flatten(0, 1)
    with autocast_context(precision, device):
        out = engine(codes_in, mask, codes)
        z = out.cls_proj.float().view(-1, 2, out.cls_proj.shape[-1])  # (B, 2, d)
        cl = symmetric_infonce(z[:, 0], z[:, 1], temperature=temperature)
        loss = mlm_weight * out.mp_loss + nce_weight * cl.loss
    valid = codes != pad_id
    copy_correct, masked = copy_baseline_accuracy(codes, mask, valid)
    contrib = dict(mp_loss=out.mp_loss.item(), mask_correct=out.mp_acc.item() * out.num_masked,
                   copy_correct=copy_correct.item(), masked=masked.item(), cl_loss=cl.loss.item(),
                   cl_acc=cl.acc.item(), micro=1, valid=valid.sum().item(), pad=(~valid).sum().item(),
                   tokens=valid.numel())
    return loss, contrib


def grad_norm_stage0(engine) -> float:
    """Global L2 norm of the (already all-reduced) gradients; DeepSpeed caches it only under ZeRO."""
    grads = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Owns the engine, data and state of one run; `main()` builds it from flags and calls `fit()`."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.precision = a.precision
        self.out = a.output
        self.ckpt_dir = os.path.join(a.output, CKPT_NAME)
        # Everything that can be checked from files comes first: a bad flag fails in a second,
        # before DeepSpeed and the process group start.
        self._open_data()
        ckpt = self._read_checkpoint()
        check_precision(self.precision, a.zero_stage, cpu=not torch.cuda.is_available())
        # launchers set WORLD_SIZE; plain python is one process
        self.plan = plan_batches(batch_size=a.batch_size, bs_per_gpu=a.bs_per_gpu,
                                 world_size=int(os.environ.get("WORLD_SIZE", "1")))

        self.dist = init_distributed()
        self.main = self.dist.is_main
        if self.dist.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # ranks share the cores; oversubscription slows every rank down
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        self.log(f"[pretrain] rank {self.dist.rank}/{self.dist.world_size} on {self.dist.device}, "
                 f"precision {self.precision}, ZeRO-{a.zero_stage}")
        if self.dist.world_size != self.plan.world_size:
            self.plan = plan_batches(batch_size=a.batch_size, bs_per_gpu=a.bs_per_gpu, world_size=self.dist.world_size)
        micro_per_epoch = len(self.train_set) // (self.plan.micro_batch * self.plan.world_size)
        self.steps_per_epoch = micro_per_epoch // self.plan.accumulation
        if self.steps_per_epoch < 1:
            raise TrainError(f"{len(self.train_set)} training videos do not fill one global batch of "
                             f"{self.plan.global_batch}; lower --batch-size")
        self.sampler = EpochBatchSampler(len(self.train_set), micro_batch=self.plan.micro_batch,
                                         world_size=self.plan.world_size, rank=self.dist.rank, seed=a.seed,
                                         micro_steps_per_epoch=self.steps_per_epoch * self.plan.accumulation)

        # model + state
        seed_everything(a.seed)  # same initial weights on every rank
        from vimpac.model.transformer import VimpacForPretraining

        self.model = VimpacForPretraining(self.cfg)
        if ckpt is not None:
            resampled, loaded = load_weights(self.model, ckpt.model_state, self.ckpt_dir)
            if resampled:
                old = ckpt.model_config
                self.log(f"[pretrain] stage 2: input changed from T={old.clip_len}, {old.grid_h}x{old.grid_w} to "
                         f"T={self.cfg.clip_len}, {self.cfg.grid_h}x{self.cfg.grid_w}; resampled {resampled} "
                         f"and their AdamW moments")
        elif a.load:
            try:
                init = load_checkpoint(a.load, weights_only=True)
            except CheckpointError as e:
                raise TrainError(f"--load: {e}") from None
            check_same_architecture(init.model_config, self.cfg, f"--load {a.load}")
            load_weights(self.model, init.model_state, a.load)  # fp16: the masters start from fp16 weights
        self.model.to(self.dist.device)

        # optimiser, schedule, engine
        optimizer = build_optimizer(self.model, lr=a.lr, betas=(a.beta1, a.beta2), weight_decay=a.weight_decay)
        st = self.state
        start_micro = self._start_micro()
        self.schedule = LRSchedule(kind=a.lr_scheduler, warmup=a.warm_up, epochs=a.epochs,
                                   steps_per_epoch=self.steps_per_epoch,
                                   step_base=st.step - start_micro // self.plan.accumulation, epoch_base=st.epoch)
        self.scheduler = build_scheduler(optimizer, self.schedule)
        ds_config = build_ds_config(self.plan, clip_grad_norm=a.clip_grad_norm, zero_stage=a.zero_stage,
                                    precision=self.precision, overrides=load_overrides(a.deepspeed_config))
        self.engine = init_engine(self.model, optimizer, self.scheduler, ds_config)
        if ckpt is not None:
            if self.precision == "fp16":  # the engine made its fp32 masters from fp16 weights: put the exact ones
                from deepspeed.utils import safe_set_full_fp32_param

                for name, p in self.engine.module.named_parameters():
                    safe_set_full_fp32_param(p, loaded[name].to(p.device, torch.float32))
            restore_optimizer_state(self.engine, resample_moments(ckpt.optimizer_state, self.model), st.adam_step)
            self._set_scheduler_step(st.step)
            rngs = ckpt.trainer_state.get("rng", [])
            if len(rngs) == self.dist.world_size:
                set_rng_state(rngs[self.dist.rank])
            else:  # another world size: fresh but deterministic streams
                seed_everything(a.seed + 1000 * st.step + self.dist.rank)
        st.stage_starts.append({"step": st.step, "epoch": st.epoch, "grid": [self.cfg.grid_h, self.cfg.grid_w],
                                "clip_len": self.cfg.clip_len, "world_size": self.dist.world_size})
        self.metrics = MetricsLogger(self.out, enabled=self.main, resume_step=st.step if ckpt is not None else None)
        self.special = self.cfg.special_tokens

    def _open_data(self) -> None:
        a = self.a
        train_paths, valid_paths = locate_stores(a)
        self.train_stores = open_stores(train_paths, "--train-tokens")
        self.valid_stores = open_stores(valid_paths, "--valid-tokens") if valid_paths else []
        try:
            vocab, grid = check_compatible_stores(self.train_stores, "--train-tokens")
            if self.valid_stores:
                v_vocab, v_grid = check_compatible_stores(self.valid_stores, "--valid-tokens")
                if v_vocab != vocab or v_grid != grid:
                    raise DataError(f"vocabulary mismatch between splits: train stores have {vocab} codes on a "
                                    f"{grid} map, valid stores {v_vocab} codes on a {v_grid} map")
            relevance = None if a.nce_relevance_range < 0 else a.nce_relevance_range
            sampling = ClipSampling(clip_len=a.clip_len, frame_rate=a.frame_rate, relevance_range=relevance,
                                    mask_blocks=a.mask_blocks, mask_rand_replace=a.mask_rand_replace,
                                    masking=a.masking)
        except (DataError, ValueError) as e:
            raise TrainError(str(e)) from None
        check_frame_size(self.train_stores + self.valid_stores, a.frame_size, "stores")
        self.cfg = model_config_from_flags(a, vocab_size=vocab, grid=grid)
        self.train_set = ClipPairDataset(self.train_stores, sampling, seed=a.seed, what="--train-tokens")
        self.valid_set = (ClipPairDataset(self.valid_stores, sampling, seed=a.seed + 1, what="--valid-tokens")
                          if self.valid_stores else None)

    def _read_checkpoint(self):
        self.state = TrainState()
        if not self.a.resume:
            if os.path.exists(self.ckpt_dir) or os.path.exists(self.ckpt_dir + ".old.tmp"):
                raise TrainError(f"{self.a.output} already holds a checkpoint ({self.ckpt_dir}); pass --resume to "
                                 f"continue that run, or choose another --output")
            return None
        try:
            ckpt = load_checkpoint(self.ckpt_dir)
        except CheckpointError as e:
            raise TrainError(f"--resume: no usable checkpoint in {self.a.output} ({e}); start without --resume") from None
        check_same_architecture(ckpt.model_config, self.cfg, f"--resume {self.ckpt_dir}")
        self._restore_state(ckpt.trainer_state)
        return ckpt

    # -- helpers
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def _start_micro(self) -> int:
        g = self.plan.micro_batch * self.plan.world_size
        if self.state.samples_in_epoch % (g * self.plan.accumulation):
            raise TrainError(f"--resume: the checkpoint stopped {self.state.samples_in_epoch} videos into epoch "
                             f"{self.state.epoch}, which is not a whole number of global batches of "
                             f"{self.plan.global_batch}; resume with the batch size of the run that saved it")
        return self.state.samples_in_epoch // g

    def _restore_state(self, ts: dict[str, Any]) -> None:
        try:
            self.state = TrainState(step=int(ts["step"]), epoch=int(ts["epoch"]),
                                    samples_in_epoch=int(ts["samples_in_epoch"]),
                                    skipped_steps=int(ts["skipped_steps"]),
                                    nonfinite_in_a_row=int(ts["nonfinite_in_a_row"]), adam_step=int(ts["adam_step"]),
                                    stage_starts=list(ts.get("stage_starts", [])))
        except (KeyError, TypeError, ValueError) as e:
            raise TrainError(f"--resume: {self.ckpt_dir}/trainer_state.json is malformed ({e})") from None
        if self.state.epoch >= self.a.epochs:
            raise TrainError(f"--resume: the checkpoint already finished epoch {self.state.epoch} of --epochs "
                             f"{self.a.epochs}; raise --epochs to train longer (a new schedule)")

    def _set_scheduler_step(self, step: int) -> None:
        self.scheduler.last_epoch = step
        lrs = [base * self.schedule(step) for base in self.scheduler.base_lrs]
        for g, lr in zip(self.scheduler.optimizer.param_groups, lrs):
            g["lr"] = lr
        self.scheduler._last_lr = lrs

    def _loader(self, dataset, batch_sampler):
        from torch.utils.data import DataLoader

        # Its own generator: creating an iterator draws a worker seed, which must not shift the global
        # RNG that dropout uses (a resumed run creates its iterator at another point of that stream).
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.a.num_workers,
                          collate_fn=collate_pairs, persistent_workers=False, generator=torch.Generator(),
                          prefetch_factor=4 if self.a.num_workers > 0 else None)

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.dist.device)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    # -- checkpoint
    def save(self) -> None:
        st = self.state
        moments, st.adam_step = gather_optimizer_state(self.engine)  # collective
        rngs = [None] * self.dist.world_size
        if self.dist.world_size > 1:
            torch.distributed.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        model_state = self.engine.module.state_dict()
        if self.precision == "fp16":  # weights are fp16 copies; save the fp32 masters (collective)
            from deepspeed.utils import safe_get_full_fp32_param

            for name, p in self.engine.module.named_parameters():
                model_state[name] = safe_get_full_fp32_param(p)
        error = None
        if self.main:
            trainer_state = {**st.__dict__, "rng": rngs, "steps_per_epoch": self.steps_per_epoch,
                             "global_batch": self.plan.global_batch}
            try:
                save_checkpoint(self.ckpt_dir, model_state=model_state, model_config=self.cfg,
                                train_config={k: v for k, v in vars(self.a).items()}, step=st.step, epoch=st.epoch,
                                optimizer_state=moments, trainer_state=trainer_state)
            except CheckpointError as e:
                error = str(e)
        if self._any_rank(error is not None):
            raise TrainError(error or "checkpoint refused on rank 0 (non-finite weights)")
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    # -- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        if self.valid_set is None:
            return None
        try:
            sampler = EpochBatchSampler(len(self.valid_set), micro_batch=self.plan.micro_batch,
                                        world_size=self.plan.world_size, rank=self.dist.rank, shuffle=False)
        except DataError as e:
            raise TrainError(f"--valid-tokens: {e}") from None
        limit = self.a.eval_max_batches or sampler.micro_steps_per_epoch
        sums = StepSums()
        self.engine.module.eval()
        for i, batch in enumerate(self._loader(self.valid_set, sampler)):
            if i >= limit:
                break
            _, contrib = forward_micro(self.engine, batch, device=self.dist.device, precision=self.precision,
                                       mlm_weight=self.a.mlm_weight, nce_weight=self.a.nce_weight,
                                       temperature=self.a.nce_temperature, pad_id=self.special.pad)
            sums.add(**contrib)
        self.engine.module.train()
        sums.reduce(self.dist.world_size, self.dist.device)
        return sums.metrics()

    # -- train
    def fit(self) -> dict[str, Any]:
        a, st, plan = self.a, self.state, self.plan
        end_epoch = a.epochs if a.interval is None else min(a.epochs, st.epoch + a.interval)
        total_steps = (end_epoch - st.epoch) * self.steps_per_epoch - st.samples_in_epoch // plan.global_batch
        nan_steps = {int(x) for x in os.environ.get(NAN_STEPS_ENV, "").split(",") if x.strip()}
        step_sleep = float(os.environ.get(STEP_SLEEP_ENV, "0") or 0)
        bar = None
        if self.main and a.tqdm:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, unit="step", desc="pretrain", dynamic_ncols=True, mininterval=1.0)
        self.log(f"[pretrain] {len(self.train_set)} videos, {self.steps_per_epoch} steps/epoch of {plan.global_batch} "
                 f"videos ({plan.micro_batch} x {plan.accumulation} accumulation x {plan.world_size} ranks); "
                 f"epochs {st.epoch}->{end_epoch} of {a.epochs}, starting at step {st.step}")
        t_run, steps_run, videos_run = time.time(), 0, 0
        trimmer = HeapTrimmer()
        last_train: dict[str, float] = {}
        last_eval: dict[str, float] | None = None
        while st.epoch < end_epoch:
            start_micro = self._start_micro()
            self.sampler.set_position(st.epoch, start_micro)
            epoch_sums = StepSums()
            sums, window_bad, window_micro, t_step = StepSums(), False, 0, time.time()
            for batch in self._loader(self.train_set, self.sampler):
                window_micro += 1
                boundary = window_micro == plan.accumulation
                if not window_bad:
                    loss, contrib = forward_micro(self.engine, batch, device=self.dist.device,
                                                  precision=self.precision, mlm_weight=a.mlm_weight,
                                                  nce_weight=a.nce_weight, temperature=a.nce_temperature,
                                                  pad_id=self.special.pad)
                    if st.step + 1 in nan_steps and boundary:
                        loss = loss * float("nan")  # test hook: the last micro-step, after others accumulated
                    window_bad = self._any_rank(not bool(torch.isfinite(loss.detach()).all()))
                    if not window_bad:
                        self.engine.backward(loss)
                        sums.add(**contrib)
                    elif a.zero_stage > 0:
                        self._zero_backward()
                elif a.zero_stage > 0:
                    self._zero_backward()
                if not boundary:
                    if not window_bad or a.zero_stage > 0:
                        self.engine.step()  # not a boundary: DeepSpeed only counts the micro-step
                    continue
                # -- accumulation boundary: one optimizer step (or a skipped one)
                grad_norm = float("nan")
                if not window_bad and a.zero_stage == 0:
                    grad_norm = grad_norm_stage0(self.engine)
                    window_bad = self._any_rank(not math.isfinite(grad_norm))
                lr = self.scheduler.get_last_lr()[0]  # the lr of this update
                if window_bad:
                    self._skip_window(window_micro)
                else:
                    self.engine.step()
                    if a.zero_stage > 0:
                        gn = self.engine.get_global_grad_norm()
                        grad_norm = float(gn) if gn is not None else float("nan")
                    st.nonfinite_in_a_row = 0
                st.step += 1
                st.samples_in_epoch += plan.global_batch
                steps_run += 1
                videos_run += plan.global_batch
                trimmer.step()
                if bar is not None:
                    bar.update(1)
                if window_bad:
                    st.skipped_steps += 1
                    st.nonfinite_in_a_row += 1
                    self.log(f"[pretrain] step {st.step}: non-finite loss or gradient, update skipped "
                             f"({st.nonfinite_in_a_row} in a row, {st.skipped_steps} in total)")
                sums.reduce(plan.world_size, self.dist.device)
                epoch_sums.values += sums.values
                dt = max(time.time() - t_step, 1e-9)
                if st.step % a.log_steps == 0 or window_bad:
                    m = sums.metrics() if not window_bad else {}
                    row = {**m, "lr": lr, "grad_norm": grad_norm,
                           "videos_per_s": plan.global_batch / dt, "clips_per_s": 2 * plan.global_batch / dt,
                           "skipped_steps": st.skipped_steps, "skipped": float(window_bad)}
                    if a.debug:
                        row["videos"] = self._step_videos()
                    self.metrics.log("train", st.epoch, st.step, **row)
                    last_train = m or last_train
                    if bar is not None and m:
                        bar.set_postfix(mp=f"{m['mp_loss']:.3f}", acc=f"{m['mask_acc']:.3f}",
                                        copy=f"{m['copy_acc']:.3f}", cl=f"{m['cl_loss']:.3f}", refresh=False)
                if window_bad and st.nonfinite_in_a_row >= a.max_nonfinite:
                    raise TrainError(f"stopping: {st.nonfinite_in_a_row} non-finite steps in a row (at step "
                                     f"{st.step}, --max-nonfinite {a.max_nonfinite}); the last checkpoint "
                                     f"{self.ckpt_dir} holds finite weights: lower --lr, check the data, or "
                                     f"try fp32, then --resume")
                if a.save_steps and st.step % a.save_steps == 0 and st.samples_in_epoch < self._epoch_samples():
                    self.save()
                if step_sleep:
                    time.sleep(step_sleep)
                sums, window_bad, window_micro, t_step = StepSums(), False, 0, time.time()
            # -- end of epoch
            em = epoch_sums.metrics()
            self.metrics.log("train_epoch", st.epoch, st.step, **em)
            st.epoch += 1
            st.samples_in_epoch = 0
            if a.eval_per_epochs and (st.epoch % a.eval_per_epochs == 0 or st.epoch == end_epoch):
                last_eval = self.evaluate()
                if last_eval is not None:
                    self.metrics.log("valid", st.epoch, st.step, **last_eval)
                    self.log(f"[pretrain] epoch {st.epoch}: valid mp_loss {last_eval['mp_loss']:.4f} mask_acc "
                             f"{last_eval['mask_acc']:.4f} (copy baseline {last_eval['copy_acc']:.4f}) cl_loss "
                             f"{last_eval['cl_loss']:.4f}")
            self.save()
        if bar is not None:
            bar.close()
        elapsed = time.time() - t_run
        summary = {"steps": st.step, "epoch": st.epoch, "epochs": a.epochs, "skipped_steps": st.skipped_steps,
                   "steps_this_run": steps_run, "seconds": round(elapsed, 1),
                   "videos_per_s": round(videos_run / max(elapsed, 1e-9), 2),
                   "train": last_train, "valid": last_eval, "checkpoint": self.ckpt_dir}
        if self.main:
            self.metrics.close()
            try:
                plot_curves(self.metrics.path, os.path.join(self.out, "curves.png"))
            except ValueError:
                pass  # nothing logged this run (e.g. resumed at the very end)
            self.mask_examples()
        return summary

    def _epoch_samples(self) -> int:
        return self.steps_per_epoch * self.plan.global_batch

    def _step_videos(self) -> list[int]:
        """Video indices of the global batch of the step just taken (all ranks), from the epoch's order."""
        end = self.state.samples_in_epoch
        return [int(i) for i in self.sampler.order(self.state.epoch)[end - self.plan.global_batch:end]]

    def _zero_backward(self) -> None:
        """Backward of an exact zero through every parameter: under ZeRO each micro-step must reach
        the gradient hooks, or the partitioned accumulation falls out of step."""
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        self.engine.backward(torch.stack([p.sum() for p in params]).sum() * 0.0)

    def _skip_window(self, window_micro: int) -> None:
        """Skip this optimizer step: no update, but the schedule and DeepSpeed's counters move on.

        ZeRO-0: drop the gradients (param.grad) and count the micro-steps DeepSpeed did not see.
        ZeRO-1/2: gradients live in partitioned buffers whose bookkeeping only a real step clears,
        so take the step (on the finite micro-batches and zeros) and put weights and AdamW state back.
        """
        if self.a.zero_stage == 0:
            self.engine.zero_grad()
            finite_steps_called = self.engine.micro_steps % self.plan.accumulation
            self.engine.micro_steps += window_micro - finite_steps_called
            self.scheduler.step()  # a skipped step still advances the schedule (epochs stay the unit)
            return
        zero = self.engine.optimizer
        base = zero.optimizer
        lp = [p.detach().clone() for p in self.engine.module.parameters()]
        hp = [t.detach().clone() for t in zero.single_partition_of_fp32_groups]
        state = {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()}
                 for k, v in base.state.items()}
        self.engine.step()  # also steps the LR scheduler
        with torch.no_grad():
            for p, saved in zip(self.engine.module.parameters(), lp):
                p.copy_(saved)
            for t, saved in zip(zero.single_partition_of_fp32_groups, hp):
                t.copy_(saved)
            for k in list(base.state):
                if k not in state:
                    del base.state[k]  # created by this step: the next real step starts it afresh
                    continue
                for kk, vv in state[k].items():
                    if torch.is_tensor(vv):
                        base.state[k][kk].copy_(vv)  # in place: ZeRO keeps views into these tensors
                    else:
                        base.state[k][kk] = vv

    @torch.no_grad()
    def mask_examples(self, num: int = 2) -> str | None:
        """PNG of code maps (input with [MASK], prediction, target, copy baseline) for a few valid clips."""
        if self.valid_set is None:
            return None
        from video2token.visualize import codes_to_image, draw_grid

        from vimpac.eval.copy_baseline import copy_baseline_predictions

        model = self.engine.module
        model.eval()
        rows, titles = [], []
        for k in range(min(num, len(self.valid_set))):
            s = self.valid_set[k]
            codes, codes_in, mask = s["codes"][:1].to(self.dist.device), s["codes_in"][:1].to(self.dist.device), s["mask"][:1]
            with autocast_context(self.precision, self.dist.device):
                hidden = model.backbone(codes_in).hidden
                logits = model.masked_logits(hidden, mask.to(self.dist.device))
            pred = codes.clone()
            pred[mask.to(self.dist.device)] = logits.argmax(-1)
            copy_pred, _ = copy_baseline_predictions(codes, mask.to(self.dist.device), codes != self.special.pad)
            copy_pred = torch.where(mask.to(self.dist.device), copy_pred, codes)
            shown_in = codes_in.clone()
            v = self.cfg.vocab_size
            for title, c in (("input", shown_in), ("model", pred), ("copy", copy_pred), ("target", codes)):
                c = c[0].cpu().numpy()
                c = np.where(c >= v, -1, c)  # [MASK] / [PAD] drawn black
                rows.append(codes_to_image(c, v, scale=8))  # (T, 8h, 8w, 3)
                titles.append(f"video {k} {title}")
            mrow = mask[0].numpy().astype(np.uint8)[..., None].repeat(3, -1) * 255  # (T, h, w, 3) white = masked
            rows.append(mrow.repeat(8, axis=1).repeat(8, axis=2))
            titles.append(f"video {k} mask")
        model.train()
        path = os.path.join(self.out, "mask_examples.png")
        draw_grid(rows, titles, path)
        return path


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        trainer = Trainer(a)
        summary = trainer.fit()
    except (TrainError, EngineError, CheckpointError, DataError) as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.main:
        tr, va = summary["train"] or {}, summary["valid"]
        train = (f"train mp_loss {tr['mp_loss']:.4f} mask_acc {tr['mask_acc']:.4f}" if tr else "no train step")
        valid = (f"valid mask_acc {va['mask_acc']:.4f} vs copy baseline {va['copy_acc']:.4f}" if va else "no eval")
        print(f"done: step {summary['steps']} (epoch {summary['epoch']}/{summary['epochs']}), "
              f"{summary['steps_this_run']} steps in {summary['seconds']} s = {summary['videos_per_s']} videos/s, "
              f"{summary['skipped_steps']} skipped; {train}; {valid}; checkpoint {summary['checkpoint']}", flush=True)
        with open(os.path.join(a.output, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
