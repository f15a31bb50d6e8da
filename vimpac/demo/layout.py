"""The demo's settings, pre-training variants, evaluation protocol and output layout, shared by driver and report."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

TASKS = ("motion", "shape")  # the label sets video2token.synthetic writes
SCRATCH = "scratch"  # the arm without pre-training: MAIN_VARIANT's architecture, random weights


@dataclass(frozen=True)
class PretrainStage:
    """One `vimpac.pretrain` run of a variant: its flags (after the demo's own) and its share of the epochs."""

    args: tuple[str, ...] = ()
    epoch_share: float = 1.0


@dataclass(frozen=True)
class PretrainVariant:
    """One pre-training recipe of the ablation: stages run in order, each from the previous one's `last/` (--load)."""

    name: str
    title: str
    stages: tuple[PretrainStage, ...] = (PretrainStage(),)


def one_stage(name: str, title: str, *args: str) -> PretrainVariant:
    return PretrainVariant(name, title, (PretrainStage(tuple(args)),))


#: Every variant `--ablation` runs; `--variants NAME ...` picks some. The flags are starting points, data to tune.
VARIANTS = {v.name: v for v in (
    one_stage("block_mp_cl", "block masking, MP + CL (VIMPAC)"),
    one_stage("iid_mp_cl", "i.i.d. masking, MP + CL", "--masking", "iid"),
    one_stage("block_mp", "block masking, MP only", "--nce-weight", "0"),
    one_stage("fgbg", "+ foreground/background merging", "--fgbg-merge", "1", "--static-frac", "0.75"),
    one_stage("erase", "+ background erasing", "--bg-erase", "0.5"),
    one_stage("change", "+ MP weight on changing targets", "--mp-change-weight", "4"),
    one_stage("tube", "tube masking, MP + CL", "--masking", "tube", "--mask-blocks", "4"),
    one_stage("reverse", "+ reversed clips as negatives", "--reverse-negatives"),
    one_stage("robust", "fg/bg merging + reversed negatives + change weight", "--fgbg-merge", "1",
              "--static-frac", "0.75", "--reverse-negatives", "--mp-change-weight", "4"),
    one_stage("pixels", "pixels in (BEVT), tube masking, MP + CL", "--input", "pixels", "--masking", "tube",
              "--mask-blocks", "4"),
    PretrainVariant("pixels_image", "pixels in, image stream then joint (BEVT's two stages)", (
        PretrainStage(("--input", "pixels", "--stream", "image", "--nce-weight", "0"), 0.5),
        PretrainStage(("--input", "pixels", "--stream", "joint", "--masking", "tube", "--mask-blocks", "4"), 0.5))),
)}
#: The recipe `make demo` compares with scratch (the first pre-trained arm of every table), and the one
#: scripts/pretrain/custom.sh runs on own data: VIMPAC's. Across three regimes (README's ablation) no variant beat
#: it by more than the seeds' spread (reverse and robust tied its mean gain; fgbg lost 8 points), so it stays.
MAIN_VARIANT = "block_mp_cl"


@dataclass(frozen=True)
class DemoConfig:
    """Every size and hyper-parameter of the demo; `PROFILES` holds the named ones."""

    # data (video2token.synthetic)
    num_pool: int = 400
    num_train: int = 64
    num_val: int = 64               # chooses learning rates only
    num_test: int = 160             # reported only
    size: int = 64
    render_fps: float = 8.0
    seconds: float = 2.0
    data_seed: int = 0
    appearance: str = "shared"      # video2token.synthetic: "shared" looks (8 backgrounds, 4 colours) or "varied"
    crf: int = 12                   # H.264 quality: compression noise makes tokens flicker between frames
    # tokenizer
    vocab_size: int = 128
    tokenizer_steps: int = 400
    tokenizer_augment: str = "flip"  # "full" adds RGB permutations: colour-blind codes after a short run
    # stores
    fps: float = 4.0
    tasks: tuple[str, ...] = TASKS  # label sets evaluated (stores extracted for them)
    # model + pre-training
    clip_len: int = 5
    layers: int = 2
    hid_dim: int = 128
    heads: int = 2
    mask_blocks: int = 3
    pretrain_epochs: int = 24
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    # fine-tuning (identical for every arm): the learning rate is chosen from the grid on val with seed 1
    finetune_epochs: int = 20
    finetune_batch: int = 16
    finetune_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    finetune_evals: int = 4          # val evaluations per run (the curves); the last one is the final model's
    # linear probe (frozen backbone, `finetune --linear-probe`): its own grid, one seed. 10 epochs: the same test
    # top-1 as 20 within a few points (measured on the default regime: shape 43.8-48.8 vs 45.6-48.8) at 3/4 the cost
    probe_epochs: int = 10
    probe_lrs: tuple[float, ...] = (1e-2, 3e-2, 1e-1)
    # frozen kNN (`vimpac.knn`): bank = the labelled train videos
    knn_k: int = 200
    # all-labels ceiling (--ablation only)
    ceiling_epochs: int = 8
    ceiling_lr: float = 5e-4         # 400 labels: 1e-3 sometimes collapsed to a constant prediction
    test_clips: int = 2
    seeds: tuple[int, ...] = (1, 2, 3)

    def data_args(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("num_pool", "num_train", "num_val", "num_test", "size", "render_fps",
                                              "seconds", "data_seed", "appearance", "crf")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DemoConfig":
        """demo_config.json -> a config (lists back to tuples); keys of other versions are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown demo settings {', '.join(unknown)} (written by another version of the demo)")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PROFILES = {
    "default": DemoConfig(),
    # 4x the unlabelled videos (so 4x the pre-training steps) and a longer tokenizer run; not timed yet.
    "long": DemoConfig(num_pool=1600, tokenizer_steps=1000),
    # Every video its own background and colours, compressed like real footage (crf 28: codes flicker), 512
    # codes: the looks of README's "What makes pre-training help" row 1, with the default profile's objects.
    "varied": DemoConfig(appearance="varied", crf=28, vocab_size=512),
    "varied128": DemoConfig(appearance="varied", crf=28, vocab_size=128),
    # Seconds-scale run of every step, for tests: a 2-rate grid, one seed, one label set (each run is a process).
    "smoke": DemoConfig(num_pool=24, num_train=8, num_val=8, num_test=8, size=32, seconds=1.5, vocab_size=32,
                        tokenizer_steps=6, layers=1, hid_dim=32, heads=2, mask_blocks=2, pretrain_epochs=1,
                        pretrain_batch=8, finetune_epochs=1, finetune_batch=4, finetune_lrs=(1e-3, 3e-3),
                        finetune_evals=1, probe_epochs=1, probe_lrs=(3e-2,), ceiling_epochs=1, test_clips=1,
                        seeds=(1,), tasks=("motion",)),
}


@dataclass
class StepRecord:
    """What the report shows per step: wall time, CPU time of its processes, their peak memory, throughput."""

    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0     # user + system of the step's processes: what an idle machine needs, load or not
    peak_rss_mb: float = 0.0
    skipped: bool = False
    throughput: str = ""


@dataclass
class DemoLayout:
    """Where every step of the demo reads and writes, and its settings (no running)."""

    cfg: DemoConfig
    data: Path
    out: Path
    jobs: int = 2
    profile: str | None = None  # the PROFILES name the report shows (None: not known, e.g. an older run's report)
    steps: list[StepRecord] = field(default_factory=list)

    # -- paths
    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def tokenizer(self) -> Path:
        return self.out / "tokenizer"

    def store(self, split: str) -> Path:
        """Every store keeps the frames the tokenizer saw (--keep-frames): pixel variants read them."""
        c = self.cfg
        return self.out / "tokens" / f"vqvae_demo_{split}_fps{c.fps:g}_hflip0_{c.size}center{c.size}_frames"

    def pretrain_dir(self, variant: str, stage: int | None = None) -> Path:
        """A variant's output (its last stage's); stage k (1-based) of a multi-stage variant: its own folder."""
        base = self.out / "pretrain" if variant == MAIN_VARIANT else self.out / "ablation" / variant
        return base if stage is None or stage == len(VARIANTS[variant].stages) else base.with_name(
            f"{base.name}_stage{stage}")

    def finetune_dir(self, name: str) -> Path:
        return self.out / "finetune" / name

    def knn_dir(self, task: str, arm: str) -> Path:
        return self.out / "knn" / f"{task}_{arm}"

    # -- the protocol's runs (see vimpac.demo.protocol)
    def grid_run(self, task: str, arm: str, lr: float, seed: int) -> str:
        return f"{task}_{arm}_lr{lr:g}_s{seed}"

    def probe_run(self, task: str, arm: str, lr: float) -> str:
        return f"{task}_{arm}_probe_lr{lr:g}"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def variant_names(arms: Sequence[str]) -> list[str]:
    """The pre-trained arms in table order: the main first, then VARIANTS' order."""
    return [MAIN_VARIANT] + [v for v in VARIANTS if v in arms and v != MAIN_VARIANT]
