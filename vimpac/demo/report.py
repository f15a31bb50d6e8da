"""The demo's report: tables on the terminal and `OUT/report.md` with its PNGs; with several regimes, one combined
report of them all.

Reads only what the runs wrote (results.json, knn.json, summary.json, metrics.jsonl, steps.jsonl);
nothing is computed from the models here, so the report can be rebuilt at any time:

    python -m vimpac.demo.report --out snap/demo
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Sequence

from video2token.cli import HelpFormatter
from vimpac.demo.layout import (MAIN_VARIANT, PROFILES, SCRATCH, VARIANTS, DemoConfig, DemoLayout, read_json,
                                variant_names)
from vimpac.demo.protocol import ArmResult, collect, run_scores

TIME_TARGET_S = 15 * 60
MEMORY_TARGET_MB = 4096
GAIN_TARGET = 10.0

Results = dict[tuple[str, str], ArmResult]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _gain(v: float | None, base: float | None) -> str:
    return "-" if v is None or base is None else f"{v - base:+.1f}"


def _lr(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def num_classes(demo: DemoLayout, task: str) -> int:
    return len((demo.data / f"labels_{task}.txt").read_text(encoding="utf-8").split())


def arm_label(arm: str) -> str:
    return arm + (" (main)" if arm == MAIN_VARIANT else "")


def results_table(demo: DemoLayout, results: Results, arms: Sequence[str]) -> list[str]:
    """One row per task and arm: fine-tuning's test top-1 per seed at the val-chosen rate, their mean and range,
    the gain over scratch's mean; the frozen kNN and the linear probe on test, with their gains."""
    seeds = demo.cfg.seeds
    rows = [f"| task | arm | lr (val) | test top-1 ({' / '.join(f's{s}' for s in seeds)}) | mean | min-max | gain | "
            "kNN | gain | probe (lr) | gain |", "|" + "---|" * 11]
    for task in demo.cfg.tasks:
        base = results[task, SCRATCH]
        for arm in [SCRATCH, *arms]:
            r = results[task, arm]
            spread = r.spread
            main = arm == MAIN_VARIANT
            rows.append(
                f"| {task} | {arm_label(arm)} | {_lr(r.lr)} | {' / '.join(_fmt(v) for v in r.test.values())} | "
                f"{'**' + _fmt(r.mean) + '**' if main else _fmt(r.mean)} | "
                f"{'-' if spread is None else f'{spread[0]:.1f}-{spread[1]:.1f}'} | "
                f"{'' if arm == SCRATCH else _gain(r.mean, base.mean)} | {_fmt(r.knn)} | "
                f"{'' if arm == SCRATCH else _gain(r.knn, base.knn)} | {_fmt(r.probe_test)} ({_lr(r.probe_lr)}) | "
                f"{'' if arm == SCRATCH else _gain(r.probe_test, base.probe_test)} |")
    return rows


def pretrain_table(demo: DemoLayout, arms: Sequence[str]) -> list[str]:
    """Per variant: val mask accuracy against the copy baseline on the same masks, val contrastive accuracy, at the
    run's last evaluation (of its last stage)."""
    rows = ["| pre-training | recipe | val mask acc | copy baseline | val contrastive acc |", "|---|---|---|---|---|"]
    pct = lambda s, key: _fmt(100 * s[key]) if key in s else "-"  # noqa: E731
    for v in arms:
        s = (read_json(demo.pretrain_dir(v) / "summary.json") or {}).get("valid", {})
        stages = VARIANTS[v].stages
        flags = " then ".join(" ".join(st.args) or "(the demo's flags)" for st in stages)
        rows.append(f"| {arm_label(v)} | {VARIANTS[v].title}: `{flags}` | {pct(s, 'mask_acc')} | "
                    f"{pct(s, 'copy_acc')} | {pct(s, 'cl_acc')} |")
    return rows


