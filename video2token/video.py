"""Read a video at a fixed FPS by presentation timestamps, then resize / crop / flip (VIMPAC stage 1 input).

The sampling follows the VIMPAC extraction recipe (Tan et al., 2021): frames at a fixed rate
(2 FPS for pre-training corpora, 2/4/16 FPS downstream), shorter side resized to S, a square
crop of C at top / center / bottom along the long side, optional horizontal flip.

Definitions (both decoders follow them):

- Timeline: seconds since the start of the video stream (its start_time; the first frame's
  pts when the container has none). Frame i is shown from pts_i until pts_{i+1}.
- Duration: the end of the last decoded frame, i.e. its pts + its duration as the container
  stores it (the duration of its packet: both decoders read it through PyAV, because decord's
  end stamps are not frame durations); when the file gives none, the median interval of the
  first frames; for a lone frame with none, 1 / the stream's nominal fps. It is measured on
  the frames that actually decode, so a damaged tail shortens the video (the result is then
  the true prefix); if that loses more than max(1 s, 10%) of the duration the header promises,
  the file is reported as truncated (VideoError kind "truncated") instead.
- Sample times: t_k = k / fps for k = 0, 1, ... while t_k < duration (by more than 1 ms).
- The frame shown at t_k: the last frame with pts <= t_k + 1 ms; before the first pts, the
  first frame. The 1 ms absorbs millisecond clocks (mkv / webm store 1/30 s as 33 ms) and
  decord's float32 stamps; real frame intervals are >= 4 ms (240 fps).
- A video with zero decodable frames is an error (kind "no_frames"); a still image (PNG, JPEG,
  ... whatever its name says) is not a video (kind "not_video").
- `max_frames` caps the sampled frames per video (kind "too_long" beyond it): checked against
  the header's duration before decoding and while sampling, so a file whose timestamps jump
  (3 frames at 0, 5000 and 10000 s would sample 20,002 frames at 2 FPS) never fills memory.
- Rotation: the display matrix is honoured: frames are rotated to be upright before resizing.
  PyAV reports it per frame (`VideoFrame.rotation`, degrees counter-clockwise). decord 0.6.0
  applies it itself (measured; its rotated output has padded rows for some widths, which are
  stripped here). Flips in the display matrix are not applied.
- Resize: torch bicubic with antialias on uint8 (PIL's BICUBIC filter, within 1 level;
  ~10x faster than PIL here), deterministic. New size: shorter side = S, longer side =
  round(long * S / short).

Decoders: "av" (PyAV, bundled FFmpeg 8) decodes sequentially and converts to RGB only the
sampled frames; "decord" asks decord for the sampled frame indices (it seeks itself). decord
is imported lazily and is optional: without it the default is "av" everywhere. The default
per container comes from benchmarks/decoders.py (see benchmarks/README.md, "Video decoding").
decord can hang on some broken files; callers that need a guard should run read_video in a
worker process with a timeout (as benchmarks/decoders.py does).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Literal

# av before decord: decord bundles an old libvpx whose symbols win if it loads first and
# then break PyAV's libvpx-vp9 encoder (measured). Keep this import at module top.
import av
import numpy as np
import torch

from video2token.naming import CHANNEL_ORDERS, CROP_TYPES

CropType = Literal["top", "center", "bottom", "none"]  # the values of naming.CROP_TYPES
DecoderName = Literal["av", "decord"]

# Default decoder per container suffix, chosen from benchmarks/decoders.py (benchmarks/README.md).
DEFAULT_DECODER: dict[str, DecoderName] = {
    ".mp4": "av",
    ".m4v": "av",
    ".mov": "av",
    ".mkv": "av",
    ".webm": "av",
    ".avi": "av",
}

_TIE_EPS = 1e-3  # seconds: tie tolerance of the sampling rule (module docstring)
_TRUNCATION_SLACK_S = 1.0
_TRUNCATION_SLACK_FRAC = 0.10
_DECORD_CHUNK = 32  # full-size frames per get_batch call: bounds memory on long videos
#: extraction's default --max-frames: 83 min at 2 FPS, 10 min at 16 FPS; a decode worker holds up to
#: max_frames x crop^2 x 3 bytes (490 MB at 128 px)
DEFAULT_MAX_FRAMES = 10_000


class VideoError(Exception):
    """A video that cannot be read; `kind` says why.

    kinds: "missing", "empty", "not_video", "no_video_stream", "decode_error", "truncated",
    "no_frames", "bad_argument" (crop larger than the frame etc.).
    """

    def __init__(self, path: str | Path, reason: str, kind: str):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason} [{kind}]")


def decord_available() -> bool:
    return importlib.util.find_spec("decord") is not None


def default_decoder(path: str | Path) -> DecoderName:
    choice = DEFAULT_DECODER.get(Path(path).suffix.lower(), "av")
    if choice == "decord" and not decord_available():
        return "av"
    return choice


# ---------------------------------------------------------------------------------------------
# Opening and probing (PyAV)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(path, "file does not exist", "missing")
    if not path.is_file():
        raise VideoError(path, "not a regular file", "not_video")
    if path.stat().st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)", "empty")


def _open(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise VideoError(path, f"FFmpeg cannot open it as a media file ({e.strerror or e})", "not_video") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        if not kinds:  # e.g. an mp4 cut before its index (moov) was written
            raise VideoError(path, "no streams found (truncated, or not a media file)", "not_video")
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})", "no_video_stream")
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg reads a still image as a one-frame "video"
        long_name = container.format.long_name
        container.close()
        raise VideoError(path, f"a still image ({long_name}), not a video", "not_video")
    return container


def _header_duration(container, stream) -> float | None:
    """Video duration the header promises (seconds from the stream start); truncation check only."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # matroska/webm: end time "HH:MM:SS.nnnnnnnnn"
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s) - start
        except ValueError:
            pass
    if container.duration is not None:
        return container.duration / 1e6  # AV_TIME_BASE microseconds, all streams
    return None


