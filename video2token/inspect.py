"""`python -m video2token.inspect STORE`: summarise a token store and report what is wrong with it.

Prints videos, frames, token-map sizes, the kept frames (--keep-frames: frame size, compression,
bytes per video on disk), labels, metadata and problems found: shards whose
bytes differ from their integrity record (SHA-256, size) or whose index arrays do not tile
their code (or frame) arrays, missing shards, an unfinished extraction, videos that were not stored,
codes outside the vocabulary, shards with inconsistent metadata. Exit status 1 when
problems were found. Listed names that were the same file as an earlier name (a symlink or
hard link, stored once under the earlier id) are listed under same_file; they are no problem.
`--seal` records the SHA-256 of shards made before stores had integrity records (after
checking what can be checked).

`--against OTHER_STORE` instead names the videos the two stores share (a train and a test
split should share none): the same file content (size + SHA-256 recorded at extraction),
wherever it lies; stores made before fingerprints were recorded are compared by resolved
path, and the output says so. Exit status 0 when nothing is shared, 1 when something is, 2
when a store cannot be read.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys


from .annotations import SAME_FILE, same_file_lines
from .cli import HelpFormatter
from .overlap import shared_videos
from .store import StoreError, TokenStore, list_shards, record_path, seal_shard, shard_name, verify_file


def _shard_files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [os.path.join(path, shard_name(i, n)) for i, n in list_shards(path)]
    return [path] if os.path.isfile(path) else []


def verify_shards(path: str) -> list[str]:
    """Problems of the shards' bytes (size, SHA-256 against the integrity records), one per bad shard."""
    problems = []
    for f in _shard_files(path):
        try:
            verify_file(f)
        except StoreError as e:
            problems.append(str(e))
    return problems


def seal_store(path: str) -> list[str]:
    """Record the SHA-256 of every shard without an integrity record; return what was sealed."""
    sealed = []
    for f in _shard_files(path):
        if not os.path.exists(record_path(f)):
            seal_shard(f)
            sealed.append(f)
    return sealed


def inspect_store(path: str, check_codes: bool = True) -> tuple[dict, list[str]]:
    """Return (summary dict, list of problems)."""
    problems = verify_shards(path)
    if problems:  # HDF5 never reads a shard whose bytes are not the ones written
        return {"path": os.path.abspath(path)}, problems
    try:
        store = TokenStore(path, allow_partial=True, verify=False)  # verified just above
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
    same_file = {f["video_id"]: f.get("same_as") for f in store.failures if f["stage"] == SAME_FILE}
    not_stored = dict(collections.Counter(f["stage"] for f in store.failures if f["stage"] != SAME_FILE))
    if not_stored:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(not_stored.items()))
        problems.append(f"{sum(not_stored.values())} listed videos were not stored ({detail}); the reasons are in "
                        f"errors.jsonl")
    if n == 0:
        problems.append("the store holds no video")
    summary = {
        "path": store.path,
        "shards": len(store.shard_paths),
        "videos": n,
        "frames": int(frames.sum()),
        "frames_per_video": {"min": int(frames.min()) if n else 0, "mean": round(float(frames.mean()), 2) if n else 0,
                             "max": int(frames.max()) if n else 0},
        "token_maps": {f"{h}x{w}": c for (h, w), c in sorted(shapes.items())},
        "kept_frames": _kept_frames(store),
        "not_stored": not_stored or "none",
        "same_file": same_file,
        "labelled": int((labels >= 0).sum()),
        "unlabelled": int((labels < 0).sum()),
        "classes_present": len([c for c in hist if c >= 0]),
        "label_counts": {(names[c] if names and 0 <= c < len(names) else str(c)): v for c, v in sorted(hist.items())},
        "meta": store.meta,
    }
    store.close()
    return summary, problems


def _kept_frames(store: TokenStore) -> dict | str:
    """What --keep-frames stored: frame size, compression, bytes per video on disk and uncompressed."""
    if not store.has_frames:
        return "none (extracted without --keep-frames)"
    spec = store.meta["frames"]
    disk, raw = store.frame_bytes()
    n = max(len(store), 1)
    return {"size": spec["size"] if spec["size"] is not None else "per video (crop type none)",
            "compression": spec["compression"], "bytes_per_video": round(disk / n),
            "uncompressed_bytes_per_video": round(raw / n), "bytes_on_disk": disk}


def compare_stores(path: str, other: str, as_json: bool) -> int:
    """--against: print the videos both stores hold; 0 none, 1 some, 2 a store cannot be read."""
    try:
        with TokenStore(path, allow_partial=True) as a, TokenStore(other, allow_partial=True) as b:
            overlap = shared_videos(a, b)
            notes = [f"{s.path} is missing shards {s.missing_shards}: only the finished ones were compared"
                     for s in (a, b) if s.missing_shards] + overlap.notes
            paths = (a.path, b.path)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shared = [{"video_id": s.video_id, "other_video_id": s.other_video_id, "by": s.by} for s in overlap.shared]
    if as_json:
        print(json.dumps({"store": paths[0], "other": paths[1], "shared": shared, "notes": notes}, indent=2))
    else:
        print(f"{len(shared)} video(s) of {paths[0]} are also in {paths[1]}"
              + (f" (same content: {overlap.by('content')}, same path: {overlap.by('path')})" if shared else ""))
        for s in shared:
            print(f"  {s['video_id']} = {s['other_video_id']} (same {s['by']})")
        for note in notes:
            print(f"note: {note}")
    return 1 if shared else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m video2token.inspect", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("path", help="token store directory (or one shard .h5 file)")
    p.add_argument("--against", metavar="OTHER_STORE", default=None,
                   help="only name the videos this store shares with OTHER_STORE (by file content, else by resolved "
                        "path); exit status 0: none shared, 1: some shared, 2: a store cannot be read")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-check-codes", action="store_true", help="skip the scan of every code (faster on huge stores)")
    p.add_argument("--seal", action="store_true",
                   help="first record the SHA-256 of shards that have no integrity record (stores made before "
                        "records existed; only on storage you trust: their bytes cannot be checked)")
    a = p.parse_args(argv)
    if a.against is not None:
        if a.seal:
            p.error("--seal and --against go separately")
        return compare_stores(a.path, a.against, a.json)
    if a.seal:
        try:
            for f in seal_store(a.path):
                print(f"sealed {f}")
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    summary, problems = inspect_store(a.path, check_codes=not a.no_check_codes)
    if a.json:
        print(json.dumps({"summary": summary, "problems": problems}, indent=2, default=str))
    else:
        meta = summary.pop("meta", {})
        same_file = summary.pop("same_file", {})
        for k, v in summary.items():
            if k == "label_counts" and len(v) > 20:
                v = dict(list(v.items())[:20]) | {"...": f"{len(v) - 20} more"}
            print(f"{k:>18}: {v}")
        if meta:
            tok = meta.get("tokenizer", {})
            print(f"{'tokenizer':>18}: {tok.get('name')} vocab={tok.get('vocab_size')} stride={tok.get('downsample')} "
                  f"path={tok.get('path')}")
            view = {k: meta.get(k) for k in ("fps", "frame_shorter_side", "crop_size", "crop_type", "hflip", "channel_order", "decoder")}
            print(f"{'view':>18}: {view}")
            print(f"{'sources':>18}: root={meta.get('video_root')} annotations={meta.get('annotations')}")
        print(f"{'same_file':>18}: " + ("none" if not same_file else ""))
        for line in same_file_lines(same_file):
            print(f"  {line}")
        print(f"{'problems':>18}: " + ("none" if not problems else ""))
        for pr in problems:
            print(f"  - {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
