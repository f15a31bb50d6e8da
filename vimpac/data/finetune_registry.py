"""Fine-tuning facts per dataset (VIMPAC, Tan et al. 2021, table 4 and section 4.1): classes, splits, flips, views.

Builds on `vimpac.data.registry` (names, split names, store naming) and adds what fine-tuning needs:
the number of classes, the official train/val splits (`--split-id 1..3` for UCF101 and HMDB51),
whether flipped views may be used (not for SSv2, where left/right is part of the label), the
default frame rate, and which extracted stores serve as views:

  train: 2 resizes (frame, 1.25 x frame) x 3 crops (top / center / bottom) x flip or not = 12 views
  test:  the 3 crops at the frame size, unflipped (SSv2: the center crop only)

Views whose store was not extracted are skipped; the first (center, frame size, unflipped) must exist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from video2token.naming import store_name

import vimpac.data.registry as base_registry

#: 1.25x: the larger resize of the paper's training views (e.g. 160 px for 128 px frames)
TRAIN_SCALES = (1.0, 1.25)
CROPS = ("center", "top", "bottom")  # center first: it is the view that must exist


@dataclass(frozen=True)
class ViewSpec:
    """One extracted view: shorter side resized to `shorter_side`, square `crop_size` crop at `crop_type`."""

    shorter_side: int
    crop_type: str
    crop_size: int
    hflip: bool = False


@dataclass(frozen=True)
class FinetuneSpec:
    name: str
    num_classes: int
    num_splits: int        # official train/val splits; split names get the split id when > 1
    flip: bool             # flipped training views allowed
    fps: float             # default frame rate of the fine-tuning stores (paper's final setting)
    epochs: int            # paper's fine-tuning epochs
    train_split: str = "train"
    valid_split: str = "val"

    def split_names(self, split_id: int = 1) -> tuple[str, str]:
        if not 1 <= split_id <= self.num_splits:
            raise ValueError(f"--split-id {split_id}: dataset {self.name!r} has official split(s) 1..{self.num_splits}")
        if self.num_splits == 1:
            return self.train_split, self.valid_split
        return f"{self.train_split}_split{split_id}", f"{self.valid_split}_split{split_id}"

    def train_views(self, frame_size: int) -> list[ViewSpec]:
        flips = (False, True) if self.flip else (False,)
        return [ViewSpec(shorter_side=round(frame_size * s), crop_type=c, crop_size=frame_size, hflip=f)
                for s in TRAIN_SCALES for f in flips for c in CROPS]

    def test_views(self, frame_size: int) -> list[ViewSpec]:
        crops = CROPS if self.flip else ("center",)  # SSv2: left/right and position matter; center only
        return [ViewSpec(shorter_side=frame_size, crop_type=c, crop_size=frame_size) for c in crops]


_SPECS: dict[str, FinetuneSpec] = {s.name: s for s in (
    FinetuneSpec("ucf101", num_classes=101, num_splits=3, flip=True, fps=2.0, epochs=50),
    FinetuneSpec("hmdb51", num_classes=51, num_splits=3, flip=True, fps=4.0, epochs=50),
    FinetuneSpec("ssv2", num_classes=174, num_splits=1, flip=False, fps=4.0, epochs=22),
    FinetuneSpec("diving48", num_classes=48, num_splits=1, flip=True, fps=4.0, epochs=50, valid_split="test"),
    FinetuneSpec("kinetics400", num_classes=400, num_splits=1, flip=True, fps=2.0, epochs=30),
)}


def finetune_names() -> tuple[str, ...]:
    return tuple(sorted(_SPECS)) + ("custom",)


def get_finetune_spec(name: str) -> FinetuneSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown --dataset-name {name!r} for fine-tuning; known: {', '.join(finetune_names())} "
                         f"('custom' takes --train-tokens/--valid-tokens and the label map from the store)")
    base_registry.get_dataset(name)  # the two tables must agree on names
    return _SPECS[name]


def view_path(spec: FinetuneSpec, split: str, view: ViewSpec, *, tokenizer: str, fps: float, root: str) -> str:
    return os.path.join(root, store_name(tokenizer, spec.name, split, fps, view.hflip, view.shorter_side,
                                         view.crop_type, view.crop_size))


def store_paths(name: str, role: str, *, frame_size: int, split_id: int = 1, tokenizer: str = "dalle",
                fps: float | None = None, root: str = base_registry.DEFAULT_ROOT) -> list[str]:
    """Existing store directories of the train or test views of one split (role "train" or "valid")."""
    spec = get_finetune_spec(name)
    train_split, valid_split = spec.split_names(split_id)
    split = train_split if role == "train" else valid_split
    views = spec.train_views(frame_size) if role == "train" else spec.test_views(frame_size)
    paths = [view_path(spec, split, v, tokenizer=tokenizer, fps=spec.fps if fps is None else fps, root=root)
             for v in views]
    if not os.path.isdir(paths[0]):
        raise FileNotFoundError(f"token store for --dataset-name {name} ({role} split {split!r}, frame size "
                                f"{frame_size}) not found: {paths[0]} does not exist; extract it (docs/datasets.md) "
                                f"or pass --{role}-tokens")
    return [p for p in paths if os.path.isdir(p)]
