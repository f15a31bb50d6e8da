r"""Extraction job: videos -> frames at a fixed FPS -> VQ codes -> an HDF5 token store.

    python -m video2token.extract --video-root data/videos/ucf101 \
        --anno data/annotations/ucf101/ucf101_train_split_1_videos.txt \
        --output data/video_tokens/dalle_ucf101_train_split1_fps2_hflip0_128center128 \
        --fps 2 --frame-shorter-side 128 --crop-size 128 --crop-type center \
        --tokenizer-path weights/dalle

Decoding runs in worker processes (a video that hangs or crashes its decoder is killed
after --timeout and logged) while the parent encodes fixed-size batches. Work is committed
in small atomic part files: after a kill -9, rerunning the same command continues and ends
with a store bit-identical to an uninterrupted run. Many machines split one job with
--shard-id/--num-shards, or RANK/WORLD_SIZE (torchrun, DeepSpeed) or SLURM_PROCID/SLURM_NTASKS.
--keep-frames also stores the frames the tokenizer encoded (uint8) beside the codes, for
training that reads pixels (BEVT).

A file listed under two names (a symlinked directory or file, a hard link) is stored once,
under its first name in list order; the later names are logged (stage "same_file", naming the
kept id) and listed in the summary. Every shard reads the whole list, so all shards and reruns
agree on the name kept. Each stored video records its file's resolved path and fingerprint
(size + SHA-256 of its bytes), which `python -m video2token.inspect STORE --against OTHER`
compares across stores.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .annotations import SAME_FILE, AnnotationError, read_annotations, same_file_lines
from .batcher import FrameBatcher
from .cli import HelpFormatter
from .decode_pool import DEFAULT_READER, DecodePool, read_inline
from .precision import add_precision_flag, read_cpu_bf16
from .store import (DEFAULT_FRAMES_COMPRESSION, FRAME_COMPRESSIONS, MAX_VOCAB, ShardWriter, StoreError, VideoRecord,
                    frames_meta)
from .tokenizers import KINDS, TokenizerError, load_tokenizer
from .naming import CHANNEL_ORDERS
from .video import CROP_TYPES, DEFAULT_MAX_FRAMES, trim_to_stride


@dataclass(frozen=True)
class ExtractConfig:
    video_root: str
    anno: tuple[str, ...]
    output: str
    fps: float
    frame_shorter_side: int
    crop_size: int
    crop_type: str = "center"
    hflip: bool = False
    channel_order: str = "rgb"      # a permutation of the frames' channels (a colour view); naming.CHANNEL_ORDERS
    tokenizer: str = "auto"  # or one of tokenizers.KINDS; auto reads what tokenizer_path is
    tokenizer_path: str = ""
    anno_format: str = "auto"
    #: a file with one class name per line (line i = label i), for formats that carry none
    label_names: str | None = None
    decoder: str = "auto"
    batch_size: int = 16
    num_workers: int = 2
    timeout: float = 600.0
    shard_id: int = 0
    num_shards: int = 1
    overwrite: bool = False
    commit_every: int = 64
    commit_seconds: float = 60.0
    device: str | None = None
    #: a --precision value (video2token.precision); the one it resolves to is in the store's metadata
    precision: str = "auto"
    #: the user's VIMPAC_CPU_BF16 (read once by `main`): forces the CPU's native-bf16 answer when not None
    cpu_bf16: bool | None = None
    progress: bool = True
    #: "module:function" with read_video's signature, run in the decode workers
    reader: str = DEFAULT_READER
    #: a video that would yield more frames is skipped (logged, stage "decode", kind too_long)
    max_frames: int = DEFAULT_MAX_FRAMES
    #: store the frames the tokenizer encoded beside the codes (BEVT-style training reads pixels)
    keep_frames: bool = False
    #: one of store.FRAME_COMPRESSIONS, for the kept frames
    frames_compression: str = DEFAULT_FRAMES_COMPRESSION


_MAX_PENDING_FRAME_BYTES = 256 << 20  # --keep-frames: commit before kept frames fill more memory than this


def read_label_names(path: str) -> list[str]:
    """One class name per line, line i = label i (blank lines are an error: they would shift labels)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"--label-names {path}: {e.strerror}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}:{i}: empty class name")
    if len(set(lines)) != len(lines):
        raise ValueError(f"{path}: duplicate class names")
    return [line.strip() for line in lines]


