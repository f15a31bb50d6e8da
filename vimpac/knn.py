"""Frozen-backbone kNN: how well a backbone's [CLS] alone separates the classes, with no training at all.

The weighted kNN of InstDisc / MoCo's monitor (`vimpac.eval.knn`; the original VIMPAC's --knn-monitor):
one centre clip per video, the [CLS] feature of the frozen backbone, the labelled --train-tokens as
the memory bank and the --valid-tokens as queries; each query's k most cosine-similar bank videos
vote with weight exp(similarity / temperature) (k = 200, temperature 0.07 as the original).

    python -m vimpac.knn --load snap/pretrain/small/last --train-tokens TRAIN_STORE --valid-tokens TEST_STORE
    python -m vimpac.knn --load snap/pretrain/small/last --from-scratch --train-tokens T --valid-tokens V
    python -m vimpac.knn ... --json --output snap/knn/small    # also writes snap/knn/small/knn.json

--load takes a pre-training or fine-tuning output (its last/ or best/), a checkpoint dir or an original
VIMPAC snapshot; only its backbone is used. --from-scratch keeps its architecture with random weights
(--seed): the floor a pre-trained backbone should beat. A pixel model (BEVT, --input pixels) reads
the stores' frames (extracted with --keep-frames).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from video2token.atomic import atomic_write_json
from video2token.cli import HelpFormatter
from video2token.precision import add_precision_flag, read_cpu_bf16, resolve_precision

from vimpac.data.clips import ClipSpec
from vimpac.data.stores import DataError
from vimpac.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE, frozen_knn
from vimpac.model.checkpoint import CheckpointError
from vimpac.model.loading import build_model, read_weights
from vimpac.model.transformer import VimpacBackbone

RESULT_FILE = "knn.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.knn", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint whose backbone is evaluated (its architecture only with "
                                                 "--from-scratch)")
    p.add_argument("--train-tokens", nargs="+", required=True, metavar="STORE",
                   help="labelled store(s) of the memory bank (views of one split; the centre clip of each video)")
    p.add_argument("--valid-tokens", nargs="+", required=True, metavar="STORE",
                   help="labelled store(s) of the queries, scored against the bank")
    p.add_argument("--from-scratch", action="store_true",
                   help="the same architecture randomly initialised (the no-pre-training floor)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of --from-scratch")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours that vote (capped by the bank's size)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="a neighbour's vote is exp(cosine similarity / temperature)")
    p.add_argument("--frame-rate", type=int, default=1, help="take every n-th stored frame (as fine-tuning's)")
    p.add_argument("--batch-size", type=int, default=32, help="videos per forward pass")
    add_precision_flag(p)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-verify-stores", action="store_true", help="skip the shards' SHA-256 check (index checks stay)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--output", default=None, help=f"directory to write {RESULT_FILE} into")
    return p


def load_backbone(path: str, *, from_scratch: bool, seed: int) -> tuple[VimpacBackbone, str]:
    """The backbone of the checkpoint at `path` (or, from_scratch, its architecture freshly initialised) and the
    checkpoint's resolved path."""
    weights = read_weights(path)
    if from_scratch:
        torch.manual_seed(seed)
        return VimpacBackbone(weights.config), weights.path
    return build_model(weights).backbone, weights.path


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.k < 1 or not a.temperature > 0:
        p.error(f"--k must be >= 1 and --temperature > 0, got {a.k} and {a.temperature}")
    try:
        precision = resolve_precision(a.precision, device, cpu_bf16=cpu_bf16)
    except ValueError as e:
        p.error(str(e))
    print(f"[knn] {precision.describe()}", file=sys.stderr, flush=True)
    t0 = time.time()
    try:
        backbone, path = load_backbone(a.load, from_scratch=a.from_scratch, seed=a.seed)
        cfg = backbone.cfg
        clip = ClipSpec(clip_len=cfg.clip_len, frame_rate=a.frame_rate)
        scores = frozen_knn(backbone.to(device), a.train_tokens, a.valid_tokens, clip=clip, device=device,
                            precision=precision.name, batch_size=a.batch_size, k=a.k, temperature=a.temperature,
                            verify=not a.no_verify_stores)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    result = {**scores, "k": min(a.k, scores["bank_videos"]), "temperature": a.temperature,
              "init": "scratch" if a.from_scratch else "pretrained", "load": path, "input": cfg.input,
              "clip_len": cfg.clip_len, "train_tokens": a.train_tokens, "valid_tokens": a.valid_tokens,
              "precision": precision.name, "seconds": round(time.time() - t0, 2)}
    if a.output:
        os.makedirs(a.output, exist_ok=True)
        atomic_write_json(os.path.join(a.output, RESULT_FILE), result)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"kNN top-1 {result['top1']:.2f} top-5 {result['top5']:.2f} (k={result['k']}, temperature "
              f"{a.temperature:g}; {result['bank_videos']} bank videos, {result['query_videos']} queries; "
              f"{'random weights in the architecture of' if a.from_scratch else 'the backbone of'} {path})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
