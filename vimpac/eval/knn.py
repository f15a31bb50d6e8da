"""Weighted k-nearest-neighbour classification of frozen features (the original VIMPAC's `--knn-monitor`).

Wu et al. (2018), "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
(InstDisc), as in MoCo's kNN monitor: cosine similarity to a labelled memory bank, the k most
similar entries vote for their class with weight exp(similarity / temperature); the original
used k = 200 and temperature 0.07. Here: the pure scoring (`knn_scores`, `knn_accuracy`), the
[CLS] features of a backbone on one centre clip per video (`extract_cls_features`) and the
labelled datasets they read (`centre_clips`). Pre-training's monitor (`train/pretrain_task.py`)
and `python -m vimpac.knn` (`frozen_knn`: a frozen backbone on a bank and a query split) use the same functions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from video2token.precision import autocast

from vimpac.data.clips import ClipSpec, collate
from vimpac.data.finetune_clips import EvalClips, check_labels
from vimpac.data.stores import DataError, open_stores
from vimpac.eval.scores import topk_accuracy

DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.07


def knn_scores(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *, num_classes: int,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """bank (N, D), bank_labels (N,) long, queries (Q, D) -> class scores (Q, C).

    Features are L2-normalised here; each query's k most cosine-similar bank entries (k capped at
    N) add exp(similarity / temperature) to their class. `chunk` queries at a time bound the
    (chunk, N) similarity matrix.
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank (N, D) and queries (Q, D) must share D, got {tuple(bank.shape)} and "
                         f"{tuple(queries.shape)}")
    if len(bank) == 0 or bank_labels.shape != (len(bank),):
        raise ValueError(f"need a non-empty bank and one label per bank row, got {len(bank)} rows and labels of "
                         f"shape {tuple(bank_labels.shape)}")
    if k < 1 or not temperature > 0:
        raise ValueError(f"k must be >= 1 and the temperature > 0, got k={k}, temperature={temperature}")
    if int(bank_labels.min()) < 0 or int(bank_labels.max()) >= num_classes:
        raise ValueError(f"bank labels must lie in [0, {num_classes}), got {int(bank_labels.min())}.."
                         f"{int(bank_labels.max())}")
    k = min(k, len(bank))
    bank_t = F.normalize(bank.float(), dim=1).t()  # (D, N)
    labels = bank_labels.long()
    out = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sim, idx = (q @ bank_t).topk(k, dim=1)                   # (q, k) most similar bank entries
        votes = torch.zeros(len(q), num_classes, dtype=torch.float32, device=q.device)
        out.append(votes.scatter_add_(1, labels[idx], (sim / temperature).exp()))  # (q, C)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor, *,
                 num_classes: int | None = None, k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent) of the weighted kNN vote (`knn_scores`) on labelled queries.

    num_classes: default 1 + the largest label of bank and queries.
    """
    if num_classes is None:
        num_classes = 1 + int(max(bank_labels.max(), query_labels.max()))
    scores = knn_scores(bank, bank_labels, queries, num_classes=num_classes, k=k, temperature=temperature)
    s, y = scores.cpu().numpy(), query_labels.cpu().numpy().astype(np.int64)
    return topk_accuracy(s, y, 1), topk_accuracy(s, y, 5)


@torch.no_grad()
def extract_cls_features(backbone: nn.Module, dataset, *, device: torch.device | str, precision: str = "fp32",
                         batch_size: int = 32, indices: Sequence[int] | None = None,
                         num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] features of `backbone` (a `VimpacBackbone`) on the videos `indices` of a labelled dataset.

    dataset: items {"codes": (V, T, h, w) or (T, h, w), "label": ()} (e.g. `centre_clips`), with "frames"
    (V, T, S, S, 3) and "frame_valid" (V, T) for a pixel model (`dataset.pixels`); a video's feature is the
    mean over its V clips. Eval mode (restored after), no grad, autocast of the
    resolved `precision`. -> features (n, D) float32 and labels (n,) long, on the CPU.
    """
    from torch.utils.data import DataLoader, Subset

    subset = Subset(dataset, list(range(len(dataset)) if indices is None else indices))
    # its own generator: an iterator draws a worker seed, which must not shift the global RNG a trainer's dropout uses
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers,
                        generator=torch.Generator())
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            codes = batch["codes"]
            views = 1 if codes.ndim == 4 else codes.shape[1]
            if getattr(dataset, "pixels", False):  # frames in; black [PAD] frames are marked by frame_valid
                frames, valid = batch["frames"], batch["frame_valid"]
                inputs = frames.reshape(-1, *frames.shape[-4:]).to(device)
                valid = valid.reshape(-1, valid.shape[-1])
                kw = {"frame_valid": None if bool(valid.all()) else valid.to(device)}
            else:
                inputs, kw = codes.reshape(-1, *codes.shape[-3:]).to(device), {}
            with autocast(precision, device):
                cls = backbone(inputs, **kw).cls  # (B*V, D)
            feats.append(cls.float().view(len(codes), views, -1).mean(1).cpu())
            labels.append(batch["label"].long())
    finally:
        backbone.train(was_training)
    if not feats:
        dim = getattr(getattr(backbone, "cfg", None), "hid_dim", 0)
        return torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def centre_clips(paths: Sequence[str], clip: ClipSpec, *, what: str, verify: bool = True,
                 pixels: bool = False) -> EvalClips:
    """The labelled stores at `paths` (views of one split) -> one centre clip per video and view.

    Every video must carry a label in [0, number of classes) (the store's label map, else 1 + the
    largest label); a DataError names `what` (the flag) otherwise.
    """
    stores = open_stores(paths, what, verify=verify)
    labels = stores[0].labels if stores else np.zeros(0)
    if len(labels) == 0:
        raise DataError(f"{what}: {paths[0] if paths else 'no store'} holds no video")
    names = stores[0].label_names
    check_labels(stores, len(names) if names else max(1, int(labels.max()) + 1), what)
    return EvalClips(stores, clip, num_clips=1, what=what, pixels=pixels)


