"""read_video: fixed-FPS sampling by pts, geometry, rotation, both decoders, bad inputs."""

from __future__ import annotations

import av  # noqa: F401  (before decord: see video2token/video.py)
import numpy as np
import pytest

from video2token.video import VideoError, decord_available, read_video, resize_crop_flip, resized_size
from video2token.videowriter import write_video

DECODERS = ["av"] + (["decord"] if decord_available() else [])
PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]],
    dtype=np.uint8,
)  # fmt: skip


def flat_frames(n: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame i is a flat PALETTE[i] colour: (n, H, W, 3) uint8."""
    return np.broadcast_to(PALETTE[:n, None, None, :], (n, height, width, 3)).copy()


def palette_index(frames: np.ndarray) -> list[int]:
    """Nearest PALETTE entry to each frame's mean colour."""
    means = frames.reshape(len(frames), -1, 3).mean(1)  # (T, 3)
    return np.abs(means[:, None, :] - PALETTE[None].astype(float)).sum(-1).argmin(1).tolist()


def expected_indices(pts: list[float], last_duration: float, fps: float) -> tuple[list[int], np.ndarray]:
    """The definition, written as a plain loop: last frame with pts <= t_k, t_k < end."""
    origin, end = pts[0], pts[-1] + last_duration
    rel = [p - origin for p in pts]
    times, picks = [], []
    k = 0
    while k / fps < end - origin - 1e-9:
        t = k / fps
        picks.append(max([i for i, p in enumerate(rel) if p <= t + 1e-9] or [0]))
        times.append(t)
        k += 1
    return picks, np.array(times)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_vfr_picks_frame_shown_at_each_time(tmp_path, suffix, decoder):
    pts = [0.25, 0.30, 0.42, 0.95, 1.00, 1.05, 1.50, 2.10, 2.15]  # irregular, starts late
    fps_nominal = 20.0  # last frame lasts 1 / 20 s
    path = write_video(tmp_path / f"vfr{suffix}", flat_frames(len(pts)), fps_nominal, pts=pts, crf=0)
    for fps in (4.0, 10.0, 16.0):
        frames, times = read_video(path, fps, None, None, "none", decoder=decoder)
        picks, want_times = expected_indices(pts, 1 / fps_nominal, fps)
        np.testing.assert_allclose(times, want_times)
        assert times.dtype == np.float64
        assert palette_index(frames) == picks, (fps, decoder)


def test_sampling_rate_and_duration_constant_rate(tmp_path):
    path = write_video(tmp_path / "cfr.mp4", flat_frames(10), 5.0)  # 2.0 s
    frames, times = read_video(path, 2.0, None, None, "none")
    np.testing.assert_array_equal(times, [0.0, 0.5, 1.0, 1.5])
    assert palette_index(frames) == [0, 2, 5, 7]
    frames, times = read_video(path, 16.0, None, None, "none")
    assert len(times) == 32 and palette_index(frames)[:4] == [0, 0, 0, 0] and palette_index(frames)[4] == 1


def _bands(height: int, width: int, vertical: bool) -> np.ndarray:
    """(H, W, 3) image split in 4 flat bands along the long side (PALETTE 0..3)."""
    img = np.zeros((height, width, 3), np.uint8)
    long = height if vertical else width
    for b in range(4):
        sl = slice(b * long // 4, (b + 1) * long // 4)
        if vertical:
            img[sl] = PALETTE[b]
        else:
            img[:, sl] = PALETTE[b]
    return img


@pytest.mark.parametrize("portrait", [True, False])
def test_resize_and_crop_geometry(portrait):
    h, w = (96, 48) if portrait else (48, 96)
    frames = _bands(h, w, vertical=portrait)[None]  # (1, H, W, 3)
    assert resized_size(h, w, 24) == ((48, 24) if portrait else (24, 48))
    none = resize_crop_flip(frames, shorter_side=24, crop_size=None, crop_type="none")
    assert none.shape == ((1, 48, 24, 3) if portrait else (1, 24, 48, 3))
    # Square crops of 12 from the 48-long side: top = band 0, bottom = band 3,
    # center = middle 12 = half band 1, half band 2.
    for crop_type, want in (("top", [0]), ("bottom", [3]), ("center", [1, 2])):
        out = resize_crop_flip(frames, shorter_side=24, crop_size=12, crop_type=crop_type)
        assert out.shape == (1, 12, 12, 3)
        along = out[0, :, 6] if portrait else out[0, 6, :]  # (12, 3) along the long side
        found = sorted(set(palette_index(along[:, None, None, :].astype(np.uint8))))
        assert found == want, crop_type
    # Odd aspect: shorter side rounded, longer side round(long * S / short).
    assert resized_size(9, 17, 8) == (8, 15)


def test_hflip_mirrors_columns():
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    frames[:, :, :4] = 255  # white stripe on the left
    out = resize_crop_flip(frames, shorter_side=None, crop_size=16, crop_type="center", hflip=True)
    np.testing.assert_array_equal(out, frames[:, :, ::-1])


def test_crop_larger_than_frame_is_a_clear_error(tmp_path):
    path = write_video(tmp_path / "small.mp4", flat_frames(3, 32, 48), 5.0)
    with pytest.raises(VideoError, match="crop_size 40 is larger") as info:
        read_video(path, 2.0, None, 40)
    assert info.value.kind == "bad_argument" and info.value.path == str(path)


def _marked(n: int, height: int, width: int) -> np.ndarray:
    """Grey frames with a red block at the stored top-left corner (shows the orientation)."""
    frames = np.full((n, height, width, 3), 100, np.uint8)
    frames[:, : height // 4, : width // 3] = (220, 30, 30)
    return frames


# Stored height 48 makes decord 0.6.0 return padded rows when rotated by +-90 (see video.py).
@pytest.mark.parametrize("rotation", [90, -90, 180])
@pytest.mark.parametrize("size", [(48, 64), (40, 64)])
def test_rotation_metadata_gives_upright_frames_for_both_decoders(tmp_path, rotation, size):
    stored = _marked(4, *size)
    path = write_video(tmp_path / "rot.mp4", stored, 4.0, rotation=rotation, crf=0)
    upright = np.rot90(stored[0], k=rotation // 90)  # players rotate counter-clockwise
    results = {}
    for decoder in DECODERS:
        frames, _ = read_video(path, 4.0, None, None, "none", decoder=decoder)
        assert frames.shape[1:] == upright.shape, decoder
        assert np.abs(frames[0].astype(int) - upright).mean() < 3, decoder
        results[decoder] = frames
    if len(results) == 2:
        assert np.abs(results["av"].astype(int) - results["decord"]).max() <= 2


@pytest.mark.skipif(len(DECODERS) < 2, reason="decord not installed")
def test_decoders_agree_on_h264_mp4(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:96]
    frames = np.empty((24, 72, 96, 3), np.uint8)
    for i in range(24):  # moving smooth pattern, 12 fps, 2 s
        frames[i, ..., 0] = (xx * 2 + i * 6) % 256
        frames[i, ..., 1] = (yy * 3) % 256
        frames[i, ..., 2] = rng.integers(0, 255)
    path = write_video(tmp_path / "agree.mp4", frames, 12.0, options={"g": "6", "bf": "2"})
    for fps in (2.0, 16.0):
        a, ta = read_video(path, fps, 32, 32, "center", decoder="av")
        d, td = read_video(path, fps, 32, 32, "center", decoder="decord")
        np.testing.assert_array_equal(ta, td)
        assert np.abs(a.astype(int) - d).mean() < 1.0


# ---------------------------------------------------------------------------------------------
# Bad input: a correct result or a VideoError naming the file and the reason.


@pytest.mark.parametrize("decoder", DECODERS)
def test_missing_empty_non_video_audio_only(tmp_path, decoder):
    cases = {}
    cases["missing"] = tmp_path / "nope.mp4"
    cases["empty"] = tmp_path / "zero.mp4"
    cases["empty"].write_bytes(b"")
    cases["not_video"] = tmp_path / "text.mp4"
    cases["not_video"].write_text("definitely not a video\n" * 50)
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(5):
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    cases["no_video_stream"] = audio
    for kind, path in cases.items():
        with pytest.raises(VideoError) as info:
            read_video(path, 2.0, 16, 16, decoder=decoder)
        assert info.value.kind == kind
        assert info.value.path == str(path) and str(path) in str(info.value)
        assert info.value.reason


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_files_error_or_correct_prefix(tmp_path, decoder):
    frames = flat_frames(12)
    for name, kw in (
        ("moov_at_end.mp4", {}),
        ("faststart.mp4", {"options": {"movflags": "+faststart"}}),
        ("cut.webm", {"codec": "libvpx-vp9"}),
        ("cut.avi", {"codec": "mjpeg"}),
    ):
        full = write_video(tmp_path / name, frames, 4.0, crf=None, **kw)
        want, want_times = read_video(full, 4.0, None, None, "none", decoder=decoder)
        data = full.read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) * 6 // 10])
        try:
            got, times = read_video(cut, 4.0, None, None, "none", decoder=decoder)
        except VideoError as e:
            assert e.path == str(cut) and e.kind in ("not_video", "truncated", "decode_error", "no_frames")
            continue
        # No error: it must be the same frames at the same times (a true prefix, or all).
        assert 0 < len(times) <= len(want_times)
        np.testing.assert_array_equal(times, want_times[: len(times)])
        assert palette_index(got) == palette_index(want[: len(got)]), name


@pytest.mark.parametrize("decoder", DECODERS)
def test_one_frame_and_odd_size_videos(tmp_path, decoder):
    one = write_video(tmp_path / "one.mp4", flat_frames(1, 24, 24)[:, :, :, :] * 0 + PALETTE[4], 8.0)
    frames, times = read_video(one, 2.0, 16, 16, decoder=decoder)
    np.testing.assert_array_equal(times, [0.0])
    assert frames.shape == (1, 16, 16, 3) and palette_index(frames) == [4]

    odd = np.zeros((6, 9, 17, 3), np.uint8)  # 17 wide, 9 high
    odd[:, :, :8] = PALETTE[0]
    odd[:, :, 9:] = PALETTE[3]
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "bad_odd.mp4", odd, 6.0)
    for codec, pix_fmt, suffix in (("libx264", "yuv444p", ".mp4"), ("mjpeg", "yuvj444p", ".avi")):
        path = write_video(tmp_path / f"odd{suffix}", odd, 6.0, codec=codec, pix_fmt=pix_fmt)
        frames, times = read_video(path, 6.0, None, None, "none", decoder=decoder)
        assert frames.shape == (6, 9, 17, 3), (codec, decoder)
        assert np.abs(frames[:, :, :7].astype(int) - PALETTE[0]).mean() < 8
        assert np.abs(frames[:, :, 10:].astype(int) - PALETTE[3]).mean() < 8
        resized, _ = read_video(path, 6.0, 8, 8, "top", decoder=decoder)
        assert resized.shape == (6, 8, 8, 3)
        assert palette_index(resized[:, :, :3]) == [0] * 6  # "top" of a landscape frame = left


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_video(tmp_path / "v.mp4", flat_frames(4), 4.0)
    with pytest.raises(ValueError, match="fps"):
        read_video(path, 0, 16, 16)
    with pytest.raises(ValueError, match="crop_type"):
        read_video(path, 2, 16, 16, crop_type="left")
    with pytest.raises(ValueError, match="decoder"):
        read_video(path, 2, 16, 16, decoder="opencv")
