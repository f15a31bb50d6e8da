"""The pre-training task: mask-then-predict + contrastive learning on clip pairs (Tan et al., 2021, section 3).

Loss = mlm_weight x masked-token CE + nce_weight x symmetric InfoNCE over the global batch; both
tasks read the same block-masked clips. Evaluation: the same losses on the valid split, with
the copy-the-nearest-frame baseline on the same masks, and with a kNN monitor (the original's
`--knn-monitor`) the weighted kNN top-1/top-5 of [CLS] features on a labelled split. At the end:
mask_examples.png.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vimpac.data.clips import ClipSpec
from vimpac.data.image_stream import ImageFrames, JointBatchSampler, JointClips
from vimpac.data.pretrain_clips import (MASK_PAD_TO, ClipPairDataset, ClipSampling, PairCollate, PairOptions,
                                        collate_image_stream, collate_joint, collate_pairs)
from vimpac.data.sampler import EpochBatchSampler
from vimpac.data.stores import DataError, check_compatible_stores, check_frame_size, open_stores, shard_flags
from vimpac.eval.copy_baseline import copy_baseline_predictions
from vimpac.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE, centre_clips, extract_cls_features, knn_accuracy
from vimpac.model.checkpoint import Checkpoint, CheckpointError
from vimpac.model.loading import PRETRAIN, LoadedWeights, read_weights
from vimpac.model.config import ModelConfig
from vimpac.model.losses import symmetric_infonce
from vimpac.model.masked import MaskedTargets
from vimpac.model.surgery import WeightsError, check_same_architecture, fit_state_dict, resample_moments
from vimpac.model.transformer import VimpacForPretraining
from vimpac.train.errors import TrainError
from vimpac.train.runtime import gather_rows
from vimpac.train.step_sums import StepSums

#: model options no pre-training flag sets: a --load checkpoint's values are kept (e.g. an original VIMPAC
#: snapshot's bias-free contrastive projection)
ADOPTED_FROM_LOAD = ("nce_proj_bias", "embed_norm")
SUMS = ("mp_loss", "mask_correct", "copy_correct", "masked", "cl_loss", "cl_acc", "micro", "valid", "pad", "tokens",
        "image_mp_loss", "image_mask_correct", "image_masked", "image_micro")


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
    input: str = "tokens"           # "pixels": the clips' frames go in, their codes are the targets (BEVT)
    pairs: PairOptions = PairOptions()  # background-robust views and targets (fg/bg merging, erasing, ...)
    image: "ImageStreamSpec | None" = None  # BEVT's image stream (stage 1 alone, stage 2 joint); None: videos only


@dataclass(frozen=True)
class ImageStreamSpec:
    """BEVT's image stream: masked prediction on single stored frames through the same weights."""

    stores: tuple[str, ...]         # every stored frame of these stores is an image
    only: bool = False              # stage 1: images only; else joint with the video stream (stage 2)
    ratio: float = 1.0              # joint: image micro-batches per video micro-batch
    batch: int | None = None        # images per image micro-batch (default: 2 x the video micro-batch)
    mask_blocks: int = 5            # rectangles per image


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
    image_weight: float = 1.0       # weight of the image stream's masked-prediction loss


#: the monitors' thresholds: contrastive accuracy that high this early means the pairs are matched by looks
SATURATED_CL_ACC, EARLY_EPOCHS = 0.95, 2


