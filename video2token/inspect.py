"""`python -m video2token.inspect STORE`: summarise a token store and report what is wrong with it.

Prints videos, frames, token-map sizes, labels, metadata and problems found (missing
shards, an unfinished extraction, failed videos, codes outside the vocabulary, shards
with inconsistent metadata). Exit status 1 when problems were found.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

from .cli import HelpFormatter
from .store import StoreError, TokenStore


def inspect_store(path: str, check_codes: bool = True) -> tuple[dict, list[str]]:
    """Return (summary dict, list of problems)."""
    problems: list[str] = []
    try:
        store = TokenStore(path, allow_partial=True)
    except StoreError as e:
        return {"path": os.path.abspath(path)}, [str(e)]
    if store.missing_shards:
        problems.append(f"missing shards {store.missing_shards} (extraction unfinished on some machine?)")
    if os.path.isdir(os.path.join(store.path, ".parts")):
        problems.append("an extraction of this store is unfinished or running (.parts/ exists): rerun it to finish")
    n = len(store)
    frames = store.num_frames
    shapes = collections.Counter()
    bad_codes = 0
    vocab = store.vocab_size
    for k in range(n):
        codes, _ = store.read_at(k)
        shapes[tuple(codes.shape[1:])] += 1
        if check_codes and codes.size and (codes.min() < 0 or codes.max() >= vocab):
            bad_codes += 1
    if bad_codes:
        problems.append(f"{bad_codes} videos hold codes outside [0, {vocab})")
    if n and frames.min() < 1:
        problems.append(f"{int((frames < 1).sum())} videos have no frames")
    labels = store.labels
    names = store.label_names
    hist = collections.Counter(int(x) for x in labels)
    not_stored = dict(collections.Counter(f["stage"] for f in store.failures))
    summary = {
        "path": store.path,
        "shards": len(store.shard_paths),
        "videos": n,
        "frames": int(frames.sum()),
        "frames_per_video": {"min": int(frames.min()) if n else 0, "mean": round(float(frames.mean()), 2) if n else 0,
                             "max": int(frames.max()) if n else 0},
        "token_maps": {f"{h}x{w}": c for (h, w), c in sorted(shapes.items())},
        "not_stored": not_stored or "none",
        "labelled": int((labels >= 0).sum()),
        "unlabelled": int((labels < 0).sum()),
        "classes_present": len([c for c in hist if c >= 0]),
        "label_counts": {(names[c] if names and 0 <= c < len(names) else str(c)): v for c, v in sorted(hist.items())},
        "meta": store.meta,
    }
    store.close()
    return summary, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m video2token.inspect", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("path", help="token store directory (or one shard .h5 file)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-check-codes", action="store_true", help="skip the scan of every code (faster on huge stores)")
    a = p.parse_args(argv)
    summary, problems = inspect_store(a.path, check_codes=not a.no_check_codes)
    if a.json:
        print(json.dumps({"summary": summary, "problems": problems}, indent=2, default=str))
    else:
        meta = summary.pop("meta", {})
        for k, v in summary.items():
            if k == "label_counts" and len(v) > 20:
                v = dict(list(v.items())[:20]) | {"...": f"{len(v) - 20} more"}
            print(f"{k:>18}: {v}")
        if meta:
            tok = meta.get("tokenizer", {})
            print(f"{'tokenizer':>18}: {tok.get('name')} vocab={tok.get('vocab_size')} stride={tok.get('downsample')} "
                  f"path={tok.get('path')}")
            view = {k: meta.get(k) for k in ("fps", "frame_shorter_side", "crop_size", "crop_type", "hflip", "decoder")}
            print(f"{'view':>18}: {view}")
            print(f"{'sources':>18}: root={meta.get('video_root')} annotations={meta.get('annotations')}")
        print(f"{'problems':>18}: " + ("none" if not problems else ""))
        for pr in problems:
            print(f"  - {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
