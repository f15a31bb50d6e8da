"""Snapshots of the original VIMPAC code (Tan et al., 2021; github.com/airsplay/vimpac) in this project's format.

The original saves `OUTPUT/last/classifier.pt` (a torch state dict) next to `args.pickle` (its
`argparse.Namespace`) and `args.txt` (a pprint of the same dict). Two models were saved that way:
pre-training (`backbone.*`, `mlm_head.*`, `cls_head.*` -> `VimpacForPretraining`) and fine-tuning
(`backbone.*`, `cls_fc.*` -> `VimpacForClassification`). Nothing is unpickled beyond weights
(`torch.load(weights_only=True)`) and an `argparse.Namespace` of plain values.

What moves where (the original's name -> ours; `backbone.` left out on both sides):

    embedding rows [0, 8192)                     -> embeddings.code rows [0, 8192) (the codes)
    embedding rows 8196 ([MASK]), 8193 ([PAD])   -> rows SpecialTokens.mask, .pad
    cls_param + the [CLS] position               -> row SpecialTokens.cls ([CLS] is a table row here)
    embedding rows 8192, 8194, 8195 (never read) -> the first spare rows; the last two spares have no source
    positional_embedding.temporal_/height_/width_/spatial_pos_embedding, or rows 1: of .positional_embedding
                                                 -> embeddings.pos_t / pos_h / pos_w / pos_hw / pos_thw
    ln_pre (post-LN) / ln_post (--pre-activation) -> embeddings.norm / final_norm
    resblocks.i.attention_blocks.j.attentions.p.attention.{query,key,value}
                                                 -> layers.i.attn.j.qkv (q of every part, then k, then v;
                                                    part p owns the p-th group of heads)
    ... .output.dense, .output.LayerNorm (post-LN) or .dense, .LayerNorm (--pre-activation)
                                                 -> layers.i.attn.j.proj, layers.i.attn_norm.j
    resblocks.i.mlp.c_fc, mlp.c_proj, ln          -> layers.i.mlp.fc1, mlp.fc2, mlp_norm
    mlm_head.transform.0, transform.2, bias[:8192] -> mp_head.dense, mp_head.norm, mp_head.bias
    cls_head.mlp.linear_k, bn_k                   -> cl_head.net.{3k}, cl_head.net.{3k+1} (last Linear: no bias)
    cls_fc                                        -> head.fc

Reported in the notes: the decoder's bias entries for the 5 special rows (dropped: our decoder
scores real codes only), the tied copies `mlm_head.decoder.{weight,bias}` (dropped after checking
they equal what they tie), the spare rows without a source (zero; spare ids are never looked up),
and a head the run did not train (project initialisation). Anything else unmatched is an error.
"""
from __future__ import annotations

import argparse
import ast
import io
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

from vimpac.model.checkpoint import CheckpointError
from vimpac.model.config import POS_EMB_KINDS, ModelConfig, parse_layout
from vimpac.model.special_tokens import SpecialTokens

WEIGHTS_FILE, ARGS_PICKLE, ARGS_TEXT = "classifier.pt", "args.pickle", "args.txt"
LAST = "last"

#: the original's special ids are literals (vimpac/masking.py, vimpac/modeling_utils.py), so its
#: checkpoints only make sense with the DALL-E vocabulary of 8192 codes
ORIGINAL_VOCAB = 8192
ORIGINAL_PAD, ORIGINAL_MASK = 8193, 8196
ORIGINAL_EXTRA_ROWS = 5              # embedding rows = vocab + 5
ORIGINAL_UNUSED_ROWS = (8192, 8194, 8195)
ORIGINAL_HEAD_WIDTH = 64            # heads = hid_dim // 64
ORIGINAL_DOWNSAMPLE = 8             # code map = frame_size // 8
ORIGINAL_NCE_OUT = 256
#: flags that older runs may not have saved -> the original parser's defaults
ORIGINAL_DEFAULTS = {"pos_emb": "default", "dropout": 0.1, "pre_activation": False, "halve_att": False,
                     "halve_mlp": False, "nce_proj_layers": 2, "nce_proj_hid_dim": 4096, "nce_bn_after_proj": False}
