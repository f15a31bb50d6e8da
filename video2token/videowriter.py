"""Write uint8 frames to a real video file with PyAV (FFmpeg): test fixtures and synthetic data.

Containers are chosen by the file suffix (.mp4, .webm, .mkv, .avi, .mov). Codecs that are known
to work with the bundled FFmpeg: "libx264" (H.264, mp4/mkv), "libvpx-vp9" (VP9, webm/mkv),
"mjpeg" (avi/mkv), "ffv1" (lossless, mkv/avi), "mpeg4".

Odd frame sizes (e.g. 17x9): 4:2:0 / 4:2:2 chroma subsampling needs even sizes, so for odd
sizes use pix_fmt="yuv444p" (libx264, libvpx-vp9, ffv1) or codec="mjpeg" with "yuvj444p";
a subsampled pix_fmt with an odd size is refused with a clear error instead of being silently
padded or cropped by the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Fine clock for variable-frame-rate files; webm's muxer forces 1/1000 anyway.
_VFR_TIME_BASE = Fraction(1, 90_000)

# Default pixel format per codec when the caller passes pix_fmt=None.
_DEFAULT_PIX_FMT = {
    "libx264": "yuv420p",
    "libvpx-vp9": "yuv420p",
    "libvpx": "yuv420p",
    "mjpeg": "yuvj420p",
    "ffv1": "yuv444p",
    "mpeg4": "yuv420p",
}

_SUBSAMPLED = ("420", "422", "411", "440", "nv12", "nv16", "nv21")


def _codec_options(codec: str, crf: int | None) -> dict[str, str]:
    """Quality knob per codec: crf for x264/vp9, qscale for mjpeg/mpeg4 (lower = better)."""
    if crf is None:
        return {}
    if codec == "libx264":
        return {"crf": str(crf)}
    if codec in ("libvpx-vp9", "libvpx"):
        return {"crf": str(crf), "b": "0"}
    if codec in ("mjpeg", "mpeg4"):
        # ffmpeg's -q:v maps to global_quality = q * FF_QP2LAMBDA; PyAV exposes it via qmin/qmax.
        return {"qmin": str(crf), "qmax": str(crf)}
    return {}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    pts: Sequence[float] | None = None,
    rotation: int | None = None,
    crf: int | None = None,
    options: dict[str, str] | None = None,
    threads: int | None = None,
) -> Path:
    """Encode `frames` (T, H, W, 3) uint8 RGB to `path` and return the path.

    fps: nominal frame rate; with pts=None frame k is shown at k / fps.
    pts: optional presentation time in seconds of every frame (strictly increasing, first
        may be > 0) for variable-frame-rate files; each frame lasts until the next one, the
        last one for 1 / fps. Needs a container with real timestamps (mp4, mkv, webm, mov);
        avi stores a constant rate only and is refused.
    rotation: display rotation in degrees counter-clockwise (multiple of 90), written as the
        container's display matrix; players (and `read_video`) rotate the stored frames by
        this angle to show them upright. Same convention as PyAV's `VideoFrame.rotation`.
    crf: quality (crf for libx264/libvpx-vp9, qscale for mjpeg/mpeg4); None = codec default.
    options: extra encoder options passed through to FFmpeg.
    threads: encoder threads (None = FFmpeg's choice).

    Encoded bytes are not guaranteed identical across runs in one process: after decoding
    other videos, libx264 output for identical input frames and options sometimes differed
    by a few levels (measured; cause not found). Compare decoded frames with a tolerance.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    n_frames, height, width, _ = frames.shape
    if n_frames == 0:
        raise ValueError(f"{path}: no frames to write")
    if fps <= 0:
        raise ValueError(f"{path}: fps must be > 0, got {fps}")
    pix_fmt = pix_fmt or _DEFAULT_PIX_FMT.get(codec, "yuv420p")
    if (height % 2 or width % 2) and any(s in pix_fmt for s in _SUBSAMPLED):
        raise ValueError(
            f"{path}: pix_fmt {pix_fmt} needs even width and height, got {width}x{height}; "
            "use pix_fmt='yuv444p' (libx264/libvpx-vp9/ffv1) or codec='mjpeg', pix_fmt='yuvj444p'"
        )
    if rotation is not None and rotation % 90:
        raise ValueError(f"{path}: rotation must be a multiple of 90 degrees, got {rotation}")

    if pts is None:
        time_base = Fraction(1, 1) / Fraction(fps).limit_denominator(100_000)
        ticks = np.arange(n_frames, dtype=np.int64)
        last_duration = 1
    else:
        if path.suffix.lower() == ".avi":
            raise ValueError(f"{path}: avi cannot store variable frame rate (pts); use mp4, mkv or webm")
        pts_s = np.asarray(pts, dtype=np.float64)
        if pts_s.shape != (n_frames,):
            raise ValueError(f"{path}: pts must have one entry per frame ({n_frames}), got shape {pts_s.shape}")
        if pts_s[0] < 0 or np.any(np.diff(pts_s) <= 0):
            raise ValueError(f"{path}: pts must be >= 0 and strictly increasing")
        time_base = _VFR_TIME_BASE
        ticks = np.round(pts_s / float(time_base)).astype(np.int64)
        if np.any(np.diff(ticks) <= 0):
            raise ValueError(f"{path}: pts closer than the {time_base} s clock")
        last_duration = max(1, round(1 / (fps * float(time_base))))
    # Duration per presentation tick, so the muxer knows how long the last frame lasts.
    durations = dict(zip(ticks.tolist(), np.append(np.diff(ticks), last_duration).tolist()))

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if threads is not None:
            stream.codec_context.thread_count = threads
        stream.time_base = time_base
        # VFR: no B-frames, so decode order = presentation order and mp4's per-sample
        # durations (dts deltas) are the display durations.
        vfr_options = {"bf": "0"} if pts is not None and codec == "libx264" else {}
        stream.options = {**_codec_options(codec, crf), **vfr_options, **(options or {})}
        if rotation:
            stream.set_display_rotation(float(rotation))
        for frame_rgb, tick in zip(frames, ticks.tolist()):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
            # Convert to the encoder's format here, single-threaded: left to the encoder, the
            # conversion reused state from earlier decodes in the process (measured: encoded
            # bytes changed after a read_video call), which broke seeded determinism.
            frame = frame.reformat(format=pix_fmt, threads=1)
            frame.pts = tick
            frame.time_base = time_base
            _mux(container, stream, stream.encode(frame), durations, time_base)
        _mux(container, stream, stream.encode(None), durations, time_base)
    return path


def _mux(container, stream, packets, durations: dict[int, int], time_base: Fraction) -> None:
    for packet in packets:
        # Encoders report pts in the codec time base; set durations there, then let
        # the muxer rescale to the stream time base it picked.
        if packet.duration in (None, 0) and packet.pts is not None and packet.pts in durations:
            packet.duration = durations[packet.pts]
        container.mux(packet)
