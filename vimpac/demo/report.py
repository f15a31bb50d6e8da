"""The demo's report: tables on the terminal and `OUT/report.md` with its PNGs.

Reads only what the runs wrote (results.json, summary.json, metrics.jsonl, steps.jsonl); nothing
is computed from the models here, so the report can be rebuilt at any time:

    python -m vimpac.demo.report --out snap/demo
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from video2token.cli import HelpFormatter
from vimpac.demo.layout import MAIN_VARIANT, PROFILES, VARIANTS, DemoConfig, DemoLayout, read_json

TIME_TARGET_S = 15 * 60
MEMORY_TARGET_MB = 4096
GAIN_TARGET = 10.0


@dataclass
class TaskResult:
    task: str
    num_classes: int
    seeds: list[int]
    top1: dict[str, list[float | None]]  # init ("scratch", variant name) -> top-1 per seed (None: missing)
    ceiling: float | None
    ceiling_scratch: float | None

    @property
    def chance(self) -> float:
        return 100.0 / self.num_classes


def _top1(run_dir: Path) -> float | None:
    r = read_json(run_dir / "results.json")
    return None if r is None else float(r["final"]["top1"])


def mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def collect(demo: DemoLayout, variants: Sequence[str]) -> list[TaskResult]:
    out = []
    for task in ("motion", "shape"):
        names = (demo.data / f"labels_{task}.txt").read_text(encoding="utf-8").split()
        top1 = {"scratch": [_top1(demo.finetune_dir(f"{task}_scratch_s{s}")) for s in demo.cfg.seeds]}
        for v in variants:
            top1[v] = [_top1(demo.finetune_dir(f"{task}_{v}_s{s}")) for s in demo.cfg.seeds]
        out.append(TaskResult(task=task, num_classes=len(names), seeds=list(demo.cfg.seeds), top1=top1,
                              ceiling=_top1(demo.finetune_dir(f"{task}_all_labels")),
                              ceiling_scratch=_top1(demo.finetune_dir(f"{task}_all_labels_scratch"))))
    return out


def step_history(out: Path) -> dict[str, dict]:
    """Newest record of every step that did work (a rerun that skipped a step keeps the old timing)."""
    steps: dict[str, dict] = {}
    try:
        lines = (out / "steps.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("name") != "total" and not r.get("skipped"):
            steps[r["name"]] = r
    return steps


def results_table(results: list[TaskResult], main: str) -> list[str]:
    seeds = results[0].seeds
    head = (f"| task | chance | scratch ({' / '.join(f's{s}' for s in seeds)}) | mean | "
            f"pre-trained ({' / '.join(f's{s}' for s in seeds)}) | mean | gain | all labels, pre-trained |")
    rows = [head, "|" + "---|" * 8]
    for r in results:
        scr, pre = r.top1["scratch"], r.top1[main]
        m_scr, m_pre = mean(scr), mean(pre)
        gain = None if m_scr is None or m_pre is None else m_pre - m_scr
        rows.append(f"| {r.task} | {r.chance:.1f} | {' / '.join(_fmt(v) for v in scr)} | {_fmt(m_scr)} | "
                    f"{' / '.join(_fmt(v) for v in pre)} | **{_fmt(m_pre)}** | "
                    f"{'-' if gain is None else f'{gain:+.1f}'} | {_fmt(r.ceiling)} |")
    return rows


def pretrain_table(demo: DemoLayout, results: list[TaskResult], variants: Sequence[str]) -> list[str]:
    rows = ["| pre-training | valid mask acc | copy baseline | valid contrastive acc | motion top-1 (mean) | "
            "shape top-1 (mean) |", "|---|---|---|---|---|---|"]
    pct = lambda s, key: _fmt(100 * s[key]) if key in s else "-"  # noqa: E731
    for v in variants:
        s = (read_json(demo.pretrain_dir(v) / "summary.json") or {}).get("valid", {})
        cells = [_fmt(mean(r.top1[v])) for r in results]
        rows.append(f"| {VARIANTS[v].title} | {pct(s, 'mask_acc')} | {pct(s, 'copy_acc')} | {pct(s, 'cl_acc')} | "
                    f"{cells[0]} | {cells[1]} |")
    if any(r.ceiling_scratch is not None for r in results):
        rows.append(f"| none (scratch, all labels) | - | - | - | {_fmt(results[0].ceiling_scratch)} | "
                    f"{_fmt(results[1].ceiling_scratch)} |")
    return rows


def describe_data(demo: DemoLayout) -> str:
    """The profile and what the videos look like, for the report's first line."""
    c = demo.cfg
    looks = ("8 backgrounds and 4 object colours shared by all videos" if c.appearance == "shared" else
             "every video its own background and colours")
    return (f"Profile `{demo.profile}`: " if demo.profile else "") + f"{looks}, H.264 crf {c.crf}."


