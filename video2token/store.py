"""Token stores: the integer VQ codes of one dataset split at one view, in HDF5.

Layout of a store (a directory; scales to millions of videos because each shard holds one
flat code array plus small index arrays, not one HDF5 dataset per video):

    STORE/
      meta.json                      store metadata (tokenizer, fps, view, labels, sources)
      shard-00000-of-00002.h5        finished shards (written atomically, never modified)
      shard-00001-of-00002.h5
      shard-00000-of-00002.integrity.json   SHA-256, size and index facts of the finished shard
      errors.jsonl                   one JSON object per video that was not stored
      .parts/shard-00001-of-00002/   committed work of an unfinished shard (resume state)
      .lock, .setup.lock, .shard-00001-of-00002.lock   writer locks (video2token.store_lock)

Each shard file holds, for its N videos (sorted by their position in the source list):

    codes         int16  (sum of T*h*w,)   all codes, flat, video after video
    code_offsets  int64  (N,)              start of each video in `codes`
    shapes        int32  (N, 3)            (T, h, w) of each video
    frame_offsets int64  (N,)              start of each video in `timestamps`
    timestamps    float64 (sum of T,)      sampled time of each frame (seconds)
    labels        int32  (N,)              class index, -1 when unlabeled
    video_ids     str    (N,)              relpath under the video root (unique)
    source_index  int64  (N,)              position in the annotation list
    source_paths  str    (N,)              the file read, links resolved ("" when not known)
    fingerprints  str    (N,)              "BYTES:SHA256" of that file's bytes ("" when not known)
    attrs: format, version, shard_id, num_shards, meta (JSON), failures (JSON list)

and, in a store extracted with --keep-frames (meta.json's `frames` says so), the frames the
tokenizer encoded (after resize / crop / flip), frame k beside the codes of frame k:

    pixels        uint8  (sum of T*H*W*3,) all frames, flat, video after video (chunked, compressed
                                           as meta `frames.compression` says)
    pixel_offsets int64  (N,)              start of each video in `pixels`

A video's frame size is its code map times the tokenizer stride (H, W) = (h*s, w*s), so
(T, H, W, 3) follows from `shapes` (H = W = meta `frames.size` unless crop type "none").
The integrity record then holds `pixels` (their count) too and the index checks cover them
like the codes. A store without frames has neither dataset nor meta key (older readers read
a store with frames as a codes store: the format version is unchanged).

Shards written before source_paths / fingerprints existed lack both datasets; readers then
report None for them (`TokenStore.sources()`), which `inspect --against` says it falls back
from. Neither is loaded when a store is opened: only `sources()` reads them.

Readers (`TokenStore`) open HDF5 files lazily, per process, so DataLoader workers never
share a handle. Writers (`ShardWriter`) commit work in small part files (temp + fsync +
rename) and merge them at the end, so a kill at any moment loses at most the uncommitted
part and a rerun continues to a result bit-identical to an uninterrupted run.

Integrity: at finalize each shard's SHA-256, size and index facts (videos, codes, frames)
go into its `.integrity.json`, written before the shard is renamed into place. A reader
checks size and SHA-256 before the HDF5 library sees a byte of the shard (corrupt bytes can
make HDF5 spin forever), then checks the index arrays: offsets and shapes tile the code and
timestamp (and pixel) arrays exactly, ids and source positions are in order, labels are in range. Part
files carry a SHA-256 too; a damaged part is discarded and its videos are redone.
`verify=False` skips the SHA-256 only (trusted storage, or a check that comes later, as the
trainers' split over their ranks: `vimpac.train.shard_check`).

Finalize order (a kill or a full disk at any step leaves the old state or one the rerun
completes): parts committed -> shard's errors file -> shard temp + its integrity record ->
rename of the shard (the commit point) -> parts deleted -> merged errors.jsonl. A rerun
that finds the shard rewrites a missing errors file, deletes leftover parts and merges.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from .atomic import atomic_path, atomic_write_json, atomic_write_text, fsync_dir, is_leftover, remove_tmp_leftovers
from .checksum import sha256_file
from .store_lock import LOCK_NAME_RE, ShardLock, StoreLockedError, setup_lock, shard_counts_in_use, shard_lock_name

FORMAT = "vimpac-token-store"
VERSION = 1
CODE_DTYPE = np.int16
MAX_VOCAB = int(np.iinfo(CODE_DTYPE).max) + 1  # codes must be in [0, 32768)
RECORD_FORMAT = "vimpac-token-store-integrity"
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.h5$")
_RECORD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})\.integrity\.json$")
_ERRORS_RE = re.compile(r"^errors(-\d{5}-of-\d{5})?\.jsonl$")
_PART_RE = re.compile(r"^part-(\d{8})\.h5$")
_SOURCE_DATASETS = ("source_paths", "fingerprints")
_CHUNK = 1 << 16
META = "meta.json"
#: --frames-compression values; none is fastest to read (benchmarks/README.md, "Frames for training")
FRAME_COMPRESSIONS = ("none", "lzf", "gzip")
DEFAULT_FRAMES_COMPRESSION = "none"
_PIXEL_CHUNK = 1 << 18  # bytes per HDF5 chunk of `pixels`: a 128 px clip of 5 frames spans 1-2 chunks
PARTS = ".parts"
# index sanity bounds: a token map side, frames per video (far above any --max-frames)
_MAX_SIDE, _MAX_FRAMES = 1 << 15, 1 << 31


class StoreError(RuntimeError):
    """A token store is missing, incomplete, inconsistent, corrupt or would be overwritten."""


def shard_name(shard_id: int, num_shards: int) -> str:
    return f"shard-{shard_id:05d}-of-{num_shards:05d}.h5"


def record_path(shard_path: str) -> str:
    """The integrity record beside a shard: shard-00000-of-00001.h5 -> shard-00000-of-00001.integrity.json."""
    return shard_path[:-3] + ".integrity.json" if shard_path.endswith(".h5") else shard_path + ".integrity.json"


def errors_name(shard_id: int, num_shards: int) -> str:
    return "errors.jsonl" if num_shards == 1 else f"errors-{shard_id:05d}-of-{num_shards:05d}.jsonl"


def is_store_name(name: str) -> bool:
    """Whether a directory entry is something this project puts into a store (cleanup touches nothing else)."""
    return bool(name in (META, PARTS) or _SHARD_RE.match(name) or _RECORD_RE.match(name)
                or _ERRORS_RE.match(name) or LOCK_NAME_RE.match(name)
                or (is_leftover(name) and is_store_name(_leftover_final(name))))


def _leftover_final(name: str) -> str:
    return name[1:].rsplit(".", 2)[0] if name.startswith(".") else name[:-len(".old.tmp")]


def _is_store_meta(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("tokenizer"), dict) and "vocab_size" in obj["tokenizer"]


# ----------------------------------------------------------------------------- integrity

def _file_record(path: str) -> dict:
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def _read_record(path: str, what: str) -> dict:
    rp = record_path(path)
    try:
        with open(rp, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{what} {path} has no integrity record ({os.path.basename(rp)}): it was written before "
                         f"stores recorded SHA-256s, or the record was lost. Check and record it with "
                         f"`python -m video2token.inspect STORE --seal`, or re-extract it") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{what} {path}: unreadable integrity record {rp} ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or not isinstance(rec.get("sha256"), str):
        raise StoreError(f"{what} {path}: {rp} is not a token-store integrity record")
    if rec.get("file", os.path.basename(path)) != os.path.basename(path):
        raise StoreError(f"{what} {path}: its integrity record {rp} is the record of {rec.get('file')!r} (files "
                         f"renamed or swapped?); re-extract it (rerun with --overwrite)")
    return rec


def _check_size(path: str, rec: dict, what: str) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise StoreError(f"{what} {path}: {e.strerror}") from None
    if size != rec.get("bytes"):
        raise StoreError(f"{what} {path} is corrupt: {size} bytes, its integrity record says {rec.get('bytes')} "
                         f"(truncated or appended to); re-extract it (rerun with --overwrite)")


def verify_file(path: str, what: str = "shard") -> dict:
    """Check size and SHA-256 of a shard (or part) against its integrity record; return the record."""
    rec = _read_record(path, what)
    _check_size(path, rec, what)
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        raise StoreError(f"{what} {path} is corrupt: SHA-256 {digest[:16]}... differs from its integrity record "
                         f"{rec['sha256'][:16]}... (bytes changed on disk); re-extract it (rerun with --overwrite)")
    return rec


def _record_if_any(path: str) -> dict | None:
    try:
        return _read_record(path, "shard")
    except StoreError:
        return None


def _write_record(data_path: str, record_of: str, facts: dict) -> None:
    """The integrity record of `data_path` (a temp file about to be renamed to `record_of`)."""
    atomic_write_json(record_path(record_of), {"format": RECORD_FORMAT, "version": 1,
                                               "file": os.path.basename(record_of), **_file_record(data_path),
                                               **facts})


def check_index(path: str, *, shapes: np.ndarray, code_offsets: np.ndarray, frame_offsets: np.ndarray,
                labels: np.ndarray, source_index: np.ndarray, num_ids: int, num_codes: int, num_timestamps: int,
                num_classes: int | None) -> dict:
    """The index arrays must tile the code and timestamp arrays exactly (no gap, no overlap); return the facts."""
    n = len(shapes)
    def bad(msg: str) -> StoreError:
        return StoreError(f"shard {path} has an inconsistent index: {msg}; re-extract it (rerun with --overwrite)")

    if shapes.ndim != 2 or shapes.shape[1:] != (3,):
        raise bad(f"shapes has shape {shapes.shape}, expected (N, 3)")
    for name, arr in (("code_offsets", code_offsets), ("frame_offsets", frame_offsets), ("labels", labels),
                      ("source_index", source_index)):
        if arr.shape != (n,):
            raise bad(f"{name} has shape {arr.shape} for {n} videos")
    if num_ids != n:
        raise bad(f"{num_ids} video ids for {n} videos")
    if n:
        t, hw = shapes[:, 0].astype(np.int64), shapes[:, 1:].astype(np.int64)
        if t.min() < 0 or t.max() >= _MAX_FRAMES or hw.min() < 1 or hw.max() > _MAX_SIDE:
            raise bad("a video shape (T, h, w) is out of range")
        sizes = t * hw[:, 0] * hw[:, 1]
        if sizes.max() > num_codes or t.max() > num_timestamps:
            raise bad("a video is larger than the code array")
        ends = np.cumsum(sizes)
        starts = ends - sizes
        if not np.array_equal(code_offsets.astype(np.int64), starts) or int(ends[-1]) != num_codes:
            k = int(np.flatnonzero(code_offsets.astype(np.int64) != starts)[0]) if not np.array_equal(
                code_offsets.astype(np.int64), starts) else n - 1
            raise bad(f"code offsets do not tile the {num_codes} codes (first wrong at video {k})")
        fends = np.cumsum(t)
        if not np.array_equal(frame_offsets.astype(np.int64), fends - t) or int(fends[-1]) != num_timestamps:
            raise bad(f"frame offsets do not tile the {num_timestamps} timestamps")
        if source_index.min() < 0 or (n > 1 and np.any(np.diff(source_index) <= 0)):
            raise bad("source positions are not strictly increasing")
        hi = num_classes if num_classes is not None else int(np.iinfo(np.int32).max) + 1  # any int32 label
        if labels.min() < -1 or labels.max() >= hi:
            raise bad(f"labels outside [-1, {hi})")
    elif num_codes or num_timestamps:
        raise bad(f"{num_codes} codes and {num_timestamps} timestamps but no video")
    return {"videos": n, "codes": int(num_codes), "frames": int(num_timestamps)}


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


# ----------------------------------------------------------------------------- frames (--keep-frames)

def frames_meta(size: int | None, compression: str) -> dict:
    """meta.json's `frames` entry of a store that keeps its frames; size None for crop type "none"."""
    if compression not in FRAME_COMPRESSIONS:
        raise StoreError(f"frames compression must be one of {FRAME_COMPRESSIONS}, got {compression!r}")
    return {"size": size, "channels": 3, "dtype": "uint8", "compression": compression}


