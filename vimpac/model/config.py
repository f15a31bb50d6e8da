"""Model configuration for the VIMPAC token transformer (Tan et al., 2021, table 2 sizes).

`ModelConfig` is a plain dataclass stored (as a dict) inside every checkpoint, so a model is
rebuilt from `ModelConfig.from_dict(ckpt["model_config"])` without any pickled argument object.
Named configs: `small` (6x512, the paper's analysis model), `base` (12x768) and
`large_half` (24x1024 with halved attention and MLP, the paper's final model).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vimpac.model.special_tokens import SpecialTokens

#: positional-embedding kinds: one full table / T + (h*w) tables / T + H + W tables
POS_EMB_KINDS = ("default", "temporal_separation", "hw_separation")
#: what the model reads: tokenizer codes (VIMPAC) or pixels with codes as targets only (BEVT)
INPUT_KINDS = ("tokens", "pixels")
AXES = "THW"
#: sane upper bounds, checked before anything is built from a config (a config.json with hid_dim 1e9 or
#: layers 1e6 is refused, not allocated); far above the paper's models (Large-half: 24 x 1024)
LIMITS = {"vocab_size": 1 << 20, "clip_len": 4096, "grid_h": 1024, "grid_w": 1024, "layers": 256,
          "hid_dim": 32768, "heads": 1024, "head_dim": 4096, "mlp_dim": 131072, "nce_proj_layers": 16,
          "nce_proj_hid_dim": 65536, "nce_proj_out_dim": 65536}
MAX_PARAMETERS = 50_000_000_000  # 200 GB of fp32 weights


def parse_layout(layout: str) -> tuple[tuple[str, ...], ...]:
    """'T,H|W' -> (('T',), ('H', 'W')): blocks separated by ',', parallel parts by '|'.

    A part is a set of axes attended jointly: 'T', 'H', 'W', 'HW' (joint spatial) or
    'THW' (full joint attention over the clip).
    """
    if not isinstance(layout, str) or not layout.strip():
        raise ValueError(f"layout must be a non-empty string like 'T,H|W', got {layout!r}")
    blocks = []
    for block in layout.replace(" ", "").split(","):
        parts = tuple(block.split("|"))
        for part in parts:
            if not part or any(a not in AXES for a in part) or len(set(part)) != len(part):
                raise ValueError(f"layout {layout!r}: bad part {part!r}; a part is one or more distinct "
                                 f"axes of {AXES!r} (e.g. 'T', 'H', 'HW', 'THW')")
        blocks.append(parts)
    return tuple(blocks)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the backbone and heads. Sizes are in tokens, not pixels."""

    vocab_size: int = 8192          # tokenizer codes; special tokens are appended after them
    clip_len: int = 5               # T: frames per clip
    grid_h: int = 16                # h: code-map height (frame height / tokenizer stride)
    grid_w: int = 16                # w: code-map width
    layers: int = 6
    hid_dim: int = 512
    heads: int = 8
    head_dim: int = 64              # heads * head_dim may differ from hid_dim (Large-half: 16 x 32)
    mlp_dim: int = 2048
    layout: str = "T,H|W"
    pos_emb: str = "hw_separation"
    pre_ln: bool = False            # False: post-LN (BERT); True: pre-activation + final LayerNorm
    embed_norm: bool = True         # LayerNorm on code + position embeddings (the original's --pre-activation has none)
    dropout: float = 0.1            # embeddings and residual branches
    attn_dropout: float = 0.0       # inside SDPA; >0 takes a much slower SDPA path on CPU
    layer_norm_eps: float = 1e-12   # BERT's value; LayerNorm runs in fp32 under autocast
    grad_checkpointing: bool = False
    nce_proj_layers: int = 2
    nce_proj_hid_dim: int = 2048
    nce_proj_out_dim: int = 256
    nce_proj_bias: bool = True      # bias on the CL head's last Linear (the original's has none)
    nce_bn_after_proj: bool = False  # BatchNorm after the CL head's last Linear (SimCLR; --nce-bn-after-proj)
    init_std: float = 0.02
    input: str = "tokens"           # "tokens" (codes in) or "pixels" (frames in, BEVT; codes are the MP targets)
    patch_size: int = 8             # pixels: a patch is patch_size^2 px, the tokenizer's stride (grid = frame / patch)
    name: str = field(default="custom")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key in ("vocab_size", "clip_len", "grid_h", "grid_w", "layers", "hid_dim", "heads", "head_dim",
                    "mlp_dim", "nce_proj_layers", "nce_proj_hid_dim", "nce_proj_out_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{key} must be a positive int, got {value!r}")
            if value > LIMITS[key]:
                raise ValueError(f"ModelConfig.{key} = {value} is beyond the sane limit {LIMITS[key]}")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"ModelConfig.input must be one of {INPUT_KINDS}, got {self.input!r}")
        if isinstance(self.patch_size, bool) or not isinstance(self.patch_size, int) or not 1 <= self.patch_size <= 64:
            raise ValueError(f"ModelConfig.patch_size must be an int in [1, 64], got {self.patch_size!r}")
        if self.pos_emb not in POS_EMB_KINDS:
            raise ValueError(f"ModelConfig.pos_emb must be one of {POS_EMB_KINDS}, got {self.pos_emb!r}")
        for key in ("dropout", "attn_dropout"):
            value = getattr(self, key)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"ModelConfig.{key} must be in [0, 1), got {value!r}")
        for key, hi in (("layer_norm_eps", 1.0), ("init_std", 1.0)):  # a NaN here makes every output NaN
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= hi:
                raise ValueError(f"ModelConfig.{key} must be a number in [0, {hi:g}], got {value!r}")
        for parts in parse_layout(self.layout):
            if len(parts) > self.heads:
                raise ValueError(f"ModelConfig.layout {self.layout!r} has a block with {len(parts)} parallel "
                                 f"parts but only {self.heads} heads to split between them")
        if self.approx_parameters > MAX_PARAMETERS:
            raise ValueError(f"ModelConfig describes about {self.approx_parameters / 1e9:.0f}B parameters, beyond "
                             f"the sane limit of {MAX_PARAMETERS / 1e9:.0f}B")

    @property
    def approx_parameters(self) -> int:
        """Parameters to within a few percent (embeddings, layers, both heads): a bound checked before building."""
        d, a = self.hid_dim, self.heads * self.head_dim
        t, h, w = self.clip_len, self.grid_h, self.grid_w
        pos = {"default": t * h * w, "temporal_separation": t + h * w, "hw_separation": t + h + w}.get(self.pos_emb, 0)
        embed = ((3 * self.patch_size ** 2 + 3) * d if self.input == "pixels" else (self.vocab_size + 8) * d) + pos * d
        layer = 4 * d * a * len(self.layout.split(",")) + 2 * d * self.mlp_dim  # q, k, v, out per block + MLP
        # the masked-token decoder is tied to the code embedding: only its bias is its own
        decoder = self.vocab_size * d if self.input == "pixels" else 0  # pixel models own their decoder
        heads = d * d + self.vocab_size + decoder + d * self.nce_proj_hid_dim \
            + (self.nce_proj_layers - 2) * self.nce_proj_hid_dim ** 2 + self.nce_proj_hid_dim * self.nce_proj_out_dim
        return embed + self.layers * layer + heads

    @property
    def special_tokens(self) -> SpecialTokens:
        return SpecialTokens.from_vocab_size(self.vocab_size)

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def blocks(self) -> tuple[tuple[str, ...], ...]:
        return parse_layout(self.layout)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error (a checkpoint from another model)."""
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# (layers, hid_dim, heads, head_dim, mlp_dim, CL-head layers, CL-head hidden); paper table 2 / section 4.
_NAMED: dict[str, dict[str, int]] = {
    "small": dict(layers=6, hid_dim=512, heads=8, head_dim=64, mlp_dim=2048, nce_proj_layers=2,
                  nce_proj_hid_dim=2048),
    "base": dict(layers=12, hid_dim=768, heads=12, head_dim=64, mlp_dim=3072, nce_proj_layers=2,
                 nce_proj_hid_dim=3072),
    # Large-half: 1024-wide residual stream, attention and MLP at half the usual width.
    "large_half": dict(layers=24, hid_dim=1024, heads=16, head_dim=32, mlp_dim=2048, nce_proj_layers=3,
                       nce_proj_hid_dim=4096),
}
CONFIG_NAMES = tuple(_NAMED)


def named_config(name: str, **overrides: Any) -> ModelConfig:
    """A named config (`small`, `base`, `large_half`) with keyword overrides (vocab_size, clip_len, ...)."""
    if name not in _NAMED:
        raise ValueError(f"unknown model config {name!r}; expected one of {CONFIG_NAMES}")
    return ModelConfig(**{**_NAMED[name], "name": name, **overrides})


def apply_halving(cfg: ModelConfig, *, halve_att: bool = False, halve_mlp: bool = False) -> ModelConfig:
    """The `--halve-att` / `--halve-mlp` options: half the head dim / half the MLP width."""
    changes: dict[str, Any] = {}
    if halve_att:
        if cfg.head_dim % 2:
            raise ValueError(f"--halve-att: head_dim {cfg.head_dim} is odd")
        changes["head_dim"] = cfg.head_dim // 2
    if halve_mlp:
        if cfg.mlp_dim % 2:
            raise ValueError(f"--halve-mlp: mlp_dim {cfg.mlp_dim} is odd")
        changes["mlp_dim"] = cfg.mlp_dim // 2
    return cfg.replace(**changes) if changes else cfg
