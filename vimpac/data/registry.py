"""Dataset names -> token-store locations and facts (the original VIMPAC `--dataset-name`), one table.

Each `DatasetSpec` says where a dataset's stores are (split names, frame rate; store directories
follow `video2token.naming.store_name`, e.g.
`data/video_tokens/dalle_ucf101_train_split1_fps2_hflip0_128center128`) and, for labelled sets,
what fine-tuning needs (VIMPAC, Tan et al. 2021, table 4 and section 4.1): the number of classes,
the official train/val splits (`--split-id 1..3` for UCF101 and HMDB51), whether flipped views
may be used (not for SSv2, where left/right is part of the label) and the paper's epochs.

Views (extracted stores of one split):
  pre-training: the center crop at the frame size only (no spatial augmentation, paper 4.1);
  fine-tune train: 2 resizes (frame, 1.25 x frame) x 3 crops (top / center / bottom) x flip = 12;
  fine-tune test: the 3 crops at the frame size, unflipped (SSv2: the center crop only).
Views whose store was not extracted are skipped; the first (center, frame size, unflipped) must
exist. `register_dataset` adds your own corpus.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from video2token.naming import store_name

DEFAULT_ROOT = os.path.join("data", "video_tokens")
#: 1.25x: the larger resize of the paper's training views (e.g. 160 px for 128 px frames)
TRAIN_SCALES = (1.0, 1.25)
CROPS = ("center", "top", "bottom")  # center first: it is the view that must exist
PURPOSES = ("pretrain", "finetune")


@dataclass(frozen=True)
class ViewSpec:
    """One extracted view: shorter side resized to `shorter_side`, square `crop_size` crop at `crop_type`."""

    shorter_side: int
    crop_type: str
    crop_size: int
    hflip: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    train_split: str = "train"
    valid_split: str | None = "val"   # None: no held-out split (e.g. HowTo100M)
    fps: float = 2.0                  # frames per second the stores are extracted at by default
    num_classes: int | None = None    # None: unlabelled, pre-training only
    num_splits: int = 1               # official train/val splits; split names get the split id when > 1
    flip: bool = True                 # flipped training views allowed
    epochs: int = 50                  # paper's fine-tuning epochs

    def split_names(self, split_id: int = 1) -> tuple[str, str | None]:
        if not 1 <= split_id <= self.num_splits:
            raise ValueError(f"--split-id {split_id}: dataset {self.name!r} has official split(s) 1..{self.num_splits}")
        if self.num_splits == 1:
            return self.train_split, self.valid_split
        valid = None if self.valid_split is None else f"{self.valid_split}_split{split_id}"
        return f"{self.train_split}_split{split_id}", valid

    def split(self, role: str, split_id: int = 1) -> str | None:
        if role not in ("train", "valid"):
            raise ValueError(f"dataset {self.name!r} has no split role {role!r}; roles: ['train', 'valid']")
        train, valid = self.split_names(split_id)
        return train if role == "train" else valid

    def pretrain_views(self, frame_size: int) -> list[ViewSpec]:
        return [ViewSpec(shorter_side=frame_size, crop_type="center", crop_size=frame_size)]

    def train_views(self, frame_size: int) -> list[ViewSpec]:
        flips = (False, True) if self.flip else (False,)
        return [ViewSpec(shorter_side=round(frame_size * s), crop_type=c, crop_size=frame_size, hflip=f)
                for s in TRAIN_SCALES for f in flips for c in CROPS]

    def test_views(self, frame_size: int) -> list[ViewSpec]:
        crops = CROPS if self.flip else ("center",)  # SSv2: left/right and position matter; center only
        return [ViewSpec(shorter_side=frame_size, crop_type=c, crop_size=frame_size) for c in crops]


# MMAction2-style split names. Frame rates: the paper's final fine-tuning setting (2 FPS for
# UCF101 and K400, 4 FPS for HMDB51, SSv2 and Diving48); 2 FPS for the pre-training corpus.
_REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("howto100m", valid_split=None, fps=2.0),
    DatasetSpec("kinetics400", fps=2.0, num_classes=400, epochs=30),
    DatasetSpec("ucf101", fps=2.0, num_classes=101, num_splits=3, epochs=50),
    DatasetSpec("hmdb51", fps=4.0, num_classes=51, num_splits=3, epochs=50),
    DatasetSpec("ssv2", fps=4.0, num_classes=174, flip=False, epochs=22),
    DatasetSpec("diving48", valid_split="test", fps=4.0, num_classes=48, epochs=50),
)}


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> None:
    """Add a dataset to the table (e.g. your own corpus extracted with video2token.extract)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass replace=True to redefine it")
    _REGISTRY[spec.name] = spec


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def finetune_names() -> tuple[str, ...]:
    """Labelled datasets, plus 'custom' (stores given by path, label map from the store)."""
    return tuple(n for n in dataset_names() if _REGISTRY[n].num_classes is not None) + ("custom",)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown --dataset-name {name!r}; known: {', '.join(dataset_names())} "
                         f"(or pass --train-tokens/--valid-tokens store paths)") from None


def get_finetune_spec(name: str) -> DatasetSpec:
    spec = _REGISTRY.get(name)
    if spec is None or spec.num_classes is None:
        raise ValueError(f"unknown --dataset-name {name!r} for fine-tuning; known: {', '.join(finetune_names())} "
                         f"('custom' takes --train-tokens/--valid-tokens and the label map from the store)")
    return spec


def store_paths(name: str, role: str, *, frame_size: int, purpose: str = "pretrain", split_id: int = 1,
                tokenizer: str = "dalle", fps: float | None = None, root: str = DEFAULT_ROOT,
                flag: str | None = None) -> list[str]:
    """Existing store directories of one split of a registered dataset, one per view; [] when it has no such split.

    purpose "pretrain": the center view; "finetune": the train or test views of `split_id`.
    A missing first view is a clear error naming the directory (and `flag`, default --{role}-tokens,
    as the way to give the stores by path).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    spec = get_dataset(name) if purpose == "pretrain" else get_finetune_spec(name)
    split = spec.split(role, split_id)
    if split is None:
        return []
    if purpose == "pretrain":
        views = spec.pretrain_views(frame_size)
    else:
        views = spec.train_views(frame_size) if role == "train" else spec.test_views(frame_size)
    fps = spec.fps if fps is None else fps
    paths = [os.path.join(root, store_name(tokenizer, spec.name, split, fps, v.hflip, v.shorter_side, v.crop_type,
                                           v.crop_size)) for v in views]
    if not os.path.isdir(paths[0]):
        raise FileNotFoundError(f"token store for --dataset-name {name} ({role} split {split!r}, frame size "
                                f"{frame_size}) not found: {paths[0]} does not exist; extract it with "
                                f"`python -m video2token.extract --output {paths[0]} ...` (README: dataset "
                                f"preparation) or pass {flag or f'--{role}-tokens'}")
    return [p for p in paths if os.path.isdir(p)]
