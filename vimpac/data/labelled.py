"""Labelled token stores of one fine-tuning split: located by dataset name or given by path, checked, turned into
training views and multi-clip test sets, and described (`task()`) for checkpoints, predict and export.

Two held-out sets: the valid stores (evaluated during training; they pick `best/`) and, optionally, test stores
evaluated once at the end (`--test-tokens`), so that the number reported was never used to choose anything."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from vimpac.data import registry
from vimpac.data.clips import ClipSpec
from vimpac.data.finetune_clips import EvalClips, TrainClips, check_labels
from vimpac.data.stores import DataError, check_compatible_stores, check_frame_size, open_stores, shard_flags
from vimpac.model.loading import TASK_KIND

DEFAULT_EPOCHS = 50


def class_names(label_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The store's label map when it names every class, else "0", "1", ..."""
    if label_names and len(label_names) == num_classes:
        return list(label_names)
    return [str(i) for i in range(num_classes)]


@dataclass(frozen=True)
class LabelledSource:
    """Which stores (the flags' view of them)."""

    dataset_name: str = "custom"
    split_id: int = 1
    train_tokens: tuple[str, ...] = ()
    valid_tokens: tuple[str, ...] = ()
    test_tokens: tuple[str, ...] = ()   # evaluated once, after training (--test-tokens); () : none
    data_root: str = registry.DEFAULT_ROOT
    tokenizer: str = "dalle"
    fps: float | None = None
    frame_size: int | None = None
    frame_rate: int = 1
    num_test_clips: int = 10
    need_train: bool = True   # False: evaluation only
    verify: bool = True       # SHA-256 of every shard (--no-verify-stores: False)
    #: True: open with the index checks only; the training loop checks the SHA-256s split over its ranks
    #: (`shards_to_verify`). False: each shard is checked here, before HDF5 reads it (one process: --eval-only)
    verify_later: bool = False