REQUIRED_ARGS = ("model", "hid_dim", "layers", "clip_len", "frame_size", "vocab_size")

PRETRAIN, CLASSIFICATION = "pretrain", "classification"


class OriginalCheckpointError(CheckpointError, ValueError):
    """An original VIMPAC snapshot that cannot be read or mapped (the message names the file)."""


# ----------------------------------------------------------------------------- files

@dataclass(frozen=True)
class OriginalFiles:
    folder: str
    weights: str                # .../classifier.pt
    args_pickle: str | None     # .../args.pickle, if present
    args_text: str | None       # .../args.txt, if present


def find_original(src: str | os.PathLike) -> OriginalFiles | None:
    """The files of an original snapshot: SRC is a run folder (its last/ is used), last/ itself, or classifier.pt.

    None when SRC holds no classifier.pt at all (so callers can try other formats).
    """
    src = os.fspath(src)
    if os.path.isfile(src):
        if os.path.basename(src) != WEIGHTS_FILE:
            return None
        folder = os.path.dirname(os.path.abspath(src))
    elif os.path.isfile(os.path.join(src, WEIGHTS_FILE)):
        folder = src
    elif os.path.isfile(os.path.join(src, LAST, WEIGHTS_FILE)):
        folder = os.path.join(src, LAST)
    else:
        return None

    def present(name: str) -> str | None:
        path = os.path.join(folder, name)
        return path if os.path.isfile(path) else None

    return OriginalFiles(folder=folder, weights=os.path.join(folder, WEIGHTS_FILE), args_pickle=present(ARGS_PICKLE),
                         args_text=present(ARGS_TEXT))