def monitor_warnings(evaluation: dict[str, float], *, epoch: int, epochs: int, contrastive: bool = True
                     ) -> dict[str, str]:
    """What a valid evaluation after `epoch` epochs says is wrong with the run (shortcuts): {kind: log line}."""
    out = {}
    if contrastive and epoch <= EARLY_EPOCHS and evaluation.get("cl_acc", 0.0) >= SATURATED_CL_ACC:
        out["contrastive_shortcut"] = (
            f"contrastive accuracy {evaluation['cl_acc']:.1%} after {epoch} epoch(s): the two clips of a video are "
            f"matched by their looks (background, colours), a shortcut that teaches [CLS] little about motion; try "
            f"--fgbg-merge 1 / --bg-erase 0.5 / --reverse-negatives")
    if epoch >= max(EARLY_EPOCHS + 1, epochs // 4) and "mask_acc" in evaluation \
            and evaluation["mask_acc"] <= evaluation["copy_acc"]:
        out["copying"] = (
            f"masked prediction ({evaluation['mask_acc']:.1%}) does not beat copying the nearest visible frame "
            f"({evaluation['copy_acc']:.1%}) after {epoch} epochs: the model has learned no more than copying; try "
            f"--masking tube, more --mask-blocks, --mp-change-weight 4, or fewer codes")
    return out


def pretrain_metrics(t: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    if t["micro"] > 0:
        n, masked = t["micro"], max(t["masked"], 1.0)
        out.update(mp_loss=t["mp_loss"] / n, mask_acc=t["mask_correct"] / masked, copy_acc=t["copy_correct"] / masked,
                   cl_loss=t["cl_loss"] / n, cl_acc=t["cl_acc"] / n, mask_ratio=t["masked"] / max(t["valid"], 1.0),
                   pad_ratio=t["pad"] / max(t["tokens"], 1.0))
    if t["image_micro"] > 0:  # per-stream losses of BEVT's joint training
        out.update(image_mp_loss=t["image_mp_loss"] / t["image_micro"],
                   image_mask_acc=t["image_mask_correct"] / max(t["image_masked"], 1.0),
                   image_micro_batches=t["image_micro"])
    return out


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
        self.warnings: list[str] = []  # the monitors' findings, each kind logged once, kept in summary.json
        self.warned: set[str] = set()
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
        if data.input == "pixels":
            self.cfg = self.cfg.replace(input="pixels", patch_size=self._patch_size(grid))
        self.init = self._read_load() if load else None
        if self.init is not None:
            self.cfg = self.cfg.replace(**{k: getattr(self.init.config, k) for k in ADOPTED_FROM_LOAD})
        self.special = self.cfg.special_tokens
        pixels = data.input == "pixels"
        try:
            videos = ClipPairDataset(self.train_stores, data.sampling, seed=data.seed, what="--train-tokens",
                                     pixels=pixels)
            self.valid_set = (ClipPairDataset(self.valid_stores, data.sampling, seed=data.seed + 1,
                                              what="--valid-tokens", pixels=pixels) if self.valid_stores else None)
            if pixels:
                for s in self.train_stores + self.valid_stores:
                    if not s.has_frames:
                        raise DataError(f"{s.path} holds codes only; --input pixels needs the frames the tokenizer "
                                        f"saw: extract the store with --keep-frames")
            self.images = None
            if data.image is not None:
                image_stores = open_stores(data.image.stores, "--image-tokens", verify=False)  # checked by the loop
                self.images = ImageFrames(image_stores, mask_blocks=data.image.mask_blocks, seed=data.seed,
                                          pixels=pixels)
                if (self.images.vocab_size, tuple(self.images.grid)) != (vocab, tuple(grid)):
                    raise DataError(f"--image-tokens hold {self.images.vocab_size} codes on a {self.images.grid} map, "
                                    f"the video stores {vocab} codes on a {grid} map")
        except DataError as e:
            raise TrainError(str(e)) from None
        pair_collate = PairCollate(data.pairs, patch=self.cfg.patch_size if pixels else 1)
        if self.images is not None and data.image.only:  # stage 1: an epoch is one pass over the images
            self.train_set, self.clips_per_video = self.images, 1
            self.collate = functools.partial(collate_image_stream, pad_to=MASK_PAD_TO)
        elif self.images is not None:
            self.train_set = JointClips(videos, self.images)
            self.collate = functools.partial(collate_joint, pairs=pair_collate)
        else:
            self.train_set = videos
            self.collate = pair_collate
        self.knn_sets = self._knn_sets(knn, vocab, grid) if knn is not None else None

    def _patch_size(self, grid: tuple[int, int]) -> int:
        """Pixels per code side: the stores' crop size over their code map (the tokenizer's stride)."""
        crop = self.train_stores[0].meta.get("crop_size")
        if not crop or int(crop) % grid[0] or int(crop) != int(crop) // grid[0] * grid[1]:
            raise TrainError(f"--input pixels: {self.train_stores[0].path} records crop size {crop} for a {grid} code "
                             f"map; the patch must tile the frame (crop size = grid x tokenizer stride)")
        return int(crop) // grid[0]

    def wrap_sampler(self, sampler, plan, rank: int):
        """The video order, extended by the image stream's keys in joint training (see image_stream)."""
        if self.images is None or self.data.image.only:
            return sampler
        return JointBatchSampler(sampler, num_images=len(self.images), ratio=self.data.image.ratio,
                                 image_batch=self.data.image.batch or 2 * plan.micro_batch, seed=self.data.seed)

    def _knn_sets(self, knn: KnnMonitor, vocab: int, grid: tuple[int, int]):
        """(memory bank, queries): one centre clip per video of the labelled stores, checked against the model."""
        clip = ClipSpec(clip_len=self.cfg.clip_len, frame_rate=self.data.sampling.frame_rate)
        sets = []
        try:
            for paths, what in ((knn.train, "--knn-train-tokens"), (knn.valid, "--knn-valid-tokens")):
                ds = centre_clips(paths, clip, what=what, verify=False,  # the loop checks them with the others
                                  pixels=self.cfg.input == "pixels")
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

    def shards_to_verify(self) -> dict[str, str]:
        """{shard: flag} of every shard this run reads (videos, images, the kNN monitor's stores), each once."""
        if not self.data.verify_stores:
            return {}
        groups = [(self.train_stores, "--train-tokens"), (self.valid_stores, "--valid-tokens")]
        if self.images is not None:
            groups.append((self.images.stores, "--image-tokens"))
        for ds, flag in zip(self.knn_sets or (), ("--knn-train-tokens", "--knn-valid-tokens")):
            groups.append((ds.stores, flag))
        return shard_flags(groups)

    def stage_facts(self) -> dict[str, Any]:
        return {"grid": [self.cfg.grid_h, self.cfg.grid_w], "clip_len": self.cfg.clip_len}

    def train_config(self) -> dict[str, Any]:
        return {}

    # -- steps
    def forward(self, engine, batch: dict, loop) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss of one micro-batch and its metric contributions: the video stream's masked-token CE + InfoNCE (the
        copy baseline and the counts come from the loader) and, in BEVT's joint training, the image stream's
        masked-token CE. Nothing here waits for the device."""
        videos, images = (batch.get("video"), batch.get("image")) if "stream_split" in batch else (batch, None)
        loss, contrib = None, {}
        if videos is not None:
            loss, contrib = self._video_loss(engine, videos, loop)
        if images is not None:
            image_loss, image_contrib = self._image_loss(engine, images, loop)
            weighted = self.objective.image_weight * image_loss
            loss = weighted if loss is None else loss + weighted
            contrib.update(image_contrib)
        return loss, contrib

    def _inputs(self, batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, MaskedTargets]:
        """(model input (N, T, ...) on the device, mask (N, T, h, w), MaskedTargets), pairs flattened to clips."""
        pairs = batch["mask"].dim() == 5  # video samples hold 2 (or 3) clips each
        flat = (lambda x: x.flatten(0, 1)) if pairs else (lambda x: x)
        key = "frames" if self.cfg.input == "pixels" else "codes_in"
        inputs = flat(batch[key].to(device, non_blocking=True))  # (2B, T, h, w) codes / (2B, T, S, S, 3) frames
        mask = flat(batch["mask"].to(device, non_blocking=True))
        weight = batch.get("mask_weight")
        masked = MaskedTargets(index=batch["mask_index"].to(device, non_blocking=True),
                               target=batch["mask_target"].to(device, non_blocking=True),
                               weight=None if weight is None else weight.to(device, non_blocking=True))
        return inputs, mask, masked

    def _video_loss(self, engine, batch: dict, loop) -> tuple[torch.Tensor, dict[str, Any]]:
        device, ob = loop.dist.device, self.objective
        inputs, mask, masked = self._inputs(batch, device)  # clips a, b of video 0, then of video 1, ...
        frame_valid = (batch["frame_valid"].to(device, non_blocking=True).flatten(0, 1)
                       if bool(batch["any_pad"]) else None)  # any_pad is a CPU tensor: no sync
        with loop.precision.autocast():
            out = engine(inputs, mask, masked=masked, frame_valid=frame_valid)
            views = batch["codes"].shape[1]  # 2, or 3: the first clip backwards as an extra negative
            z = out.cls_proj.float().view(-1, views, out.cls_proj.shape[-1])  # (B, V, d)
            cl = symmetric_infonce(z[:, 0], z[:, 1], temperature=ob.temperature,
                                   negatives=z[:, 2] if views == 3 else None)
            loss = ob.mlm_weight * out.mp_loss + ob.nce_weight * cl.loss
        valid, tokens = batch["valid"].sum(), batch["tokens"].sum()
        contrib = dict(mp_loss=out.mp_loss.detach(), mask_correct=out.mp_correct, copy_correct=batch["copy_correct"].sum(),
                       masked=batch["masked"].sum(), cl_loss=cl.loss.detach(), cl_acc=cl.acc.detach(), micro=1,
                       valid=valid, pad=tokens - valid, tokens=tokens)
        return loss, contrib

    def _image_loss(self, engine, batch: dict, loop) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs, mask, masked = self._inputs(batch, loop.dist.device)  # (B, 1, ...): one frame per image
        with loop.precision.autocast():
            out = engine(inputs, mask, masked=masked, frame_valid=None, contrastive=False)
        return out.mp_loss, dict(image_mp_loss=out.mp_loss.detach(), image_mask_correct=out.mp_correct,
                                 image_masked=batch["masked"], image_micro=1)

    metrics = staticmethod(pretrain_metrics)

    def progress_postfix(self, m: dict[str, float]) -> dict[str, str]:
        """The progress bar's numbers: the video stream's, the image stream's (BEVT) when it ran; either may be absent
        (`--stream image` has no video metrics)."""
        out = {}
        if "mp_loss" in m:
            out.update(mp=f"{m['mp_loss']:.3f}", acc=f"{m['mask_acc']:.3f}", copy=f"{m['copy_acc']:.3f}",
                       cl=f"{m['cl_loss']:.3f}")
        if "image_mp_loss" in m:
            out.update(img_mp=f"{m['image_mp_loss']:.3f}", img_acc=f"{m['image_mask_acc']:.3f}")
        return out

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
        sampler = self._valid_sampler(loop)
        limit = self.objective.eval_max_batches or sampler.micro_steps_per_epoch
        if loop.cfg.debug:
            limit = min(limit, loop.cfg.debug_steps)
        sums = StepSums(SUMS, loop.dist.device)
        module = loop.engine.module
        module.eval()
        for i, batch in enumerate(loop.loader(self.valid_set, sampler, collate_pairs)):
            if i >= limit:
                break
            sums.add(self.forward(loop.engine, batch, loop)[1])
        module.train()
        sums.reduce(loop.dist)
        return pretrain_metrics(sums.totals())

    def _valid_sampler(self, loop) -> EpochBatchSampler:
        """The valid split's order, made once (the loop keeps its loader's workers alive across evaluations)."""
        if getattr(self, "_valid_order", None) is None:
            try:
                # a valid split smaller than a training micro-batch is evaluated in smaller batches
                micro = max(1, min(loop.plan.micro_batch, len(self.valid_set) // loop.plan.world_size))
                self._valid_order = EpochBatchSampler(len(self.valid_set), micro_batch=micro,
                                                      world_size=loop.plan.world_size, rank=loop.dist.rank,
                                                      shuffle=False)
            except DataError as e:
                raise TrainError(f"--valid-tokens: {e}") from None
        return self._valid_order

    def on_epoch_end(self, loop, evaluation: dict[str, float] | None) -> None:
        if evaluation is not None:
            loop.metrics.log("valid", loop.state.epoch, loop.state.step, **evaluation)
            parts = []
            if "mp_loss" in evaluation:
                parts.append(f"valid mp_loss {evaluation['mp_loss']:.4f} mask_acc {evaluation['mask_acc']:.4f} (copy "
                             f"baseline {evaluation['copy_acc']:.4f}) cl_loss {evaluation['cl_loss']:.4f} cl_acc "
                             f"{evaluation['cl_acc']:.4f}")
            if "knn_top1" in evaluation:
                parts.append(f"kNN top-1 {evaluation['knn_top1']:.2f} top-5 {evaluation['knn_top5']:.2f} (k="
                             f"{self.knn.k}; {evaluation['knn_bank_videos']} bank, {evaluation['knn_query_videos']} "
                             f"query videos)")
            loop.log(f"[pretrain] epoch {loop.state.epoch}: {'; '.join(parts)}")
            found = monitor_warnings(evaluation, epoch=loop.state.epoch, epochs=loop.cfg.epochs,
                                     contrastive=self.objective.nce_weight > 0)
            for kind, warning in found.items():
                if kind not in self.warned:  # each kind once; summary.json keeps its first words
                    self.warned.add(kind)
                    self.warnings.append(warning)
                    loop.log(f"[pretrain] warning: {warning}")

    def finish(self, loop, summary: dict[str, Any]) -> dict[str, Any]:
        if loop.main:
            self.mask_examples(loop)
        return {**summary, "warnings": list(self.warnings)}

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
            pixels = self.cfg.input == "pixels"
            inputs = s["frames"][:1].to(device) if pixels else codes_in
            with loop.precision.autocast():
                hidden = model.backbone(inputs, mask=mask if pixels else None,
                                        frame_valid=s["frame_valid"][:1].to(device) if pixels else "auto").hidden
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
