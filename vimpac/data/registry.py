"""Dataset names -> token-store locations under data/video_tokens/ (the original VIMPAC `--dataset-name`).

A small table of `DatasetSpec`s: each dataset's split names and default frame rate; store
directories follow the extraction naming of `video2token.naming.store_name`, e.g.
`data/video_tokens/dalle_ucf101_train_split1_fps2_hflip0_128center128`. Fine-tuning extends
the specs (classes, flip policy, views); `register_dataset` adds your own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from video2token.naming import store_name

DEFAULT_ROOT = os.path.join("data", "video_tokens")


@dataclass(frozen=True)
class StoreView:
    """One extracted view of a split: where the square crop sits and whether frames are flipped."""

    crop_type: str = "center"
    hflip: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    splits: dict[str, str | None]  # role ("train", "valid") -> split name in the store name; None: no such split
    fps: float = 2.0               # frames per second the stores were extracted at (pre-training default)
    # Pre-training uses no spatial augmentation (paper, section 4.1): the center view only.
    pretrain_views: tuple[StoreView, ...] = (StoreView(),)

    def split(self, role: str) -> str | None:
        if role not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split role {role!r}; roles: {sorted(self.splits)}")
        return self.splits[role]


def _spec(name: str, train: str, valid: str | None, fps: float) -> DatasetSpec:
    return DatasetSpec(name=name, splits={"train": train, "valid": valid}, fps=fps)


# MMAction2-style split names; split 1 of the three official UCF101 / HMDB51 splits.
_REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (
    _spec("howto100m", "train", None, 2.0),
    _spec("kinetics400", "train", "val", 2.0),
    _spec("ucf101", "train_split1", "val_split1", 2.0),
    _spec("hmdb51", "train_split1", "val_split1", 2.0),
    _spec("ssv2", "train", "val", 2.0),
    _spec("diving48", "train", "test", 2.0),
)}


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> None:
    """Add a dataset to the table (e.g. your own corpus extracted with video2token.extract)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered; pass replace=True to redefine it")
    _REGISTRY[spec.name] = spec


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_dataset(name: str) -> DatasetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown --dataset-name {name!r}; known: {', '.join(dataset_names())} "
                         f"(or pass --train-tokens/--valid-tokens store paths)") from None


def store_paths(name: str, role: str, *, frame_size: int, tokenizer: str = "dalle", fps: float | None = None,
                root: str = DEFAULT_ROOT, views: tuple[StoreView, ...] | None = None) -> list[str]:
    """Store directories of one split of a registered dataset, one per view; [] when it has no such split.

    The frame is resized to `frame_size` on its shorter side and cropped square to `frame_size`
    (the extraction settings of pre-training). Views that were not extracted are skipped, but
    the first view must exist: a clear error names the directory that is missing.
    """
    spec = get_dataset(name)
    split = spec.split(role)
    if split is None:
        return []
    views = spec.pretrain_views if views is None else views
    paths = [os.path.join(root, store_name(tokenizer, spec.name, split, spec.fps if fps is None else fps, v.hflip,
                                           frame_size, v.crop_type, frame_size)) for v in views]
    if not os.path.isdir(paths[0]):
        raise FileNotFoundError(f"token store for --dataset-name {name} ({role} split {split!r}, frame size "
                                f"{frame_size}) not found: {paths[0]} does not exist; extract it with "
                                f"`python -m video2token.extract --output {paths[0]} ...` or pass --{role}-tokens")
    return [p for p in paths if os.path.isdir(p)]
