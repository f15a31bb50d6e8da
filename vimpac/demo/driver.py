"""`make demo`: the whole pipeline on generated videos, with the method's effect measured.

    python -m vimpac.demo                     # ~7 min on 2 AMX cores, ~14 on AVX2-only: data -> report
    python -m vimpac.demo --ablation          # also block vs i.i.d. masking, MP-only vs MP+CL
    python -m vimpac.demo --profile long      # 4x the unlabelled pool (not timed yet)
    python -m vimpac.demo --profile varied    # every video its own looks, crf 28, 512 codes (varied128: 128)

Steps (each skips work already done, so a rerun after an interruption continues):
 1. synthetic videos (video2token.synthetic): an unlabelled pool, 64 labelled train videos,
    160 val videos; two label sets, motion direction (temporal) and object shape (spatial);
 2. the small VQ-VAE tokenizer (video2token.train_tokenizer);
 3. token stores (video2token.extract), then inspect + a reconstruction PNG;
 4. pre-training of a tiny VIMPAC model (vimpac.pretrain: block masking + contrastive);
 5. fine-tuning (vimpac.finetune) from the pre-trained weights and, with the same budget, from
    scratch, on both label sets, several seeds; plus the all-labels supervised ceiling;
 6. the report: a table on the terminal and `OUT/report.md` with its PNGs (vimpac.demo.report).

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
from typing import Sequence

from tqdm import tqdm

from video2token.cli import HelpFormatter

from vimpac.demo.layout import (MAIN_VARIANT, PROFILES, TASKS, VARIANTS, DemoLayout, PretrainVariant,
                                StepRecord, read_json)

@dataclass
class Demo(DemoLayout):
    """Runs the demo's steps as subprocesses of the CLIs (see the module docstring)."""

    python: str = sys.executable
    ablation: bool = False

    # -- running
    def _env(self, threads: int | None = None) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
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
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise DemoError(f"step {name!r} failed with exit code {proc.returncode}: {shlex.join(proc.args)}")
        return usage.ru_maxrss / 1024

    def run_parallel(self, jobs: list[tuple[str, list[str]]], desc: str) -> float:
        """Run quiet jobs `self.jobs` at a time, one thread each (tiny models use one core best).

        Returns the peak memory bound: the sum of the `self.jobs` largest peak RSS values (MB).
        """
        pending, running, peaks = list(jobs), {}, []
        bar = tqdm(total=len(jobs), desc=desc, unit="run", dynamic_ncols=True)
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    name, argv = pending.pop(0)
                    proc, f, log = self._launch(name, argv, quiet=True)
                    running[proc.pid] = (name, proc, f, log)
                pid, status, usage = os.wait4(-1, 0)
                if pid not in running:
                    continue
                name, proc, f, log = running.pop(pid)
                proc.returncode = os.waitstatus_to_exitcode(status)
                f.close()
                peaks.append(usage.ru_maxrss / 1024)
                if proc.returncode != 0:
                    raise DemoError(f"run {name!r} failed with exit code {proc.returncode}; its log: {log}\n"
                                    + _tail(log))
                bar.update(1)
                bar.set_postfix_str(name, refresh=False)
        finally:
            bar.close()
            for name, proc, f, _ in running.values():  # an error elsewhere: stop the siblings
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
        yield record
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
                if isinstance(have, dict):  # markers from before --appearance existed: the shared looks
                    have = {"appearance": "shared", **have}
                if have != wanted:
                    raise DemoError(f"{self.data} holds demo videos made with {have}, this run wants {wanted}; "
                                    f"remove {self.data} or pass another --data")
                rec.skipped = True
                print("already there")
                return
            c = self.cfg
            rec.peak_rss_mb = self.run("data", ["-m", "video2token.synthetic", "--out", str(self.data),
                                                "--num-pool", str(c.num_pool), "--num-train", str(c.num_train),
                                                "--num-val", str(c.num_val), "--size", str(c.size),
                                                "--fps", str(c.render_fps), "--seconds", str(c.seconds),
                                                "--seed", str(c.data_seed), "--appearance", c.appearance,
                                                "--crf", str(c.crf)])
            marker.write_text(json.dumps(wanted))
            rec.seconds = time.time() - t0
            n = c.num_pool + c.num_train + c.num_val
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

    def store_splits(self) -> list[tuple[str, str, str | None]]:
        """(store split, list file stem, label set) for every store the demo reads."""
        splits = [("pretrain", "pretrain", None)]
        for task in TASKS:
            splits += [(f"{task}_{s}", f"{task}_{s}", task) for s in ("train", "val", "pool")]
        return splits

    def extract(self) -> None:
        with self.step("stores", "3/6 extract token stores, inspect, reconstruction PNG") as rec:
            t0, videos, jobs, c = time.time(), 0, [], self.cfg
            for split, stem, task in self.store_splits():
                out = self.store(split)
                if _store_complete(out):
                    continue
                argv = ["-m", "video2token.extract", "--video-root", str(self.data),
                        "--anno", str(self.data / f"{stem}_videos.txt"), "--output", str(out),
                        "--fps", f"{c.fps:g}", "--frame-shorter-side", str(c.size), "--crop-size", str(c.size),
                        "--crop-type", "center", "--tokenizer", "vqvae", "--tokenizer-path", str(self.tokenizer),
                        "--batch-size", "64", "--num-workers", "1", "--no-progress"]
                if task is not None:
                    argv += ["--label-names", str(self.data / f"labels_{task}.txt")]
                jobs.append((f"extract_{split}", argv))
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

    def pretrain_args(self, variant: PretrainVariant) -> list[str]:
        c, out = self.cfg, self.pretrain_dir(variant.name)
        argv = ["-m", "vimpac.pretrain", "--train-tokens", str(self.store("pretrain")),
                "--valid-tokens", str(self.store("motion_val")), "--clip-len", str(c.clip_len),
                "--frame-size", str(c.size), "--layers", str(c.layers), "--hid-dim", str(c.hid_dim),
                "--heads", str(c.heads), "--mask-blocks", str(c.mask_blocks), "--epochs", str(c.pretrain_epochs),
                "--batch-size", str(c.pretrain_batch), "--bs-per-gpu", str(c.pretrain_batch),
                "--lr", f"{c.pretrain_lr:g}", "--warm-up", "0.1", "--num-workers", "1",
                "--eval-per-epochs", str(max(1, c.pretrain_epochs // 6)), "--eval-max-batches", "8",
                "--log-steps", "5", "--output", str(out), *variant.args]
        if (out / "last").is_dir():
            argv.append("--resume")
        return argv

    def pretrain(self, variant: PretrainVariant, number: str) -> None:
        with self.step(f"pretrain:{variant.name}", f"{number} pre-train a tiny VIMPAC model " f"({variant.title}) -> {self.pretrain_dir(variant.name)}") as rec:
            summary = read_json(self.pretrain_dir(variant.name) / "summary.json")
            if summary and summary.get("epoch", 0) >= summary.get("epochs", 1):
                rec.skipped = True
                print("already pre-trained")
            else:
                t0 = time.time()
                rec.peak_rss_mb = self.run(f"pretrain_{variant.name}", self.pretrain_args(variant))
                rec.seconds = time.time() - t0
                summary = read_json(self.pretrain_dir(variant.name) / "summary.json") or {}
            if summary.get("videos_per_s"):
                rec.throughput = f"{summary['videos_per_s']:.1f} videos/s (2 clips each)"

    def finetune_runs(self, variants: Sequence[str]) -> list[tuple[str, list[str]]]:
        """(run name, argv) of every fine-tuning run not finished yet, longest first.

        Longest first (training videos x epochs): the all-labels runs (400 videos x 8 epochs, twice
        the work of a 64-label run) start at once instead of last, where one of them ran alone
        on one core while the other idled (~10% of the step's wall time).
        """
        c, runs = self.cfg, []
        for task in TASKS:
            low, high = (c.finetune_epochs, c.finetune_lr), (c.ceiling_epochs, c.ceiling_lr)
            plan = [(f"{task}_{v}_s{seed}", v, "train", False, seed, *low) for v in variants for seed in c.seeds]
            plan += [(f"{task}_scratch_s{seed}", MAIN_VARIANT, "train", True, seed, *low) for seed in c.seeds]
            plan.append((f"{task}_all_labels", MAIN_VARIANT, "pool", False, c.seeds[0], *high))
            if self.ablation:
                plan.append((f"{task}_all_labels_scratch", MAIN_VARIANT, "pool", True, c.seeds[0], *high))
            for name, variant, train, scratch, seed, epochs, lr in plan:
                out = self.finetune_dir(name)
                if read_json(out / "results.json"):
                    continue
                argv = ["-m", "vimpac.finetune", "--load", str(self.pretrain_dir(variant) / "last"),
                        "--train-tokens", str(self.store(f"{task}_{train}")),
                        "--valid-tokens", str(self.store(f"{task}_val")), "--epochs", str(epochs),
                        "--batch-size", str(c.finetune_batch), "--bs-per-gpu", str(c.finetune_batch),
                        "--lr", f"{lr:g}", "--warm-up", "0.1", "--num-workers", "0",
                        "--num-test-clips", str(c.test_clips), "--eval-per-epochs", str(max(1, epochs // 4)),
                        "--eval-batch-size", "32", "--seed", str(seed), "--no-tqdm", "--output", str(out)]
                if scratch:
                    argv.append("--from-scratch")
                if (out / "last").is_dir():
                    argv.append("--resume")
                runs.append((epochs * (c.num_pool if train == "pool" else c.num_train), name, argv))
        runs.sort(key=lambda run: -run[0])  # stable: the plan's order among equals
        return [(name, argv) for _, name, argv in runs]

    def finetune(self, variants: Sequence[str]) -> None:
        name = "finetune:ablation" if self.ablation else "finetune"  # kept apart in the report's timings
        with self.step(name, f"5/6 fine-tune: pre-trained vs scratch, {len(self.cfg.seeds)} seeds, both label sets, "
                             f"+ all-labels ceiling ({self.jobs} runs at a time)") as rec:
            runs = self.finetune_runs(variants)
            if not runs:
                rec.skipped = True
                print("all runs finished")
                return
            t0 = time.time()
            rec.peak_rss_mb = self.run_parallel(runs, "fine-tune runs")
            rec.seconds = time.time() - t0
            speeds = [((read_json(self.finetune_dir(name) / "results.json") or {}).get("run") or {})
                      .get("train_clips_per_s") for name, _ in runs]
            speeds = [v for v in speeds if v]
            rec.throughput = f"{len(runs)} runs" + (f", {sum(speeds) / len(speeds):.0f} train clips/s each "
                                                    f"(1 thread)" if speeds else "")

    def report(self, variants: Sequence[str]) -> str:
        from vimpac.demo.report import write_report

        print(f"\n=== [{time.strftime('%H:%M:%S')}] 6/6 report -> {self.out / 'report.md'}", flush=True)
        table = write_report(self, variants)
        print(table)
        return table

    def main(self) -> None:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "demo_config.json").write_text(json.dumps({"profile": self.profile, **dataclasses.asdict(self.cfg)},
                                                              indent=2))
        variants = list(VARIANTS) if self.ablation else [MAIN_VARIANT]
        self.make_data()
        self.train_tokenizer()
        self.extract()
        for i, v in enumerate(variants):
            self.pretrain(VARIANTS[v], "4/6" if len(variants) == 1 else f"4/6 ({i + 1}/{len(variants)})")
        self.finetune(variants)
        self.report(variants)
        print(f"\ndemo finished in {time.time() - t0:.0f} s; report: {self.out / 'report.md'}")


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
    p.add_argument("--profile", choices=tuple(PROFILES), default="default",
                   help="default: ~7 min on 2 AMX CPU cores, ~14 on AVX2-only; long: 4x the unlabelled pool (not timed); "
                        "varied: every video its own background and colours, H.264 crf 28, 512 codes; varied128: "
                        "the same with 128 codes; smoke: seconds, for tests")
    p.add_argument("--data", type=Path, default=None, help="video directory (default data/demo, data/demo_PROFILE)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default snap/demo, snap/demo_PROFILE)")
    p.add_argument("--ablation", action="store_true",
                   help="also pre-train with i.i.d. masking and without the contrastive loss, same table")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning runs at a time (one thread each)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default 1 2 3)")
    return p


def default_dirs(profile: str) -> tuple[Path, Path]:
    """(videos, outputs) of a profile without --data / --out: each profile its own, so runs never mix."""
    suffix = "" if profile == "default" else f"_{profile}"
    return Path(f"data/demo{suffix}"), Path(f"snap/demo{suffix}")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cfg = PROFILES[a.profile]
    if a.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(a.seeds))
    data, out = default_dirs(a.profile)
    demo = Demo(cfg=cfg, data=a.data or data, out=a.out or out, jobs=max(1, a.jobs), ablation=a.ablation,
                profile=a.profile)
    try:
        demo.main()
    except DemoError as e:
        print(f"\ndemo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
