"""The pre-training task: mask-then-predict + contrastive learning on clip pairs (Tan et al., 2021, section 3).

Loss = mlm_weight x masked-token CE + nce_weight x symmetric InfoNCE over the global batch; both
tasks read the same block-masked clips. Evaluation: the same losses on the valid split, with
the copy-the-nearest-frame baseline on the same masks, and with a kNN monitor (the original's
`--knn-monitor`) the weighted kNN top-1/top-5 of [CLS] features on a labelled split. At the end:
mask_examples.png.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vimpac.data.clips import ClipSpec
from vimpac.data.pretrain_clips import ClipPairDataset, ClipSampling, collate_pairs
from vimpac.data.sampler import EpochBatchSampler
from vimpac.data.stores import DataError, check_compatible_stores, check_frame_size, open_stores, shard_files
from vimpac.eval.copy_baseline import copy_baseline_accuracy, copy_baseline_predictions
from vimpac.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE, centre_clips, extract_cls_features, knn_accuracy
from vimpac.model.checkpoint import Checkpoint, CheckpointError
from vimpac.model.loading import PRETRAIN, LoadedWeights, read_weights
from vimpac.model.config import ModelConfig
from vimpac.model.losses import symmetric_infonce
from vimpac.model.surgery import WeightsError, check_same_architecture, fit_state_dict, resample_moments
from vimpac.model.transformer import VimpacForPretraining
from vimpac.train.errors import TrainError
from vimpac.train.runtime import gather_rows

#: model options no pre-training flag sets: a --load checkpoint's values are kept (e.g. an original VIMPAC
#: snapshot's bias-free contrastive projection)
ADOPTED_FROM_LOAD = ("nce_proj_bias", "embed_norm")
SUMS = ("mp_loss", "mask_correct", "copy_correct", "masked", "cl_loss", "cl_acc", "micro", "valid", "pad", "tokens")


@dataclass(frozen=True)
class PretrainData:
    """Where the clips come from and how they are cut and masked."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    sampling: ClipSampling
    frame_size: int | None = None
    vocab_size: int | None = None   # expected vocabulary (--vocab-size), checked against the stores
    seed: int = 9595
    verify_stores: bool = True      # SHA-256 of every shard, checked by the loop over the ranks (--no-verify-stores: False)


