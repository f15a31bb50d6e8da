"""The one training loop of pre-training and fine-tuning, on DeepSpeed (ZeRO data parallelism).

`TrainLoop(cfg, task).fit()` owns everything the two stages share: the process group and
precision, batch plan and resumable data order, optimizer + schedule (restored at the resumed step,
in epochs, so a stage with another batch size keeps the curve), gradient accumulation, the
non-finite guard (a step whose loss or gradient norm is NaN/Inf on any rank is skipped: no
update, and the module buffers its forwards touched, e.g. BatchNorm statistics, are put back;
the run stops after `max_nonfinite` in a row), checkpoints (fp32 weights, fp32 masters under fp16,
optimizer moments, RNG per rank, data position; refused when non-finite), metrics and progress.

A task (`pretrain_task.PretrainTask`, `finetune_task.FinetuneTask`) supplies the data, the
model, the loss of a micro-batch with its metric contributions, evaluation, and what happens at
the end of an epoch and of the run. Test hooks come in through `LoopHooks`.

Start-up: tasks open their token stores with the index checks only; once the process group
exists the loop checks the shards' SHA-256s split over the ranks (`shard_check`), before any
training step. The summary's `startup_seconds` runs from the process's start to the first
training batch in hand, `shard_check_seconds` is the check's part of it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import psutil
import torch
from torch import nn

from video2token.precision import Precision, resolve_precision
from video2token.runlog import MetricsLogger, plot_curves
from video2token.store import verify_file

from vimpac.data.sampler import EpochBatchSampler
from vimpac.data.stores import DataError
from vimpac.model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from vimpac.train import ds_compat
from vimpac.train.deepspeed_setup import build_ds_config, choose_zero_stage, init_engine, load_overrides, split_clipping
from vimpac.train.errors import TrainError
from vimpac.train.hooks import LoopHooks
from vimpac.train.memory import HeapTrimmer
from vimpac.train.optim import LRSchedule, build_optimizer, build_scheduler, describe_optimizer
from vimpac.train.runtime import BatchPlan, DistInfo, Launch, any_rank, init_distributed, plan_for_data
from vimpac.train.shard_check import check_shards
from vimpac.train.state import LoopState, rng_state, seed_everything, set_rng_state
from vimpac.train.step_sums import StepSums

LAST = "last"


@dataclass(frozen=True)
class LoopConfig:
    """Everything the loop needs from the flags, built once (`vimpac.train.flags.loop_config`)."""

    output: str
    epochs: int                       # length of the schedule
    batch_size: int | None            # global batch (videos per optimizer step); None: the default, capped by the data
    bs_per_gpu: int | None            # micro batch per rank; None: follows the global batch
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    optim: str = "adamw"              # adamw | adam | sgd (the original's --optim)
    eps: float = 1e-6                 # Adam(W) epsilon
    accumulation: int | None = None   # micro-steps per optimizer step (--gradient-accumulation); --bs-per-gpu wins
    clip_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    warm_up: float = 0.1
    interval: int | None = None       # stop this run after N epochs of the schedule
    resume: bool = False
    precision: str = "auto"           # the flag; resolved for the device by the loop
    cpu_bf16: bool | None = None      # the user's VIMPAC_CPU_BF16, read by the entry point (video2token.precision)
    zero_stage: int | None = None     # None: 0, or 1 under fp16
    deepspeed_config: str | None = None
    compile: bool = False             # torch.compile each transformer layer (--compile)
    max_nonfinite: int = 5
    save_steps: int = 0
    save_per_epochs: int = 0          # also keep every N-th epoch's weights in OUTPUT/epochN
    log_steps: int = 1
    eval_per_epochs: int = 1
    seed: int = 9595
    num_workers: int = 2
    progress: bool = True
    debug: bool = False               # log the video indices of every step
    flags: tuple[tuple[str, Any], ...] = ()  # the command line's values, recorded in checkpoints
    default_batch: int = 1024         # the recipe's global batch when --batch-size is not given
    default_bs_per_gpu: int = 32
    debug_steps: int = 8              # --debug: at most this many steps per epoch (and eval batches)


class Task(Protocol):
    """What a training task gives the loop (see pretrain_task / finetune_task)."""

    name: str                      # "pretrain" / "finetune": progress bar and log prefix
    sum_names: tuple[str, ...]     # metric contributions of one micro-batch
    train_set: Any                 # Dataset indexed by (epoch, video) keys
    collate: Callable
    curve_keys: tuple[str, ...]     # metrics drawn in curves.png
    curve_baselines: dict[str, tuple[str, str]]  # {panel: (valid metric, label)} drawn dashed
    clips_per_video: int           # clips in one video's sample (pre-training: a pair)
    loaded_weights: dict[str, torch.Tensor]  # exact fp32 weights `build_model` loaded from a checkpoint

    def prepare(self, ckpt: Checkpoint | None) -> None: ...  # the checkpoint to resume (None: a fresh run)
    def build_model(self, ckpt: Checkpoint | None, log: Callable[[str], None]) -> nn.Module: ...
    def adapt_moments(self, moments: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]: ...
    def forward(self, engine, batch: dict, loop: "TrainLoop") -> tuple[torch.Tensor, dict[str, float]]: ...
    def metrics(self, totals: dict[str, float]) -> dict[str, float]: ...
    def progress_postfix(self, metrics: dict[str, float]) -> dict[str, str]: ...
    def describe(self, loop: "TrainLoop") -> str: ...
    def evaluate(self, loop: "TrainLoop") -> dict[str, Any] | None: ...
    def on_epoch_end(self, loop: "TrainLoop", evaluation: dict[str, Any] | None) -> None: ...
    def train_config(self) -> dict[str, Any]: ...
    def finish(self, loop: "TrainLoop", summary: dict[str, Any]) -> dict[str, Any]: ...
    def shards_to_verify(self) -> list[str]: ...  # store shards opened without their SHA-256 check ([]: none)


class TrainLoop:
    """One run of a task: set-up in `__init__` (cheap checks first), `fit()` trains and returns a summary."""

    def __init__(self, cfg: LoopConfig, task: Task, *, hooks: LoopHooks | None = None,
                 launch: Launch | None = None) -> None:
        self.cfg, self.task, self.hooks = cfg, task, hooks or LoopHooks()
        self.launch = launch or Launch.from_environ()
        self.main = self.launch.is_main
        self.out = cfg.output
        self.ckpt_dir = os.path.join(cfg.output, LAST)
        # Everything that can be checked from files and flags comes first: a bad flag fails in a
        # second, before DeepSpeed and the process group start.
        self.state = LoopState()
        ckpt = self._read_checkpoint()
        self.precision: Precision = resolve_precision(cfg.precision, self.launch.device_type, cpu_bf16=cfg.cpu_bf16)
        self.precision.configure_backends()
        try:
            self.zero_stage = choose_zero_stage(self.precision.name, cfg.zero_stage, cpu=self.launch.cpu)
        except ValueError as e:
            raise TrainError(str(e)) from None
        self.plan = self._plan(self.launch.world_size)
        ds_overrides = load_overrides(cfg.deepspeed_config)

        self.dist = init_distributed(self.launch)
        self.main = self.dist.is_main
        self.log(f"[{task.name}] rank {self.dist.rank}/{self.dist.world_size} on {self.dist.device}, "
                 f"{self.precision.describe()}; ZeRO-{self.zero_stage}")
        self.shard_check_seconds = check_shards(task.shards_to_verify(), self.dist,
                                                check=self.hooks.check_shard or verify_file,
                                                log=lambda msg: self.log(f"[{task.name}] {msg}"))
        if self.dist.world_size != self.plan.world_size:
            self.plan = self._plan(self.dist.world_size)
        micro_per_epoch = len(task.train_set) // (self.plan.micro_batch * self.plan.world_size)
        self.steps_per_epoch = micro_per_epoch // self.plan.accumulation
        if self.steps_per_epoch < 1:
            raise TrainError(f"{len(task.train_set)} training videos do not fill one global batch of "
                             f"{self.plan.global_batch} (--batch-size {self.plan.global_batch} = --bs-per-gpu "
                             f"{self.plan.micro_batch} x {self.plan.accumulation} accumulation x "
                             f"{self.plan.world_size} rank(s)); lower --batch-size or --bs-per-gpu, or leave both "
                             f"out to fit the data")
        if cfg.debug and self.steps_per_epoch > cfg.debug_steps:
            self.log(f"[{task.name}] --debug: {cfg.debug_steps} of {self.steps_per_epoch} steps per epoch")
            self.steps_per_epoch = cfg.debug_steps
        self.sampler = EpochBatchSampler(len(task.train_set), micro_batch=self.plan.micro_batch,
                                         world_size=self.plan.world_size, rank=self.dist.rank, seed=cfg.seed,
                                         micro_steps_per_epoch=self.steps_per_epoch * self.plan.accumulation)
        if hasattr(task, "wrap_sampler"):  # e.g. BEVT's joint training adds the image stream's keys
            try:
                self.sampler = task.wrap_sampler(self.sampler, self.plan, self.dist.rank)
            except DataError as e:
                raise TrainError(str(e)) from None
        start_micro = self._start_micro()  # checks the data position against this batch plan

        seed_everything(cfg.seed)  # same initial weights on every rank
        self.model = task.build_model(ckpt, self.log)
        self.model.to(self.dist.device)
        if cfg.compile:
            compiled = compile_layers(self.model)
            self.log(f"[{task.name}] --compile: {compiled} transformer layers compiled by torch.compile "
                     f"(the first steps include compilation)")
        optimizer = build_optimizer(self.model, kind=cfg.optim, lr=cfg.lr, betas=cfg.betas,
                                    weight_decay=cfg.weight_decay, eps=cfg.eps)
        self.log(f"[{task.name}] optimizer: " + describe_optimizer(cfg.optim, betas=cfg.betas,
                                                                    weight_decay=cfg.weight_decay, eps=cfg.eps))
        st = self.state
        self.schedule = LRSchedule(kind=cfg.lr_scheduler, warmup=cfg.warm_up, epochs=cfg.epochs,
                                   steps_per_epoch=self.steps_per_epoch,
                                   step_base=st.step - start_micro // self.plan.accumulation, epoch_base=st.epoch)
        self.scheduler = build_scheduler(optimizer, self.schedule)
        try:
            ds_config = build_ds_config(self.plan, clip_grad_norm=cfg.clip_grad_norm, zero_stage=self.zero_stage,
                                        precision=self.precision.name, overrides=ds_overrides)
        except ValueError as e:
            raise TrainError(str(e)) from None
        ds_config, self.clip_norm = split_clipping(ds_config, self.zero_stage)
        self.engine = init_engine(self.model, optimizer, self.scheduler, ds_config)
        self._dtype_probe = report_first_linear_dtype(self.model, self.log, task.name)
        self._loaders: dict[int, Any] = {}  # id(dataset) -> its DataLoader (persistent workers)
        if ckpt is not None:
            self._restore(ckpt)
        st.stage_starts.append({"step": st.step, "epoch": st.epoch, "world_size": self.dist.world_size,
                                **getattr(task, "stage_facts", lambda: {})()})
        self.metrics = MetricsLogger(self.out, enabled=self.main, resume_step=st.step if ckpt is not None else None)

    # -- set-up helpers
    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    def _plan(self, world_size: int) -> BatchPlan:
        cfg = self.cfg
        plan, warning = plan_for_data(batch_size=cfg.batch_size, bs_per_gpu=cfg.bs_per_gpu,
                                      default_batch=cfg.default_batch, default_bs_per_gpu=cfg.default_bs_per_gpu,
                                      world_size=world_size, num_videos=len(self.task.train_set),
                                      accumulation=cfg.accumulation)
        if warning:
            self.log(f"[{self.task.name}] warning: {warning}")
        return plan

    def _read_checkpoint(self) -> Checkpoint | None:
        cfg = self.cfg
        leftover = self.ckpt_dir + ".old.tmp"  # a kill between a checkpoint's two renames
        if not cfg.resume:
            if os.path.exists(self.ckpt_dir) or os.path.exists(leftover):
                raise TrainError(f"{cfg.output} already holds a checkpoint ({self.ckpt_dir}); pass --resume to "
                                 f"continue that run, or choose another --output")
            self.task.prepare(None)
            return None
        try:
            ckpt = load_checkpoint(self.ckpt_dir)  # recovers the leftover first
        except CheckpointError as e:
            raise TrainError(f"--resume: no usable checkpoint in {cfg.output} ({e}); start without --resume") from None
        self.task.prepare(ckpt)
        try:
            self.state = LoopState.from_dict(ckpt.trainer_state, os.path.join(self.ckpt_dir, "trainer_state.json"))
        except ValueError as e:
            raise TrainError(f"--resume: {e}") from None
        saved_optim = ckpt.trainer_state.get("optimizer", "adamw")  # checkpoints before --optim: AdamW
        if saved_optim != cfg.optim:
            raise TrainError(f"--resume: {self.ckpt_dir} was trained with --optim {saved_optim}, this run asks for "
                             f"--optim {cfg.optim}; resume with --optim {saved_optim} (one optimizer's state does not "
                             f"fit another)")
        if self.state.epoch >= cfg.epochs:
            raise TrainError(f"--resume: the checkpoint already finished epoch {self.state.epoch} of --epochs "
                             f"{cfg.epochs}; raise --epochs to train longer (a new schedule)")
        return ckpt

    def _start_micro(self) -> int:
        """The resumed data position in micro-steps; it must be a whole number of this run's global batches."""
        g = self.plan.micro_batch * self.plan.world_size
        if self.state.samples_in_epoch % (g * self.plan.accumulation):
            raise TrainError(f"--resume: the checkpoint stopped {self.state.samples_in_epoch} videos into epoch "
                             f"{self.state.epoch}, which is not a whole number of global batches of "
                             f"{self.plan.global_batch}; resume with the batch size of the run that saved it")
        return self.state.samples_in_epoch // g

    def _restore(self, ckpt: Checkpoint) -> None:
        st = self.state
        if self.precision.name == "fp16":  # the engine made its fp32 masters from fp16 weights: put the exact ones
            ds_compat.set_fp32_weights(self.engine, self.task.loaded_weights)
        try:
            ds_compat.restore_optimizer_state(self.engine, self.task.adapt_moments(ckpt.optimizer_state, self.model),
                                              st.adam_step)
        except ds_compat.CompatError as e:
            raise TrainError(f"--resume {self.ckpt_dir}: {e}") from None
        ds_compat.set_scheduler_step(self.scheduler, st.step)
        rngs = ckpt.trainer_state.get("rng", [])
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # another world size: fresh but deterministic streams
            self.log(f"[{self.task.name}] resumed on {self.dist.world_size} rank(s), saved by {len(rngs)}: "
                     f"reseeding the random streams")
            seed_everything(self.cfg.seed + 1000 * st.step + self.dist.rank)

    def loader(self, dataset, batch_sampler, collate: Callable):
        """A DataLoader over `dataset` in `batch_sampler`'s order, made once per (dataset, sampler) and kept:
        its worker processes persist across epochs and evaluations (the sampler is read in this process,
        so moving it to another epoch or position needs no new workers)."""
        from torch.utils.data import DataLoader

        key = id(dataset)
        if key in self._loaders and self._loaders[key].batch_sampler is not batch_sampler:
            self._loaders.pop(key)  # another order over the same data: its workers end with the old loader
        if key not in self._loaders:
            # Its own generator: creating an iterator draws a worker seed, which must not shift the global
            # RNG that dropout uses (a resumed run creates its iterator at another point of that stream).
            workers = self.cfg.num_workers
            self._loaders[key] = DataLoader(
                dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                persistent_workers=workers > 0, generator=torch.Generator(),
                pin_memory=self.dist.device.type == "cuda", prefetch_factor=4 if workers > 0 else None)
        return self._loaders[key]

    def train_loader(self):
        return self.loader(self.task.train_set, self.sampler, self.task.collate)

    def any_rank(self, flag: bool) -> bool:
        return any_rank(flag, self.dist)

    def any_rank_on_device(self, flag: torch.Tensor) -> bool:
        """`any_rank` of a 0-dim bool tensor still on the device: one all-reduce and one host read."""
        t = flag.detach().reshape(1).to(torch.float32)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    # -- checkpoints
    def save(self, directory: str | None = None, *, full: bool = True, extra_train_config: dict | None = None) -> None:
        """Write a checkpoint (collective). full: with optimizer moments and trainer state (resumable)."""
        directory = directory or self.ckpt_dir
        st = self.state
        moments = None
        if full:
            moments, st.adam_step = ds_compat.gather_optimizer_state(self.engine)
        model_state = self.engine.module.state_dict()
        if self.precision.name == "fp16":  # the module holds fp16 copies; save the fp32 masters
            model_state.update(ds_compat.full_fp32_weights(self.engine))
        rngs = [rng_state()]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        error = None
        if self.main:
            train_config = {**dict(self.cfg.flags), **self.task.train_config(), **(extra_train_config or {})}
            trainer_state = ({**st.to_dict(), "rng": rngs, "steps_per_epoch": self.steps_per_epoch,
                              "global_batch": self.plan.global_batch, "optimizer": self.cfg.optim} if full else None)
            try:
                save_checkpoint(directory, model_state=model_state, model_config=self.model.cfg,
                                train_config=train_config, step=st.step, epoch=st.epoch, optimizer_state=moments,
                                trainer_state=trainer_state, before_swap=self.hooks.before_checkpoint_swap)
            except CheckpointError as e:
                error = str(e)
        if self.any_rank(error is not None):
            raise TrainError(error or "checkpoint refused on rank 0 (non-finite weights)")
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # other ranks read nothing until the checkpoint is complete

    # -- train
    def fit(self) -> dict[str, Any]:
        cfg, st, plan, task = self.cfg, self.state, self.plan, self.task
        end_epoch = cfg.epochs if cfg.interval is None else min(cfg.epochs, st.epoch + cfg.interval)
        total_steps = (end_epoch - st.epoch) * self.steps_per_epoch - st.samples_in_epoch // plan.global_batch
        bar = None
        if self.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total_steps, unit="step", desc=task.name, dynamic_ncols=True, mininterval=1.0)
        self.log(f"[{task.name}] {task.describe(self)}; {self.steps_per_epoch} steps/epoch of {plan.global_batch} "
                 f"videos ({plan.micro_batch} x {plan.accumulation} accumulation x {plan.world_size} ranks); "
                 f"epochs {st.epoch}->{end_epoch} of {cfg.epochs}, starting at step {st.step}")
        if self.dist.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dist.device)
        t_run, steps_run, videos_run, eval_seconds = time.time(), 0, 0, 0.0
        startup_seconds = None
        trimmer = HeapTrimmer()
        last_train: dict[str, float] = {}
        last_eval: dict[str, Any] | None = None
        zero = self.zero_stage > 0
        device = self.dist.device
        log_sums, t_log, steps_in_log, kept_in_log = StepSums(task.sum_names, device), time.time(), 0, 0
        while st.epoch < end_epoch:
            self.sampler.set_position(st.epoch, self._start_micro())
            epoch_sums = StepSums(task.sum_names, device)
            step_sums, finite, window_micro = StepSums(task.sum_names, device), None, 0
            for batch in self.train_loader():
                if startup_seconds is None:
                    startup_seconds = round(time.time() - psutil.Process().create_time(), 2)
                    self.log(f"[{task.name}] first training batch {startup_seconds} s after the process started")
                window_micro += 1
                boundary = window_micro == plan.accumulation
                if window_micro == 1:  # a skipped step must not keep what its forwards wrote into buffers
                    saved_buffers = snapshot_buffers(self.engine.module)
                if self.hooks.before_forward is not None:
                    self.hooks.before_forward(st.step + 1, self.engine.module)
                loss, contrib = task.forward(self.engine, batch, self)
                if boundary and self.hooks.loss_at_boundary is not None:
                    loss = self.hooks.loss_at_boundary(st.step + 1, loss)
                ok = torch.isfinite(loss.detach())  # on the device: read once, at the boundary
                finite = ok if finite is None else finite & ok
                # a non-finite loss still runs its backward: its NaN gradients go with the whole window
                self.engine.backward(loss)
                step_sums.add(contrib)
                if not boundary:
                    self.engine.step()  # not a boundary: DeepSpeed only counts the micro-step
                    continue
                # -- accumulation boundary: one optimizer step (or a skipped one), one host sync
                grad_norm_t = None
                if not zero:  # one foreach norm over the reduced gradients, clipping with it
                    grad_norm_t = clip_gradients(self.engine.module, self.clip_norm)
                    finite = finite & torch.isfinite(grad_norm_t)
                window_bad = self.any_rank_on_device(~finite)
                lr = self.scheduler.get_last_lr()[0]  # the lr of this update
                if window_bad:
                    ds_compat.skip_window(self.engine, window_micro=window_micro, accumulation=plan.accumulation)
                    restore_buffers(saved_buffers)
                else:
                    self.engine.step()
                    st.nonfinite_in_a_row = 0
                    epoch_sums.merge(step_sums)
                    log_sums.merge(step_sums)
                    kept_in_log += 1
                st.step += 1
                st.samples_in_epoch += plan.global_batch
                steps_run += 1
                steps_in_log += 1
                videos_run += plan.global_batch
                trimmer.step()
                if bar is not None:
                    bar.update(1)
                if window_bad:
                    st.skipped_steps += 1
                    st.nonfinite_in_a_row += 1
                    self.log(f"[{task.name}] step {st.step}: non-finite loss or gradient, update skipped "
                             f"({st.nonfinite_in_a_row} in a row, {st.skipped_steps} in total)")
                if st.step % cfg.log_steps == 0 or window_bad:
                    if zero:
                        grad_norm = ds_compat.global_grad_norm(self.engine)
                    else:
                        grad_norm = float(grad_norm_t) if grad_norm_t is not None else float("nan")
                    log_sums.reduce(self.dist)
                    m = task.metrics(log_sums.totals()) if kept_in_log else {}
                    dt = max(time.time() - t_log, 1e-9)
                    row = {**m, "lr": lr, "grad_norm": grad_norm,
                           "videos_per_s": steps_in_log * plan.global_batch / dt,
                           "clips_per_s": task.clips_per_video * steps_in_log * plan.global_batch / dt,
                           "skipped_steps": st.skipped_steps, "skipped": float(window_bad)}
                    if cfg.debug:
                        row["videos"] = self._step_videos()
                    self.metrics.log("train", st.epoch, st.step, **row)
                    last_train = m or last_train
                    if bar is not None and m:
                        bar.set_postfix(**task.progress_postfix(m), refresh=False)
                    log_sums, t_log, steps_in_log, kept_in_log = StepSums(task.sum_names, device), time.time(), 0, 0
                if window_bad and st.nonfinite_in_a_row >= cfg.max_nonfinite:
                    raise TrainError(f"stopping: {st.nonfinite_in_a_row} non-finite steps in a row (at step "
                                     f"{st.step}, --max-nonfinite {cfg.max_nonfinite}); the last checkpoint "
                                     f"{self.ckpt_dir} holds finite weights: lower --lr, check the data, or "
                                     f"try --precision fp32, then --resume")
                if cfg.save_steps and st.step % cfg.save_steps == 0 and st.samples_in_epoch < self._epoch_samples():
                    self.save()
                if self.hooks.after_step is not None:
                    self.hooks.after_step(st.step)
                step_sums, finite, window_micro = StepSums(task.sum_names, device), None, 0
            # -- end of epoch
            epoch_sums.reduce(self.dist)
            self.metrics.log("train_epoch", st.epoch, st.step, **task.metrics(epoch_sums.totals()))
            st.epoch += 1
            st.samples_in_epoch = 0
            evaluation = None
            if cfg.eval_per_epochs and (st.epoch % cfg.eval_per_epochs == 0 or st.epoch == end_epoch):
                t_eval = time.time()
                evaluation = last_eval = task.evaluate(self)
                eval_seconds += time.time() - t_eval
            task.on_epoch_end(self, evaluation)
            self.save()
            if cfg.save_per_epochs and st.epoch % cfg.save_per_epochs == 0:
                self.save(os.path.join(self.out, f"epoch{st.epoch}"), full=False)
        if bar is not None:
            bar.close()
        self._loaders.clear()  # the workers end here, not when the loop object is collected
        elapsed = time.time() - t_run
        train_seconds = max(elapsed - eval_seconds, 1e-9)
        summary: dict[str, Any] = {
            "steps": st.step, "epoch": st.epoch, "epochs": cfg.epochs, "skipped_steps": st.skipped_steps,
            "steps_this_run": steps_run, "seconds": round(elapsed, 1), "train_seconds": round(train_seconds, 1),
            "videos_per_s": round(videos_run / train_seconds, 2), "train": last_train, "valid": last_eval,
            "checkpoint": self.ckpt_dir, "precision": self.precision.name, "device": self.precision.device_name,
            "zero_stage": self.zero_stage, "startup_seconds": startup_seconds,
            "shard_check_seconds": round(self.shard_check_seconds, 2)}
        if self.dist.device.type == "cuda":
            summary["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(self.dist.device) / 2 ** 20, 1)
        summary = task.finish(self, summary)
        self.metrics.close()
        if self.main:
            try:
                plot_curves(self.metrics.path, os.path.join(self.out, "curves.png"), keys=task.curve_keys,
                            baselines=task.curve_baselines)
            except ValueError:
                pass  # nothing logged this run (e.g. resumed at the very end)
        return summary

    def _epoch_samples(self) -> int:
        return self.steps_per_epoch * self.plan.global_batch

    def _step_videos(self) -> list[int]:
        """Video indices of the global batch of the step just taken (all ranks), from the epoch's order."""
        end = self.state.samples_in_epoch
        return [int(i) for i in self.sampler.order(self.state.epoch)[end - self.plan.global_batch:end]]


def compile_layers(model: nn.Module, **options: Any) -> int:
    """torch.compile every transformer layer in place (`nn.Module.compile`: parameter names and checkpoints
    stay as they are) -> the number of layers compiled."""
    from vimpac.model.transformer import VimpacLayer

    layers = [m for m in model.modules() if isinstance(m, VimpacLayer)]
    for layer in layers:
        layer.compile(dynamic=False, **options)
    return len(layers)


def report_first_linear_dtype(model: nn.Module, log: Callable[[str], None], prefix: str):
    """Log, at the first forward, the dtype the model's first Linear computes in (what a precision flag
    really gives inside the engine: e.g. DeepSpeed switching an autocast off shows as float32)."""
    name, first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)), (None, None))
    if first is None:
        return None

    def hook(module, inputs, output) -> None:
        handle.remove()
        log(f"[{prefix}] the first Linear ({name}) computes in {output.dtype} (input {inputs[0].dtype}, "
            f"weights {module.weight.dtype})")

    handle = first.register_forward_hook(hook)
    return handle


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """L2 norm of all gradients as a 0-dim device tensor (one foreach pass), clipping them to `max_norm`
    when it is > 0 (the scale is computed on the device: no host sync, a non-finite norm scales by NaN and
    the step is skipped anyway)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(model.parameters()).device)
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm, foreach=True)
    return norm


def snapshot_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every module buffer (BatchNorm running statistics and counters, ...)."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put buffers back in place (modules keep references to these very tensors)."""
    with torch.no_grad():
        for buf, copy in saved:
            buf.copy_(copy)
