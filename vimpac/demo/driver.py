"""`make demo`: the whole pipeline on generated videos, with the method's effect measured on a held-out test split.

    python -m vimpac.demo --profile default varied   # what `make demo` runs: both regimes, one combined report
    python -m vimpac.demo                            # the default regime only (shared looks, 128 codes)
    python -m vimpac.demo --profile varied           # every video its own looks, crf 28, 512 codes (varied128: 128)
    python -m vimpac.demo --variants fgbg reverse    # those pre-training variants beside the main one
    python -m vimpac.demo --ablation                 # every variant of layout.VARIANTS, + the all-labels ceiling

Steps (each skips work already done, so a rerun after an interruption continues):
 1. synthetic videos (video2token.synthetic): an unlabelled pool, 64 labelled train videos, 64 val
    videos (used only to choose learning rates) and 160 test videos (used only to report); two label
    sets, motion direction (temporal) and object shape (spatial);
 2. the small VQ-VAE tokenizer (video2token.train_tokenizer);
 3. token stores with their frames (video2token.extract --keep-frames), then inspect + a reconstruction PNG;
 4. pre-training of a tiny VIMPAC model (vimpac.pretrain), per variant (`layout.VARIANTS`);
 5. evaluation of every arm (scratch and each variant) on both label sets (`vimpac.demo.protocol`):
    fine-tuning with the learning rate chosen on val, several seeds reported on test; the linear
    probe (its own rate chosen on val); the frozen backbone's kNN (vimpac.knn);
 6. the report: a table on the terminal and `OUT/report.md` with its PNGs (vimpac.demo.report); with
    several profiles also one combined report of every regime.

Every step is a subprocess of the CLIs a researcher would run by hand; their commands and logs
are in `OUT/logs/`. This module imports neither torch nor the model, so its own memory stays small.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from video2token.cli import HelpFormatter

from vimpac.demo.layout import (MAIN_VARIANT, PROFILES, SCRATCH, VARIANTS, DemoLayout, PretrainVariant, StepRecord,
                                read_json, variant_names)
from vimpac.demo.protocol import choose, run_scores

Job = tuple[str, list[str]]  # (run name: its log is logs/NAME.log, argv after the python executable)
#: frames beside the codes, for the pixel (BEVT) variants, in every store: cheap enough to always keep (the default
#: regime's 400-video pool store: +0.8 s CPU, 0.7 -> 11.5 MB; ~28 MB for all seven), so a later --variants pixels
#: run reuses the stores. lzf shrinks the demo's flat synthetic frames ~6x and still reads fast.
FRAMES = ("--keep-frames", "--frames-compression", "lzf")


@dataclass
class Demo(DemoLayout):
    """Runs the demo's steps as subprocesses of the CLIs (see the module docstring)."""

    python: str = sys.executable
    ablation: bool = False
    variants: tuple[str, ...] = ()  # pre-training variants beside MAIN_VARIANT (--ablation: all)
    cpu_used: float = 0.0  # CPU seconds (user + system) of every process this demo waited for

    @property
    def arms(self) -> list[str]:
        """The pre-trained arms this run evaluates, the main first."""
        return variant_names(tuple(VARIANTS) if self.ablation else self.variants)

    # -- running
    def _env(self, threads: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def _launch(self, name: str, argv: Sequence[str], *, quiet: bool):
        """Start one CLI with its command line at the top of `logs/NAME.log`; a quiet run's output goes
        there too, otherwise to the terminal (progress bars). Returns (process, open log, log path)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        cmd = [self.python, *argv]
        f = open(log, "w", encoding="utf-8")
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=self._env(threads=1 if quiet else None), stdout=f if quiet else None,
                                stderr=subprocess.STDOUT if quiet else None)
        return proc, f, log

    def run(self, name: str, argv: Sequence[str]) -> float:
        """Run one CLI to completion, its output on the terminal; returns its peak RSS in MB."""
        proc, f, _ = self._launch(name, argv, quiet=False)
        with f:
            _, status, usage = os.wait4(proc.pid, 0)
        self.cpu_used += usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise DemoError(f"step {name!r} failed with exit code {proc.returncode}: {shlex.join(proc.args)}")
        return usage.ru_maxrss / 1024

    def run_parallel(self, jobs: list[Job], desc: str, *, then: Callable[[str], list[Job]] | None = None,
                     seconds: dict[str, float] | None = None) -> float:
        """Run quiet jobs `self.jobs` at a time, one thread each (tiny models use one core best), in list order.

        then(name): called when a job finishes; the jobs it returns go to the front of the queue (follow-ups
        that needed its result). seconds: filled with each job's wall time. Returns the peak memory bound:
        the sum of the `self.jobs` largest peak RSS values (MB).
        """
        pending, running, peaks = list(jobs), {}, []
        bar = tqdm(total=len(jobs), desc=desc, unit="run", dynamic_ncols=True)
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    name, argv = pending.pop(0)
                    proc, f, log = self._launch(name, argv, quiet=True)
                    running[proc.pid] = (name, proc, f, log, time.time())
                pid, status, usage = os.wait4(-1, 0)
                if pid not in running:
                    continue
                name, proc, f, log, t0 = running.pop(pid)
                self.cpu_used += usage.ru_utime + usage.ru_stime
                proc.returncode = os.waitstatus_to_exitcode(status)
                f.close()
                peaks.append(usage.ru_maxrss / 1024)
                if seconds is not None:
                    seconds[name] = time.time() - t0
                if proc.returncode != 0:
                    raise DemoError(f"run {name!r} failed with exit code {proc.returncode}; its log: {log}\n"
                                    + _tail(log))
                bar.update(1)
                bar.set_postfix_str(name, refresh=False)
                more = then(name) if then is not None else []
                if more:
                    pending[:0] = more
                    bar.total += len(more)
                    bar.refresh()
        finally:
            bar.close()
            for name, proc, f, _, _ in running.values():  # an error elsewhere: stop the siblings
                proc.kill()
                proc.wait()
                f.close()
        return sum(sorted(peaks)[-self.jobs:])

    @contextlib.contextmanager
    def step(self, name: str, title: str):
        """Announce a step; once it finishes, append its record to OUT/steps.jsonl (the report's timings)."""
        record = StepRecord(name)
        self.steps.append(record)
        print(f"\n=== [{time.strftime('%H:%M:%S')}] {title}", flush=True)
        cpu = self.cpu_used
        yield record
        record.cpu_seconds = self.cpu_used - cpu
        with open(self.out / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")

    # -- the steps
    def make_data(self) -> None:
        with self.step("data", f"1/6 synthetic videos -> {self.data}") as rec:
            t0 = time.time()
            marker = self.data / ".done"
            wanted = self.cfg.data_args()
            if marker.is_file():
                have = read_json(marker)
                if isinstance(have, dict):  # markers from before --appearance / --num-test existed
                    have = {"appearance": "shared", "num_test": 0, **have}
                if have != wanted:
                    raise DemoError(f"{self.data} holds demo videos made with {have}, this run wants {wanted}; "
                                    f"remove {self.data} or pass another --data")
                rec.skipped = True
                print("already there")
                return
            c = self.cfg
            rec.peak_rss_mb = self.run("data", ["-m", "video2token.synthetic", "--out", str(self.data),
                                                "--num-pool", str(c.num_pool), "--num-train", str(c.num_train),
                                                "--num-val", str(c.num_val), "--num-test", str(c.num_test),
                                                "--size", str(c.size), "--fps", str(c.render_fps),
                                                "--seconds", str(c.seconds), "--seed", str(c.data_seed),
                                                "--appearance", c.appearance, "--crf", str(c.crf)])
            marker.write_text(json.dumps(wanted))
            rec.seconds = time.time() - t0
            n = c.num_pool + c.num_train + c.num_val + c.num_test
            rec.throughput = f"{n / rec.seconds:.0f} videos/s"

    def train_tokenizer(self) -> None:
        with self.step("tokenizer", f"2/6 train the small VQ-VAE tokenizer -> {self.tokenizer}") as rec:
            if (self.tokenizer / "model.safetensors").is_file() and (self.tokenizer / "samples.png").is_file():
                rec.skipped = True
                print("already trained")
                return
            c, t0 = self.cfg, time.time()
            # --resume continues an interrupted run (kill -9 safe)
            rec.peak_rss_mb = self.run("tokenizer", [
                "-m", "video2token.train_tokenizer", "--video-root", str(self.data),
                "--anno", str(self.data / "pretrain_videos.txt"), "--fps", f"{c.render_fps:g}",
                "--frame-size", str(c.size), "--vocab-size", str(c.vocab_size), "--steps", str(c.tokenizer_steps),
                "--augment", c.tokenizer_augment, "--output", str(self.tokenizer), "--resume",
                "--val-videos", "8"])  # the held-out set of the demo's published results (before --val-fraction)
            rec.seconds = time.time() - t0
            rec.throughput = f"{c.tokenizer_steps / rec.seconds:.1f} steps/s"

    def store_splits(self) -> list[tuple[str, str | None]]:
        """(store split = list file stem, label set) for every store this run reads: the pool's labelled stores
        only for the all-labels ceiling (--ablation)."""
        splits: list[tuple[str, str | None]] = [("pretrain", None)]
        for task in self.cfg.tasks:
            splits += [(f"{task}_{s}", task) for s in ("train", "val", "test") + (("pool",) if self.ablation else ())]
        return splits

    def extract(self) -> None:
        with self.step("stores", "3/6 extract token stores (with their frames), inspect, reconstruction PNG") as rec:
            t0, videos, jobs, c = time.time(), 0, [], self.cfg
            for stem, task in self.store_splits():
                out = self.store(stem)
                if _store_complete(out):
                    continue
                argv = ["-m", "video2token.extract", "--video-root", str(self.data),
                        "--anno", str(self.data / f"{stem}_videos.txt"), "--output", str(out),
                        "--fps", f"{c.fps:g}", "--frame-shorter-side", str(c.size), "--crop-size", str(c.size),
                        "--crop-type", "center", "--tokenizer", "vqvae", "--tokenizer-path", str(self.tokenizer),
                        "--batch-size", "64", "--num-workers", "1", "--no-progress", *FRAMES]
                if task is not None:
                    argv += ["--label-names", str(self.data / f"labels_{task}.txt")]
                jobs.append((f"extract_{stem}", argv))
                videos += _list_length(self.data / f"{stem}_videos.txt")
            # small stores: start-up dominates, so two extractions at a time beat one with two threads
            peak = self.run_parallel(jobs, "token stores") if jobs else 0.0
            val = self.store("motion_val")
            if not (self.out / "reconstruction.png").is_file():
                first = (self.data / "motion_val_videos.txt").read_text(encoding="utf-8").split()[0]
                peak = max(peak, self.run("inspect", ["-m", "video2token.inspect", str(val)]))
                peak = max(peak, self.run("visualize", ["-m", "video2token.visualize", str(val), first,
                                                        "--out", str(self.out / "reconstruction.png")]))
            rec.seconds, rec.peak_rss_mb = time.time() - t0, peak
            rec.skipped = not jobs
            rec.throughput = f"{videos / rec.seconds:.1f} videos/s" if videos else ""

    def stage_epochs(self, share: float) -> int:
        return max(1, round(share * self.cfg.pretrain_epochs))

    def pretrain_args(self, variant: PretrainVariant, stage: int = 1) -> list[str]:
        """argv of stage `stage` (1-based) of a variant: the demo's flags, then the stage's own (they win)."""
        c, out = self.cfg, self.pretrain_dir(variant.name, stage)
        spec = variant.stages[stage - 1]
        epochs = self.stage_epochs(spec.epoch_share)
        argv = ["-m", "vimpac.pretrain", "--train-tokens", str(self.store("pretrain")),
                "--valid-tokens", str(self.store("motion_val")), "--clip-len", str(c.clip_len),
                "--frame-size", str(c.size), "--layers", str(c.layers), "--hid-dim", str(c.hid_dim),
                "--heads", str(c.heads), "--mask-blocks", str(c.mask_blocks), "--epochs", str(epochs),
                "--batch-size", str(c.pretrain_batch), "--bs-per-gpu", str(c.pretrain_batch),
                "--lr", f"{c.pretrain_lr:g}", "--warm-up", "0.1", "--num-workers", "1",
                "--eval-per-epochs", str(max(1, epochs // 6)), "--eval-max-batches", "8",
                "--log-steps", "5", "--output", str(out), *spec.args]
        if stage > 1:
            argv += ["--load", str(self.pretrain_dir(variant.name, stage - 1) / "last")]
        if (out / "last").is_dir():
            argv.append("--resume")
        return argv

    def pretrain(self, variant: PretrainVariant, number: str) -> None:
        with self.step(f"pretrain:{variant.name}", f"{number} pre-train a tiny VIMPAC model ({variant.title}) -> "
                                                   f"{self.pretrain_dir(variant.name)}") as rec:
            t0, done = time.time(), 0
            for k in range(1, len(variant.stages) + 1):
                summary = read_json(self.pretrain_dir(variant.name, k) / "summary.json")
                if summary and summary.get("epoch", 0) >= summary.get("epochs", 1):
                    done += 1
                    continue
                name = f"pretrain_{variant.name}" + (f"_stage{k}" if len(variant.stages) > 1 else "")
                rec.peak_rss_mb = max(rec.peak_rss_mb, self.run(name, self.pretrain_args(variant, k)))
            if done == len(variant.stages):
                rec.skipped = True
                print("already pre-trained")
            else:
                rec.seconds = time.time() - t0
            summary = read_json(self.pretrain_dir(variant.name) / "summary.json") or {}
            if summary.get("videos_per_s"):
                rec.throughput = f"{summary['videos_per_s']:.1f} videos/s (2 clips each)"

    # -- step 5: the evaluation protocol (vimpac.demo.protocol)
    def _load(self, arm: str) -> str:
        return str(self.pretrain_dir(MAIN_VARIANT if arm == SCRATCH else arm) / "last")

    def finetune_args(self, task: str, arm: str, *, lr: float, seed: int, out: Path, epochs: int,
                      train: str = "train", probe: bool = False) -> list[str]:
        """One `vimpac.finetune` run: same flags for every arm (scratch: --from-scratch); val picks, test reports."""
        c = self.cfg
        argv = ["-m", "vimpac.finetune", "--load", self._load(arm),
                "--train-tokens", str(self.store(f"{task}_{train}")), "--valid-tokens", str(self.store(f"{task}_val")),
                "--test-tokens", str(self.store(f"{task}_test")), "--epochs", str(epochs),
                "--batch-size", str(c.finetune_batch), "--bs-per-gpu", str(c.finetune_batch),
                "--lr", f"{lr:g}", "--warm-up", "0.1", "--num-workers", "0",
                # a probe's curve is not drawn: its one evaluation is the final model's
                "--num-test-clips", str(c.test_clips),
                "--eval-per-epochs", str(epochs if probe else max(1, epochs // c.finetune_evals)),
                "--eval-batch-size", "32", "--seed", str(seed), "--no-tqdm", "--output", str(out)]
        if arm == SCRATCH:
            argv.append("--from-scratch")
        if probe:
            argv.append("--linear-probe")
        if (out / "last").is_dir():
            argv.append("--resume")
        return argv

    def knn_args(self, task: str, arm: str) -> list[str]:
        argv = ["-m", "vimpac.knn", "--load", self._load(arm), "--train-tokens", str(self.store(f"{task}_train")),
                "--valid-tokens", str(self.store(f"{task}_test")), "--k", str(self.cfg.knn_k),
                "--output", str(self.knn_dir(task, arm))]
        return argv + (["--from-scratch", "--seed", str(self.cfg.seeds[0])] if arm == SCRATCH else [])

    def _unfinished(self, name: str) -> bool:
        return not read_json(self.finetune_dir(name) / "results.json")

    def seed_jobs(self, task: str, arm: str) -> list[Job]:
        """The other seeds at the rate the grid chose on val (none until the whole grid has finished)."""
        c = self.cfg
        lr = choose({lr: run_scores(self.finetune_dir(self.grid_run(task, arm, lr, c.seeds[0])))[0]
                     for lr in c.finetune_lrs})
        if lr is None:
            return []
        names = [self.grid_run(task, arm, lr, s) for s in c.seeds[1:]]
        return [(n, self.finetune_args(task, arm, lr=lr, seed=s, out=self.finetune_dir(n), epochs=c.finetune_epochs))
                for n, s in zip(names, c.seeds[1:]) if self._unfinished(n)]

    def ceiling_jobs(self) -> list[Job]:
        """--ablation: all pool labels, pre-trained and from scratch (a reference, not part of the comparison)."""
        c, jobs = self.cfg, []
        for task in self.cfg.tasks:
            for arm, name in ((MAIN_VARIANT, f"{task}_all_labels"), (SCRATCH, f"{task}_all_labels_scratch")):
                if self._unfinished(name):
                    jobs.append((name, self.finetune_args(task, arm, lr=c.ceiling_lr, seed=c.seeds[0], train="pool",
                                                          out=self.finetune_dir(name), epochs=c.ceiling_epochs)))
        return jobs

    def evaluation_jobs(self, arms: Sequence[str]) -> tuple[list[Job], Callable[[str], list[Job]]]:
        """Every unfinished run of the protocol for scratch + `arms` -> (the jobs that can start now, the follow-up
        callback: once a grid is complete, its other seeds). Order: longest first (ceiling, fine-tuning grid,
        probes, kNN); follow-ups go to the front, so the seeds run before the shorter probes."""
        c = self.cfg
        arms = [SCRATCH, *arms]
        grid, probes, knn, seeds = [], [], [], []
        group_of: dict[str, tuple[str, str]] = {}
        for task in self.cfg.tasks:
            for arm in arms:
                for lr in c.finetune_lrs:
                    name = self.grid_run(task, arm, lr, c.seeds[0])
                    group_of[name] = (task, arm)
                    if self._unfinished(name):
                        grid.append((name, self.finetune_args(task, arm, lr=lr, seed=c.seeds[0],
                                                              out=self.finetune_dir(name), epochs=c.finetune_epochs)))
                seeds += self.seed_jobs(task, arm)
                for lr in c.probe_lrs:
                    name = self.probe_run(task, arm, lr)
                    if self._unfinished(name):
                        probes.append((name, self.finetune_args(task, arm, lr=lr, seed=c.seeds[0], probe=True,
                                                                out=self.finetune_dir(name), epochs=c.probe_epochs)))
                if not (self.knn_dir(task, arm) / "knn.json").is_file():
                    knn.append((f"knn_{task}_{arm}", self.knn_args(task, arm)))
        ceiling = self.ceiling_jobs() if self.ablation else []

        queued = {name for name, _ in seeds}

        def then(name: str) -> list[Job]:
            group = group_of.get(name)
            more = [j for j in self.seed_jobs(*group) if j[0] not in queued] if group is not None else []
            queued.update(n for n, _ in more)  # two grid runs ending together must not queue the seeds twice
            return more

        return ceiling + grid + seeds + probes + knn, then

    def evaluate(self, arms: Sequence[str]) -> None:
        name = "finetune" if list(arms) == [MAIN_VARIANT] else "finetune:ablation"  # kept apart in the timings
        c = self.cfg
        with self.step(name, f"5/6 evaluate scratch and {len(arms)} pre-trained arm(s) on both label sets: fine-tuning "
                             f"(rate chosen on val from {len(c.finetune_lrs)}, {len(c.seeds)} seeds), linear probe, "
                             f"kNN; reported on test ({self.jobs} runs at a time)") as rec:
            jobs, then = self.evaluation_jobs(arms)
            if not jobs:
                rec.skipped = True
                print("all runs finished")
                return
            t0, seconds = time.time(), {}
            rec.peak_rss_mb = self.run_parallel(jobs, "evaluation runs", then=then, seconds=seconds)
            rec.seconds = time.time() - t0
            rec.throughput = describe_runs(seconds, first_seed=c.seeds[0])

    def report(self, arms: Sequence[str]) -> str:
        from vimpac.demo.report import write_report

        print(f"\n=== [{time.strftime('%H:%M:%S')}] 6/6 report -> {self.out / 'report.md'}", flush=True)
        table = write_report(self, arms)
        print(table)
        return table

    def main(self) -> None:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "demo_config.json").write_text(json.dumps({"profile": self.profile, **dataclasses.asdict(self.cfg)},
                                                              indent=2))
        arms = self.arms
        self.make_data()
        self.train_tokenizer()
        self.extract()
        for i, v in enumerate(arms):
            self.pretrain(VARIANTS[v], "4/6" if len(arms) == 1 else f"4/6 ({i + 1}/{len(arms)})")
        self.evaluate(arms)
        self.report(arms)
        print(f"\ndemo finished in {time.time() - t0:.0f} s; report: {self.out / 'report.md'}")


def describe_runs(seconds: dict[str, float], *, first_seed: int) -> str:
    """Where the evaluation step's time went, per kind of run (each on one core)."""
    kinds: dict[str, list[float]] = {}
    for name, s in seconds.items():
        kind = ("kNN" if name.startswith("knn_") else "probe" if "_probe_" in name else
                "ceiling" if "_all_labels" in name else "fine-tune grid" if name.endswith(f"_s{first_seed}") else
                "fine-tune other seeds")
        kinds.setdefault(kind, []).append(s)
    order = ("fine-tune grid", "fine-tune other seeds", "probe", "kNN", "ceiling")
    return "; ".join(f"{k}: {len(kinds[k])} runs, {sum(kinds[k]):.0f} s ({sum(kinds[k]) / len(kinds[k]):.0f} s each)"
                     for k in order if k in kinds) + " (one core each)"


class DemoError(RuntimeError):
    pass


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def _store_complete(path: Path) -> bool:
    """Every shard of the store is committed (a shard file appears only once all its videos are in)."""
    shards = sorted(path.glob("shard-*-of-*.h5"))
    if not (path / "meta.json").is_file() or not shards:
        return False
    total = int(shards[0].stem.rsplit("-of-", 1)[1])
    return len(shards) == total


def _list_length(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--profile", "--profiles", dest="profiles", nargs="+", choices=tuple(PROFILES), default=None,
                   metavar="PROFILE",
                   help="one or more of: default (shared looks, 128 codes); varied (every video its own background "
                        "and colours, H.264 crf 28, 512 codes); varied128 (the same with 128 codes); long (4x the "
                        "unlabelled pool, not timed); smoke (seconds, for tests). Several: each in its own "
                        "directories, then one combined report (--summary). Default: default")
    p.add_argument("--data", type=Path, default=None,
                   help="video directory (default data/demo, data/demo_PROFILE; one profile only)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default snap/demo, snap/demo_PROFILE; one profile only)")
    p.add_argument("--summary", type=Path, default=Path("snap/demo_report.md"),
                   help="the combined report of several profiles")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=None, metavar="VARIANT",
                   help=f"pre-training variants to evaluate beside the main one ({MAIN_VARIANT}): "
                        + ", ".join(VARIANTS))
    p.add_argument("--ablation", action="store_true",
                   help="every variant, and the all-labels ceiling (a reference, not part of the comparison)")
    p.add_argument("--jobs", type=int, default=2, help="evaluation runs at a time (one thread each)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default 1 2 3)")
    return p


def default_dirs(profile: str) -> tuple[Path, Path]:
    """(videos, outputs) of a profile without --data / --out: each profile its own, so runs never mix."""
    suffix = "" if profile == "default" else f"_{profile}"
    return Path(f"data/demo{suffix}"), Path(f"snap/demo{suffix}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    profiles = list(dict.fromkeys(a.profiles or ["default"]))
    if len(profiles) > 1 and (a.data or a.out):
        p.error("--data / --out name one profile's directories; with several profiles each uses its default "
                "(data/demo_PROFILE, snap/demo_PROFILE)")
    demos = []
    for profile in profiles:
        cfg = PROFILES[profile]
        if a.seeds:
            cfg = dataclasses.replace(cfg, seeds=tuple(a.seeds))
        data, out = default_dirs(profile)
        demos.append(Demo(cfg=cfg, data=a.data or data, out=a.out or out, jobs=max(1, a.jobs), ablation=a.ablation,
                          variants=tuple(a.variants or ()), profile=profile))
    try:
        for demo in demos:
            if len(demos) > 1:
                print(f"\n##### regime {demo.profile} -> {demo.out}", flush=True)
            demo.main()
        if len(demos) > 1:
            from vimpac.demo.report import write_combined_report

            print(write_combined_report(demos, demos[0].arms, a.summary))
            print(f"\ncombined report: {a.summary}")
    except DemoError as e:
        print(f"\ndemo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
