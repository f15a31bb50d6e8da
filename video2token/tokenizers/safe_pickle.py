"""Restricted unpickling of the released DALL-E dVAE pickles (`encoder.pkl`, `decoder.pkl`).

The released files are whole `torch.save`d `nn.Module` objects, so a plain `torch.load`
would import and call whatever the pickle names. This follows the "restricting globals"
recipe of the Python `pickle` docs: `find_class` is the only way a pickle can reach a
callable, so an explicit allow-list there means a malicious file cannot run code; anything
else is refused with an `UnsafePickleError` naming the file and the global.
"""
from __future__ import annotations

import io
import pickle
import types
from pathlib import Path
from typing import Any, Iterable

import torch

from .base import TokenizerError

# Every global a dall_e Encoder/Decoder pickle needs (protocol 2, old and new torch). Only
# classes (instantiated empty, then filled by __setstate__) and torch's tensor rebuilders:
# none of them can run user-chosen code.
DALLE_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("dall_e.encoder", "Encoder"),
    ("dall_e.encoder", "EncoderBlock"),
    ("dall_e.decoder", "Decoder"),
    ("dall_e.decoder", "DecoderBlock"),
    ("dall_e.utils", "Conv2d"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.pooling", "MaxPool2d"),
    ("torch.nn.modules.upsampling", "Upsample"),
    ("torch.nn.modules.linear", "Identity"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
})


class UnsafePickleError(TokenizerError):
    """A pickle referenced a global outside the allow-list (or is not a plain torch pickle)."""


def _restricted_pickle_module(allowed: frozenset[tuple[str, str]], source: str) -> types.ModuleType:
    """A stand-in for the `pickle` module whose Unpickler only resolves `allowed` globals.

    torch.load subclasses `pickle_module.Unpickler` (to map storage names) and calls
    `pickle_module.load` for the legacy format's headers; both go through this gate.
    """

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "__builtin__":  # protocol-2 pickles spell builtins the Python 2 way
                module = "builtins"
            if (module, name) not in allowed:
                raise UnsafePickleError(
                    f"{source}: refused to unpickle global '{module}.{name}' (not in the DALL-E "
                    f"allow-list of video2token.tokenizers.safe_pickle); the file is not a plain "
                    f"DALL-E dVAE pickle and may try to run code")
            return super().find_class(module, name)

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("video2token_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.loads = lambda data, **kwargs: load(io.BytesIO(data), **kwargs)  # type: ignore[attr-defined]
    return module


def _refuse_torchscript(path: Path) -> None:
    # torch.load hands TorchScript archives to torch.jit.load, which never consults the
    # pickle module, so they must be turned away first, decided the way torch.load decides:
    # its zip magic, then "constants.pkl" among the records of its own archive reader.
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
    try:
        records = torch._C.PyTorchFileReader(str(path)).get_all_records()
    except Exception as e:
        raise TokenizerError(f"{path}: not a readable torch zip archive: {e}") from e
    if "constants.pkl" in records or any(r.startswith("code/") for r in records):
        raise UnsafePickleError(f"{path}: is a TorchScript archive, not a DALL-E dVAE pickle; refusing to load it")


def safe_torch_load(path: str | Path, *, allowed: Iterable[tuple[str, str]] = DALLE_ALLOWED_GLOBALS,
                    map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` a pickle (zip or legacy format) resolving only `allowed` globals.

    Raises TokenizerError if the file is missing or unreadable, UnsafePickleError if it
    references anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"DALL-E weights file not found: {path}")
    _refuse_torchscript(path)
    pickle_module = _restricted_pickle_module(frozenset(allowed), str(path))
    try:
        return torch.load(path, map_location=map_location, pickle_module=pickle_module, weights_only=False)
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated zip, not a pickle at all, ...
        raise TokenizerError(f"{path}: could not be read as a torch pickle: {type(e).__name__}: {e}") from e