def ceiling_rows(demo: DemoLayout) -> list[str]:
    """--ablation's all-labels runs (test top-1 of the final model), or nothing."""
    cells = {task: [run_scores(demo.finetune_dir(n))[1] for n in (f"{task}_all_labels", f"{task}_all_labels_scratch")]
             for task in demo.cfg.tasks}
    if all(v is None for pair in cells.values() for v in pair):
        return []
    c = demo.cfg
    return ["| all labels | pre-trained (main) | from scratch |", "|---|---|---|",
            *(f"| {t} | {_fmt(a)} | {_fmt(b)} |" for t, (a, b) in cells.items()), "",
            f"All {c.num_pool} pool videos with their hidden labels, {c.ceiling_epochs} epochs at lr {c.ceiling_lr:g}, "
            "seed 1, test top-1: a reference for how far 64 labels are from many, not part of the comparison."]


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


def is_ablation_step(name: str) -> bool:
    """Steps only `--ablation` / `--variants` run: the other pre-training variants and their evaluation."""
    return name == "finetune:ablation" or (name.startswith("pretrain:") and name != f"pretrain:{MAIN_VARIANT}")


def steps_table(steps: dict[str, dict]) -> tuple[list[str], float, float, float]:
    """Rows, the time of `make demo`'s own steps, the ablation's extra time, the peak memory."""
    rows = ["| step | time | CPU time | peak memory | throughput |", "|---|---|---|---|---|"]
    core, extra, peak = 0.0, 0.0, 0.0
    for name, r in steps.items():
        if is_ablation_step(name):
            extra += r["seconds"]
        else:
            core += r["seconds"]
        peak = max(peak, r["peak_rss_mb"])
        cpu = r.get("cpu_seconds")  # (steps.jsonl of older runs: none)
        rows.append(f"| {name} | {r['seconds']:.0f} s | {'-' if cpu is None else f'{cpu:.0f} s'} | "
                    f"{r['peak_rss_mb']:.0f} MB | {r.get('throughput', '')} |")
    cpu = sum(r.get("cpu_seconds", 0.0) for r in steps.values())
    rows.append(f"| **total** | **{(core + extra) / 60:.1f} min** | {cpu / 60:.1f} min | **{peak:.0f} MB** | |")
    return rows, core, extra, peak


def gains(results: Results) -> dict[str, float]:
    """Fine-tuning: the main arm's mean test top-1 minus scratch's, per task (missing runs count as 0)."""
    tasks = dict.fromkeys(t for t, _ in results)
    return {t: (results[t, MAIN_VARIANT].mean or 0.0) - (results[t, SCRATCH].mean or 0.0) for t in tasks}


def target_checks(demo: DemoLayout, results: Results, total_s: float, peak_mb: float, extra_s: float = 0.0,
                  *, time_label: str = "whole demo") -> list[str]:
    s = (read_json(demo.pretrain_dir(MAIN_VARIANT) / "summary.json") or {}).get("valid", {})
    g = gains(results)
    best = max(g, key=g.get)
    mask, copy = 100 * s.get("mask_acc", 0.0), 100 * s.get("copy_acc", 0.0)
    checks = [
        (total_s <= TIME_TARGET_S, f"{time_label} {total_s / 60:.1f} min (target <= {TIME_TARGET_S // 60} min)"
         + (f"; the ablation's extra {extra_s / 60:.1f} min are not counted" if extra_s else "")),
        (peak_mb < MEMORY_TARGET_MB, f"peak memory {peak_mb:.0f} MB (target < {MEMORY_TARGET_MB} MB)"),
        (mask > copy, f"pre-training val mask accuracy {mask:.1f}% vs copy baseline {copy:.1f}% on the same masks"),
        (g[best] >= GAIN_TARGET, f"pre-trained minus scratch, test top-1, mean of {len(demo.cfg.seeds)} seeds: "
         + ", ".join(f"{t} {v:+.1f}" for t, v in g.items()) + f" points (target >= +{GAIN_TARGET:g} on one task)"),
    ]
    return [f"- [{'x' if ok else ' '}] {text}" for ok, text in checks]


