"""Convert a snapshot of the original VIMPAC code (github.com/airsplay/vimpac) into this project's checkpoint format.

    python -m vimpac.convert_original runs/vimpac_large/last --output snap/original-large

SRC is the original's run folder (its last/ is used), a last/ or epochN/ folder, or the
classifier.pt path; args.pickle (or, when it is missing, args.txt) must lie next to it. OUT gets
model.safetensors + config.json, loadable by `vimpac.load_model`, pre-training `--load` and
fine-tuning; a fine-tuned snapshot is recorded as a classifier with its number of classes.
Only weights and an argparse.Namespace of plain values are unpickled.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from video2token.cli import HelpFormatter

from vimpac.model.checkpoint import CheckpointError, save_checkpoint
from vimpac.model.loading import original_task
from vimpac.model.original import read_original


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vimpac.convert_original", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("src", metavar="SRC", help="original run folder, its last/, or classifier.pt")
    p.add_argument("--output", required=True, metavar="OUT", help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    a = p.parse_args(argv)
    if os.path.isdir(a.output) and os.listdir(a.output) and not a.overwrite:
        print(f"error: --output {a.output} exists and is not empty; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if os.path.exists(a.output) and not os.path.isdir(a.output):
        print(f"error: --output {a.output} is a file", file=sys.stderr)
        return 2
    try:
        conv = read_original(a.src)
        if _inside(conv.files.weights, a.output):
            print(f"error: --output {a.output} holds the source {conv.files.weights}; choose another folder",
                  file=sys.stderr)
            return 2
        task = original_task(conv)
        train = {"converted_from": {"format": "original-vimpac", "path": os.path.abspath(conv.files.folder),
                                    "args": json.loads(json.dumps(conv.args, default=repr)), "notes": conv.notes}}
        if task is not None:
            train["task"] = task
        save_checkpoint(a.output, model_state=conv.state, model_config=conv.config, train_config=train, step=0,
                        epoch=int(conv.args.get("epoch", 0) or 0))
    except CheckpointError as e:  # OriginalCheckpointError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = conv.config
    what = (f"classifier over {conv.num_classes} classes (VimpacForClassification)" if task is not None
            else "pre-training model (VimpacForPretraining)")
    print(f"read {conv.files.weights}: {conv.source_tensors} original tensors -> {len(conv.state)} tensors of a "
          f"{what}", flush=True)
    print(f"  {cfg.layers} layers x {cfg.hid_dim}, {cfg.heads} heads x {cfg.head_dim}, MLP {cfg.mlp_dim}, "
          f"layout {cfg.layout}, pos {cfg.pos_emb}, {'pre' if cfg.pre_ln else 'post'}-LN, "
          f"T={cfg.clip_len} on {cfg.grid_h}x{cfg.grid_w} codes, vocab {cfg.vocab_size}")
    for note in conv.notes:
        print(f"  note: {note}")
    print(f"done: wrote {a.output} (model.safetensors, config.json)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