def _frames_spec(meta: dict, where: str) -> dict | None:
    """The checked `frames` entry of a store's metadata, None when the store keeps no frames."""
    spec = meta.get("frames") if isinstance(meta, dict) else None
    if spec is None:
        return None
    size = spec.get("size") if isinstance(spec, dict) else None
    if (not isinstance(spec, dict) or spec.get("channels") != 3 or spec.get("dtype") != "uint8"
            or spec.get("compression") not in FRAME_COMPRESSIONS
            or not (size is None or (isinstance(size, int) and 0 < size <= _MAX_SIDE))):
        raise StoreError(f"{where}: metadata key 'frames' is not a frames description ({spec!r}); re-extract it "
                         f"(rerun with --overwrite)")
    return spec


def _stride(meta: dict, where: str) -> int:
    d = meta.get("tokenizer", {}).get("downsample")
    if not isinstance(d, int) or d < 1:
        raise StoreError(f"{where}: a store with frames needs the tokenizer stride (tokenizer.downsample) in its "
                         f"metadata, got {d!r}")
    return d


def frame_shapes(shapes: np.ndarray, stride: int) -> np.ndarray:
    """Code-map shapes (N, 3) = (T, h, w) -> frame shapes (N, 4) = (T, h*stride, w*stride, 3), int64."""
    s = shapes.astype(np.int64).reshape(-1, 3)
    return np.stack([s[:, 0], s[:, 1] * stride, s[:, 2] * stride, np.full(len(s), 3, np.int64)], axis=1)