@dataclass(frozen=True)
class KnnMonitor:
    """The kNN monitor's labelled stores (views of one split each): the memory bank and the queries."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE


@dataclass(frozen=True)
class PretrainObjective:
    mlm_weight: float = 1.0
    nce_weight: float = 1.0
    temperature: float = 0.2
    eval_max_batches: int | None = None


def pretrain_metrics(t: dict[str, float]) -> dict[str, float]:
    n, masked = max(t["micro"], 1.0), max(t["masked"], 1.0)
    return {"mp_loss": t["mp_loss"] / n, "mask_acc": t["mask_correct"] / masked, "copy_acc": t["copy_correct"] / masked,
            "cl_loss": t["cl_loss"] / n, "cl_acc": t["cl_acc"] / n, "mask_ratio": t["masked"] / max(t["valid"], 1.0),
            "pad_ratio": t["pad"] / max(t["tokens"], 1.0)}


class PretrainTask:
    name = "pretrain"
    sum_names = SUMS
    clips_per_video = 2
    collate = staticmethod(collate_pairs)
    curve_keys = ("mp_loss", "cl_loss", "mask_acc", "copy_acc", "lr", "grad_norm", "knn_top1")
    curve_baselines = {"mask_acc": ("copy_acc", "copy baseline (valid)"), "knn_top1": ("knn_top5", "kNN top-5")}

    def __init__(self, data: PretrainData, objective: PretrainObjective,
                 model_config: Callable[[int, tuple[int, int]], ModelConfig], *, load: str | None = None,
                 knn: KnnMonitor | None = None) -> None:
        """model_config(vocab_size, (h, w)) -> the model's config once the stores say what they hold."""
        self.data, self.objective, self.load, self.knn = data, objective, load, knn
        self.loaded_weights: dict[str, torch.Tensor] = {}
        try:
            # index checks only here: the loop checks the SHA-256s once the ranks can share the work
            self.train_stores = open_stores(data.train, "--train-tokens", verify=False)
            self.valid_stores = open_stores(data.valid, "--valid-tokens", verify=False) if data.valid else []
            vocab, grid = check_compatible_stores(self.train_stores, "--train-tokens")
            if self.valid_stores:
                v_vocab, v_grid = check_compatible_stores(self.valid_stores, "--valid-tokens")
                if v_vocab != vocab or v_grid != grid:
                    raise DataError(f"vocabulary mismatch between splits: train stores have {vocab} codes on a "
                                    f"{grid} map, valid stores {v_vocab} codes on a {v_grid} map")
            check_frame_size(self.train_stores + self.valid_stores, data.frame_size, "stores")
        except DataError as e:
            raise TrainError(str(e)) from None
        if data.vocab_size is not None and data.vocab_size != vocab:
            raise TrainError(f"--vocab-size {data.vocab_size} but the token stores hold {vocab} codes "
                             f"({self.train_stores[0].path}); drop the flag or use stores of that tokenizer")
        self.cfg = model_config(vocab, grid)
        self.init = self._read_load() if load else None
        if self.init is not None:
            self.cfg = self.cfg.replace(**{k: getattr(self.init.config, k) for k in ADOPTED_FROM_LOAD})
        self.special = self.cfg.special_tokens
        self.train_set = ClipPairDataset(self.train_stores, data.sampling, seed=data.seed, what="--train-tokens")
        self.valid_set = (ClipPairDataset(self.valid_stores, data.sampling, seed=data.seed + 1, what="--valid-tokens")
                          if self.valid_stores else None)
        self.knn_sets = self._knn_sets(knn, vocab, grid) if knn is not None else None

    def _knn_sets(self, knn: KnnMonitor, vocab: int, grid: tuple[int, int]):
        """(memory bank, queries): one centre clip per video of the labelled stores, checked against the model."""
        clip = ClipSpec(clip_len=self.cfg.clip_len, frame_rate=self.data.sampling.frame_rate)
        sets = []
        try:
            for paths, what in ((knn.train, "--knn-train-tokens"), (knn.valid, "--knn-valid-tokens")):
                ds = centre_clips(paths, clip, what=what, verify=self.data.verify_stores)
                if (ds.vocab_size, tuple(ds.grid)) != (vocab, tuple(grid)):
                    raise DataError(f"{what}: {paths[0]} holds {ds.vocab_size} codes on {ds.grid[0]}x{ds.grid[1]} "
                                    f"maps, the pre-training stores {vocab} codes on {grid[0]}x{grid[1]} maps; "
                                    f"extract the kNN stores with the same tokenizer and --frame-size")
                sets.append(ds)
        except DataError as e:
            raise TrainError(str(e)) from None
        if knn.k < 1 or not knn.temperature > 0:
            raise TrainError(f"--knn-k must be >= 1 and --knn-temperature > 0, got {knn.k} and {knn.temperature}")
        return tuple(sets)

    # -- model
    def prepare(self, ckpt: Checkpoint | None) -> None:
        if ckpt is None:
            return
        try:
            check_same_architecture(ckpt.model_config, self.cfg, f"--resume {ckpt.path}")
        except WeightsError as e:
            raise TrainError(str(e)) from None

    def build_model(self, ckpt: Checkpoint | None, log: Callable[[str], None]) -> nn.Module:
        model = VimpacForPretraining(self.cfg)
        try:
            if ckpt is not None:
                resampled, self.loaded_weights = fit_state_dict(model, ckpt.model_state, ckpt.path)
                if resampled:
                    old = ckpt.model_config
                    log(f"[pretrain] stage 2: input changed from T={old.clip_len}, {old.grid_h}x{old.grid_w} to "
                        f"T={self.cfg.clip_len}, {self.cfg.grid_h}x{self.cfg.grid_w}; resampled {resampled} "
                        f"and their AdamW moments")
            elif self.init is not None:
                init = self.init
                check_same_architecture(init.config, self.cfg, f"--load {init.path}")
                _, self.loaded_weights = fit_state_dict(model, init.state, init.path)
                log(f"[pretrain] initialised from {init.path} ({init.source} weights)" +
                    "".join(f"\n  {n}" for n in init.notes))
            else:
                return model
        except WeightsError as e:
            raise TrainError(str(e)) from None
        model.load_state_dict(self.loaded_weights)
        return model

    def _read_load(self) -> LoadedWeights:
        try:
            w = read_weights(self.load)  # this project's checkpoints and original snapshots alike
        except CheckpointError as e:
            raise TrainError(f"--load: {e}") from None
        if w.kind != PRETRAIN:
            raise TrainError(f"--load {w.path}: a fine-tuned classifier has no pre-training heads; load a "
                             f"pre-training checkpoint (or fine-tune from this one with vimpac.finetune)")
        return w

    def adapt_moments(self, moments: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return resample_moments(moments, model)

    def shards_to_verify(self) -> list[str]:
        return shard_files(self.train_stores + self.valid_stores) if self.data.verify_stores else []

    def stage_facts(self) -> dict[str, Any]:
        return {"grid": [self.cfg.grid_h, self.cfg.grid_w], "clip_len": self.cfg.clip_len}

    def train_config(self) -> dict[str, Any]:
        return {}

    # -- steps
    def forward(self, engine, batch: dict[str, torch.Tensor], loop) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch and its metric contributions (masked-token CE + InfoNCE + copy baseline)."""
        device, ob = loop.dist.device, self.objective
        codes = batch["codes"].to(device, non_blocking=True).flatten(0, 1)  # (2B, T, h, w): clips a, b of video 0, ...
        codes_in = batch["codes_in"].to(device, non_blocking=True).flatten(0, 1)
        mask = batch["mask"].to(device, non_blocking=True).flatten(0, 1)
        with loop.precision.autocast():
            out = engine(codes_in, mask, codes)
            z = out.cls_proj.float().view(-1, 2, out.cls_proj.shape[-1])  # (B, 2, d)
            cl = symmetric_infonce(z[:, 0], z[:, 1], temperature=ob.temperature)
            loss = ob.mlm_weight * out.mp_loss + ob.nce_weight * cl.loss
        valid = codes != self.special.pad
        copy_correct, masked = copy_baseline_accuracy(codes, mask, valid)
        contrib = dict(mp_loss=out.mp_loss.item(), mask_correct=out.mp_acc.item() * out.num_masked,
                       copy_correct=copy_correct.item(), masked=masked.item(), cl_loss=cl.loss.item(),
                       cl_acc=cl.acc.item(), micro=1, valid=valid.sum().item(), pad=(~valid).sum().item(),
                       tokens=valid.numel())
        return loss, contrib

    metrics = staticmethod(pretrain_metrics)

    def progress_postfix(self, m: dict[str, float]) -> dict[str, str]:
        return {"mp": f"{m['mp_loss']:.3f}", "acc": f"{m['mask_acc']:.3f}", "copy": f"{m['copy_acc']:.3f}",
                "cl": f"{m['cl_loss']:.3f}"}

    def describe(self, loop) -> str:
        return f"{len(self.train_set)} videos"

    def evaluate(self, loop) -> dict[str, float] | None:
        out = self._evaluate_losses(loop)
        if self.knn_sets is not None:
            out = {**(out or {}), **self.knn_monitor(loop)}
        return out

    def knn_monitor(self, loop) -> dict[str, float]:
        """The kNN monitor: each rank extracts its share of bank and queries, every rank scores the gathered whole."""
        rank, world = loop.dist.rank, loop.dist.world_size
        kw = dict(device=loop.dist.device, precision=loop.precision.name, batch_size=2 * loop.plan.micro_batch,
                  num_workers=loop.cfg.num_workers)
        backbone = loop.engine.module.backbone
        feats = []
        for ds in self.knn_sets:
            n = len(ds) if not loop.cfg.debug else min(len(ds), loop.cfg.debug_steps * kw["batch_size"])
            feats.append(gather_rows(extract_cls_features(backbone, ds, indices=range(rank, n, world), **kw),
                                     loop.dist))
        (bank, bank_labels), (queries, labels) = feats
        top1, top5 = knn_accuracy(bank, bank_labels, queries, labels, k=self.knn.k, temperature=self.knn.temperature)
        return {"knn_top1": top1, "knn_top5": top5, "knn_bank_videos": len(bank), "knn_query_videos": len(queries)}

    @torch.no_grad()
    def _evaluate_losses(self, loop) -> dict[str, float] | None:
        if self.valid_set is None:
            return None
        from vimpac.train.loop import StepSums

        try:
            # a valid split smaller than a training micro-batch is evaluated in smaller batches
            micro = max(1, min(loop.plan.micro_batch, len(self.valid_set) // loop.plan.world_size))
            sampler = EpochBatchSampler(len(self.valid_set), micro_batch=micro, world_size=loop.plan.world_size,
                                        rank=loop.dist.rank, shuffle=False)
        except DataError as e:
            raise TrainError(f"--valid-tokens: {e}") from None
        limit = self.objective.eval_max_batches or sampler.micro_steps_per_epoch
        if loop.cfg.debug:
            limit = min(limit, loop.cfg.debug_steps)
        sums = StepSums(SUMS)
        module = loop.engine.module
        module.eval()
        for i, batch in enumerate(loop.loader(self.valid_set, sampler, collate_pairs)):
            if i >= limit:
                break
            sums.add(self.forward(loop.engine, batch, loop)[1])
        module.train()
        sums.reduce(loop.dist)
        return pretrain_metrics(sums.totals())

    def on_epoch_end(self, loop, evaluation: dict[str, float] | None) -> None:
        if evaluation is not None:
            loop.metrics.log("valid", loop.state.epoch, loop.state.step, **evaluation)
            parts = []
            if "mp_loss" in evaluation:
                parts.append(f"valid mp_loss {evaluation['mp_loss']:.4f} mask_acc {evaluation['mask_acc']:.4f} (copy "
                             f"baseline {evaluation['copy_acc']:.4f}) cl_loss {evaluation['cl_loss']:.4f}")
            if "knn_top1" in evaluation:
                parts.append(f"kNN top-1 {evaluation['knn_top1']:.2f} top-5 {evaluation['knn_top5']:.2f} (k="
                             f"{self.knn.k}; {evaluation['knn_bank_videos']} bank, {evaluation['knn_query_videos']} "
                             f"query videos)")
            loop.log(f"[pretrain] epoch {loop.state.epoch}: {'; '.join(parts)}")

    def finish(self, loop, summary: dict[str, Any]) -> dict[str, Any]:
        if loop.main:
            self.mask_examples(loop)
        return summary

    @torch.no_grad()
    def mask_examples(self, loop, num: int = 2) -> str | None:
        """PNG of code maps (input with [MASK], prediction, target, copy baseline) for a few valid clips."""
        if self.valid_set is None:
            return None
        from video2token.visualize import codes_to_image, draw_grid

        device = loop.dist.device
        model = loop.engine.module
        model.eval()
        rows, titles = [], []
        for k in range(min(num, len(self.valid_set))):
            s = self.valid_set[k]
            codes, codes_in, mask = s["codes"][:1].to(device), s["codes_in"][:1].to(device), s["mask"][:1].to(device)
            with loop.precision.autocast():
                hidden = model.backbone(codes_in).hidden
                logits = model.masked_logits(hidden, mask)
            pred = codes.clone()
            pred[mask] = logits.argmax(-1)
            copy_pred, _ = copy_baseline_predictions(codes, mask, codes != self.special.pad)
            copy_pred = torch.where(mask, copy_pred, codes)
            v = self.cfg.vocab_size
            for title, c in (("input", codes_in), ("model", pred), ("copy", copy_pred), ("target", codes)):
                c = c[0].cpu().numpy()
                c = np.where(c >= v, -1, c)  # [MASK] / [PAD] drawn black
                rows.append(codes_to_image(c, v, scale=8))  # (T, 8h, 8w, 3)
                titles.append(f"video {k} {title}")
            mrow = mask[0].cpu().numpy().astype(np.uint8)[..., None].repeat(3, -1) * 255  # (T, h, w, 3) white = masked
            rows.append(mrow.repeat(8, axis=1).repeat(8, axis=2))
            titles.append(f"video {k} mask")
        model.train()
        path = os.path.join(loop.out, "mask_examples.png")
        draw_grid(rows, titles, path)
        return path