def is_ablation_step(name: str) -> bool:
    """Steps only `--ablation` runs: the other pre-training variants and their fine-tuning."""
    return name == "finetune:ablation" or (name.startswith("pretrain:") and name != f"pretrain:{MAIN_VARIANT}")


def steps_table(steps: dict[str, dict]) -> tuple[list[str], float, float, float]:
    """Rows, the time of `make demo`'s own steps, the ablation's extra time, the peak memory."""
    rows = ["| step | time | peak memory | throughput |", "|---|---|---|---|"]
    core, extra, peak = 0.0, 0.0, 0.0
    for name, r in steps.items():
        if is_ablation_step(name):
            extra += r["seconds"]
        else:
            core += r["seconds"]
        peak = max(peak, r["peak_rss_mb"])
        rows.append(f"| {name} | {r['seconds']:.0f} s | {r['peak_rss_mb']:.0f} MB | {r.get('throughput', '')} |")
    rows.append(f"| **total** | **{(core + extra) / 60:.1f} min** | **{peak:.0f} MB** | |")
    return rows, core, extra, peak


def plot_results(results: list[TaskResult], main: str, path: Path) -> None:
    """Bars: mean top-1 per task and init, seeds as dots, chance and the all-labels ceiling as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, r in zip(axes[0], results):
        for i, (init, color) in enumerate((("scratch", "tab:gray"), (main, "tab:blue"))):
            vals = [v for v in r.top1[init] if v is not None]
            if vals:
                ax.bar(i, statistics.fmean(vals), color=color, alpha=0.7)
                ax.plot([i] * len(vals), vals, "k.", ms=8)
        ax.axhline(r.chance, color="k", ls=":", label=f"chance {r.chance:.0f}%")
        if r.ceiling is not None:
            ax.axhline(r.ceiling, color="tab:green", ls="--", label=f"all labels {r.ceiling:.0f}%")
        ax.set_xticks([0, 1], ["from scratch", "pre-trained"])
        ax.set_ylim(0, 100)
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"{r.task}: {r.num_classes} classes")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _valid_curve(run_dir: Path) -> list[tuple[int, float]]:
    pts = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r.get("split") == "valid" and "top1" in r:
                pts.append((int(r["epoch"]), float(r["top1"])))
    except (OSError, ValueError):
        pass
    return pts


def plot_finetune_curves(demo: DemoLayout, results: list[TaskResult], main: str, path: Path) -> None:
    """Val top-1 against epoch for every seed, pre-trained vs scratch, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for init, label, color in (("scratch", "from scratch", "tab:gray"), (main, "pre-trained", "tab:blue")):
            for k, seed in enumerate(r.seeds):
                pts = _valid_curve(demo.finetune_dir(f"{r.task}_{init}_s{seed}"))
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, alpha=0.8, label=label if k == 0 else None)
        ax.axhline(r.chance, color="k", ls=":", label="chance")
        ax.set_ylim(0, 100)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"{r.task} ({len(r.seeds)} seeds each)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def target_checks(results: list[TaskResult], main: str, demo: DemoLayout, total_s: float, peak_mb: float,
                  extra_s: float = 0.0) -> list[str]:
    s = (read_json(demo.pretrain_dir(main) / "summary.json") or {}).get("valid", {})
    gains = {r.task: (mean(r.top1[main]) or 0.0) - (mean(r.top1["scratch"]) or 0.0) for r in results}
    best = max(gains, key=gains.get)
    mask, copy = 100 * s.get("mask_acc", 0.0), 100 * s.get("copy_acc", 0.0)
    checks = [
        (total_s <= TIME_TARGET_S, f"whole demo {total_s / 60:.1f} min (target <= {TIME_TARGET_S // 60} min)"
         + (f"; the ablation's extra {extra_s / 60:.1f} min are not counted" if extra_s else "")),
        (peak_mb < MEMORY_TARGET_MB, f"peak memory {peak_mb:.0f} MB (target < {MEMORY_TARGET_MB} MB)"),
        (mask > copy, f"pre-training val mask accuracy {mask:.1f}% vs copy baseline {copy:.1f}% on the same masks"),
        (gains[best] >= GAIN_TARGET, f"pre-trained minus scratch, mean of {len(demo.cfg.seeds)} seeds: "
         + ", ".join(f"{t} {g:+.1f}" for t, g in gains.items()) + f" points (target >= +{GAIN_TARGET:g} on one task)"),
    ]
    return [f"- [{'x' if ok else ' '}] {text}" for ok, text in checks]