def check_pixel_index(path: str, *, shapes: np.ndarray, pixel_offsets: np.ndarray, num_pixels: int, stride: int,
                      size: int | None) -> dict:
    """`pixel_offsets` must tile the `pixels` array exactly, T frames of (h*stride, w*stride, 3) per video."""
    def bad(msg: str) -> StoreError:
        return StoreError(f"shard {path} has an inconsistent frame index: {msg}; re-extract it (rerun with "
                          f"--overwrite)")

    n = len(shapes)
    if pixel_offsets.shape != (n,):
        raise bad(f"pixel_offsets has shape {pixel_offsets.shape} for {n} videos")
    fshapes = frame_shapes(shapes, stride)
    if size is not None and n and (np.any(fshapes[:, 1] != size) or np.any(fshapes[:, 2] != size)):
        k = int(np.flatnonzero((fshapes[:, 1] != size) | (fshapes[:, 2] != size))[0])
        raise bad(f"video {k} has {fshapes[k, 1]}x{fshapes[k, 2]} frames, the store's frames are {size}x{size}")
    sizes = fshapes.prod(axis=1)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    if not np.array_equal(pixel_offsets.astype(np.int64), starts) or (int(ends[-1]) if n else 0) != num_pixels:
        wrong = np.flatnonzero(pixel_offsets.astype(np.int64) != starts)
        where = f"first wrong at video {int(wrong[0])}" if len(wrong) else "wrong total"
        raise bad(f"pixel offsets do not tile the {num_pixels} frame bytes ({where})")
    return {"pixels": int(num_pixels)}


@dataclass(frozen=True)
class _PartFrames:
    """Where a video's frames lie in a part file: read only when the shard is written, one video at a time."""
    path: str
    start: int
    shape: tuple[int, int, int, int]