def frozen_knn(backbone: nn.Module, bank_paths: Sequence[str], query_paths: Sequence[str], *, clip: ClipSpec,
               device: torch.device | str = "cpu", precision: str = "fp32", batch_size: int = 32, k: int = DEFAULT_K,
               temperature: float = DEFAULT_TEMPERATURE, verify: bool = True,
               what: tuple[str, str] = ("--train-tokens", "--valid-tokens")) -> dict[str, float | int]:
    """Weighted kNN of a frozen backbone's [CLS]: the labelled stores `bank_paths` are the memory bank, `query_paths`
    the queries (one centre clip per video each; a pixel model reads the stores' frames) -> top1, top5 (percent),
    bank_videos, query_videos, num_classes. `what`: the flags the two sets came from, for error messages."""
    cfg = backbone.cfg
    pixels = cfg.input == "pixels"
    sets = []
    for paths, flag in zip((bank_paths, query_paths), what):
        ds = centre_clips(paths, clip, what=flag, verify=verify, pixels=pixels)
        if tuple(ds.grid) != (cfg.grid_h, cfg.grid_w) or (not pixels and ds.vocab_size != cfg.vocab_size):
            raise DataError(f"{flag}: {paths[0]} holds {ds.vocab_size} codes on {ds.grid[0]}x{ds.grid[1]} maps, the "
                            f"model takes {'' if pixels else f'{cfg.vocab_size} codes on '}{cfg.grid_h}x{cfg.grid_w} "
                            f"{'patches' if pixels else 'maps'}; use stores of its tokenizer and --frame-size")
        sets.append(ds)
    names = [ds.stores[0].label_names for ds in sets]
    if names[0] and names[1] and names[0] != names[1]:
        raise DataError(f"{what[1]}: {query_paths[0]}'s label map {names[1]} differs from {what[0]} "
                        f"{bank_paths[0]}'s {names[0]}")
    feats = []
    for ds in sets:
        try:
            feats.append(extract_cls_features(backbone, ds, device=device, precision=precision, batch_size=batch_size))
        except ValueError as e:  # frames of another size than the model's patches x grid
            raise DataError(f"{what[len(feats)]}: {e}") from None
    (bank, bank_labels), (queries, labels) = feats
    num_classes = len(names[0]) if names[0] else None
    top1, top5 = knn_accuracy(bank, bank_labels, queries, labels, num_classes=num_classes, k=k,
                              temperature=temperature)
    return {"top1": top1, "top5": top5, "bank_videos": len(bank), "query_videos": len(queries),
            "num_classes": num_classes or 1 + int(max(bank_labels.max(), labels.max()))}