def plot_results(demo: DemoLayout, results: Results, arms: Sequence[str], path: Path) -> None:
    """Bars: mean test top-1 per arm (seeds as dots), the frozen kNN (x) and the probe (diamond); chance dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order, tasks = [SCRATCH, *arms], demo.cfg.tasks
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.2, 0.9 * len(order) + 1.5) * len(tasks), 3.8),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, arm in enumerate(order):
            r = results[task, arm]
            vals = [v for v in r.test.values() if v is not None]
            if vals:
                ax.bar(i, statistics.fmean(vals), color="tab:gray" if arm == SCRATCH else "tab:blue", alpha=0.7,
                       label="fine-tuned (mean)" if i == 0 else None)
                ax.plot([i] * len(vals), vals, "k.", ms=7, label="seeds" if i == 0 else None)
            if r.knn is not None:
                ax.plot(i - 0.2, r.knn, "rx", ms=8, label="kNN" if i == 0 else None)
            if r.probe_test is not None:
                ax.plot(i + 0.2, r.probe_test, "gD", ms=6, label="linear probe" if i == 0 else None)
        ax.axhline(100.0 / num_classes(demo, task), color="k", ls=":", label="chance")
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{task}: {num_classes(demo, task)} classes")
        ax.legend(loc="upper left", fontsize=7)
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


def plot_finetune_curves(demo: DemoLayout, results: Results, path: Path) -> None:
    """Val top-1 against epoch for every seed at the chosen rate, main vs scratch, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(demo.cfg.tasks), figsize=(4.2 * len(demo.cfg.tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], demo.cfg.tasks):
        for arm, label, color in ((SCRATCH, "from scratch", "tab:gray"), (MAIN_VARIANT, "pre-trained", "tab:blue")):
            r = results[task, arm]
            for k, seed in enumerate(demo.cfg.seeds):
                pts = [] if r.lr is None else _valid_curve(demo.finetune_dir(demo.grid_run(task, arm, r.lr, seed)))
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, alpha=0.8,
                            label=f"{label} (lr {r.lr:g})" if k == 0 else None)
        ax.axhline(100.0 / num_classes(demo, task), color="k", ls=":", label="chance")
        ax.set_ylim(0, 100)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"{task} ({len(demo.cfg.seeds)} seeds each)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_data(demo: DemoLayout) -> str:
    """The profile and what the videos look like, for the report's first line."""
    c = demo.cfg
    looks = ("8 backgrounds and 4 object colours shared by all videos" if c.appearance == "shared" else
             "every video its own background and colours")
    return (f"Profile `{demo.profile}`: " if demo.profile else "") + f"{looks}, H.264 crf {c.crf}."


def protocol_text(demo: DemoLayout) -> list[str]:
    c = demo.cfg
    return [
        f"Synthetic videos ({c.num_pool} unlabelled pool videos; {c.num_train} labelled train, {c.num_val} val and "
        f"{c.num_test} test videos; {c.size}x{c.size} px) -> VQ-VAE tokens ({c.vocab_size} codes, stride 8, "
        f"{c.fps:g} fps) -> a {c.layers}-layer, {c.hid_dim}-wide VIMPAC model pre-trained for {c.pretrain_epochs} "
        f"epochs. Two label sets: **motion** (left/right/up/down: only the change over time decides it) and "
        f"**shape** (circle/square/triangle/diamond: one frame decides it).",
        "",
        f"**Protocol: val chooses, test reports.** Every arm gets the same budget ({c.finetune_epochs} epochs on the "
        f"{c.num_train} labelled videos; scratch is the main recipe's architecture with random weights). The "
        f"fine-tuning rate is chosen from {', '.join(f'{v:g}' for v in c.finetune_lrs)} by the val top-1 of seed "
        f"{c.seeds[0]}'s final model (ties: the first in the grid), then seeds {', '.join(map(str, c.seeds))} run "
        f"at that rate (seed {c.seeds[0]}'s grid run reused). Reported: the **test top-1 of each seed's final model** (not "
        f"the best epoch), {c.test_clips} clips per video; mean and min-max over seeds; gain = arm mean minus "
        f"scratch mean. kNN: the frozen backbone's weighted kNN (k = {c.knn_k}, capped at the {c.num_train} bank "
        f"videos; temperature 0.07) of [CLS], the labelled train videos as the bank, test top-1. Probe: a linear "
        f"classifier on the frozen backbone ({c.probe_epochs} epochs, rate from "
        f"{', '.join(f'{v:g}' for v in c.probe_lrs)} chosen on val, seed {c.seeds[0]}), test top-1. Scratch's "
        "kNN and probe are those of the random-init backbone: the floor.",
    ]


