"""The fine-tuning task: a linear classifier on [CLS] of a pre-trained token transformer (Tan et al., 2021, 4.1).

Trains on random extracted views (2 resizes x 3 crops x flip), evaluates every epoch on uniform
temporal clips x test crops with averaged scores, keeps the best epoch's weights in `best/`, and
ends with results.json and the reports; with test stores, the final model is evaluated on them
once at the end (results.json's "test"), never during training. Positional tables are interpolated when the input shape
differs from pre-training (`--different-shape`). Without a checkpoint to load, the model is built
from the architecture flags with random weights (the paper's "no pre-training" baseline).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vimpac.data.clips import collate
from vimpac.data.labelled import LabelledData
from vimpac.data.stores import DataError
from vimpac.eval.finetuned import EvalSettings, evaluate_model, write_results
from vimpac.model.checkpoint import Checkpoint, CheckpointError
from vimpac.model.config import ModelConfig
from vimpac.model.loading import read_weights
from vimpac.model.surgery import WeightsError, backbone_state, check_input_kind
from vimpac.model.transformer import VimpacForClassification
from vimpac.train.architecture import DEFAULT_CLIP_LEN, ArchitectureFlags
from vimpac.train.errors import TrainError

BEST = "best"


@dataclass(frozen=True)
class ClassifierInit:
    """Where the classifier's weights come from and how the model is set up."""

    load: str | None = None             # None: random weights, the architecture from `architecture`
    clip_len: int | None = None         # default: the pre-training T (without --load: vimpac.pretrain's default)
    different_shape: bool = False
    dropout: float = 0.1                # backbone dropout
    last_dropout: float = 0.0           # dropout before the classifier (the original's --last-dropout)
    head_init: str = "auto"             # classifier weight: "zero" (paper, original), "normal" (N(0, init_std)), or
                                        # "auto": zero on pre-trained weights, normal on a random backbone
    linear_probe: bool = False
    from_scratch: bool = False
    grad_checkpointing: bool = False
    # the model without --load; with --load, the flags given are checked against the checkpoint (the
    # original scripts repeat the architecture next to --load)
    architecture: ArchitectureFlags = ArchitectureFlags()
    input: str | None = None            # "tokens" / "pixels" (--input); None: what --load was trained on


