"""VIMPAC: video pre-training via masked token prediction and contrastive learning (Tan et al., 2021).

The public API, imported lazily so that `python -m vimpac.demo` and other torch-free entry points
stay light:

    from vimpac import load_model, VimpacForPretraining, VimpacForClassification, ModelConfig
    from vimpac import block_mask, iid_mask, resample_pos_embed, SpecialTokens, named_config
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "ModelConfig": "vimpac.model.config",
    "named_config": "vimpac.model.config",
    "CONFIG_NAMES": "vimpac.model.config",
    "SpecialTokens": "vimpac.model.special_tokens",
    "VimpacBackbone": "vimpac.model.transformer",
    "VimpacForPretraining": "vimpac.model.transformer",
    "VimpacForClassification": "vimpac.model.transformer",
    "symmetric_infonce": "vimpac.model.losses",
    "masked_token_loss": "vimpac.model.losses",
    "resample_pos_embed": "vimpac.model.pos_embed",
    "load_model": "vimpac.model.loading",
    "load_checkpoint": "vimpac.model.checkpoint",
    "save_checkpoint": "vimpac.model.checkpoint",
    "block_mask": "vimpac.data.masking",
    "iid_mask": "vimpac.data.masking",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vimpac' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