def regime_sections(demo: DemoLayout, arms: Sequence[str], results: Results) -> tuple[list[str], list[str]]:
    """(markdown lines, terminal lines) of one regime's tables."""
    res = results_table(demo, results, arms)
    pre = pretrain_table(demo, arms)
    ceiling = ceiling_rows(demo)
    md = [*res, "", *pre, "",
          f"Val mask accuracy is against the copy baseline (each masked code copied from the nearest unmasked frame) "
          f"on the same masks; val contrastive accuracy: the share of clips whose partner (the other clip of the same "
          f"video) scores highest among the clips of its batch of up to {demo.cfg.pretrain_batch} videos; both at "
          "the last evaluation of pre-training. Tube masking hides a position in every frame, so there is nothing to "
          "copy: its copy baseline is 0.", ""]
    if ceiling:
        md += [*ceiling, ""]
    return md, ["", *res, "", *pre] + (["", *ceiling[:-2]] if ceiling else [])


def write_report(demo: DemoLayout, arms: Sequence[str]) -> str:
    """Write OUT/report.md + results.png + finetune_curves.png; returns the terminal summary."""
    out = demo.out
    results = collect(demo, [SCRATCH, *arms])
    plot_results(demo, results, arms, out / "results.png")
    plot_finetune_curves(demo, results, out / "finetune_curves.png")
    steps, total, extra, peak = steps_table(step_history(out))
    checks = target_checks(demo, results, total, peak, extra)
    tables, terminal = regime_sections(demo, arms, results)
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731 - paths in report.md are relative to it
    main_pre = demo.pretrain_dir(MAIN_VARIANT)
    figs = [("Token reconstructions (frames / VQ-VAE reconstruction / code map)", out / "reconstruction.png"),
            ("Tokenizer training samples (held-out originals over reconstructions)", demo.tokenizer / "samples.png"),
            ("Pre-training curves (valid mask accuracy against the copy baseline)", main_pre / "curves.png"),
            ("Masked-prediction examples (input with [MASK], prediction, target)", main_pre / "mask_examples.png"),
            ("Fine-tuning: val top-1 per epoch at the chosen rate, every seed", out / "finetune_curves.png"),
            ("Test top-1 per arm: fine-tuned seeds, kNN, linear probe", out / "results.png")]
    for task in demo.cfg.tasks:
        for arm, label in ((MAIN_VARIANT, "pre-trained"), (SCRATCH, "from scratch")):
            r, s = results[task, arm], demo.cfg.seeds[0]
            if r.lr is not None:
                figs.append((f"Confusion matrix on val, {task}, {label} (seed {s}, lr {r.lr:g})",
                             demo.finetune_dir(demo.grid_run(task, arm, r.lr, s)) / "confusion_matrix.png"))
    md = ["# VIMPAC demo report" + (f" (profile `{demo.profile}`)" if demo.profile else ""), "",
          describe_data(demo), *protocol_text(demo), "", *tables,
          "## Targets", "", *checks, "",
          "## Time and memory per step (newest run of each step; CPU threads: all for single runs, "
          f"one per run with {demo.jobs} evaluation runs at a time)", "", *steps, "",
          "CPU time: user + system time of the step's processes (all their threads); on an idle machine a parallel "
          f"step's wall time is about its CPU time over {demo.jobs} (the runs at a time), whatever the load was. Peak "
          "memory is the largest resident size of one step's processes (for the parallel steps, the sum of the "
          "largest concurrent ones).", "", "## Pictures", ""]
    for title, path in figs:
        if path.is_file():
            md += [f"### {title}", "", f"![{title}]({rel(path)})", ""]
    command = "python -m vimpac.demo" if demo.profile in (None, "default") else \
        f"python -m vimpac.demo --profile {demo.profile}"
    if list(arms) != [MAIN_VARIANT]:
        command += " --variants " + " ".join(a for a in arms if a != MAIN_VARIANT)
    md += ["## Reproduce", "", f"`{command}`; every command it ran, with its output, "
           "is in `logs/`. The configuration is in `demo_config.json`.", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return "\n".join([*terminal, "", *steps, "", *checks])


def summary_table(demos: Sequence[DemoLayout], results: Sequence[Results]) -> list[str]:
    rows = ["| regime | task | scratch | main | gain | kNN: scratch -> main | probe: scratch -> main |",
            "|---|---|---|---|---|---|---|"]
    for demo, res in zip(demos, results):
        for task in demo.cfg.tasks:
            s, m = res[task, SCRATCH], res[task, MAIN_VARIANT]
            rows.append(f"| {demo.profile} | {task} | {_fmt(s.mean)} | **{_fmt(m.mean)}** | {_gain(m.mean, s.mean)} | "
                        f"{_fmt(s.knn)} -> {_fmt(m.knn)} | {_fmt(s.probe_test)} -> {_fmt(m.probe_test)} |")
    return rows


def write_combined_report(demos: Sequence[DemoLayout], arms: Sequence[str], path: Path) -> str:
    """One report of several regimes (profiles): each regime's tables, then their summary; returns the terminal text.

    Each regime's own report.md (with its pictures) stays in its output directory; this one links to them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = [collect(d, [SCRATCH, *arms]) for d in demos]
    summary = summary_table(demos, results)
    total, extra, peak, sections = 0.0, 0.0, 0.0, []
    for demo, res in zip(demos, results):
        steps, t, x, p = steps_table(step_history(demo.out))
        total, extra, peak = total + t, extra + x, max(peak, p)
        tables, _ = regime_sections(demo, arms, res)
        sections += [f"## Regime `{demo.profile}`", "", describe_data(demo) + f" Full report with pictures: "
                     f"[{os.path.relpath(demo.out / 'report.md', path.parent)}]"
                     f"({os.path.relpath(demo.out / 'report.md', path.parent)}).", "", *tables,
                     f"Time per step (`{demo.profile}`):", "", *steps, ""]
    time_check = (f"- [{'x' if total <= TIME_TARGET_S else ' '}] all {len(demos)} regimes {total / 60:.1f} min "
                  f"(target <= {TIME_TARGET_S // 60} min)" + (f"; the ablation's extra {extra / 60:.1f} min are not "
                                                              "counted" if extra else ""))
    checks = [time_check, f"- [{'x' if peak < MEMORY_TARGET_MB else ' '}] peak memory {peak:.0f} MB "
                          f"(target < {MEMORY_TARGET_MB} MB)"]
    for demo, res in zip(demos, results):
        checks += [f"- `{demo.profile}`: " + line[2:] for line in target_checks(demo, res, 0.0, 0.0)[2:]]
    md = [f"# VIMPAC demo: {len(demos)} regimes ({', '.join(f'`{d.profile}`' for d in demos)})", "",
          *protocol_text(demos[0])[2:], "", *sections,
          f"## All regimes (test top-1 %; fine-tuned: mean over seeds; main = `{MAIN_VARIANT}`)", "", *summary, "",
          "## Targets", "", *checks, "",
          "## Reproduce", "", f"`python -m vimpac.demo --profile {' '.join(str(d.profile) for d in demos)}`"
          + (" --variants " + " ".join(a for a in arms if a != MAIN_VARIANT) if list(arms) != [MAIN_VARIANT] else "")
          + " (`make demo`: default and varied)", ""]
    path.write_text("\n".join(md), encoding="utf-8")
    return "\n".join(["", *summary, "", *checks])


def load_layout(out: Path, data: Path) -> DemoLayout:
    cfg_dict = read_json(out / "demo_config.json")
    if cfg_dict is None:
        raise SystemExit(f"error: {out / 'demo_config.json'} is missing: not a demo output directory")
    profile = cfg_dict.pop("profile", None)
    try:
        cfg = DemoConfig.from_dict(cfg_dict) if cfg_dict else PROFILES["default"]
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {out / 'demo_config.json'}: {e}") from None
    return DemoLayout(cfg=cfg, data=data, out=out, profile=profile)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vimpac.demo.report",
                                 description="Rebuild the demo report from a finished demo directory.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("snap/demo"))
    ap.add_argument("--data", type=Path, default=Path("data/demo"))
    a = ap.parse_args(argv)
    demo = load_layout(a.out, a.data)
    arms = variant_names([v for v in VARIANTS if demo.pretrain_dir(v).joinpath("summary.json").is_file()])
    print(write_report(demo, arms))


if __name__ == "__main__":
    main()