class _NamespaceUnpickler(pickle.Unpickler):
    """Admits the one global an argument pickle needs, `argparse.Namespace`; values must be plain."""

    def __init__(self, file, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == ("argparse", "Namespace"):
            return argparse.Namespace
        raise OriginalCheckpointError(f"{self.path}: refused global {module}.{name}; an argument pickle may only "
                                      f"hold an argparse.Namespace of plain values")

    def persistent_load(self, pid):
        raise OriginalCheckpointError(f"{self.path}: refused a persistent id; not a plain argument pickle")


def read_args_pickle(path: str) -> dict[str, Any]:
    """vars() of the `argparse.Namespace` in args.pickle; any other global is refused (an error naming it)."""
    try:
        with open(path, "rb") as f:
            obj = _NamespaceUnpickler(io.BytesIO(f.read()), path).load()
    except OriginalCheckpointError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise many types
        raise OriginalCheckpointError(f"{path}: unreadable argument pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, argparse.Namespace):
        raise OriginalCheckpointError(f"{path}: expected an argparse.Namespace, found {type(obj).__name__}")
    return dict(vars(obj))


def read_args_text(path: str) -> dict[str, Any]:
    """The pprint'ed argument dict of args.txt, read with `ast.literal_eval` (literals only)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = ast.literal_eval(f.read())
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise OriginalCheckpointError(f"{path}: not a Python literal dict ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise OriginalCheckpointError(f"{path}: expected a dict of argument names, found {type(obj).__name__}")
    return obj


def read_original_args(files: OriginalFiles) -> tuple[dict[str, Any], str]:
    """(arguments, the file they came from): args.pickle, or args.txt only when args.pickle is absent."""
    if files.args_pickle is not None:
        return read_args_pickle(files.args_pickle), files.args_pickle
    if files.args_text is not None:
        return read_args_text(files.args_text), files.args_text
    raise OriginalCheckpointError(f"{files.folder}: {WEIGHTS_FILE} without {ARGS_PICKLE} or {ARGS_TEXT}; the "
                                  f"model's shape cannot be known")


#: the only integer tensors an original snapshot holds (BatchNorm's counters)
INTEGER_SUFFIXES = (".num_batches_tracked",)


def read_original_weights(path: str) -> dict[str, torch.Tensor]:
    """classifier.pt through `torch.load(weights_only=True)`: tensors only, no code runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for foreign globals, RuntimeError for corrupt zips, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OriginalCheckpointError(f"{path}: not a weights-only state dict, refused ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise OriginalCheckpointError(f"{path}: expected a state dict (parameter name -> tensor), found "
                                      f"{type(state).__name__}")
    for name, value in state.items():  # checked before the mapping's arithmetic would promote an integer tensor
        if not value.is_floating_point() and not name.endswith(INTEGER_SUFFIXES):
            raise OriginalCheckpointError(f"{path}: tensor {name} is stored as {value.dtype}; a float tensor "
                                          f"belongs there")
    return dict(state)


# ----------------------------------------------------------------------------- config

def original_config(args: dict[str, Any], *, where: str = "args") -> tuple[ModelConfig, list[str]]:
    """The `ModelConfig` of the original's flags -> (config, notes). `where` names the file in errors."""
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise OriginalCheckpointError(f"{where}: lacks {missing}; cannot know the model's shape")
    notes = []
    a = dict(args)
    for key, value in ORIGINAL_DEFAULTS.items():
        if key not in a:
            a[key] = value
            notes.append(f"{where} has no {key!r}: the original's default {value!r} assumed")
    model = str(a["model"])
    if not model.startswith("efflayout"):
        raise OriginalCheckpointError(f"{where}: --model {model!r} is not one of the original's 'efflayout...' models")
    layout = model[len("efflayout"):]
    try:
        blocks = parse_layout(layout)
    except ValueError as e:
        raise OriginalCheckpointError(f"{where}: --model {model!r}: {e}") from None
    if a["pos_emb"] not in POS_EMB_KINDS:
        raise OriginalCheckpointError(f"{where}: --pos-emb {a['pos_emb']!r} is not one the original implemented "
                                      f"({', '.join(POS_EMB_KINDS)})")
    if a["vocab_size"] != ORIGINAL_VOCAB:
        raise OriginalCheckpointError(f"{where}: --vocab-size {a['vocab_size']}; the original's special ids are "
                                      f"literals ([PAD] {ORIGINAL_PAD}, [MASK] {ORIGINAL_MASK}) that only fit its "
                                      f"{ORIGINAL_VOCAB}-code vocabulary")
    hid = int(a["hid_dim"])
    heads = hid // ORIGINAL_HEAD_WIDTH
    att_width = hid // 2 if a["halve_att"] else hid
    if heads < 1 or att_width % heads:
        raise OriginalCheckpointError(f"{where}: --hid-dim {hid} gives {heads} heads of width {att_width}/{heads}")
    for parts in blocks:
        if heads % len(parts) or att_width % len(parts):
            raise OriginalCheckpointError(f"{where}: {len(parts)} parallel parts do not split {heads} heads evenly")
    if a["frame_size"] % ORIGINAL_DOWNSAMPLE:
        raise OriginalCheckpointError(f"{where}: --frame-size {a['frame_size']} is not a multiple of "
                                      f"{ORIGINAL_DOWNSAMPLE}")
    grid = int(a["frame_size"]) // ORIGINAL_DOWNSAMPLE
    pre = bool(a["pre_activation"])
    cfg = ModelConfig(
        vocab_size=int(a["vocab_size"]), clip_len=int(a["clip_len"]), grid_h=grid, grid_w=grid,
        layers=int(a["layers"]), hid_dim=hid, heads=heads, head_dim=att_width // heads,
        mlp_dim=hid * 2 if a["halve_mlp"] else hid * 4, layout=layout, pos_emb=a["pos_emb"],
        pre_ln=pre, embed_norm=not pre,
        # the original drops attention probabilities at the --dropout rate too
        dropout=float(a["dropout"]), attn_dropout=float(a["dropout"]), layer_norm_eps=1e-12,
        nce_proj_layers=int(a["nce_proj_layers"]), nce_proj_hid_dim=int(a["nce_proj_hid_dim"]),
        nce_proj_out_dim=ORIGINAL_NCE_OUT, nce_proj_bias=False, nce_bn_after_proj=bool(a["nce_bn_after_proj"]),
        init_std=0.02, name="original")
    return cfg, notes


# ----------------------------------------------------------------------------- weights

@dataclass
class ConvertedOriginal:
    config: ModelConfig
    state: dict[str, torch.Tensor]      # a complete state dict of the target model
    kind: str                           # "pretrain" (VimpacForPretraining) | "classification"
    num_classes: int | None
    notes: list[str]                    # what moved, what was dropped, what has no source
    source_tensors: int = 0             # tensors in the original state dict
    args: dict[str, Any] = field(default_factory=dict)
    files: OriginalFiles | None = None


class _Source:
    """The original state dict, with a record of which keys the mapping consumed."""

    def __init__(self, state: dict[str, torch.Tensor], where: str) -> None:
        self.state, self.where, self.used = state, where, set()

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise OriginalCheckpointError(f"{self.where}: no {key!r}; the snapshot does not fit its own arguments")
        self.used.add(key)
        v = self.state[key]
        return v.float() if v.is_floating_point() else v

    def prefixed(self, prefix: str) -> list[str]:
        return [k for k in self.state if k.startswith(prefix)]


def _target_shapes(cfg: ModelConfig, kind: str, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    from vimpac.model.transformer import VimpacForClassification, VimpacForPretraining

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = (VimpacForPretraining(cfg) if kind == PRETRAIN
                 else VimpacForClassification(cfg, num_classes=num_classes))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fresh_head(cfg: ModelConfig, name: str) -> dict[str, torch.Tensor]:
    """The project's initialisation of a head the original run did not train (seeded: conversions repeat)."""
    from vimpac.model.transformer import VimpacForPretraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VimpacForPretraining(cfg.replace(layers=1))
    return {k: v for k, v in model.state_dict().items() if k.startswith(name + ".")}


def _embedding_rows(src: _Source, cfg: ModelConfig, notes: list[str]) -> torch.Tensor:
    """The original's table (vocab + 5 rows, literal special ids) rearranged onto `SpecialTokens` rows."""
    st: SpecialTokens = cfg.special_tokens
    table = src.take("backbone.embedding.weight")
    want = (ORIGINAL_VOCAB + ORIGINAL_EXTRA_ROWS, cfg.hid_dim)
    if tuple(table.shape) != want:
        raise OriginalCheckpointError(f"{src.where}: backbone.embedding.weight has shape {tuple(table.shape)}, "
                                      f"expected {want}")
    cls_row = src.take("backbone.cls_param").reshape(-1) + _cls_position(src, cfg)
    rows = torch.zeros(st.num_embeddings, cfg.hid_dim, dtype=table.dtype)
    rows[: st.vocab_size] = table[: ORIGINAL_VOCAB]
    rows[st.mask] = table[ORIGINAL_MASK]
    rows[st.pad] = table[ORIGINAL_PAD]
    rows[st.cls] = cls_row
    spare_src = list(zip(st.spare, ORIGINAL_UNUSED_ROWS))
    for dst, s in spare_src:
        rows[dst] = table[s]
    empty = list(st.spare[len(spare_src):])
    notes.append(f"code embedding: [MASK] row {ORIGINAL_MASK} -> {st.mask}, [PAD] row {ORIGINAL_PAD} -> {st.pad}, "
                 f"[CLS] = cls_param + cls position -> row {st.cls}; rows never read by the original "
                 f"{list(ORIGINAL_UNUSED_ROWS)} -> spare rows {[d for d, _ in spare_src]}")
    if empty:
        notes.append(f"code embedding: spare rows {empty} have no source and are zero (spare ids are never looked "
                     f"up; the original's table has {ORIGINAL_EXTRA_ROWS} extra rows, ours "
                     f"{st.num_embeddings - st.vocab_size})")
    return rows


def _cls_position(src: _Source, cfg: ModelConfig) -> torch.Tensor:
    if cfg.pos_emb == "default":
        return src.take("backbone.positional_embedding.positional_embedding")[0]
    return src.take("backbone.positional_embedding.cls_pos_embedding").reshape(-1)


def _positions(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    p = "backbone.positional_embedding."
    t, h, w, d = cfg.clip_len, cfg.grid_h, cfg.grid_w, cfg.hid_dim

    def shaped(key: str, shape: tuple[int, ...], rows: slice | None = None) -> torch.Tensor:
        v = src.take(p + key)
        v = v if rows is None else v[rows]
        if v.numel() != torch.Size(shape).numel():
            raise OriginalCheckpointError(f"{src.where}: {p + key} has shape {tuple(src.state[p + key].shape)}; "
                                          f"--clip-len {t} and a {h}x{w} code map need {shape}")
        return v.reshape(shape)

    if cfg.pos_emb == "default":
        return {"pos_thw": shaped("positional_embedding", (t, h, w, d), slice(1, None))}
    if cfg.pos_emb == "temporal_separation":
        return {"pos_t": shaped("temporal_pos_embedding", (t, d)), "pos_hw": shaped("spatial_pos_embedding", (h, w, d))}
    return {"pos_t": shaped("temporal_pos_embedding", (t, d)), "pos_h": shaped("height_pos_embedding", (h, d)),
            "pos_w": shaped("width_pos_embedding", (w, d))}


def _linear(src: _Source, key: str, dst: str, out: dict[str, torch.Tensor], *, bias: bool = True) -> None:
    out[dst + ".weight"] = src.take(key + ".weight")
    if bias:
        out[dst + ".bias"] = src.take(key + ".bias")


def _backbone(src: _Source, cfg: ModelConfig, notes: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"backbone.embeddings.code.weight": _embedding_rows(src, cfg, notes)}
    for name, table in _positions(src, cfg).items():
        out[f"backbone.embeddings.{name}"] = table
    if cfg.pre_ln:
        _linear(src, "backbone.ln_post", "backbone.final_norm", out)
    else:
        _linear(src, "backbone.ln_pre", "backbone.embeddings.norm", out)
    for i in range(cfg.layers):
        o = f"backbone.transformer.resblocks.{i}"
        n = f"backbone.layers.{i}"
        for j, parts in enumerate(cfg.blocks):
            ob = f"{o}.attention_blocks.{j}"
            for bias_or_weight in ("weight", "bias"):
                # (3 * heads * head_dim, ...): q of all parts (part p = its group of heads), then k, then v
                out[f"{n}.attn.{j}.qkv.{bias_or_weight}"] = torch.cat([
                    src.take(f"{ob}.attentions.{p}.attention.{proj}.{bias_or_weight}")
                    for proj in ("query", "key", "value") for p in range(len(parts))])
            if cfg.pre_ln:
                _linear(src, f"{ob}.dense", f"{n}.attn.{j}.proj", out)
                _linear(src, f"{ob}.LayerNorm", f"{n}.attn_norm.{j}", out)
            else:
                _linear(src, f"{ob}.output.dense", f"{n}.attn.{j}.proj", out)
                _linear(src, f"{ob}.output.LayerNorm", f"{n}.attn_norm.{j}", out)
        _linear(src, f"{o}.mlp.c_fc", f"{n}.mlp.fc1", out)
        _linear(src, f"{o}.mlp.c_proj", f"{n}.mlp.fc2", out)
        _linear(src, f"{o}.ln", f"{n}.mlp_norm", out)
    return out


def _mlm_head(src: _Source, cfg: ModelConfig, notes: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    _linear(src, "mlm_head.transform.0", "mp_head.dense", out)
    _linear(src, "mlm_head.transform.2", "mp_head.norm", out)
    bias = src.take("mlm_head.bias")
    out["mp_head.bias"] = bias[: cfg.vocab_size]
    notes.append(f"dropped mlm_head.bias[{cfg.vocab_size}:] ({bias.shape[0] - cfg.vocab_size} special-token "
                 f"entries): our decoder scores real codes only")
    # the original ties decoder.weight to the embedding and decoder.bias to mlm_head.bias; both are saved
    for key, tied in (("mlm_head.decoder.weight", "backbone.embedding.weight"),
                      ("mlm_head.decoder.bias", "mlm_head.bias")):
        if src.has(key):
            if not torch.equal(src.state[key], src.state[tied]):
                raise OriginalCheckpointError(f"{src.where}: {key} differs from {tied}, which the original ties it "
                                              f"to; this model cannot hold an untied copy")
            src.take(key)
            notes.append(f"dropped {key}: the tied copy of {tied} (checked equal)")
    return out


def _cls_head(src: _Source, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    last = cfg.nce_proj_layers - 1
    for k in range(cfg.nce_proj_layers):
        _linear(src, f"cls_head.mlp.linear_{k}", f"cl_head.net.{3 * k}", out, bias=k < last)
        if k < last or cfg.nce_bn_after_proj:
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"cl_head.net.{3 * k + 1}.{name}"] = src.take(f"cls_head.mlp.bn_{k}.{name}")
    return out


def detect_kind(state: dict[str, torch.Tensor]) -> tuple[str, int | None]:
    """("classification", labels) for a fine-tuning state dict (cls_fc.*), else ("pretrain", None)."""
    if "cls_fc.weight" in state:
        return CLASSIFICATION, int(state["cls_fc.weight"].shape[0])
    return PRETRAIN, None


def convert_original(state: dict[str, torch.Tensor], args: dict[str, Any], *,
                     where: str = WEIGHTS_FILE, args_where: str = ARGS_PICKLE) -> ConvertedOriginal:
    """An original state dict + its arguments -> this project's config and a complete state dict (pure).

    Every original tensor is either mapped or named in `notes` as dropped; a target tensor without a
    source is an error, except the documented ones (spare embedding rows; a head the run did not train).
    """
    notes: list[str] = []
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix of a DistributedDataParallel state dict")
    cfg, arg_notes = original_config(args, where=args_where)
    notes += arg_notes
    if cfg.attn_dropout:
        notes.append(f"attn_dropout = dropout = {cfg.attn_dropout}: the original also drops attention probabilities "
                     f"(training only)")
    if cfg.pre_ln:
        notes.append("--pre-activation: pre-LN blocks, no LayerNorm on the embeddings (embed_norm=False), "
                     "ln_post -> final_norm")
    kind, num_classes = detect_kind(state)
    src = _Source(state, where)
    out = _backbone(src, cfg, notes)
    if kind == CLASSIFICATION:
        _linear(src, "cls_fc", "head.fc", out)
    else:
        for prefix, head, flag in (("mlm_head.", "mp_head", "--mlm-weight"), ("cls_head.", "cl_head", "--nce-weight")):
            if src.prefixed(prefix):
                out.update(_mlm_head(src, cfg, notes) if head == "mp_head" else _cls_head(src, cfg))
            else:
                out.update(_fresh_head(cfg, head))
                notes.append(f"no {prefix}* in the snapshot (trained with {flag} 0): {head} keeps this project's "
                             f"initialisation (seed 0)")
    left = sorted(set(state) - src.used)
    if left:
        raise OriginalCheckpointError(f"{where}: {len(left)} tensor(s) this mapping does not know, e.g. {left[:4]}; "
                                      f"they do not fit the arguments in {args_where}")
    target = _target_shapes(cfg, kind, num_classes)
    missing, extra = sorted(set(target) - set(out)), sorted(set(out) - set(target))
    bad = [f"{k}: {tuple(v.shape)} vs {target[k]}" for k, v in out.items()
           if k in target and tuple(v.shape) != target[k]]
    if missing or extra or bad:
        raise OriginalCheckpointError(f"{where} does not fit the model of {args_where}: shape mismatches {bad[:3]}, "
                                      f"no source for {missing[:3]}, unexpected {extra[:3]}")
    out = {k: v.contiguous() for k, v in out.items()}
    return ConvertedOriginal(config=cfg, state=out, kind=kind, num_classes=num_classes, notes=notes,
                             source_tensors=len(state), args=dict(args))


def read_original(src: str | os.PathLike) -> ConvertedOriginal:
    """Find, safely load and convert an original snapshot (run folder, its last/, or classifier.pt)."""
    files = find_original(src)
    if files is None:
        raise OriginalCheckpointError(f"{os.fspath(src)}: no {WEIGHTS_FILE} here or in {LAST}/; not an original "
                                      f"VIMPAC snapshot")
    args, args_where = read_original_args(files)
    state = read_original_weights(files.weights)
    conv = convert_original(state, args, where=files.weights, args_where=args_where)
    if args_where != files.args_pickle:
        conv.notes.insert(0, f"arguments read from {args_where} ({ARGS_PICKLE} is missing)")
    conv.files = files
    return conv