class LabelledData:
    """Opened, checked train and test stores; `num_classes`, `label_names`, `default_epochs`, datasets on demand."""

    def __init__(self, src: LabelledSource) -> None:
        self.src = src
        train_paths, valid_paths = self._locate()
        now = src.verify and not src.verify_later
        self.train_stores = open_stores(train_paths, "--train-tokens", verify=now) if train_paths else []
        self.valid_stores = open_stores(valid_paths, "--valid-tokens", verify=now)
        self.test_stores = open_stores(list(src.test_tokens), "--test-tokens", verify=now) if src.test_tokens else []
        check_frame_size(self.train_stores + self.valid_stores + self.test_stores, src.frame_size, "stores")
        vocab, grid = check_compatible_stores(self.valid_stores, "--valid-tokens")
        for stores, what in ((self.train_stores, "train"), (self.test_stores, "test")):
            if stores:
                o_vocab, o_grid = check_compatible_stores(stores, f"--{what}-tokens")
                if (o_vocab, o_grid) != (vocab, grid):
                    raise DataError(f"--{what}-tokens {stores[0].path}: {what} stores have {o_vocab} codes on a "
                                    f"{o_grid} map, valid stores {vocab} codes on a {grid} map")
        self.vocab_size, self.grid = vocab, grid
        first = (self.train_stores or self.valid_stores)[0]
        if src.dataset_name != "custom":
            spec = registry.get_finetune_spec(src.dataset_name)
            num_classes, self.default_epochs = spec.num_classes, spec.epochs
        else:
            names = first.label_names
            num_classes = len(names) if names else 1 + max(int(s.labels.max()) for s in
                                                           self.train_stores[:1] + self.valid_stores[:1])
            self.default_epochs = DEFAULT_EPOCHS
        if first.label_names and len(first.label_names) != num_classes:
            raise DataError(f"{first.path}: the store's label map has {len(first.label_names)} names but "
                            f"--dataset-name {src.dataset_name} has {num_classes} classes")
        self.num_classes = int(num_classes)
        self.label_names = class_names(first.label_names, self.num_classes)
        for stores, what in ((self.train_stores, "--train-tokens"), (self.valid_stores, "--valid-tokens"),
                             (self.test_stores, "--test-tokens")):
            if stores:
                check_labels(stores, self.num_classes, what)
        test, valid = (self.test_stores or [None])[0], self.valid_stores[0]
        if test is not None and test.label_names and valid.label_names and test.label_names != valid.label_names:
            raise DataError(f"--test-tokens {test.path}: its label map {test.label_names} differs from --valid-tokens "
                            f"{valid.path}'s {valid.label_names}")
        self.first_store = first

    def shards_to_verify(self) -> dict[str, str]:
        """{shard: flag} of the shards opened without their SHA-256 check that must pass it before training reads them."""
        if not (self.src.verify and self.src.verify_later):
            return {}
        return shard_flags([(self.train_stores, "--train-tokens"), (self.valid_stores, "--valid-tokens"),
                            (self.test_stores, "--test-tokens")])

    def _locate(self) -> tuple[list[str], list[str]]:
        src = self.src
        if src.dataset_name == "custom" or src.train_tokens:
            if not src.valid_tokens or (not src.train_tokens and src.need_train):
                raise DataError("give both --train-tokens STORE [VIEW ...] and --valid-tokens STORE [CROP ...] "
                                "(--eval-only: --valid-tokens only), or a registered --dataset-name with --frame-size")
            return list(src.train_tokens), list(src.valid_tokens)
        if src.frame_size is None:
            raise DataError("--dataset-name needs --frame-size (the stores' names include it)")
        try:
            kw = dict(frame_size=src.frame_size, split_id=src.split_id, tokenizer=src.tokenizer, fps=src.fps,
                      root=src.data_root, purpose="finetune")
            train = registry.store_paths(src.dataset_name, "train", **kw) if src.need_train else []
            valid = list(src.valid_tokens) or registry.store_paths(src.dataset_name, "valid", **kw)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None
        return train, valid

    def clip_spec(self, clip_len: int) -> ClipSpec:
        try:
            return ClipSpec(clip_len=clip_len, frame_rate=self.src.frame_rate)
        except ValueError as e:
            raise DataError(str(e)) from None

    def train_set(self, clip: ClipSpec, seed: int, *, pixels: bool = False) -> TrainClips | None:
        return TrainClips(self.train_stores, clip, seed=seed, pixels=pixels) if self.train_stores else None

    def test_set(self, clip: ClipSpec, num_clips: int | None = None, *, pixels: bool = False) -> EvalClips:
        """The valid stores' multi-clip x crop views (evaluated during training)."""
        return self._eval_clips(self.valid_stores, clip, num_clips, pixels)

    def held_out_set(self, clip: ClipSpec, num_clips: int | None = None, *, pixels: bool = False) -> EvalClips | None:
        """The test stores' views, the same protocol as `test_set` (None without --test-tokens)."""
        return self._eval_clips(self.test_stores, clip, num_clips, pixels) if self.test_stores else None

    def _eval_clips(self, stores, clip: ClipSpec, num_clips: int | None, pixels: bool) -> EvalClips:
        try:
            return EvalClips(stores, clip, num_clips=num_clips or self.src.num_test_clips, pixels=pixels)
        except ValueError as e:
            raise DataError(str(e)) from None

    def task(self, clip: ClipSpec) -> dict[str, Any]:
        """Everything predict/export need besides the weights and the tokenizer's weights."""
        meta = self.first_store.meta
        return {"kind": TASK_KIND, "dataset": self.src.dataset_name, "split_id": self.src.split_id,
                "num_classes": self.num_classes, "label_names": self.label_names,
                "clip_len": clip.clip_len, "frame_rate": clip.frame_rate,
                "frame_size": int(meta.get("crop_size", self.grid[0] * meta["tokenizer"].get("downsample", 8))),
                "fps": float(meta.get("fps", 2.0)), "tokenizer": meta["tokenizer"],
                "test_crops": [str(s.meta.get("crop_type", "center")) for s in self.valid_stores],
                "test_hflip": [bool(s.meta.get("hflip", False)) for s in self.valid_stores],
                "num_test_clips": self.src.num_test_clips}
