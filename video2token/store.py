"""Token stores: the integer VQ codes of one dataset split at one view, in HDF5.

Layout of a store (a directory; scales to millions of videos because each shard holds one
flat code array plus small index arrays, not one HDF5 dataset per video):

    STORE/
      meta.json                      store metadata (tokenizer, fps, view, labels, sources)
      shard-00000-of-00002.h5        finished shards (written atomically, never modified)
      shard-00001-of-00002.h5
      errors.jsonl                   one JSON object per video that was not stored
      .parts/shard-00001-of-00002/   committed work of an unfinished shard (resume state)

Each shard file holds, for its N videos (sorted by their position in the source list):

    codes         int16  (sum of T*h*w,)   all codes, flat, video after video
    code_offsets  int64  (N,)              start of each video in `codes`
    shapes        int32  (N, 3)            (T, h, w) of each video
    frame_offsets int64  (N,)              start of each video in `timestamps`
    timestamps    float64 (sum of T,)      sampled time of each frame (seconds)
    labels        int32  (N,)              class index, -1 when unlabeled
    video_ids     str    (N,)              relpath under the video root (unique)
    source_index  int64  (N,)              position in the annotation list
    attrs: format, version, shard_id, num_shards, meta (JSON), failures (JSON list)

Readers (`TokenStore`) open HDF5 files lazily, per process, so DataLoader workers never
share a handle. Writers (`ShardWriter`) commit work in small part files (temp + fsync +
rename) and merge them at the end, so a kill at any moment loses at most the uncommitted
part and a rerun continues to a result bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable

import h5py
import numpy as np

from .atomic import atomic_path, atomic_write_json, atomic_write_text, fsync_dir, remove_tmp_leftovers

FORMAT = "vimpac-token-store"
VERSION = 1
CODE_DTYPE = np.int16
MAX_VOCAB = int(np.iinfo(CODE_DTYPE).max) + 1  # codes must be in [0, 32768)
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
_PART_RE = re.compile(r"^part-(\d{8})\.h5$")
_CHUNK = 1 << 16


class StoreError(RuntimeError):
    """A token store is missing, incomplete, inconsistent or would be overwritten."""


def shard_name(shard_id: int, num_shards: int) -> str:
    return f"shard-{shard_id:05d}-of-{num_shards:05d}.h5"


def errors_name(shard_id: int, num_shards: int) -> str:
    return "errors.jsonl" if num_shards == 1 else f"errors-{shard_id:05d}-of-{num_shards:05d}.jsonl"


def check_codes_fit(codes: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """Refuse codes outside [0, vocab_size) or a vocabulary the stored dtype cannot hold."""
    if vocab_size > MAX_VOCAB:
        raise StoreError(f"{where}: vocabulary of {vocab_size} codes does not fit the stored dtype int16 "
                         f"(at most {MAX_VOCAB})")
    if codes.size:
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= vocab_size:
            raise StoreError(f"{where}: codes in [{lo}, {hi}] outside the tokenizer vocabulary [0, {vocab_size})")
    return codes.astype(CODE_DTYPE, copy=False)


# ----------------------------------------------------------------------------- writing

@dataclass
class VideoRecord:
    source_index: int
    video_id: str
    label: int
    codes: np.ndarray        # (T, h, w) int16
    timestamps: np.ndarray   # (T,) float64


@dataclass
class _Buffer:
    records: list[VideoRecord] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.failures)


def _write_shard_file(path: str, records: list[VideoRecord], failures: list[dict], attrs: dict) -> None:
    """Write records (already in final order) to `path` (not atomic by itself)."""
    n = len(records)
    shapes = np.array([r.codes.shape for r in records], dtype=np.int32).reshape(n, 3)
    sizes = shapes.prod(axis=1).astype(np.int64) if n else np.zeros(0, np.int64)
    code_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    frame_counts = shapes[:, 0].astype(np.int64) if n else np.zeros(0, np.int64)
    frame_offsets = np.concatenate([[0], np.cumsum(frame_counts)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    total = int(sizes.sum()) if n else 0
    # track_times=False and a fixed libver keep the bytes identical across identical runs.
    with h5py.File(path, "w", libver=("v110", "v110"), track_order=False) as f:
        codes = f.create_dataset("codes", shape=(total,), dtype=CODE_DTYPE,
                                 chunks=(min(_CHUNK, total),) if total else None, track_times=False)
        pos = 0
        for r in records:
            flat = np.ascontiguousarray(r.codes, dtype=CODE_DTYPE).reshape(-1)
            codes[pos:pos + flat.size] = flat
            pos += flat.size
        ts = np.concatenate([r.timestamps.astype(np.float64) for r in records]) if n else np.zeros(0, np.float64)
        f.create_dataset("timestamps", data=ts, track_times=False)
        f.create_dataset("code_offsets", data=code_offsets, track_times=False)
        f.create_dataset("frame_offsets", data=frame_offsets, track_times=False)
        f.create_dataset("shapes", data=shapes, track_times=False)
        f.create_dataset("labels", data=np.array([r.label for r in records], dtype=np.int32), track_times=False)
        f.create_dataset("source_index", data=np.array([r.source_index for r in records], dtype=np.int64),
                         track_times=False)
        f.create_dataset("video_ids", data=np.array([r.video_id for r in records], dtype=object),
                         dtype=h5py.string_dtype("utf-8"), track_times=False)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["failures"] = json.dumps(failures, sort_keys=True)


def _read_shard_records(path: str) -> tuple[list[VideoRecord], list[dict]]:
    with h5py.File(path, "r") as f:
        codes = f["codes"][()]
        ts = f["timestamps"][()]
        shapes = f["shapes"][()]
        offs = f["code_offsets"][()]
        foffs = f["frame_offsets"][()]
        labels = f["labels"][()]
        srcs = f["source_index"][()]
        ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["video_ids"][()]]
        failures = json.loads(f.attrs.get("failures", "[]"))
    records = []
    for i in range(len(ids)):
        t, h, w = (int(x) for x in shapes[i])
        c = codes[offs[i]:offs[i] + t * h * w].reshape(t, h, w)
        records.append(VideoRecord(int(srcs[i]), ids[i], int(labels[i]), c, ts[foffs[i]:foffs[i] + t]))
    return records, failures


def _meta_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _meta_diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (existing) vs {vb!r} (requested)")
    return out


class ShardWriter:
    """Crash-safe, resumable writer of one shard of a store.

    Usage: `w = ShardWriter(store, meta, shard_id, num_shards, overwrite)`; skip the source
    indices in `w.done`; `w.add(record)` / `w.add_failure(...)`; `w.commit()` now and then
    (each commit is one atomic part file); `w.finalize()` merges the parts into the shard
    file. `w.complete` is True when the shard file already exists (nothing to do).
    """

    def __init__(self, store_dir: str, meta: dict, shard_id: int = 0, num_shards: int = 1,
                 overwrite: bool = False):
        if not (0 <= shard_id < num_shards):
            raise StoreError(f"shard id {shard_id} outside [0, {num_shards})")
        self.store_dir = os.path.abspath(store_dir)
        self.meta = json.loads(json.dumps(meta))  # JSON-normalised copy, so comparisons are exact
        self.shard_id, self.num_shards = shard_id, num_shards
        self.final_path = os.path.join(self.store_dir, shard_name(shard_id, num_shards))
        self.parts_dir = os.path.join(self.store_dir, ".parts", shard_name(shard_id, num_shards)[:-3])
        self._buffer = _Buffer()
        self.done: set[int] = set()
        self.num_parts = 0
        if os.path.exists(self.store_dir) and not os.path.isdir(self.store_dir):
            raise StoreError(f"{self.store_dir} exists and is not a token-store directory")
        os.makedirs(self.store_dir, exist_ok=True)
        self._check_or_write_meta(overwrite)
        if overwrite:
            if os.path.exists(self.final_path):
                os.remove(self.final_path)
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.complete = os.path.exists(self.final_path)
        if self.complete:
            shutil.rmtree(self.parts_dir, ignore_errors=True)  # leftovers of a kill after the merge
        else:
            self._load_parts()

    # -- setup
    def _check_or_write_meta(self, overwrite: bool) -> None:
        meta_path = os.path.join(self.store_dir, "meta.json")
        remove_tmp_leftovers(self.store_dir)
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    existing = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise StoreError(f"{meta_path}: unreadable store metadata ({e}); pass --overwrite to start over")
            diff = _meta_diff(existing, self.meta)
            if diff and not overwrite:
                raise StoreError(f"{self.store_dir} already holds a store made with other settings:\n  "
                                 + "\n  ".join(diff) + "\npass --overwrite to replace it, or choose another --output")
            if not diff:
                return
            if overwrite:  # other settings: every shard of the old store is invalid now
                for name in os.listdir(self.store_dir):
                    if _SHARD_RE.match(name) or name.startswith("errors"):
                        os.remove(os.path.join(self.store_dir, name))
                shutil.rmtree(os.path.join(self.store_dir, ".parts"), ignore_errors=True)
        atomic_write_json(meta_path, self.meta)

    def _load_parts(self) -> None:
        os.makedirs(self.parts_dir, exist_ok=True)
        remove_tmp_leftovers(self.parts_dir)
        for name in sorted(os.listdir(self.parts_dir)):
            m = _PART_RE.match(name)
            if not m:
                continue
            path = os.path.join(self.parts_dir, name)
            try:
                records, failures = _read_shard_records(path)
            except (OSError, KeyError, ValueError) as e:  # cannot happen after an atomic rename; be safe
                os.remove(path)
                print(f"warning: discarded unreadable part {path}: {e}")
                continue
            self.done.update(r.source_index for r in records)
            self.done.update(int(x["source_index"]) for x in failures)
            self.num_parts = max(self.num_parts, int(m.group(1)) + 1)

    # -- writing
    def add(self, record: VideoRecord) -> None:
        check_codes_fit(record.codes, int(self.meta["tokenizer"]["vocab_size"]), record.video_id)
        record.codes = record.codes.astype(CODE_DTYPE, copy=False)
        self._buffer.records.append(record)

    def add_failure(self, source_index: int, video_id: str | None, path: str | None, stage: str,
                    reason: str) -> None:
        self._buffer.failures.append({"source_index": int(source_index), "video_id": video_id,
                                      "path": path, "stage": stage, "reason": reason})

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def commit(self) -> None:
        """Atomically persist everything added since the last commit as one part file."""
        if not len(self._buffer):
            return
        part = os.path.join(self.parts_dir, f"part-{self.num_parts:08d}.h5")
        with atomic_path(part) as tmp:
            _write_shard_file(tmp, self._buffer.records, self._buffer.failures, {"format": FORMAT + "-part"})
        self.done.update(r.source_index for r in self._buffer.records)
        self.done.update(x["source_index"] for x in self._buffer.failures)
        self.num_parts += 1
        self._buffer = _Buffer()

    def finalize(self) -> tuple[str, list[dict]]:
        """Merge all parts into the shard file (atomic); return (path, failures)."""
        if self.complete:
            with h5py.File(self.final_path, "r") as f:
                return self.final_path, json.loads(f.attrs.get("failures", "[]"))
        self.commit()
        records, failures = [], []
        for name in sorted(os.listdir(self.parts_dir)):
            if _PART_RE.match(name):
                r, fl = _read_shard_records(os.path.join(self.parts_dir, name))
                records += r
                failures += fl
        records.sort(key=lambda r: r.source_index)
        failures.sort(key=lambda x: x["source_index"])
        seen = set()
        for r in records:
            if r.source_index in seen:
                raise StoreError(f"{self.parts_dir}: video {r.video_id} committed twice")
            seen.add(r.source_index)
        attrs = {"format": FORMAT, "version": VERSION, "shard_id": self.shard_id,
                 "num_shards": self.num_shards, "meta": json.dumps(self.meta, sort_keys=True)}
        with atomic_path(self.final_path) as tmp:
            _write_shard_file(tmp, records, failures, attrs)
        errors_path = os.path.join(self.store_dir, errors_name(self.shard_id, self.num_shards))
        atomic_write_text(errors_path, "".join(json.dumps(_public_failure(x), sort_keys=True) + "\n" for x in failures))
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        parts_root = os.path.dirname(self.parts_dir)
        if os.path.isdir(parts_root) and not os.listdir(parts_root):
            os.rmdir(parts_root)
        fsync_dir(self.store_dir)
        self.complete = True
        if self.num_shards > 1:
            merge_error_logs(self.store_dir)
        return self.final_path, failures


def _public_failure(x: dict) -> dict:
    return {k: x[k] for k in ("path", "stage", "reason", "video_id")}


def merge_error_logs(store_dir: str) -> None:
    """Write STORE/errors.jsonl from the per-shard logs once every shard is finished."""
    shards = list_shards(store_dir)
    if not shards or len(shards) != shards[0][1]:
        return
    lines = []
    for sid, n in sorted(shards):
        p = os.path.join(store_dir, errors_name(sid, n))
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                lines += [ln for ln in f if ln.strip()]
    atomic_write_text(os.path.join(store_dir, "errors.jsonl"), "".join(lines))


# ----------------------------------------------------------------------------- reading

def list_shards(store_dir: str) -> list[tuple[int, int]]:
    out = []
    for name in os.listdir(store_dir):
        m = _SHARD_RE.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


class _Shard:
    """Index arrays of one shard in memory; the code array read lazily, one handle per process."""

    def __init__(self, path: str):
        self.path = path
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise StoreError(f"{path}: not a {FORMAT} shard (format attribute {f.attrs.get('format')!r})")
                self.meta = json.loads(f.attrs["meta"])
                self.num_shards = int(f.attrs["num_shards"])
                self.code_offsets = f["code_offsets"][()]
                self.frame_offsets = f["frame_offsets"][()]
                self.shapes = f["shapes"][()]
                self.labels = f["labels"][()]
                self.source_index = f["source_index"][()]
                self.video_ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in f["video_ids"][()]]
                self.failures = json.loads(f.attrs.get("failures", "[]"))
        except (OSError, KeyError) as e:
            raise StoreError(f"{path}: unreadable token-store shard ({e})") from e
        self._file = None
        self._pid = None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def read(self, i: int, frames: slice | None = None) -> np.ndarray:
        t, h, w = (int(x) for x in self.shapes[i])
        start = int(self.code_offsets[i])
        if frames is not None:
            f0, f1, _ = frames.indices(t)
            flat = self._h5()["codes"][start + f0 * h * w:start + f1 * h * w]
            return flat.reshape(max(f1 - f0, 0), h, w)
        return self._h5()["codes"][start:start + t * h * w].reshape(t, h, w)

    def timestamps(self, i: int) -> np.ndarray:
        t = int(self.shapes[i][0])
        s = int(self.frame_offsets[i])
        return self._h5()["timestamps"][s:s + t]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


class TokenStore:
    """Read a token store: `len(s)`, `s.video_ids`, `s.read(video_id) -> (codes int16 (T,h,w), label)`.

    `path` is a store directory (all its shards are read together, in shard order, which
    equals the order of the source list) or a single shard file. An unfinished store
    (missing shards, extraction in progress) is an error unless `allow_partial=True`.
    """

    def __init__(self, path: str, allow_partial: bool = False):
        self.path = os.path.abspath(path)
        if not os.path.exists(self.path):
            raise StoreError(f"token store {path} does not exist")
        if os.path.isdir(self.path):
            shards = list_shards(self.path)
            if not shards:
                hint = " (extraction in progress or killed: rerun it to finish)" if os.path.isdir(
                    os.path.join(self.path, ".parts")) else ""
                raise StoreError(f"token store {path} has no finished shard{hint}")
            counts = {n for _, n in shards}
            if len(counts) > 1:
                raise StoreError(f"token store {path} mixes shard counts {sorted(counts)}")
            n = counts.pop()
            missing = sorted(set(range(n)) - {i for i, _ in shards})
            if missing and not allow_partial:
                raise StoreError(f"token store {path} is incomplete: shards {missing} of {n} are missing "
                                 f"(finish them, or pass allow_partial=True)")
            self.missing_shards = missing
            files = [os.path.join(self.path, shard_name(i, n)) for i, _ in shards]
        else:
            self.missing_shards = []
            files = [self.path]
        self._shards = [_Shard(f) for f in files]
        self.meta: dict[str, Any] = self._shards[0].meta
        for s in self._shards[1:]:
            if s.meta != self.meta:
                diff = _meta_diff(self.meta, s.meta)
                raise StoreError(f"{s.path}: metadata differs from {self._shards[0].path}: " + "; ".join(diff))
        self._loc: list[tuple[int, int]] = [(si, i) for si, s in enumerate(self._shards) for i in range(len(s.video_ids))]
        self.video_ids: list[str] = [vid for s in self._shards for vid in s.video_ids]
        self._pos = {vid: k for k, vid in enumerate(self.video_ids)}
        if len(self._pos) != len(self.video_ids):
            raise StoreError(f"token store {path} holds duplicate video ids")
        self.labels = np.concatenate([s.labels for s in self._shards]).astype(np.int64)
        self.num_frames = np.concatenate([s.shapes[:, 0] for s in self._shards]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._pos

    def index(self, video_id: str) -> int:
        try:
            return self._pos[video_id]
        except KeyError:
            raise KeyError(f"video id {video_id!r} is not in token store {self.path}") from None

    def read(self, video_id: str) -> tuple[np.ndarray, int]:
        return self.read_at(self.index(video_id))

    def read_at(self, k: int, frames: slice | None = None) -> tuple[np.ndarray, int]:
        """Codes (T, h, w) int16 (or the `frames` slice of them) and label of the k-th video."""
        si, i = self._loc[k]
        return self._shards[si].read(i, frames), int(self._shards[si].labels[i])

    def timestamps(self, video_id: str) -> np.ndarray:
        si, i = self._loc[self.index(video_id)]
        return self._shards[si].timestamps(i)

    def source_path(self, video_id: str) -> str:
        return os.path.join(self.meta["video_root"], video_id)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def label_names(self) -> list[str] | None:
        return self.meta.get("label_names")

    @property
    def failures(self) -> list[dict]:
        return [_public_failure(x) for s in self._shards for x in s.failures]

    @property
    def shard_paths(self) -> list[str]:
        return [s.path for s in self._shards]

    def close(self) -> None:
        for s in self._shards:
            s.close()

    def __enter__(self) -> "TokenStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TokenStore({self.path!r}, videos={len(self)}, vocab={self.vocab_size})"