def _last_frame_duration(container, stream) -> float | None:
    """Duration (s) of the packet with the largest pts, read from the file's tail without decoding."""
    try:  # jump to the last keyframe; demuxers that cannot seek just start from the top
        container.seek(2**62 // 1000, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        container.seek(0)
    best_pts, best_duration = None, None
    for packet in container.demux(stream):
        if packet.pts is not None and (best_pts is None or packet.pts > best_pts):
            best_pts, best_duration = packet.pts, packet.duration
    if not best_duration:
        return None
    return float(best_duration * stream.time_base)


def probe_video(path: str | Path) -> dict:
    """Header facts plus the first frame's rotation (needs one decoded frame).

    Returns dict(duration, fps, width, height, rotation, n_frames, codec, container); width and
    height are the stored (coded) size, before rotation; n_frames is 0 when the header has no count.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = int(frame.rotation)
                break
        except av.FFmpegError as e:
            raise VideoError(path, f"cannot decode the first frame ({e})", "decode_error") from e
        rate = stream.average_rate or stream.guessed_rate
        return dict(
            duration=_header_duration(container, stream),
            fps=float(rate) if rate else None,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            rotation=rotation,
            n_frames=int(stream.frames or 0),
            codec=stream.codec_context.name,
            container=container.format.name,
        )
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------
# Timing: pure functions


def sample_times(duration: float, fps: float) -> np.ndarray:
    """t_k = k / fps for k = 0, 1, ... while t_k < duration; float64 (K,)."""
    n = max(0, math.ceil(duration * fps))
    times = np.arange(n, dtype=np.float64) / fps
    return times[times + _TIE_EPS < duration]


def frame_indices(frame_pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame shown at each time: the last with pts <= t (first frame before it).

    frame_pts: (N,) increasing seconds; times: (K,) seconds -> (K,) int64.
    """
    idx = np.searchsorted(frame_pts, times + _TIE_EPS, side="right") - 1
    return np.clip(idx, 0, len(frame_pts) - 1).astype(np.int64)


def _video_end(last_pts: float, last_duration: float | None, frame_pts: np.ndarray, nominal_fps: float | None) -> float:
    """End time of the last frame: its pts + its duration (fallbacks in the module docstring).

    frame_pts: (n,) some leading pts, for the median interval when the duration is unknown.
    """
    if last_duration is not None and last_duration > 0:
        return last_pts + last_duration
    if len(frame_pts) > 1:
        return last_pts + float(np.median(np.diff(frame_pts)))
    # A lone frame with no duration anywhere still shows at t_0.
    return last_pts + (1.0 / nominal_fps if nominal_fps else 2 * _TIE_EPS)


def _check_truncation(path: Path, decoded_duration: float, header_duration: float | None) -> None:
    if header_duration is None or header_duration <= 0:
        return
    missing = header_duration - decoded_duration
    if missing > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRAC * header_duration):
        raise VideoError(
            path,
            f"frames decode up to {decoded_duration:.2f} s but the header says {header_duration:.2f} s",
            "truncated",
        )


