"""The demo's settings, ablation variants and output layout, shared by the driver and the report."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("motion", "shape")
INITS = ("pretrained", "scratch")


@dataclass(frozen=True)
class PretrainVariant:
    """One pre-training run of the ablation (the main run is `block_mp_cl`)."""

    name: str
    title: str
    args: tuple[str, ...] = ()


VARIANTS = {
    "block_mp_cl": PretrainVariant("block_mp_cl", "block masking, MP + CL (VIMPAC)"),
    "iid_mp_cl": PretrainVariant("iid_mp_cl", "i.i.d. masking, MP + CL", ("--masking", "iid")),
    "block_mp": PretrainVariant("block_mp", "block masking, MP only", ("--nce-weight", "0")),
}
MAIN_VARIANT = "block_mp_cl"


@dataclass(frozen=True)
class DemoConfig:
    """Every size and hyper-parameter of the demo; `PROFILES` holds the named ones."""

    # data (video2token.synthetic)
    num_pool: int = 400
    num_train: int = 64
    num_val: int = 160
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
    # model + pre-training
    clip_len: int = 5
    layers: int = 2
    hid_dim: int = 128
    heads: int = 2
    mask_blocks: int = 3
    pretrain_epochs: int = 24
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    # fine-tuning (identical for pre-trained and scratch)
    finetune_epochs: int = 20
    finetune_batch: int = 16
    finetune_lr: float = 1e-3
    ceiling_epochs: int = 8
    ceiling_lr: float = 5e-4         # 400 labels: 1e-3 sometimes collapsed to a constant prediction
    test_clips: int = 2
    seeds: tuple[int, ...] = (1, 2, 3)

    def data_args(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("num_pool", "num_train", "num_val", "size", "render_fps", "seconds",
                                              "data_seed", "appearance", "crf")}


PROFILES = {
    "default": DemoConfig(),
    # 4x the unlabelled videos (so 4x the pre-training steps) and a longer tokenizer run; not timed yet.
    "long": DemoConfig(num_pool=1600, tokenizer_steps=1000),
    # Every video its own background and colours, compressed like real footage (crf 28: codes flicker), 512
    # codes: the looks of README's "What makes pre-training help" row 1, with the default profile's objects.
    "varied": DemoConfig(appearance="varied", crf=28, vocab_size=512),
    "varied128": DemoConfig(appearance="varied", crf=28, vocab_size=128),
    # Seconds-scale run of every step, for tests.
    "smoke": DemoConfig(num_pool=24, num_train=8, num_val=8, size=32, seconds=1.5, vocab_size=32,
                        tokenizer_steps=6, layers=1, hid_dim=32, heads=2, mask_blocks=2, pretrain_epochs=1,
                        pretrain_batch=8, finetune_epochs=1, finetune_batch=4, ceiling_epochs=1, test_clips=1,
                        seeds=(1,)),
}


@dataclass
class StepRecord:
    """What the report shows per step: wall time, peak memory of its processes, throughput."""

    name: str
    seconds: float = 0.0
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
        c = self.cfg
        return self.out / "tokens" / f"vqvae_demo_{split}_fps{c.fps:g}_hflip0_{c.size}center{c.size}"

    def pretrain_dir(self, variant: str) -> Path:
        return self.out / "pretrain" if variant == MAIN_VARIANT else self.out / "ablation" / variant

    def finetune_dir(self, name: str) -> Path:
        return self.out / "finetune" / name


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
