"""The model's architecture from command-line flags, shared by pre-training and fine-tuning without `--load`.

The original VIMPAC's flags (`--model efflayoutT,H|W`, `--pos-emb`, `--layers`, `--hid-dim`,
`--pre-activation`, `--halve-att`, `--halve-mlp`) on top of a named size (`--config`, paper
table 2). Pre-training always builds from them; fine-tuning builds from them when no checkpoint
is loaded (the paper's "no pre-training" rows) and otherwise checks the ones given against the
checkpoint. The vocabulary and code-map size always come from the token stores.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

from vimpac.model.config import CONFIG_NAMES, POS_EMB_KINDS, ModelConfig, apply_halving, named_config, parse_layout
from vimpac.train.errors import TrainError

LAYOUT_PREFIX = "efflayout"
#: the original's --pos-emb choices that its own PositionalEmbedding never implemented (NotImplementedError)
UNIMPLEMENTED_POS_EMB = ("pre_defined", "frozen")
#: what an architecture flag left out means (vimpac.pretrain's defaults)
DEFAULTS: dict[str, Any] = {"config": "small", "model": "efflayoutT,H|W", "pos_emb": "hw_separation"}
DEFAULT_CLIP_LEN = 5


@dataclass(frozen=True)
class ArchitectureFlags:
    """The architecture flags as given; None (or False) is "not given": the default, or the loaded checkpoint's."""

    config: str | None = None
    model: str | None = None               # "efflayout" + layout, e.g. "efflayoutT,H|W"
    pos_emb: str | None = None
    layers: int | None = None
    hid_dim: int | None = None
    heads: int | None = None
    pre_activation: bool = False
    halve_att: bool = False
    halve_mlp: bool = False
    nce_proj_layers: int | None = None     # pre-training's contrastive head
    nce_proj_hid_dim: int | None = None
    nce_bn_after_proj: bool = False

    @classmethod
    def from_flags(cls, a: argparse.Namespace, *, contrastive_head: bool = True) -> "ArchitectureFlags":
        """The parsed flags; contrastive_head=False leaves the --nce-* ones out (a classifier has no such head)."""
        names = [f.name for f in fields(cls) if contrastive_head or not f.name.startswith("nce_")]
        return cls(**{name: getattr(a, name) for name in names})

    def model_config(self, *, vocab_size: int, grid: tuple[int, int], clip_len: int, dropout: float = 0.1,
                     grad_checkpointing: bool = False) -> ModelConfig:
        """The model these flags describe, for stores of `vocab_size` codes on `grid` maps."""
        pos_emb = self.pos_emb or DEFAULTS["pos_emb"]
        if pos_emb in UNIMPLEMENTED_POS_EMB:
            raise TrainError(f"--pos-emb {pos_emb}: the original VIMPAC accepted it but never implemented it (its "
                             f"PositionalEmbedding raised NotImplementedError); use one of {', '.join(POS_EMB_KINDS)}")
        overrides: dict[str, Any] = dict(vocab_size=vocab_size, clip_len=clip_len, grid_h=grid[0], grid_w=grid[1],
                                         layout=parse_layout_flag(self.model or DEFAULTS["model"]), pos_emb=pos_emb,
                                         dropout=dropout, grad_checkpointing=grad_checkpointing)
        if self.layers is not None:
            overrides["layers"] = self.layers
        if self.hid_dim is not None:
            heads = self.heads or max(1, self.hid_dim // 64)
            if self.hid_dim % heads:
                raise TrainError(f"--hid-dim {self.hid_dim} is not divisible by --heads {heads}")
            overrides.update(hid_dim=self.hid_dim, heads=heads, head_dim=self.hid_dim // heads,
                             mlp_dim=4 * self.hid_dim)
        elif self.heads is not None:
            raise TrainError("--heads goes with --hid-dim (the named --config fixes its own heads)")
        if self.nce_proj_layers is not None:
            overrides["nce_proj_layers"] = self.nce_proj_layers
        if self.nce_proj_hid_dim is not None:
            overrides["nce_proj_hid_dim"] = self.nce_proj_hid_dim
        if self.pre_activation:
            overrides.update(pre_ln=True, embed_norm=False)  # the original's pre-activation has no embedding LayerNorm
        if self.nce_bn_after_proj:
            overrides["nce_bn_after_proj"] = True
        try:
            return apply_halving(named_config(self.config or DEFAULTS["config"], **overrides),
                                 halve_att=self.halve_att, halve_mlp=self.halve_mlp)
        except ValueError as e:
            hint = " (set --heads with --hid-dim)" if "head" in str(e) else ""
            raise TrainError(f"{e}{hint}") from None

    def mismatches(self, cfg: ModelConfig, where: str) -> list[str]:
        """The given flags that describe another model than `cfg` (the checkpoint at `where`), one line each."""
        out = []
        try:
            layout = self.model is not None and parse_layout(parse_layout_flag(self.model)) != cfg.blocks
        except ValueError as e:
            raise TrainError(f"--model {self.model!r}: {e}") from None
        for flag, want, have, differs in (
                ("--config", self.config, cfg.name, self.config != cfg.name),
                ("--model", self.model, LAYOUT_PREFIX + cfg.layout, layout),
                ("--pos-emb", self.pos_emb, cfg.pos_emb, self.pos_emb != cfg.pos_emb),
                ("--layers", self.layers, cfg.layers, self.layers != cfg.layers),
                ("--hid-dim", self.hid_dim, cfg.hid_dim, self.hid_dim != cfg.hid_dim),
                ("--heads", self.heads, cfg.heads, self.heads != cfg.heads)):
            if want is not None and differs:
                out.append(f"{flag} {want} but {where} has {have}")
        for flag, want, have in (("--pre-activation", self.pre_activation, cfg.pre_ln),
                                 ("--halve-att", self.halve_att, 2 * cfg.attn_dim == cfg.hid_dim),
                                 ("--halve-mlp", self.halve_mlp, cfg.mlp_dim == 2 * cfg.hid_dim)):
            if want and not have:
                out.append(f"{flag} but the model of {where} is not built that way")
        return out


def parse_layout_flag(model: str) -> str:
    """--model "efflayoutT,H|W" -> "T,H|W"."""
    if not model.startswith(LAYOUT_PREFIX) or len(model) == len(LAYOUT_PREFIX):
        raise TrainError(f"--model {model!r}: expected '{LAYOUT_PREFIX}' followed by a layout, e.g. "
                         f"'{LAYOUT_PREFIX}T,H|W'")
    return model[len(LAYOUT_PREFIX):]


def add_architecture_flags(m: argparse._ArgumentGroup, *, from_load: bool) -> None:
    """--config, --model, --pos-emb, --layers, --hid-dim, --heads, --pre-activation, --halve-att, --halve-mlp.

    from_load: fine-tuning's shape: no defaults (left out: the --load checkpoint's value, or vimpac.pretrain's
    default without --load), and a given flag must match --load's model.
    """
    def default(key: str) -> str | None:
        return None if from_load else DEFAULTS[key]

    def text(what: str, key: str | None = None) -> str:
        shown = f"; default {DEFAULTS[key]}" if from_load and key else ""  # (argparse shows pre-training's own)
        return what + shown + ("; with --load: must match the checkpoint" if from_load else "")

    m.add_argument("--config", choices=CONFIG_NAMES, default=default("config"),
                   help=text("named model size (paper table 2)", "config"))
    m.add_argument("--model", default=default("model"),
                   help=text(f"'{LAYOUT_PREFIX}' + layout string, e.g. {DEFAULTS['model']}", "model"))
    m.add_argument("--pos-emb", choices=POS_EMB_KINDS + UNIMPLEMENTED_POS_EMB, default=default("pos_emb"),
                   help=text(f"positional embedding: T + H + W tables, T + (h*w), or one (T*h*w) table ("
                             f"{' and '.join(UNIMPLEMENTED_POS_EMB)}: an error, never implemented in the original)",
                             "pos_emb"))
    m.add_argument("--layers", type=int, default=None, help=text("override the config's layers"))
    m.add_argument("--hid-dim", type=int, default=None, help=text("override the config's width (heads of 64, MLP 4x)"))
    m.add_argument("--heads", type=int, default=None, help=text("attention heads when --hid-dim is overridden"))
    m.add_argument("--pre-activation", action="store_true",
                   help=text("pre-LN layers + final LayerNorm (original's option)"))
    m.add_argument("--halve-att", action="store_true", help=text("half the attention width (heads of half size)"))
    m.add_argument("--halve-mlp", action="store_true", help=text("half the MLP width"))
    m.add_argument("--grad-checkpointing", "--grad-checkpoint", action="store_true",
                   help="recompute activations in backward (less memory; --grad-checkpoint: the original's spelling)")
