"""The demo's evaluation protocol: settings are chosen on val, numbers are reported on test (issue 22).

Per arm (scratch or a pre-training variant) and task:
- fine-tuning: every learning rate of the grid with seed 1; the rate whose final model scores best on
  val is kept (ties: the first in grid order), then the other seeds run at that rate; each seed is
  reported by its final model's top-1 on the test split (the seed-1 run of the grid is reused);
- linear probe (frozen backbone, `finetune --linear-probe`): its own grid, one seed, chosen on val,
  reported on test;
- frozen kNN (`vimpac.knn`): the labelled train videos are the bank, the test videos the queries.
Nothing here runs anything: the driver launches the runs, these functions read what they wrote.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from vimpac.demo.layout import DemoLayout, read_json


def run_scores(run_dir: Path) -> tuple[float | None, float | None]:
    """(val top-1, test top-1) of a finished fine-tuning run's final model (None: not there)."""
    r = read_json(run_dir / "results.json") or {}
    val, test = (r.get("final") or {}).get("top1"), (r.get("test") or {}).get("top1")
    return (None if val is None else float(val)), (None if test is None else float(test))


def choose(val_top1: Mapping[float, float | None]) -> float | None:
    """The learning rate whose run scored best on val; ties go to the first in the grid's order.

    None while any rate of the grid has no score yet (the choice must see the whole grid)."""
    if not val_top1 or any(v is None for v in val_top1.values()):
        return None
    return max(val_top1, key=lambda lr: (val_top1[lr], -list(val_top1).index(lr)))


@dataclass
class ArmResult:
    """What the report shows for one arm on one task (None: not run or not finished)."""

    task: str
    arm: str
    grid_val: dict[float, float | None]      # fine-tuning: val top-1 of seed 1 per learning rate
    lr: float | None                         # the chosen rate
    test: dict[int, float | None]            # test top-1 per seed at the chosen rate
    probe_val: dict[float, float | None] = field(default_factory=dict)
    probe_lr: float | None = None
    probe_test: float | None = None
    knn: float | None = None                 # frozen kNN top-1 on test

    @property
    def mean(self) -> float | None:
        return mean(self.test.values())

    @property
    def spread(self) -> tuple[float, float] | None:
        """(min, max) of the seeds' test top-1."""
        vals = [v for v in self.test.values() if v is not None]
        return (min(vals), max(vals)) if vals else None


def mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def grid_scores(demo: DemoLayout, names: Mapping[float, str]) -> dict[float, tuple[float | None, float | None]]:
    """learning rate -> (val, test) top-1 of the run named for it."""
    return {lr: run_scores(demo.finetune_dir(name)) for lr, name in names.items()}


def collect_arm(demo: DemoLayout, task: str, arm: str) -> ArmResult:
    c = demo.cfg
    grid = grid_scores(demo, {lr: demo.grid_run(task, arm, lr, c.seeds[0]) for lr in c.finetune_lrs})
    lr = choose({k: v[0] for k, v in grid.items()})
    test = {s: (None if lr is None else run_scores(demo.finetune_dir(demo.grid_run(task, arm, lr, s)))[1])
            for s in c.seeds}
    probe = grid_scores(demo, {lr: demo.probe_run(task, arm, lr) for lr in c.probe_lrs})
    probe_lr = choose({k: v[0] for k, v in probe.items()})
    knn = (read_json(demo.knn_dir(task, arm) / "knn.json") or {}).get("top1")
    return ArmResult(task=task, arm=arm, grid_val={k: v[0] for k, v in grid.items()}, lr=lr, test=test,
                     probe_val={k: v[0] for k, v in probe.items()}, probe_lr=probe_lr,
                     probe_test=None if probe_lr is None else probe[probe_lr][1],
                     knn=None if knn is None else float(knn))


def collect(demo: DemoLayout, arms: Sequence[str]) -> dict[tuple[str, str], ArmResult]:
    """(task, arm) -> its results, for every task and arm (scratch included by the caller)."""
    return {(t, a): collect_arm(demo, t, a) for t in demo.cfg.tasks for a in arms}