# ---------------------------------------------------------------------------------------------
# Decoders: both return output frames (K, ...) uint8 (already transformed) and the times (K,)

Transform = Callable[[np.ndarray], np.ndarray]  # upright (N, H, W, 3) -> (N, ...) uint8


def _too_long(path: Path, frames: int, fps: float, max_frames: int, duration: float | None) -> VideoError:
    claim = f"; the file claims {duration:.1f} s" if duration else ""
    return VideoError(path, f"{frames} frames at {fps:g} FPS exceed the cap of {max_frames} per video{claim} "
                            f"(--max-frames: raise it for long videos)", "too_long")


def _check_header_length(path: Path, header_duration: float | None, fps: float, max_frames: int | None) -> None:
    if max_frames is not None and header_duration is not None and header_duration > 0:
        n = math.ceil(header_duration * fps)
        if n > max_frames:
            raise _too_long(path, n, fps, max_frames, header_duration)


def _decode_av(path: Path, fps: float, transform: Transform,
               max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sequential decode; each frame is converted / resized only if some t_k picks it, once.

    The frame shown at t_k is known as soon as the next frame's pts passes t_k, so outputs
    stream out while decoding and memory holds only the finished (small) frames.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        nominal_fps = float(rate) if rate else None
        _check_header_length(path, _header_duration(container, stream), fps, max_frames)
        cap = max_frames if max_frames is not None else math.inf

        outputs: list[np.ndarray] = []  # one per t_k, (...) uint8; repeats share the array
        k = 0  # next sample index
        prev: av.VideoFrame | None = None
        prev_out: np.ndarray | None = None
        last_pts = None
        last_duration: float | None = None
        errors: list[Exception] = []
        pts_seen: list[float] = []
        for t, end, frame in _timed_frames(container, stream, errors):
            # Every t_k before this frame (up to the tie tolerance) shows the previous one.
            while prev is not None and k / fps + _TIE_EPS < t:
                if k >= cap:
                    raise _too_long(path, k + 1, fps, max_frames, _header_duration(container, stream))
                if prev_out is None:
                    prev_out = _convert_av(prev, transform)
                outputs.append(prev_out)
                k += 1
            prev, prev_out, last_pts = frame, None, t
            last_duration = end - t if end is not None else None
            if len(pts_seen) < 64:
                pts_seen.append(t)
        if prev is None:
            reason = "no decodable video frames"
            if errors:
                reason += f" ({len(errors)} packet errors, first: {errors[0]})"
            raise VideoError(path, reason, "no_frames")
        duration = _video_end(last_pts, last_duration, np.asarray(pts_seen), nominal_fps)
        _check_truncation(path, duration, _header_duration(container, stream))
        while k / fps + _TIE_EPS < duration:
            if k >= cap:
                raise _too_long(path, k + 1, fps, max_frames, duration)
            if prev_out is None:
                prev_out = _convert_av(prev, transform)
            outputs.append(prev_out)
            k += 1
        return np.stack(outputs), sample_times(duration, fps)
    finally:
        container.close()


def _timed_frames(container, stream, errors: list[Exception]) -> Iterator[tuple[float, float | None, av.VideoFrame]]:
    """(t, end, frame) of each decoded frame from where the container stands, t and end (pts + duration,
    None without one) in seconds on the timeline. Corrupt packets are skipped as ffmpeg does (their
    errors appended to `errors`); of frames with non-increasing pts (broken muxing) the first is kept."""
    time_base = stream.time_base  # Fraction: times are computed exactly, then rounded once
    origin = stream.start_time  # ticks
    last = None
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.FFmpegError as e:
            errors.append(e)
            continue
        for frame in decoded:
            if frame.pts is None:
                continue
            if origin is None:
                origin = frame.pts
            t = float((frame.pts - origin) * time_base)
            if last is not None and t <= last:
                continue
            last = t
            # pts + duration in exact ticks: 1.3 + 0.1 in floats is 1.4000000000000001.
            end = float((frame.pts + frame.duration - origin) * time_base) if frame.duration else None
            yield t, end, frame


def _convert_av(frame: av.VideoFrame, transform: Transform) -> np.ndarray:
    # threads=1: reproducible conversions (threaded swscale state leaked into later
    # conversions in the same process: write_video output changed after a decode, measured).
    image = _rotate(frame.to_ndarray(format="rgb24", threads=1), int(frame.rotation))  # (H, W, 3)
    return transform(image[None])[0]


def _rotate(image: np.ndarray, rotation_ccw: int) -> np.ndarray:
    """Rotate (H, W, 3) counter-clockwise by a multiple of 90 degrees, as players do."""
    k = (round(rotation_ccw / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, k=k)) if k else image


def _decode_decord(path: Path, fps: float, transform: Transform,
                   max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps from decord's index, then only the picked frames, fetched in chunks."""
    # Validate with PyAV first: decord's own errors for these cases are cryptic or crash.
    container = _open(path)
    try:
        stream = container.streams.video[0]
        header_duration = _header_duration(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        nominal_fps = float(rate) if rate else None
        # decord's end stamps are not the frame durations (measured), so take the last
        # frame's duration from the container, as the av path does.
        last_duration = _last_frame_duration(container, stream)
    finally:
        container.close()
    _check_header_length(path, header_duration, fps, max_frames)
    reader, order, frame_pts = _decord_index(path)
    duration = _video_end(float(frame_pts[-1]), last_duration, frame_pts[:64], nominal_fps)
    _check_truncation(path, duration, header_duration)
    times = sample_times(duration, fps)
    if max_frames is not None and len(times) > max_frames:
        raise _too_long(path, len(times), fps, max_frames, duration)
    return _decord_pick(path, reader, order, frame_pts, times, transform), times


def _decord_index(path: Path):
    """decord's reader, the indices of the frames the sampling rule considers and their pts (s), (M,) each."""
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
        n = len(reader)
        if n == 0:
            raise VideoError(path, "no decodable video frames", "no_frames")
        # (N, 2) start / end seconds, relative to the stream start (decord subtracts it).
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)
    except decord.DECORDError as e:
        raise VideoError(path, f"decord cannot read it ({str(e).splitlines()[0]})", "decode_error") from e
    frame_pts = stamps[:, 0]
    # Same rule as the av path: of frames with non-increasing pts keep the first.
    order = np.flatnonzero(frame_pts >= np.maximum.accumulate(frame_pts))
    order = order[np.concatenate([[True], np.diff(frame_pts[order]) > 0])]
    return reader, order, frame_pts[order]


def _decord_pick(path: Path, reader, order: np.ndarray, frame_pts: np.ndarray, times: np.ndarray,
                 transform: Transform) -> np.ndarray:
    """The transformed frames shown at `times` (K,): each distinct frame fetched and transformed once."""
    import decord

    idx = order[frame_indices(frame_pts, times)]
    unique, inverse = np.unique(idx, return_inverse=True)
    outputs = []
    try:
        for lo in range(0, len(unique), _DECORD_CHUNK):
            outputs.append(transform(_decord_frames(reader, unique[lo : lo + _DECORD_CHUNK])))
    except decord.DECORDError as e:
        raise VideoError(path, f"decord failed to decode frames ({str(e).splitlines()[0]})", "decode_error") from e
    return np.concatenate(outputs)[inverse]


def _decord_frames(reader, indices: np.ndarray) -> np.ndarray:
    """Frames at `indices` (K,) -> (K, H, W, 3) uint8, upright.

    decord 0.6.0 rotates by the display matrix itself, but for some rotated widths it returns
    each row padded to the line size with a wrong channel count (e.g. (64, 48, 4)), and
    get_batch then fails its size check. Fall back to one frame at a time and strip the padding.
    """
    import decord

    try:
        batch = reader.get_batch(indices.tolist()).asnumpy()
        if batch.shape[-1] == 3:
            return batch
    except decord.DECORDError:  # "The size must exactly match": the padded-row case
        pass
    frames = []
    for i in indices.tolist():
        raw = reader[i].asnumpy()  # (H, W, C?) with padded rows
        if raw.shape[-1] != 3:
            rows = raw.shape[0]
            width = raw.shape[1]
            raw = np.ascontiguousarray(raw.reshape(rows, -1)[:, : width * 3].reshape(rows, width, 3))
        frames.append(raw)
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------
# Decoding only the frames shown at given times (a clip of a stored video)


def _decode_av_at(path: Path, times: np.ndarray, transform: Transform) -> np.ndarray:
    """Seek to the keyframe at or before times[0], decode up to the frame shown at times[-1]."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.start_time is not None and times[0] > _TIE_EPS:
            target = stream.start_time + math.floor(Fraction(float(times[0])) / stream.time_base)  # ticks
            container.seek(target, stream=stream, backward=True, any_frame=False)
            out = _pick_av(path, container, stream, times, transform, after_seek=True)
            if out is not None:
                return out
    finally:
        container.close()
    container = _open(path)  # no seek, or the seek overshot: from the first frame, as read_video does
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return _pick_av(path, container, stream, times, transform, after_seek=False)
    finally:
        container.close()


def _pick_av(path: Path, container, stream, times: np.ndarray, transform: Transform, *,
             after_seek: bool) -> np.ndarray | None:
    """_decode_av's sampling rule at `times` (K,) from where the container stands; None when a seek landed
    after times[0] (the frame shown there is behind us)."""
    outputs: list[np.ndarray] = []
    prev: av.VideoFrame | None = None
    prev_out: np.ndarray | None = None
    for t, _, frame in _timed_frames(container, stream, []):
        if prev is None and after_seek and t > times[0] + _TIE_EPS:
            return None
        while prev is not None and len(outputs) < len(times) and times[len(outputs)] + _TIE_EPS < t:
            if prev_out is None:
                prev_out = _convert_av(prev, transform)
            outputs.append(prev_out)
        if len(outputs) == len(times):
            return np.stack(outputs)
        prev, prev_out = frame, None
    if prev is None:
        raise VideoError(path, "no decodable video frames", "no_frames")
    while len(outputs) < len(times):  # the last frame shows until the end
        if prev_out is None:
            prev_out = _convert_av(prev, transform)
        outputs.append(prev_out)
    return np.stack(outputs)


# ---------------------------------------------------------------------------------------------
# Geometry: pure tensor-in, tensor-out


def resized_size(height: int, width: int, shorter_side: int) -> tuple[int, int]:
    """(H', W') with the shorter side = shorter_side and the aspect kept (long side rounded)."""
    if height <= width:
        return shorter_side, max(1, round(width * shorter_side / height))
    return max(1, round(height * shorter_side / width)), shorter_side


def resize_crop_flip(
    frames: np.ndarray,
    *,
    shorter_side: int | None,
    crop_size: int | None,
    crop_type: CropType = "center",
    hflip: bool = False,
    channel_order: str = "rgb",
) -> np.ndarray:
    """frames (T, H, W, 3) uint8 -> (T, C, C, 3), or (T, H', W', 3) for crop_type "none".

    Crop: square of crop_size at the top / center / bottom of the long side (left / center /
    right for landscape frames), centered along the short side. channel_order: the output's
    channels as a permutation of "rgb" (e.g. "gbr": a colour view of the same video; naming.CHANNEL_ORDERS).
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    if crop_type not in CROP_TYPES:
        raise ValueError(f"crop_type must be top, center, bottom or none, got {crop_type!r}")
    _, height, width, _ = frames.shape
    out = frames  # (T, H, W, 3)
    if shorter_side is not None and (height, width) != resized_size(height, width, shorter_side):
        height, width = resized_size(height, width, shorter_side)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", antialias=True)
        out = x.permute(0, 2, 3, 1).numpy()  # (T, H', W', 3) view; torch's strided copy was slow here
    if crop_type != "none":
        if crop_size is None:
            raise ValueError(f"crop_type={crop_type!r} needs a crop_size")
        if crop_size > min(height, width):
            raise ValueError(f"crop_size {crop_size} is larger than the resized frame {height}x{width}")
        if height >= width:
            top = _offset(height, crop_size, crop_type)
            left = (width - crop_size) // 2
        else:
            left = _offset(width, crop_size, crop_type)
            top = (height - crop_size) // 2
        out = out[:, top : top + crop_size, left : left + crop_size]
    if hflip:
        out = out[:, :, ::-1]
    if channel_order != "rgb":
        out = out[..., ["rgb".index(c) for c in channel_order]]
    return np.ascontiguousarray(out)


def trim_to_stride(frames: np.ndarray, stride: int) -> np.ndarray:
    """Crop type "none" before a tokenizer: centre-trim (T, H, W, 3) to sides that are multiples of `stride`."""
    _, h, w, _ = frames.shape
    h2, w2 = h - h % stride, w - w % stride
    y, x = (h - h2) // 2, (w - w2) // 2
    return frames[:, y:y + h2, x:x + w2]


def _offset(length: int, size: int, crop_type: str) -> int:
    if crop_type == "top":
        return 0
    if crop_type == "bottom":
        return length - size
    return (length - size) // 2


# ---------------------------------------------------------------------------------------------


def read_video(
    path: str | Path,
    fps: float,
    shorter_side: int | None,
    crop_size: int | None,
    crop_type: CropType = "center",
    hflip: bool = False,
    decoder: DecoderName | None = None,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    channel_order: str = "rgb",
) -> tuple[np.ndarray, np.ndarray]:
    """Frames shown at t_k = k / fps, upright, resized, cropped, optionally flipped.

    Returns (frames, timestamps): frames (T, C, C, 3) uint8 ((T, H', W', 3) for
    crop_type="none"), timestamps (T,) float64 seconds = the sampled t_k. shorter_side=None
    keeps the decoded size. decoder=None picks DEFAULT_DECODER by the file suffix. max_frames
    (default DEFAULT_MAX_FRAMES, so every caller is bounded; None: no cap) refuses a video that
    would yield more frames (VideoError kind "too_long").
    Raises VideoError (with .path, .reason, .kind) for unreadable files, ValueError for bad
    arguments. See the module docstring for the exact timing definitions.
    """
    path = Path(path)
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"{path}: fps must be a positive number, got {fps}")
    if shorter_side is not None and shorter_side <= 0:
        raise ValueError(f"{path}: shorter_side must be positive, got {shorter_side}")
    if crop_type not in CROP_TYPES:
        raise ValueError(f"{path}: crop_type must be top, center, bottom or none, got {crop_type!r}")
    if crop_type != "none" and (crop_size is None or crop_size <= 0):
        raise ValueError(f"{path}: crop_type={crop_type!r} needs a positive crop_size, got {crop_size}")
    if decoder is None:
        decoder = default_decoder(path)
    if decoder not in ("av", "decord"):
        raise ValueError(f"{path}: decoder must be 'av', 'decord' or None, got {decoder!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"{path}: max_frames must be >= 1, got {max_frames}")
    transform = partial(
        _checked_transform, path=path, shorter_side=shorter_side, crop_size=crop_size, crop_type=crop_type, hflip=hflip,
        channel_order=channel_order,
    )
    if decoder == "av":
        return _decode_av(path, fps, transform, max_frames)
    return _decode_decord(path, fps, transform, max_frames)


def read_video_at(
    path: str | Path,
    times: np.ndarray,
    shorter_side: int | None,
    crop_size: int | None,
    crop_type: CropType = "center",
    hflip: bool = False,
    decoder: DecoderName | None = None,
    channel_order: str = "rgb",
) -> np.ndarray:
    """The frames shown at `times` (K,) increasing seconds, transformed as read_video does: (K, C, C, 3) uint8.

    For a clip of a video already read once (a token store's timestamps): the same timeline and
    rule as read_video, so `read_video_at(p, ts[a:b], ...)` equals `read_video(p, ...)[0][a:b]`.
    "av" seeks to the keyframe at or before times[0] and decodes only up to the frame shown at
    times[-1]: bit-exact for streams whose GOPs are closed (x264's default; tests/test_online_frames.py).
    "decord" fetches just those frames by index. No truncation or length checks (read_video made them).
    """
    path = Path(path)
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or not len(times) or np.any(np.diff(times) < 0) or not np.all(np.isfinite(times)):
        raise ValueError(f"{path}: times must be a non-empty increasing 1-D array of seconds, got {times!r}")
    decoder = default_decoder(path) if decoder is None else decoder
    if decoder not in ("av", "decord"):
        raise ValueError(f"{path}: decoder must be 'av', 'decord' or None, got {decoder!r}")
    transform = partial(
        _checked_transform, path=path, shorter_side=shorter_side, crop_size=crop_size, crop_type=crop_type, hflip=hflip,
        channel_order=channel_order,
    )
    if decoder == "av":
        return _decode_av_at(path, times, transform)
    _open(path).close()  # PyAV's clear errors first, as _decode_decord does
    reader, order, frame_pts = _decord_index(path)
    return _decord_pick(path, reader, order, frame_pts, times, transform)


def _checked_transform(frames: np.ndarray, *, path: Path, **geometry) -> np.ndarray:
    try:
        return resize_crop_flip(frames, **geometry)
    except ValueError as e:  # e.g. crop larger than this video's resized frame
        raise VideoError(path, str(e), "bad_argument") from e