class FinetuneTask:
    name = "finetune"
    sum_names = ("loss", "correct", "seen")
    clips_per_video = 1
    collate = staticmethod(collate)
    curve_keys = ("loss", "acc", "top1", "top5", "lr", "grad_norm")
    curve_baselines: dict[str, tuple[str, str]] = {}

    def __init__(self, data: LabelledData, init: ClassifierInit, evaluation: EvalSettings, *, seed: int,
                 clip_counts: list[int], output: str, label_smoothing: float = 0.0) -> None:
        """label_smoothing: the training loss's (the original's --label-smoothing); evaluation scores stay plain."""
        if not 0.0 <= label_smoothing < 1.0:
            raise TrainError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        self.data, self.init, self.evaluation = data, init, evaluation
        self.seed, self.clip_counts, self.out = seed, clip_counts, output
        self.label_smoothing = label_smoothing
        self.best_dir = os.path.join(output, BEST)
        self.loaded_weights: dict[str, torch.Tensor] = {}
        self.train_set = None
        self.pixels = False  # a pixel model (BEVT mode): set with the datasets

    # -- model and data
    def _datasets(self, clip_len: int, input_kind: str) -> None:
        self.pixels = input_kind == "pixels"
        try:
            self.clip = self.data.clip_spec(clip_len)
            self.train_set = self.data.train_set(self.clip, self.seed, pixels=self.pixels)
            self.valid_set = self.data.test_set(self.clip, pixels=self.pixels)
        except DataError as e:
            raise TrainError(str(e)) from None

    def _check_fits(self, cfg: ModelConfig, where: str) -> None:
        if cfg.vocab_size != self.data.vocab_size or (cfg.grid_h, cfg.grid_w) != tuple(self.data.grid):
            raise TrainError(f"{where}: model takes {cfg.vocab_size} codes on {cfg.grid_h}x{cfg.grid_w} maps, the "
                             f"stores hold {self.data.vocab_size} codes on {self.data.grid[0]}x{self.data.grid[1]} maps")

    def _load_source(self) -> tuple[ModelConfig, dict[str, torch.Tensor] | None, str | None]:
        """(config, weights, path) of --load; without --load: the architecture flags' config and no weights."""
        if not self.init.load:
            cfg = self.init.architecture.model_config(vocab_size=self.data.vocab_size, grid=tuple(self.data.grid),
                                                      clip_len=self.init.clip_len or DEFAULT_CLIP_LEN)
            return cfg, None, None
        try:
            w = read_weights(self.init.load)  # this project's checkpoints and original snapshots alike
        except CheckpointError as e:
            raise TrainError(f"--load: {e}") from None
        wrong = self.init.architecture.mismatches(w.config, f"--load {w.path}")
        if wrong:
            raise TrainError(f"{'; '.join(wrong)}: the architecture comes from the checkpoint; drop the flag or load "
                             f"another checkpoint")
        if self.init.input is not None:
            try:
                check_input_kind(w.config, self.init.input, f"--load {w.path}")
            except WeightsError as e:
                raise TrainError(str(e)) from None
        return w.config, w.state, w.path

    def prepare(self, ckpt: Checkpoint | None) -> None:
        if ckpt is not None:
            self.cfg = ckpt.model_config
            if self.init.input is not None and self.init.input != self.cfg.input:
                try:
                    check_input_kind(self.cfg, self.init.input, f"--resume {ckpt.path}")
                except WeightsError as e:
                    raise TrainError(str(e)) from None
            self._datasets(self.cfg.clip_len, self.cfg.input)
            self._check_fits(self.cfg, f"--resume {ckpt.path}")
            self._source = None
            return
        src_cfg, src_state, path = self._load_source()
        self._datasets(self.init.clip_len or src_cfg.clip_len, src_cfg.input)
        self.cfg = src_cfg.replace(vocab_size=self.data.vocab_size, clip_len=self.clip.clip_len,
                                   grid_h=self.data.grid[0], grid_w=self.data.grid[1], dropout=self.init.dropout,
                                   grad_checkpointing=self.init.grad_checkpointing)
        self._source = (src_cfg, src_state, path)
        if self.train_set is None:
            raise TrainError("fine-tuning needs --train-tokens (or a --dataset-name whose train views exist)")

    def head_init(self, ckpt: Checkpoint | None) -> str:
        """The classifier's init: --head-init, or for "auto" the paper's zero head on pre-trained weights and a
        normal one on a random backbone (a zero head can merge two classes there: README, fine-tuning)."""
        if self.init.head_init != "auto":
            return self.init.head_init
        random_backbone = ckpt is None and (self.init.from_scratch or self._source[2] is None)
        return "normal" if random_backbone else "zero"

    def build_model(self, ckpt: Checkpoint | None, log: Callable[[str], None]) -> nn.Module:
        head_init = self.head_init(ckpt)
        model = VimpacForClassification(self.cfg, num_classes=self.data.num_classes,
                                        head_dropout=self.init.last_dropout, head_init=head_init)
        if ckpt is None:
            log(f"[finetune] classifier init: {head_init}" + (f" (--head-init auto: a {'random' if head_init == 'normal' else 'pre-trained'} backbone)"
                                                             if self.init.head_init == "auto" else ""))
        try:
            if ckpt is not None:
                self.loaded_weights, _ = backbone_state(ckpt.model_state, self.cfg, model, different_shape=False,
                                                        keep_head=True, where=ckpt.path)
            else:
                src_cfg, src_state, path = self._source
                if path is None:
                    c = self.cfg
                    log(f"[finetune] no --load: random initial weights (the no-pre-training baseline), a "
                        f"{c.layers}-layer {c.hid_dim}-wide efflayout{c.layout} model ({c.pos_emb} positions) from "
                        f"the architecture flags; {self.data.num_classes}-class classifier")
                    return self._freeze(model)
                if self.init.from_scratch:
                    log(f"[finetune] architecture of {path}, random initial weights (--from-scratch); "
                        f"{self.data.num_classes}-class classifier")
                    return self._freeze(model)
                self.loaded_weights, notes = backbone_state(src_state, src_cfg, model,
                                                            different_shape=self.init.different_shape,
                                                            keep_head=False, where=f"--load {path}")
                log(f"[finetune] loaded the backbone of {path} ({'; '.join(notes) or 'same shape and vocabulary'}); "
                    f"new {self.data.num_classes}-class classifier")
        except WeightsError as e:
            raise TrainError(str(e)) from None
        model.load_state_dict(self.loaded_weights)
        return self._freeze(model)

    def _freeze(self, model: VimpacForClassification) -> VimpacForClassification:
        if self.init.linear_probe:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        return model

    def adapt_moments(self, moments: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return moments

    def shards_to_verify(self) -> dict[str, str]:
        return self.data.shards_to_verify()

    def train_config(self) -> dict[str, Any]:
        return {"task": {**self.data.task(self.clip), "input": self.cfg.input}}

    # -- steps
    def forward(self, engine, batch: dict[str, torch.Tensor], loop) -> tuple[torch.Tensor, dict[str, float]]:
        if self.init.linear_probe:
            engine.module.backbone.eval()  # frozen features: no dropout either
        device = loop.dist.device
        inputs = batch["frames" if self.pixels else "codes"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        fv = batch["frame_valid"]  # on the host: whether any clip has [PAD] frames costs no sync
        frame_valid = None if bool(fv.all()) else fv.to(device, non_blocking=True)
        with loop.precision.autocast():
            logits = engine(inputs, frame_valid=frame_valid)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        n = len(labels)
        return loss, {"loss": loss.detach() * n, "correct": (logits.detach().argmax(-1) == labels).sum(), "seen": n}

    @staticmethod
    def metrics(t: dict[str, float]) -> dict[str, float]:
        seen = max(t["seen"], 1.0)
        return {"loss": t["loss"] / seen, "acc": t["correct"] / seen}

    def progress_postfix(self, m: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{m['loss']:.3f}", "acc": f"{m['acc']:.3f}"}

    def describe(self, loop) -> str:
        return (f"{len(self.train_set)} train videos x {len(self.data.train_stores)} view(s), {len(self.valid_set)} "
                f"test videos x {len(self.data.valid_stores)} crop(s), {self.data.num_classes} classes"
                f"{' (linear probe)' if self.init.linear_probe else ''}"
                f"{f', label smoothing {self.label_smoothing:g}' if self.label_smoothing else ''}")

    def _settings(self, loop) -> EvalSettings:
        max_videos = self.evaluation.max_videos
        if loop.cfg.debug:  # a quick run: a few eval batches
            max_videos = min(max_videos or len(self.valid_set), loop.cfg.debug_steps * self.evaluation.batch_size)
        return EvalSettings(precision=loop.precision.name, batch_size=self.evaluation.batch_size,
                            max_videos=max_videos, progress=loop.main and self.evaluation.progress)

    def evaluate(self, loop):
        return evaluate_model(loop.engine.module, self.valid_set, self._settings(loop))

    def on_epoch_end(self, loop, result) -> None:
        if result is None:
            return
        st = loop.state
        loop.metrics.log("valid", st.epoch, st.step, top1=result.top1, top5=result.top5)
        loop.log(f"[finetune] epoch {st.epoch}: valid top-1 {result.top1:.2f} top-5 {result.top5:.2f} "
                 f"({result.num_clips} clips x {result.num_crops} crops, {len(result.labels)} videos)")
        if result.top1 > st.task.get("best_top1", -1.0):
            st.task.update(best_top1=result.top1, best_top5=result.top5, best_epoch=st.epoch)
            loop.save(self.best_dir, full=False, extra_train_config={"eval": result.summary()})

    def finish(self, loop, summary: dict[str, Any]) -> dict[str, Any]:
        st = loop.state
        final = summary["valid"] or self.evaluate(loop)  # resumed at the very end, or evaluation switched off
        scratch = self.init.from_scratch or not self.init.load
        init = "scratch" if scratch else ("linear_probe" if self.init.linear_probe else "pretrained")
        run = {"init": init, "load": self.init.load, "seed": self.seed, "train_videos": len(self.train_set),
               "epochs": loop.cfg.epochs, "steps": st.step, "steps_this_run": summary["steps_this_run"],
               "seconds": summary["seconds"], "train_clips_per_s": summary["videos_per_s"],
               "precision": summary["precision"]}
        best = None
        if st.task.get("best_epoch", -1) >= 0:
            best = {"top1": st.task["best_top1"], "top5": st.task["best_top5"], "epoch": st.task["best_epoch"],
                    "num_test_clips": final.num_clips, "num_crops": final.num_crops}
        held_out = self.data.held_out_set(self.clip, pixels=self.pixels)  # --test-tokens: the final model, once
        test = evaluate_model(loop.engine.module, held_out, self._settings(loop)) if held_out is not None else None
        results = write_results(self.out, final, label_names=self.data.label_names, best=best, run=run,
                                clip_counts=self.clip_counts, log=loop.log, main=loop.main, test=test,
                                evaluate_clips=lambda n: evaluate_model(loop.engine.module,
                                                                        self.data.test_set(self.clip, n, pixels=self.pixels),
                                                                        self._settings(loop)))
        return {**summary, **results, "valid": final.summary()}