def shard_from_env(env=os.environ) -> tuple[int, int]:
    """(shard id, number of shards) from the launcher's environment, (0, 1) when there is none."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"),
                               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if rank_key in env and size_key in env:
            return int(env[rank_key]), int(env[size_key])
    return 0, 1


def shard_range(n_items: int, shard_id: int, num_shards: int) -> range:
    """Contiguous blocks, so the shards read in order equal the unsharded store."""
    return range(n_items * shard_id // num_shards, n_items * (shard_id + 1) // num_shards)


def _store_meta(cfg: ExtractConfig, tok, label_names, anno_format: str, num_listed: int) -> dict:
    frames = {"frames": frames_meta(cfg.crop_size if cfg.crop_type != "none" else None, cfg.frames_compression)
              } if cfg.keep_frames else {}
    return {
        "tokenizer": tok.describe(),
        "fps": cfg.fps,
        "frame_shorter_side": cfg.frame_shorter_side,
        "crop_size": cfg.crop_size,
        "crop_type": cfg.crop_type,
        "hflip": bool(cfg.hflip),
        **({"channel_order": cfg.channel_order} if cfg.channel_order != "rgb" else {}),  # older stores: rgb
        "decoder": cfg.decoder,
        "video_root": os.path.abspath(cfg.video_root),
        "annotations": [os.path.abspath(a) for a in cfg.anno],
        "anno_format": anno_format,
        "label_names": label_names,
        "num_listed": num_listed,
        "code_dtype": "int16",
        **frames,
    }


def run(cfg: ExtractConfig) -> dict:
    """Run (or resume) one shard of an extraction; return the summary dict."""
    t_start = time.monotonic()
    if cfg.crop_type not in CROP_TYPES:
        raise ValueError(f"--crop-type must be one of {CROP_TYPES}, got {cfg.crop_type!r}")
    if cfg.fps <= 0:
        raise ValueError(f"--fps must be positive, got {cfg.fps}")
    if cfg.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {cfg.max_frames}")
    if cfg.frames_compression not in FRAME_COMPRESSIONS:
        raise ValueError(f"--frames-compression must be one of {FRAME_COMPRESSIONS}, got {cfg.frames_compression!r}")
    if cfg.crop_type != "none" and cfg.crop_size > cfg.frame_shorter_side:
        raise ValueError(f"--crop-size {cfg.crop_size} is larger than --frame-shorter-side {cfg.frame_shorter_side}")
    ann = read_annotations(list(cfg.anno), cfg.video_root, fmt=cfg.anno_format,
                           label_names=read_label_names(cfg.label_names) if cfg.label_names else None)
    tok = load_tokenizer(cfg.tokenizer, cfg.tokenizer_path, device=cfg.device, batch_size=cfg.batch_size,
                         precision=cfg.precision, cpu_bf16=cfg.cpu_bf16)
    print(f"[extract] {tok.name} tokenizer: {tok.policy.describe()}", file=sys.stderr, flush=True)
    if tok.vocab_size > MAX_VOCAB:
        raise StoreError(f"tokenizer vocabulary {tok.vocab_size} does not fit the stored dtype int16 (max {MAX_VOCAB})")
    side = cfg.crop_size if cfg.crop_type != "none" else cfg.frame_shorter_side
    if side % tok.downsample:
        raise ValueError(f"frame size {side} is not a multiple of the tokenizer stride {tok.downsample}")

    meta = _store_meta(cfg, tok, ann.label_names, ann.format, len(ann.items))
    writer = ShardWriter(cfg.output, meta, cfg.shard_id, cfg.num_shards, overwrite=cfg.overwrite)
    shard_items = [(k, ann.items[k]) for k in shard_range(len(ann.items), cfg.shard_id, cfg.num_shards)]
    summary = {"store": os.path.abspath(cfg.output), "shard": f"{cfg.shard_id}/{cfg.num_shards}",
               "listed": len(shard_items), "stored": 0, "skipped": collections.Counter(), "frames": 0,
               "resumed_from": len(writer.done), "already_complete": writer.complete, "list_empty": not ann.items,
               # the whole list's, the same on every shard: {later name: the id its file is stored under}
               "same_file": {sk.video_id: sk.same_as for sk in ann.skipped if sk.kind == SAME_FILE}}
    if writer.complete:
        path, failures, summary["videos_in_shard"] = writer.finalize()
        summary["skipped"].update(f["stage"] for f in failures)
        return _finish(summary, t_start, 0)

    if cfg.shard_id == 0:  # annotation problems are logged once, by the first shard
        for j, sk in enumerate(ann.skipped):
            idx = -1 - j
            if idx not in writer.done:
                writer.add_failure(idx, sk.video_id, sk.source, sk.kind, sk.reason, same_as=sk.same_as)
    todo = []
    for k, it in shard_items:
        if k in writer.done:
            continue
        if _utf8(it.video_id):
            todo.append((k, it))
        else:  # ids are stored as UTF-8: a file name that is not would fail every commit
            writer.add_failure(k, it.video_id, it.path, "annotation",
                               "the file name is not valid UTF-8 (store ids are UTF-8 text): rename the file")
    read_kwargs = dict(fps=cfg.fps, shorter_side=cfg.frame_shorter_side, crop_size=cfg.crop_size,
                       crop_type=cfg.crop_type, hflip=cfg.hflip, channel_order=cfg.channel_order,
                       decoder=None if cfg.decoder == "auto" else cfg.decoder, max_frames=cfg.max_frames)

    batcher = FrameBatcher(tok.encode, cfg.batch_size)
    bar = _progress(len(shard_items), len(shard_items) - len(todo), cfg.progress and cfg.shard_id == 0)
    last_commit = time.monotonic()
    encode_time = 0.0

    def store_ready(results) -> None:
        nonlocal last_commit
        for k, (it, timestamps, fingerprint, frames), codes in results:
            # refuses codes that do not fit, and frames that are not the codes' (T, h*stride, w*stride, 3)
            writer.add(VideoRecord(k, it.video_id, it.label, codes, timestamps, frames=frames, source_path=it.path,
                                   fingerprint=fingerprint))
            summary["stored"] += 1
            summary["frames"] += codes.shape[0]
            bar.update(1)
        if (writer.pending >= cfg.commit_every or time.monotonic() - last_commit > cfg.commit_seconds
                or writer.pending_frame_bytes > _MAX_PENDING_FRAME_BYTES):
            writer.commit()
            last_commit = time.monotonic()

    def handle(res) -> None:
        nonlocal encode_time
        k = res.key
        it = ann.items[k]
        if res.stage != "ok":
            writer.add_failure(k, it.video_id, it.path, res.stage, res.reason)
            summary["skipped"][res.stage] += 1
            bar.update(1)
            return
        frames = res.frames if cfg.crop_type != "none" else trim_to_stride(res.frames, tok.downsample)
        batcher.add(k, frames, (it, res.timestamps, res.fingerprint, frames if cfg.keep_frames else None))
        t0 = time.monotonic()
        store_ready(batcher.ready())
        encode_time += time.monotonic() - t0
        bar.set_postfix(fps=f"{summary['frames'] / max(time.monotonic() - t_start, 1e-9):.1f}", refresh=False)

    tasks = ((k, it.path) for k, it in todo)
    try:
        if cfg.num_workers > 0:
            with DecodePool(cfg.num_workers, read_kwargs, cfg.timeout, cfg.reader) as pool:
                for res in pool.imap(tasks):
                    handle(res)
        else:
            for k, path in tasks:
                handle(read_inline(path, read_kwargs, key=k, reader=cfg.reader))
        t0 = time.monotonic()
        store_ready(batcher.flush())
        encode_time += time.monotonic() - t0
        writer.commit()
    finally:
        bar.close()
    _, failures, summary["videos_in_shard"] = writer.finalize()
    summary["skipped"] = collections.Counter(f["stage"] for f in failures)
    summary["encode_seconds"] = round(encode_time, 2)
    return _finish(summary, t_start, summary["frames"])


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os.listdir's surrogate escapes for undecodable bytes
        return False


def _finish(summary: dict, t_start: float, frames_this_run: int) -> dict:
    wall = time.monotonic() - t_start
    summary["seconds"] = round(wall, 2)
    summary["frames_per_s"] = round(frames_this_run / wall, 2) if wall > 0 else 0.0
    summary["skipped"] = dict(summary["skipped"])
    return summary


class _NoBar:
    def update(self, n=1): pass
    def set_postfix(self, **kw): pass
    def close(self): pass


def _progress(total: int, initial: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="video", desc="extract", dynamic_ncols=True, mininterval=1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m video2token.extract", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--video-root", required=True, help="directory the annotation paths are relative to")
    p.add_argument("--anno", nargs="+", required=True,
                   help="annotation file(s): MMAction2 list, UCF101/HMDB51 split files, SSv2/Diving48 JSON, "
                        "Kinetics CSV, or a directory of videos (format from --anno-format)")
    p.add_argument("--anno-format", default="auto",
                   help="auto, list, ucf101, hmdb51, ssv2, kinetics, diving48 or folder, with options after a "
                        "colon, e.g. 'hmdb51:subset=train,split=1' (see video2token/annotations.py)")
    p.add_argument("--label-names", default=None,
                   help="file with one class name per line (line i = label i) for lists that carry only indices; "
                        "labels outside it are skipped as unknown")
    p.add_argument("--output", required=True, help="token store directory to create (or resume)")
    p.add_argument("--fps", type=float, required=True, help="frames sampled per second of video")
    p.add_argument("--frame-shorter-side", type=int, required=True, help="resize the shorter side to this (px)")
    p.add_argument("--crop-size", type=int, required=True, help="square crop size (px)")
    p.add_argument("--crop-type", default="center", choices=CROP_TYPES,
                   help="where the square crop sits along the long side; 'none' keeps the resized frame "
                        "(trimmed to a multiple of the tokenizer stride)")
    p.add_argument("--hflip", action="store_true", help="flip frames horizontally")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS, default="rgb",
                   help="the frames' channels, e.g. gbr: a colour view of the same videos (a store per view; "
                        "pre-training's --pair-views distinct then draws a video's two clips from two views, so the "
                        "pair cannot be matched by colour)")
    p.add_argument("--tokenizer", default="auto", choices=("auto", *KINDS),
                   help="tokenizer kind; auto tells from --tokenizer-path (encoder.pkl: dalle, a directory "
                        "with config.json + model.safetensors: vqvae)")
    p.add_argument("--tokenizer-path", required=True,
                   help="dalle: encoder.pkl, a directory with it, or a URL; vqvae: a directory made by "
                        "python -m video2token.train_tokenizer")
    p.add_argument("--decoder", default="auto", choices=["auto", "av", "decord"],
                   help="video decoder; auto picks per container (see the README)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per encoder call")
    p.add_argument("--num-workers", type=int, default=2, help="decoding processes (0: decode in this process, no timeout)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a video's decoder is killed")
    p.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                   help="skip (and log) a video that would yield more frames than this (default %(default)s: "
                        "83 min at 2 FPS); guards memory against files whose timestamps or header lie")
    p.add_argument("--shard-id", type=int, default=None, help="this job's shard (default: RANK / SLURM_PROCID, else 0)")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (default: WORLD_SIZE / SLURM_NTASKS, else 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store (or shard) made earlier")
    p.add_argument("--commit-every", type=int, default=64, help="videos per committed part (resume granularity)")
    p.add_argument("--device", default=None, help="torch device for the tokenizer (default: cuda:LOCAL_RANK under torchrun / srun, cuda if available, else cpu)")
    p.add_argument("--keep-frames", action="store_true",
                   help="also store the frames the tokenizer encoded (uint8, after resize / crop / flip) beside "
                        "the codes, for training on pixels (BEVT); about crop^2 x 3 bytes per frame before "
                        "compression. A store has them for every video or for none")
    p.add_argument("--frames-compression", default=DEFAULT_FRAMES_COMPRESSION, choices=FRAME_COMPRESSIONS,
                   help="HDF5 compression of the kept frames: none reads fastest (6-12x lzf / gzip at 128 px); "
                        "lzf / gzip shrink flat or synthetic frames (6x / 11x on the demo's) but natural ones "
                        "barely (benchmarks/README.md, 'Frames for training')")
    add_precision_flag(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    if (a.shard_id is None) != (a.num_shards is None):
        print("error: give both --shard-id and --num-shards, or neither", file=sys.stderr)
        return 2
    shard_id, num_shards = (a.shard_id, a.num_shards) if a.shard_id is not None else shard_from_env()
    cfg = ExtractConfig(
        video_root=a.video_root, anno=tuple(a.anno), output=a.output, fps=a.fps,
        frame_shorter_side=a.frame_shorter_side, crop_size=a.crop_size, crop_type=a.crop_type,
        hflip=a.hflip, channel_order=a.channel_order, tokenizer=a.tokenizer, tokenizer_path=a.tokenizer_path, anno_format=a.anno_format,
        label_names=a.label_names,
        decoder=a.decoder, batch_size=a.batch_size, num_workers=a.num_workers, timeout=a.timeout,
        shard_id=shard_id, num_shards=num_shards, overwrite=a.overwrite, commit_every=a.commit_every,
        device=a.device, precision=a.precision, cpu_bf16=cpu_bf16, progress=not a.no_progress, max_frames=a.max_frames,
        keep_frames=a.keep_frames, frames_compression=a.frames_compression)
    try:
        summary = run(cfg)
    except (StoreError, AnnotationError, TokenizerError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a lost mount: what was committed stays, the rerun continues from it
        print(f"error: {e}; the store keeps every committed part: free the space (or fix the mount) and rerun "
              f"the same command to continue", file=sys.stderr)
        return 2
    print(_format_summary(summary))
    if not summary["videos_in_shard"]:  # an empty store is never a success
        why = ("the annotation list is empty" if summary["list_empty"] else
               "this shard's part of the list is empty" if not summary["listed"] else
               "every video of this shard failed")
        print(f"error: nothing stored: {why}; see errors*.jsonl in {summary['store']}", file=sys.stderr)
        return 1
    return 0


def _format_summary(s: dict) -> str:
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(s["skipped"].items())) or "none"
    if s.get("already_complete"):
        text = (f"shard {s['shard']} of {s['store']} is already complete ({s['videos_in_shard']} videos stored, "
                f"skipped: {skipped}); nothing to do (use --overwrite to redo it)")
    else:
        text = (f"done: {s['stored']} videos stored this run ({s['resumed_from']} already done before), "
                f"{s['frames']} frames in {s['seconds']} s = {s['frames_per_s']} frames/s; skipped: {skipped}; "
                f"store: {s['store']} (shard {s['shard']}); errors: see errors*.jsonl there")
    return text + "".join(f"\n{line}" for line in same_file_lines(s["same_file"]))


if __name__ == "__main__":
    sys.exit(main())