class _FrameReader:
    """A record's frames, from memory or from its part file (one part open at a time: parts come in order)."""

    def __init__(self):
        self._path: str | None = None
        self._file: h5py.File | None = None

    def __call__(self, frames) -> np.ndarray:
        if isinstance(frames, np.ndarray):
            return frames
        if frames.path != self._path:
            self.close()
            self._file, self._path = h5py.File(frames.path, "r"), frames.path
        n = int(np.prod(frames.shape))
        return self._file["pixels"][frames.start:frames.start + n].reshape(frames.shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._path = None


def _write_pixels(f: h5py.File, records: list, compression: str) -> None:
    """The `pixels` and `pixel_offsets` datasets: whole chunks, written in record order (same bytes every run)."""
    sizes = np.array([int(np.prod(r.frames.shape)) for r in records], dtype=np.int64)
    total = int(sizes.sum())
    f.create_dataset("pixel_offsets", data=np.cumsum(sizes) - sizes, track_times=False)
    chunk = min(_PIXEL_CHUNK, total)
    dset = f.create_dataset("pixels", shape=(total,), dtype=np.uint8, chunks=(chunk,) if total else None,
                            compression=compression if total and compression != "none" else None, track_times=False)
    buf = np.empty(chunk, np.uint8)  # a kill cannot tear this file: it is a temp file until renamed
    fill = pos = 0
    read = _FrameReader()
    try:
        for r in records:
            flat = np.ascontiguousarray(read(r.frames), dtype=np.uint8).reshape(-1)
            i = 0
            while i < flat.size:
                take = min(chunk - fill, flat.size - i)
                buf[fill:fill + take] = flat[i:i + take]
                fill, i = fill + take, i + take
                if fill == chunk:
                    dset[pos:pos + chunk] = buf
                    pos, fill = pos + chunk, 0
        if fill:
            dset[pos:pos + fill] = buf[:fill]
    finally:
        read.close()


# ----------------------------------------------------------------------------- writing

@dataclass
class VideoRecord:
    source_index: int
    video_id: str
    label: int
    codes: np.ndarray        # (T, h, w) int16
    timestamps: np.ndarray   # (T,) float64
    #: (T, h*stride, w*stride, 3) uint8, the frames the codes encode (stores with frames only)
    frames: np.ndarray | _PartFrames | None = None
    source_path: str = ""    # the file read, links resolved ("" unknown)
    fingerprint: str = ""    # checksum.file_fingerprint of that file ("" unknown)


@dataclass
class _Buffer:
    records: list[VideoRecord] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.failures)


def _write_shard_file(path: str, records: list[VideoRecord], failures: list[dict], attrs: dict,
                      frames_compression: str | None = None) -> None:
    """Write records (already in final order) to `path` (not atomic by itself); their frames too unless
    `frames_compression` is None."""
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
        for name, values in (("video_ids", [r.video_id for r in records]),
                             ("source_paths", [r.source_path for r in records]),
                             ("fingerprints", [r.fingerprint for r in records])):
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"),
                             track_times=False)
        if frames_compression is not None:
            _write_pixels(f, records, frames_compression)
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["failures"] = json.dumps(failures, sort_keys=True)


def _read_shard_records(path: str, stride: int | None = None) -> tuple[list[VideoRecord], list[dict]]:
    """Records and failures of a part (or shard); with `stride`, each record's frames as a reference into it."""
    with h5py.File(path, "r") as f:
        codes = f["codes"][()]
        ts = f["timestamps"][()]
        shapes = f["shapes"][()]
        offs = f["code_offsets"][()]
        foffs = f["frame_offsets"][()]
        labels = f["labels"][()]
        srcs = f["source_index"][()]
        ids = _strings(f["video_ids"])
        paths = _strings(f["source_paths"]) if "source_paths" in f else [""] * len(ids)
        prints = _strings(f["fingerprints"]) if "fingerprints" in f else [""] * len(ids)
        failures = json.loads(f.attrs.get("failures", "[]"))
        poffs = f["pixel_offsets"][()] if stride is not None else None
    records = []
    for i in range(len(ids)):
        t, h, w = (int(x) for x in shapes[i])
        c = codes[offs[i]:offs[i] + t * h * w].reshape(t, h, w)
        px = _PartFrames(path, int(poffs[i]), (t, h * stride, w * stride, 3)) if poffs is not None else None
        records.append(VideoRecord(int(srcs[i]), ids[i], int(labels[i]), c, ts[foffs[i]:foffs[i] + t],
                                   frames=px, source_path=paths[i], fingerprint=prints[i]))
    return records, failures


