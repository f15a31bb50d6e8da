"""Checks that stored weights can be trusted before a model is built or a tensor is used.

- `read_header(path)`: names, dtypes and shapes from a safetensors header (8-byte length +
  JSON), without reading the tensors.
- `expected_state(cfg, num_classes)`: what the model's state dict holds for a config: built
  on the meta device without initialisation, so no memory is allocated (after
  `ModelConfig.validate` has bounded the sizes).
- `check_fits(cfg, shapes)`: every tensor the model needs is there with its shape, nothing
  else is, and float tensors are stored as floats: refused before the model is built, so an
  absurd config.json is an error naming the tensor, not an allocation that takes the machine.
- `check_values(tensors)`: no NaN/Inf, no integer or bool tensor where a float belongs.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import torch
from torch.overrides import TorchFunctionMode

from vimpac.model.config import ModelConfig

HEAD_WEIGHT = "head.fc.weight"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_MAX_HEADER = 100 << 20
_INIT_FUNCS = {"normal_", "uniform_", "trunc_normal_", "ones_", "zeros_", "constant_", "fill_", "zero_",
               "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_"}


class WeightsCheckError(ValueError):
    """Stored weights that do not fit their config or hold values a model must not use."""


class _NoInit(TorchFunctionMode):
    """Skip parameter initialisation (meta tensors have no values; their decompositions are slow to load)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _INIT_FUNCS:
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def read_header(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (safetensors dtype, shape)} from the file's header; WeightsCheckError when malformed."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightsCheckError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, _MAX_HEADER):
                raise WeightsCheckError(f"{path}: not a safetensors file (header length {n} for a {size}-byte file)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise WeightsCheckError(f"{path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightsCheckError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise WeightsCheckError(f"{path}: safetensors header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        except (KeyError, TypeError, ValueError):
            raise WeightsCheckError(f"{path}: malformed header entry for tensor {name!r}") from None
    return out


def expected_state(cfg: ModelConfig, num_classes: int | None = None) -> dict[str, tuple[tuple[int, ...], bool]]:
    """{name: (shape, is float)} of VimpacForClassification (num_classes given) or VimpacForPretraining."""
    from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining

    with torch.device("meta"), _NoInit():
        model = (VimpacForClassification(cfg, num_classes=num_classes) if num_classes is not None
                 else VimpacForPretraining(cfg))
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in model.state_dict().items()}


def check_fits(cfg: ModelConfig, shapes: Mapping[str, tuple[str, tuple[int, ...]]], where: str) -> int | None:
    """Refuse weights that do not fit `cfg` (names, shapes, float dtypes); return the classifier's class count.

    `shapes`: {name: (dtype, shape)}, dtype a safetensors name ("F32") or a torch dtype's str.
    """
    num_classes = None
    if HEAD_WEIGHT in shapes:
        head = shapes[HEAD_WEIGHT][1]
        if len(head) != 2 or not 1 <= head[0] <= 1 << 20:
            raise WeightsCheckError(f"{where}: {HEAD_WEIGHT} has shape {head}, expected (classes, {cfg.hid_dim})")
        num_classes = head[0]
    expected = expected_state(cfg, num_classes)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")] if missing
                 else []) + ([f"unexpected {unexpected[:5]}" + (f" and {len(unexpected) - 5} more"
                                                                if len(unexpected) > 5 else "")] if unexpected else [])
        raise WeightsCheckError(f"{where}: the weights do not fit the recorded config "
                                f"(layers={cfg.layers}, hid_dim={cfg.hid_dim}): " + "; ".join(parts))
    for name, (shape, floating) in expected.items():
        dtype, got = shapes[name]
        if got != shape:
            raise WeightsCheckError(f"{where}: tensor {name} has shape {got} but the recorded config needs {shape}")
        if floating and not _is_float(dtype):
            raise WeightsCheckError(f"{where}: tensor {name} is stored as {dtype}; a float tensor belongs there")
    return num_classes


def _is_float(dtype: str) -> bool:
    return dtype in _FLOAT_DTYPES or dtype.startswith("torch.float") or dtype == "torch.bfloat16"


def state_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: (str(v.dtype), tuple(v.shape)) for k, v in state.items()}


def check_values(tensors: Mapping[str, torch.Tensor], where: str, *, floats_only: bool = False) -> None:
    """Refuse NaN/Inf values (naming the tensor); floats_only: every tensor must be a float (optimizer moments)."""
    for name, v in tensors.items():
        if not v.is_floating_point():
            if floats_only:
                raise WeightsCheckError(f"{where}: tensor {name} is stored as {v.dtype}; a float tensor belongs there")
            continue
        if not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise WeightsCheckError(f"{where}: tensor {name} holds {bad} non-finite value(s) (NaN/Inf); refusing "
                                    f"to load it")