def write_report(demo: DemoLayout, variants: Sequence[str]) -> str:
    """Write OUT/report.md + results.png + finetune_curves.png; returns the terminal summary."""
    main = variants[0]
    out = demo.out
    results = collect(demo, variants)
    plot_results(results, main, out / "results.png")
    plot_finetune_curves(demo, results, main, out / "finetune_curves.png")
    steps, total, extra, peak = steps_table(step_history(out))
    res_rows = results_table(results, main)
    pre_rows = pretrain_table(demo, results, variants)
    checks = target_checks(results, main, demo, total, peak, extra)
    c = demo.cfg
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731 - paths in report.md are relative to it
    figs = [("Token reconstructions (frames / VQ-VAE reconstruction / code map)", out / "reconstruction.png"),
            ("Tokenizer training samples (held-out originals over reconstructions)", demo.tokenizer / "samples.png"),
            ("Pre-training curves (valid mask accuracy against the copy baseline)", demo.pretrain_dir(main) / "curves.png"),
            ("Masked-prediction examples (input with [MASK], prediction, target)",
             demo.pretrain_dir(main) / "mask_examples.png"),
            ("Fine-tuning: val top-1 per epoch, every seed", out / "finetune_curves.png"),
            ("Fine-tuning results", out / "results.png")]
    for task in ("motion", "shape"):
        s = c.seeds[0]
        figs.append((f"Confusion matrix, {task}, pre-trained (seed {s})",
                     demo.finetune_dir(f"{task}_{main}_s{s}") / "confusion_matrix.png"))
        figs.append((f"Confusion matrix, {task}, from scratch (seed {s})",
                     demo.finetune_dir(f"{task}_scratch_s{s}") / "confusion_matrix.png"))
    md = [
        "# VIMPAC demo report" + (f" (profile `{demo.profile}`)" if demo.profile else ""),
        "",
        describe_data(demo),
        f"Synthetic videos ({c.num_pool} unlabelled pool videos, {c.num_train} labelled train videos, "
        f"{c.num_val} val videos, {c.size}x{c.size} px) -> VQ-VAE tokens ({c.vocab_size} codes, stride 8, "
        f"{c.fps:g} fps) -> a {c.layers}-layer, {c.hid_dim}-wide VIMPAC model pre-trained for "
        f"{c.pretrain_epochs} epochs -> fine-tuned for {c.finetune_epochs} epochs on {c.num_train} labels, "
        f"from the pre-trained weights and from scratch with the same budget, seeds {', '.join(map(str, c.seeds))}.",
        "Two label sets: **motion** (direction left/right/up/down: only the change over time decides it) and "
        "**shape** (circle/square/triangle/diamond: one frame decides it). Val top-1 (%) of the final model:",
        "",
        *res_rows,
        "",
        f"The last column is the supervised ceiling: all {c.num_pool} pool videos with their hidden labels, "
        f"{c.ceiling_epochs} epochs at lr {c.ceiling_lr:g} from the pre-trained weights.",
        "",
        *pre_rows,
        "",
        f"Valid contrastive accuracy: the share of clips whose partner (the other clip of the same video) scores "
        f"highest among the other clips of its batch of up to {c.pretrain_batch} videos (chance "
        f">= {100 / c.pretrain_batch:.1f}%); near 100% means [CLS] tells the videos apart, by whatever differs.",
        "",
        "## Targets",
        "",
        *checks,
        "",
        "## Time and memory per step (newest run of each step; CPU threads: all for single runs, "
        f"one per run with {demo.jobs} fine-tuning runs at a time)",
        "",
        *steps,
        "",
        "Peak memory is the largest resident size of one step's processes (for the parallel fine-tuning "
        "step, the sum of the largest concurrent ones).",
        "",
        "## Pictures",
        "",
    ]
    for title, path in figs:
        if path.is_file():
            md += [f"### {title}", "", f"![{title}]({rel(path)})", ""]
    command = "make demo` (or `python -m vimpac.demo" if demo.profile in (None, "default") else \
        f"python -m vimpac.demo --profile {demo.profile}"
    md += ["## Reproduce", "", f"`{command}`; every command it ran, with its output, "
           "is in `logs/`. The configuration is in `demo_config.json`.", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return "\n".join(["", *res_rows, "", *pre_rows, "", *steps, "", *checks])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vimpac.demo.report",
                                 description="Rebuild the demo report from a finished demo directory.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("snap/demo"))
    ap.add_argument("--data", type=Path, default=Path("data/demo"))
    a = ap.parse_args(argv)
    cfg_dict = read_json(a.out / "demo_config.json")
    if cfg_dict is None:
        raise SystemExit(f"error: {a.out / 'demo_config.json'} is missing: not a demo output directory")
    profile = cfg_dict.pop("profile", None)  # written since the varied profiles; older runs: not known
    cfg_dict["seeds"] = tuple(cfg_dict["seeds"])
    demo = DemoLayout(cfg=DemoConfig(**cfg_dict) if cfg_dict else PROFILES["default"], data=a.data, out=a.out,
                      profile=profile)
    variants = [v for v in VARIANTS if demo.pretrain_dir(v).joinpath("summary.json").is_file()]
    print(write_report(demo, variants))


if __name__ == "__main__":
    main()