def _strings(dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in dataset[()]]


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
    """Crash-safe, resumable writer of one shard of a store; the only writer of that shard while it lives.

    Usage: `w = ShardWriter(store, meta, shard_id, num_shards, overwrite)`; skip the source
    indices in `w.done`; `w.add(record)` / `w.add_failure(...)`; `w.commit()` now and then
    (each commit is one atomic part file); `w.finalize()` merges the parts into the shard
    file. `w.complete` is True when the shard file already exists (nothing to do).

    The constructor takes the shard's lock (video2token.store_lock) and `finalize()` or
    `close()` drops it: a second writer of the same shard meanwhile gets StoreError naming
    this one. A non-empty directory that is not a store is refused unless `overwrite`, and
    nothing but this project's own names in it is ever deleted.
    """

    def __init__(self, store_dir: str, meta: dict, shard_id: int = 0, num_shards: int = 1,
                 overwrite: bool = False):
        if not (0 <= shard_id < num_shards):
            raise StoreError(f"shard id {shard_id} outside [0, {num_shards})")
        self.store_dir = os.path.abspath(store_dir)
        self.meta = json.loads(json.dumps(meta))  # JSON-normalised copy, so comparisons are exact
        #: meta's `frames` entry when every record carries its frames (--keep-frames), else None
        self.frames_spec = _frames_spec(self.meta, store_dir)
        self._stride = _stride(self.meta, store_dir) if self.frames_spec else None
        self.shard_id, self.num_shards = shard_id, num_shards
        self.final_path = os.path.join(self.store_dir, shard_name(shard_id, num_shards))
        self.errors_path = os.path.join(self.store_dir, errors_name(shard_id, num_shards))
        self.parts_dir = os.path.join(self.store_dir, PARTS, shard_name(shard_id, num_shards)[:-3])
        self._buffer = _Buffer()
        self.done: set[int] = set()
        self.num_parts = 0
        self._lock: ShardLock | None = None
        if os.path.exists(self.store_dir) and not os.path.isdir(self.store_dir):
            raise StoreError(f"{self.store_dir} exists and is not a token-store directory")
        os.makedirs(self.store_dir, exist_ok=True)
        self._check_directory(overwrite)
        try:
            with setup_lock(self.store_dir):
                self._setup(overwrite)
        except StoreLockedError as e:
            raise StoreError(str(e)) from None
        try:
            self.complete = os.path.exists(self.final_path)
            if not self.complete:
                self._load_parts()
        except BaseException:
            self.close()
            raise

    # -- setup
    def _check_directory(self, overwrite: bool) -> None:
        """Refuse a foreign directory: a non-store meta.json always, other content without --overwrite."""
        meta_path = os.path.join(self.store_dir, META)
        names = os.listdir(self.store_dir)
        if META in names:
            try:
                with open(meta_path, encoding="utf-8") as f:
                    existing = json.load(f)
            except (OSError, ValueError):
                return  # unreadable store metadata: _setup says so
            if not _is_store_meta(existing):
                raise StoreError(f"{self.store_dir} holds a {META} that is not a token store's; choose another "
                                 f"--output (nothing there was changed)")
            return
        foreign = sorted(n for n in names if not is_store_name(n))
        if foreign and not overwrite:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise StoreError(f"{self.store_dir} is not empty and is not a token store (it holds {shown}); choose "
                             f"another --output, or pass --overwrite to write the store into it (files that are "
                             f"not the store's are never deleted)")

    def _setup(self, overwrite: bool) -> None:
        """Under the store's setup lock: check or write meta.json, take this shard's locks, clean up."""
        meta_path = os.path.join(self.store_dir, META)
        remove_tmp_leftovers(self.store_dir, finals=(META, "errors.jsonl"))
        diff: list[str] = []
        if os.path.exists(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    existing = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                if not overwrite:
                    raise StoreError(f"{meta_path}: unreadable store metadata ({e}); pass --overwrite to start over")
                existing = {}
            diff = _meta_diff(existing, self.meta) if existing else ["metadata unreadable"]
            if diff and not overwrite and isinstance(existing, dict) and (
                    existing.get("frames") is None) != (self.meta.get("frames") is None):
                kept = existing.get("frames") is not None
                raise StoreError(f"{self.store_dir} was extracted {'with' if kept else 'without'} --keep-frames (it "
                                 f"{'holds' if kept else 'holds no'} frames) and this job runs "
                                 f"{'without' if kept else 'with'} it: a store keeps the frames of every video or "
                                 f"of none. Rerun {'with' if kept else 'without'} --keep-frames to continue it, "
                                 f"pass --overwrite to replace it, or choose another --output")
            if diff and not overwrite:
                raise StoreError(f"{self.store_dir} already holds a store made with other settings:\n  "
                                 + "\n  ".join(diff) + "\npass --overwrite to replace it, or choose another --output")
        other_counts = sorted({n for _, n in list_shards(self.store_dir)} - {self.num_shards})
        if other_counts and not overwrite:
            raise StoreError(f"{self.store_dir} already holds shards of a {other_counts[0]}-shard extraction; this "
                             f"job writes {self.num_shards} shard(s). Use the same --num-shards, or pass --overwrite "
                             f"to replace the store")
        own_lock = shard_lock_name(self.shard_id, self.num_shards)
        busy = sorted(shard_counts_in_use(self.store_dir, except_name=own_lock) - {self.num_shards})
        if busy:
            raise StoreError(f"{self.store_dir} is being written by jobs with --num-shards {busy[0]}; this job has "
                             f"{self.num_shards}. Wait for them, or use the same shard count")
        replace = overwrite and bool(diff or other_counts)
        self._lock = ShardLock(self.store_dir, self.shard_id, self.num_shards, replace_store=replace)
        try:
            if replace:  # other settings or shard count: every shard of the old store is invalid now
                for name in os.listdir(self.store_dir):
                    if _SHARD_RE.match(name) or _RECORD_RE.match(name) or _ERRORS_RE.match(name):
                        os.remove(os.path.join(self.store_dir, name))
                shutil.rmtree(os.path.join(self.store_dir, PARTS), ignore_errors=True)
            if diff or not os.path.exists(meta_path):
                atomic_write_json(meta_path, self.meta)
            own = (os.path.basename(self.final_path), os.path.basename(record_path(self.final_path)),
                   os.path.basename(self.errors_path) if self.num_shards > 1 else "")
            remove_tmp_leftovers(self.store_dir, finals=[n for n in own if n])
            if overwrite and not replace:
                for path in (self.final_path, record_path(self.final_path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
                shutil.rmtree(self.parts_dir, ignore_errors=True)
            if not os.path.exists(self.final_path):
                os.makedirs(self.parts_dir, exist_ok=True)  # under the setup lock: another shard may rmdir .parts
        except BaseException:
            self.close()
            raise

    def _load_parts(self) -> None:
        remove_tmp_leftovers(self.parts_dir)
        for name in sorted(os.listdir(self.parts_dir)):
            m = _PART_RE.match(name)
            if not m:
                continue
            path = os.path.join(self.parts_dir, name)
            try:
                verify_file(path, "part")
                records, failures = _read_shard_records(path)
            except (StoreError, OSError, KeyError, ValueError) as e:  # damaged on disk: redo its videos
                for p in (path, record_path(path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(p)
                print(f"warning: discarded part {path}, its videos are redone: {e}", file=sys.stderr)
                continue
            self.done.update(r.source_index for r in records)
            self.done.update(int(x["source_index"]) for x in failures)
            self.num_parts = max(self.num_parts, int(m.group(1)) + 1)

    # -- writing
    def add(self, record: VideoRecord) -> None:
        check_codes_fit(record.codes, int(self.meta["tokenizer"]["vocab_size"]), record.video_id)
        record.codes = record.codes.astype(CODE_DTYPE, copy=False)
        if self.frames_spec is not None:
            t, h, w = record.codes.shape
            want = (t, h * self._stride, w * self._stride, 3)
            if not isinstance(record.frames, np.ndarray) or record.frames.dtype != np.uint8 or \
                    record.frames.shape != want:
                got = (f"{record.frames.dtype} {record.frames.shape}" if isinstance(record.frames, np.ndarray)
                       else "none")
                raise StoreError(f"{record.video_id}: this store keeps frames: expected uint8 frames {want} "
                                 f"beside codes {record.codes.shape}, got {got}")
        elif record.frames is not None:
            raise StoreError(f"{record.video_id}: frames given to store {self.store_dir}, which keeps none "
                             f"(its metadata has no 'frames' entry)")
        self._buffer.records.append(record)

    def add_failure(self, source_index: int, video_id: str | None, path: str | None, stage: str,
                    reason: str, *, same_as: str | None = None) -> None:
        """A listed video that is not stored; `same_as`: the id its file is stored under (stage "same_file")."""
        failure = {"source_index": int(source_index), "video_id": video_id, "path": path, "stage": stage,
                   "reason": reason}
        if same_as is not None:
            failure["same_as"] = same_as
        self._buffer.failures.append(failure)

    @property
    def _compression(self) -> str | None:
        return self.frames_spec["compression"] if self.frames_spec is not None else None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    @property
    def pending_frame_bytes(self) -> int:
        """Bytes of kept frames added since the last commit (held in memory until it)."""
        return sum(r.frames.nbytes for r in self._buffer.records if isinstance(r.frames, np.ndarray))

    def commit(self) -> None:
        """Atomically persist everything added since the last commit as one part file (with its SHA-256)."""
        if not len(self._buffer):
            return
        part = os.path.join(self.parts_dir, f"part-{self.num_parts:08d}.h5")
        with atomic_path(part) as tmp:
            _write_shard_file(tmp, self._buffer.records, self._buffer.failures, {"format": FORMAT + "-part"},
                              self._compression)
            _write_record(tmp, part, {})
        self.done.update(r.source_index for r in self._buffer.records)
        self.done.update(x["source_index"] for x in self._buffer.failures)
        self.num_parts += 1
        self._buffer = _Buffer()

    def finalize(self) -> tuple[str, list[dict], int]:
        """Merge all parts into the shard file (atomic, ordered as in the module docstring); drop the lock.

        Returns (path, failures, number of videos in the shard).
        """
        try:
            if self.complete:
                shard = _Shard(self.final_path, verify=True)
                failures = shard.failures
                self._settle(failures)
                return self.final_path, failures, len(shard.video_ids)
            self.commit()
            records, failures = [], []
            for name in sorted(os.listdir(self.parts_dir)):
                if _PART_RE.match(name):
                    path = os.path.join(self.parts_dir, name)
                    verify_file(path, "part")
                    r, fl = _read_shard_records(path, self._stride)  # frames stay on disk until written
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
            self._write_errors(failures)
            facts = {"videos": len(records), "codes": int(sum(r.codes.size for r in records)),
                     "frames": int(sum(r.codes.shape[0] for r in records)), "failures": len(failures)}
            if self.frames_spec is not None:
                facts["pixels"] = int(sum(np.prod(r.frames.shape) for r in records))
            with atomic_path(self.final_path) as tmp:
                _write_shard_file(tmp, records, failures, attrs, self._compression)
                _write_record(tmp, self.final_path, facts)
            self.complete = True  # the rename above is the commit point
            self._settle(failures)
            return self.final_path, failures, len(records)
        finally:
            self.close()

    def _write_errors(self, failures: list[dict]) -> None:
        text = "".join(json.dumps(_public_failure(x), sort_keys=True) + "\n" for x in failures)
        try:
            with open(self.errors_path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        except OSError:
            pass
        atomic_write_text(self.errors_path, text)

    def _settle(self, failures: list[dict]) -> None:
        """After the commit point (idempotent, so a rerun finishes what a kill or a full disk interrupted)."""
        self._write_errors(failures)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        fsync_dir(self.store_dir)
        try:
            with setup_lock(self.store_dir):
                parts_root = os.path.dirname(self.parts_dir)
                if os.path.isdir(parts_root) and not os.listdir(parts_root):
                    os.rmdir(parts_root)
                if self.num_shards > 1:
                    merge_error_logs(self.store_dir)
        except StoreLockedError as e:  # the shard is in place: a rerun finishes this
            raise StoreError(f"{e}; shard {self.final_path} is finished, rerun the job to merge the store's "
                             f"logs") from None

    def close(self) -> None:
        """Drop the shard's locks (finalize does; call it when a job ends early)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _public_failure(x: dict) -> dict:
    return {k: x[k] for k in ("path", "stage", "reason", "video_id", "same_as") if k in x}


def merge_error_logs(store_dir: str) -> None:
    """Write STORE/errors.jsonl from the per-shard logs once every shard is finished (under the setup lock)."""
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

def seal_shard(path: str) -> dict:
    """Write the integrity record of a shard that has none (made before records existed).

    The shard is checked first as far as its bytes allow (index arrays, codes inside the
    vocabulary, finite increasing timestamps); HDF5 reads it unverified, so run this only on
    storage you trust.
    """
    if os.path.exists(record_path(path)):
        raise StoreError(f"{path} already has an integrity record")
    shard = _Shard(path, verify=False)
    vocab = int(shard.meta["tokenizer"]["vocab_size"])
    for i in range(len(shard.video_ids)):
        codes = shard.read(i)
        if codes.size and (codes.min() < 0 or codes.max() >= vocab):
            raise StoreError(f"{path}: video {shard.video_ids[i]} holds codes outside [0, {vocab}); not sealed")
        ts = shard.timestamps(i)
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) < 0):
            raise StoreError(f"{path}: video {shard.video_ids[i]} has non-finite or decreasing timestamps; not sealed")
    shard.close()
    _write_record(path, path, {**shard.facts, "failures": len(shard.failures)})
    return _read_record(path, "shard")



def list_shards(store_dir: str) -> list[tuple[int, int]]:
    out = []
    for name in os.listdir(store_dir):
        m = _SHARD_RE.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


def frame_range(frames: slice | None, t: int) -> tuple[int, int]:
    """[f0, f1) of a video of t frames that `frames` selects (its step is ignored), codes and frames alike."""
    if frames is None:
        return 0, t
    f0, f1, _ = frames.indices(t)
    return f0, max(f0, f1)


class _Shard:
    """Index arrays of one shard in memory; the code (and frame) arrays read lazily, one handle per process.

    verify: size and SHA-256 against the integrity record before HDF5 opens the file. Without,
    a record's size is still checked first (a stat: truncated and appended files never reach
    HDF5), and the index arrays are checked either way, against the record's facts when there
    is one.
    """

    def __init__(self, path: str, verify: bool = True):
        self.path = path
        record = verify_file(path) if verify else _record_if_any(path)  # its index facts are compared below
        if record is not None and not verify:
            _check_size(path, record, "shard")
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise StoreError(f"{path}: not a {FORMAT} shard (format attribute {f.attrs.get('format')!r})")
                self.meta = json.loads(f.attrs["meta"])
                self.num_shards = int(f.attrs["num_shards"])
                named = _SHARD_RE.match(os.path.basename(path))
                held = (int(f.attrs["shard_id"]), self.num_shards)
                if named and held != (int(named.group(1)), int(named.group(2))):
                    raise StoreError(f"{path} holds shard {held[0]} of {held[1]}, not the one its name says (files "
                                     f"renamed or swapped?); re-extract it (rerun with --overwrite)")
                self.code_offsets = f["code_offsets"][()]
                self.frame_offsets = f["frame_offsets"][()]
                self.shapes = f["shapes"][()]
                self.labels = f["labels"][()]
                self.source_index = f["source_index"][()]
                self.video_ids = _strings(f["video_ids"])
                self.failures = json.loads(f.attrs.get("failures", "[]"))
                num_codes, num_ts = int(f["codes"].shape[0]), int(f["timestamps"].shape[0])
                self.frames_spec = _frames_spec(self.meta, path)
                self.pixel_offsets, num_pixels = self._pixel_index(f)
                source_counts = {k: int(f[k].shape[0]) for k in _SOURCE_DATASETS if k in f}
        except StoreError:
            raise
        except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as e:
            raise StoreError(f"{path}: unreadable token-store shard ({type(e).__name__}: {e})") from e
        names = self.meta.get("label_names") if isinstance(self.meta, dict) else None
        #: {"videos", "codes", "frames"} as the index tiles them (what the integrity record holds)
        self.facts = facts = check_index(path, shapes=self.shapes, code_offsets=self.code_offsets,
                            frame_offsets=self.frame_offsets, labels=self.labels, source_index=self.source_index,
                            num_ids=len(self.video_ids), num_codes=num_codes, num_timestamps=num_ts,
                            num_classes=len(names) if isinstance(names, list) else None)
        if self.frames_spec is not None:
            facts.update(check_pixel_index(path, shapes=self.shapes, pixel_offsets=self.pixel_offsets,
                                           num_pixels=num_pixels, stride=self.stride,
                                           size=self.frames_spec["size"]))
            if record is not None and "pixels" not in record:
                raise StoreError(f"shard {path} holds frames but its integrity record has no 'pixels' count; "
                                 f"re-extract it (rerun with --overwrite)")
        for name, count in source_counts.items():
            if count != len(self.video_ids):
                raise StoreError(f"shard {path} has an inconsistent index: {name} has {count} entries for "
                                 f"{len(self.video_ids)} videos; re-extract it (rerun with --overwrite)")
        #: whether the shard records each video's file (older shards do not)
        self.has_sources = len(source_counts) == len(_SOURCE_DATASETS)
        if record is not None:
            wrong = {k: (record.get(k), v) for k, v in facts.items() if k in record and record[k] != v}
            if wrong:
                raise StoreError(f"shard {path} disagrees with its integrity record: "
                                 + ", ".join(f"{k} {b} (record: {a})" for k, (a, b) in wrong.items()))
        self._file = None
        self._pid = None
        self._datasets: dict[str, h5py.Dataset] = {}

    def _pixel_index(self, f: h5py.File) -> tuple[np.ndarray | None, int]:
        """(pixel_offsets, size of `pixels`) of a shard with frames; (None, 0) without; a mismatch is an error."""
        self.stride: int | None = None
        has = "pixels" in f or "pixel_offsets" in f
        if self.frames_spec is None:
            if has:
                raise StoreError(f"{self.path} holds frames its metadata does not declare (no 'frames' entry); "
                                 f"re-extract it (rerun with --overwrite)")
            return None, 0
        if not ("pixels" in f and "pixel_offsets" in f):
            raise StoreError(f"{self.path}: its metadata says it keeps frames but the pixels or pixel_offsets "
                             f"dataset is missing; re-extract it (rerun with --overwrite)")
        self.stride = _stride(self.meta, self.path)
        pixels = f["pixels"]
        want = self.frames_spec["compression"]
        if pixels.dtype != np.uint8 or pixels.ndim != 1 or (
                pixels.shape[0] and (pixels.compression or "none") != want):
            raise StoreError(f"{self.path}: the pixels dataset is {pixels.dtype} {pixels.shape} compressed with "
                             f"{pixels.compression or 'none'}, its metadata says flat uint8 with {want}; re-extract "
                             f"it (rerun with --overwrite)")
        return f["pixel_offsets"][()], int(pixels.shape[0])

    def _dataset(self, name: str) -> h5py.Dataset:
        """A dataset of this process's own handle, kept open: opening one per read cost ~0.4 ms and dropped
        its chunk cache (a compressed chunk was then decompressed again for every clip)."""
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._datasets = {}
        if name not in self._datasets:
            self._datasets[name] = self._file[name]
        return self._datasets[name]

    def read(self, i: int, frames: slice | None = None) -> np.ndarray:
        t, h, w = (int(x) for x in self.shapes[i])
        start = int(self.code_offsets[i])
        f0, f1 = frame_range(frames, t)
        return self._dataset("codes")[start + f0 * h * w:start + f1 * h * w].reshape(f1 - f0, h, w)

    def read_frames(self, i: int, frames: slice | None = None) -> np.ndarray:
        """Frames (T', H, W, 3) uint8 of video i: the same frame indices as `read(i, frames)`."""
        t, h, w = (int(x) for x in self.shapes[i])
        f0, f1 = frame_range(frames, t)
        hh, ww = h * self.stride, w * self.stride
        per = hh * ww * 3
        start = int(self.pixel_offsets[i])
        return self._dataset("pixels")[start + f0 * per:start + f1 * per].reshape(f1 - f0, hh, ww, 3)

    def pixel_bytes(self) -> tuple[int, int]:
        """(bytes of frames on disk, bytes uncompressed) in this shard."""
        d = self._dataset("pixels")
        return int(d.id.get_storage_size()), int(d.shape[0])

    def sources(self) -> list[tuple[str | None, str | None]]:
        """(resolved path, fingerprint) of each video's file, None where not recorded (read on demand)."""
        if not self.has_sources:
            return [(None, None)] * len(self.video_ids)
        paths, prints = (self._dataset(name) for name in ("source_paths", "fingerprints"))
        return [(p or None, fp or None) for p, fp in zip(_strings(paths), _strings(prints))]

    def timestamps(self, i: int) -> np.ndarray:
        t = int(self.shapes[i][0])
        s = int(self.frame_offsets[i])
        return self._dataset("timestamps")[s:s + t]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._datasets = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        return state


class TokenStore:
    """Read a token store: `len(s)`, `s.video_ids`, `s.read(video_id) -> (codes int16 (T,h,w), label)`;
    `s.read_frames_at(k)` -> frames uint8 (T, H, W, 3) when `s.has_frames`.

    `path` is a store directory (all its shards are read together, in shard order, which
    equals the order of the source list) or a single shard file. An unfinished store
    (missing shards, extraction in progress) is an error unless `allow_partial=True`.
    Every shard's size and SHA-256 are checked against its integrity record before HDF5
    reads it (`verify=False` skips that on trusted storage; the index checks always run);
    a corrupt shard is a StoreError naming it.
    """

    def __init__(self, path: str, allow_partial: bool = False, verify: bool = True):
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
        self._shards = [_Shard(f, verify=verify) for f in files]
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

    @property
    def has_frames(self) -> bool:
        """Whether the store keeps the frames its codes encode (extracted with --keep-frames)."""
        return self.meta.get("frames") is not None

    def read_frames_at(self, k: int, frames: slice | None = None) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of the k-th video (or the `frames` slice of them): frame j is the image
        whose codes are `read_at(k, frames)[0][j]`. Reads only those frames."""
        if not self.has_frames:
            raise StoreError(f"token store {self.path} keeps no frames (it was extracted without --keep-frames): "
                             f"extract with --keep-frames, or decode them from the videos "
                             f"(video2token.online_frames.OnlineFrames)")
        si, i = self._loc[k]
        return self._shards[si].read_frames(i, frames)

    def frame_bytes(self) -> tuple[int, int]:
        """(bytes of the kept frames on disk, bytes uncompressed), all shards; (0, 0) without frames."""
        if not self.has_frames:
            return 0, 0
        sizes = [s.pixel_bytes() for s in self._shards]
        return sum(a for a, _ in sizes), sum(b for _, b in sizes)

    def timestamps(self, video_id: str) -> np.ndarray:
        si, i = self._loc[self.index(video_id)]
        return self._shards[si].timestamps(i)

    def source_path(self, video_id: str) -> str:
        return os.path.join(self.meta["video_root"], video_id)

    def sources(self) -> list[tuple[str, str | None, str | None]]:
        """(video id, resolved path, fingerprint "BYTES:SHA256") of every video, in store order; path and
        fingerprint are None where the shard does not record them (made before they were)."""
        out = []
        for s in self._shards:
            out += [(vid, path, fp) for vid, (path, fp) in zip(s.video_ids, s.sources())]
        return out

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
