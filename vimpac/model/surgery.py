"""Checkpoint surgery: fitting saved weights (and their AdamW moments) to a model of another shape or vocabulary.

Pure tensor-in, tensor-out functions (timm style), applied at load time:
- `fit_state_dict`: resample positional tables to the model's (T, h, w) and check every key;
- `resample_moments`: AdamW moments of resampled tables follow their tables (stage 2);
- `remap_vocab`: code-embedding rows for another vocabulary, special tokens moved after it;
- `backbone_state`: the backbone (and optionally classifier) weights of a checkpoint for a classifier;
- `check_same_architecture`: everything but the input shape and run-time options must match.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from vimpac.model.config import ModelConfig
from vimpac.model.pos_embed import POS_TABLES, PosEmbedShapeError, adapt_pos_embeds, resample_pos_embed

CODE_TABLE = "backbone.embeddings.code.weight"


class WeightsError(ValueError):
    """Saved weights that do not fit the model (the message names the source and the keys)."""


def _check_keys(adapted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size], where: str, hint: str) -> None:
    bad = [f"{k}: {tuple(adapted[k].shape)} vs {tuple(target[k])}" for k in adapted
           if k in target and tuple(adapted[k].shape) != tuple(target[k])]
    missing, unexpected = sorted(set(target) - set(adapted)), sorted(set(adapted) - set(target))
    if bad or missing or unexpected:
        raise WeightsError(f"{where} does not fit {hint}: shape mismatches {bad[:3]}, missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")


def _resample_tables(state: Mapping[str, torch.Tensor], model: nn.Module, *, different_shape: bool,
                     shape_error: Callable[[PosEmbedShapeError], str]):
    """Positional tables of `state` resampled to the model's -> (state, target shapes, resampled names)."""
    target = {k: v.shape for k, v in model.state_dict().items()}
    try:
        adapted = adapt_pos_embeds(state, target, different_shape=different_shape)
    except PosEmbedShapeError as e:
        raise WeightsError(shape_error(e)) from None
    return adapted, target, [k for k in state if k in adapted and adapted[k] is not state[k]]


def fit_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str, *, different_shape: bool = True
                   ) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Positional tables resampled to the model's shape, every key checked -> (resampled names, state to load)."""
    adapted, target, resampled = _resample_tables(state, model, different_shape=different_shape,
                                                  shape_error=lambda e: f"{where}: {e}")
    _check_keys(adapted, target, where, "this model; check --config/--layers/--hid-dim/--model/--pos-emb")
    return resampled, adapted


def resample_moments(moments: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Stage 2: AdamW moments ("<param>::exp_avg[_sq]") of positional tables follow their tables to the new shape."""
    shapes = {n: p.shape for n, p in model.named_parameters()}
    out = {}
    for key, v in moments.items():
        name = key.split("::")[0]
        want = shapes.get(name)
        if want is not None and tuple(v.shape) != tuple(want) and name.rsplit(".", 1)[-1] in POS_TABLES:
            v = resample_pos_embed(v, tuple(want)[:-1])
            if key.endswith("::exp_avg_sq"):
                v = v.clamp_min(0)  # interpolation keeps it >= 0; clamp guards rounding
        out[key] = v
    return out


INPUT_FLAGS = {"tokens": "--input tokens (VIMPAC: codes in)", "pixels": "--input pixels (BEVT: frames in, codes as targets)"}


def check_input_kind(ckpt_cfg: ModelConfig, want: str, where: str) -> None:
    """A checkpoint reads what it was trained on: a token model never takes frames, nor a pixel model codes."""
    have = getattr(ckpt_cfg, "input", "tokens")
    if have != want:
        raise WeightsError(f"{where} is a model with {INPUT_FLAGS[have]}, but this run uses {INPUT_FLAGS[want]}: the "
                           f"input embeddings differ (a code table vs a patch projection); pass --input {have} "
                           f"(pixel models need stores extracted with --keep-frames)")


def check_same_architecture(ckpt_cfg: ModelConfig, cfg: ModelConfig, where: str) -> None:
    """Everything but the input shape (stage 2 changes it) and run-time options must match."""
    check_input_kind(ckpt_cfg, cfg.input, where)
    free = {"clip_len", "grid_h", "grid_w", "dropout", "attn_dropout", "grad_checkpointing", "name"}
    a, b = ckpt_cfg.to_dict(), cfg.to_dict()
    diff = [f"{k}: {a[k]!r} (checkpoint) vs {b.get(k)!r} (flags)" for k in a if k not in free and a[k] != b.get(k)]
    if diff:
        if a["vocab_size"] != b["vocab_size"]:
            raise WeightsError(f"{where}: vocabulary mismatch: the checkpoint was trained on {a['vocab_size']} codes "
                               f"but the token stores have {b['vocab_size']} (another tokenizer?)")
        raise WeightsError(f"{where}: the flags describe another model than the checkpoint: " + "; ".join(diff))


def remap_vocab(table: torch.Tensor, old_vocab: int, new_vocab: int, *, std: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Code-embedding rows for another vocabulary: codes first (kept up to the smaller size, new ones random),
    then the special tokens moved after the new codes (their ids follow the vocabulary)."""
    specials = table[old_vocab:]  # [MASK], [PAD], [CLS], spares
    keep = min(old_vocab, new_vocab)
    extra = torch.randn(max(new_vocab - old_vocab, 0), table.shape[1], generator=generator) * std
    return torch.cat([table[:keep], extra.to(table.dtype), specials])


def backbone_state(ckpt_state: Mapping[str, torch.Tensor], ckpt_cfg: ModelConfig, model: nn.Module, *,
                   different_shape: bool, keep_head: bool, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Backbone weights of a pre-training (or fine-tuned) state dict fitted to a classifier `model` -> (state, notes).

    keep_head: also the classifier (`head.*`, a fine-tuned checkpoint); else the model's own fresh head.
    """
    cfg = model.cfg
    check_input_kind(ckpt_cfg, cfg.input, where)
    state = {k: v for k, v in ckpt_state.items() if k.startswith("backbone.") or (keep_head and k.startswith("head."))}
    notes = []
    if ckpt_cfg.vocab_size != cfg.vocab_size and CODE_TABLE in state:
        gen = torch.Generator().manual_seed(0)
        state[CODE_TABLE] = remap_vocab(state[CODE_TABLE], ckpt_cfg.vocab_size, cfg.vocab_size, std=cfg.init_std,
                                        generator=gen)
        notes.append(f"vocabulary {ckpt_cfg.vocab_size} -> {cfg.vocab_size} codes")
    adapted, target, resampled = _resample_tables(
        state, model, different_shape=different_shape,
        shape_error=lambda e: (f"{where}: pre-trained on T={ckpt_cfg.clip_len}, {ckpt_cfg.grid_h}x{ckpt_cfg.grid_w} "
                               f"codes, fine-tuning on T={cfg.clip_len}, {cfg.grid_h}x{cfg.grid_w}: {e}"))
    if resampled:
        notes.append(f"--different-shape: resampled {resampled}")
    if not keep_head:
        for k, v in model.state_dict().items():
            if k.startswith("head."):
                adapted[k] = v  # the freshly initialised classifier (--head-init)
    _check_keys(adapted, target, where, "the classifier")
    return adapted, notes
