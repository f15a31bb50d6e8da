"""Synthetic moving-shapes dataset: determinism, list formats, label balance, motion semantics."""

from __future__ import annotations

import hashlib
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from video2token.synthetic import (DEFAULT_CRF, MOTIONS, NUM_BACKGROUNDS, OBJ_PALETTE, SHAPES, background_designs,
                                   draw_spec, make_dataset, render_background, render_video, video_spec)
from video2token.video import read_video


def _parse(list_file, labelled: bool) -> list[tuple[str, int | None]]:
    rows = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        assert len(parts) == (2 if labelled else 1), f"{list_file}:{line_no}: {line!r}"
        rows.append((parts[0], int(parts[1]) if labelled else None))
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_dataset(root, num_pool=12, num_train=16, num_val=8, num_test=8, size=32, fps=8, seconds=1.5, seed=3,
                        show_progress=False)


def test_lists_parse_and_point_at_real_videos(dataset):
    pool = _parse(dataset.pretrain_list, labelled=False)
    assert len(pool) == 12
    for name, classes in (("motion", MOTIONS), ("shape", SHAPES)):
        assert dataset.label_files[name].read_text().split() == list(classes)
        train = _parse(dataset.train_lists[name], labelled=True)
        val = _parse(dataset.val_lists[name], labelled=True)
        test = _parse(dataset.test_lists[name], labelled=True)
        assert len(train) == 16 and len(val) == 8 and len(test) == 8
        assert all(0 <= label < len(classes) for _, label in train + val + test)
        # Balanced: every class within one of the mean.
        counts = Counter(label for _, label in train)
        assert set(counts) == set(range(len(classes))) and max(counts.values()) - min(counts.values()) <= 1
    # Train / val / test / pool are disjoint files, and each opens as a 12-frame 32x32 video.
    rels = [r for r, _ in pool] + [r for r, _ in _parse(dataset.train_lists["motion"], True)]
    rels += [r for r, _ in _parse(dataset.val_lists["motion"], True)]
    rels += [r for r, _ in _parse(dataset.test_lists["motion"], True)]
    assert len(set(rels)) == len(rels) and rels[-1] == "videos/test/test_000007.mp4"
    frames, times = read_video(dataset.root / rels[0], 8.0, None, None, "none")
    assert frames.shape == (12, 32, 32, 3) and len(times) == 12


def test_test_split_is_its_own_videos_and_absent_unless_asked_for(dataset, tmp_path):
    val = [video_spec(3, "val", i, size=32, seconds=1.5) for i in range(8)]
    test = [video_spec(3, "test", i, size=32, seconds=1.5) for i in range(8)]
    assert all(v.start != t.start for v, t in zip(val, test))  # not the val videos under another name
    none = make_dataset(tmp_path, num_pool=1, num_train=0, num_val=0, size=32, seconds=1.0, show_progress=False)
    assert none.test_lists == {} and not (tmp_path / "motion_test_videos.txt").exists()


def test_same_seed_same_videos_other_seed_differs(dataset, tmp_path):
    again = make_dataset(tmp_path / "a", num_pool=2, num_train=16, num_val=0, size=32, fps=8, seconds=1.5, seed=3, show_progress=False)
    other = make_dataset(tmp_path / "b", num_pool=2, num_train=16, num_val=0, size=32, fps=8, seconds=1.5, seed=4, show_progress=False)
    # Same seed: lists identical and the first pool videos the same even though the counts differ.
    assert again.train_lists["motion"].read_text() == dataset.train_lists["motion"].read_text()
    assert again.train_lists["shape"].read_text() == dataset.train_lists["shape"].read_text()
    assert other.train_lists["motion"].read_text() != dataset.train_lists["motion"].read_text()
    for rel in ("videos/pool/pool_000000.mp4", "videos/pool/pool_000001.mp4"):
        a, _ = read_video(dataset.root / rel, 8.0, None, None, "none")
        b, _ = read_video(again.root / rel, 8.0, None, None, "none")
        c, _ = read_video(other.root / rel, 8.0, None, None, "none")
        # Tolerance: libx264 bytes can vary by a few levels between runs (videowriter docstring).
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.0
        assert np.abs(a.astype(int) - c).mean() > 5


def test_rendering_is_exactly_reproducible():
    frames = [
        render_video(draw_spec(np.random.default_rng([3, 0, 7]), motion=2, shape=3, size=32, seconds=1.0), size=32, fps=8, seconds=1.0)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(frames[0], frames[1])
    assert frames[0].shape == (8, 32, 32, 3) and frames[0].dtype == np.uint8


@pytest.mark.parametrize("motion", range(len(MOTIONS)))
def test_motion_label_matches_object_movement(motion):
    """The object's centroid moves in the labelled direction; the background never changes."""
    rng = np.random.default_rng(motion)
    spec = draw_spec(rng, motion=motion, shape=1, size=48, seconds=2.0)
    frames = render_video(spec, size=48, fps=8, seconds=2.0).astype(float)  # (16, 48, 48, 3)
    first = frames[0]
    obj = np.asarray(spec.obj_color) * 255
    centroids = []
    for frame in frames:
        weight = (np.abs(frame - obj).sum(-1) < 30).astype(float)  # object pixels
        yy, xx = np.nonzero(weight)
        centroids.append((xx.mean(), yy.mean()))
    (x0, y0), (x1, y1) = centroids[0], centroids[-1]
    dx, dy = x1 - x0, y1 - y0
    direction = {"left": -dx, "right": dx, "up": -dy, "down": dy}[MOTIONS[motion]]
    # Travels most of its free range (70-100%, over 15/16 of the video), > 1.5 tokens of stride 8 at 48 px,
    # straight along its axis.
    assert direction > 0.6 * (48 - 2 * spec.radius - 2) and direction > 12
    assert abs(dx if MOTIONS[motion] in ("up", "down") else dy) < 1
    # No per-frame noise: pixels far from the object path are identical across frames.
    still = np.all(frames == first, axis=(0, 3))
    assert still.mean() > 0.3


def test_pool_has_hidden_balanced_labels_for_the_supervised_ceiling(dataset):
    pool = _parse(dataset.pretrain_list, labelled=False)
    for name in ("motion", "shape"):
        rows = _parse(dataset.pool_lists[name], labelled=True)
        assert [r for r, _ in rows] == [r for r, _ in pool]
        counts = Counter(label for _, label in rows)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_backgrounds_and_colours_are_shared_so_no_video_is_identified_by_them():
    """Contrastive pairs come from one video: a unique background per video would be a shortcut."""
    designs = background_designs(5)
    assert len(designs) == NUM_BACKGROUNDS and len({d[0] for d in designs}) == 4  # every kind appears
    specs = [draw_spec(np.random.default_rng([5, i]), motion=i % 4, shape=i % 4, size=64, seconds=2.0,
                       backgrounds=designs) for i in range(200)]
    keys = Counter((s.background, s.bg_colors, s.bg_param) for s in specs)
    assert len(keys) == NUM_BACKGROUNDS and min(keys.values()) >= 10
    assert {s.obj_color for s in specs} == set(OBJ_PALETTE)
    assert background_designs(5) == designs and background_designs(6) != designs  # seeded


#: sha256 of the rendered frames of 14 seed-0 videos (every background kind) of the shared profile, before the
#: varied profile existed: the default looks must stay bit-identical for the same seed. (A CPU whose float32
#: np.sin / np.hypot round differently could flip a pixel level; it was computed on AVX-512.)
SHARED_FRAMES_SHA256 = "8997a71beddf0c6afce4b4035347ef674787ec6ae60a3c50ff6a2344e8607208"


def test_shared_profile_renders_the_same_frames_as_before_the_varied_profile():
    h = hashlib.sha256()
    for split, i in [("pool", k) for k in range(12)] + [("train", 3), ("val", 7)]:
        spec = video_spec(0, split, i, size=64, seconds=2.0)
        h.update(render_video(spec, size=64, fps=8.0, seconds=2.0).tobytes())
    assert h.hexdigest() == SHARED_FRAMES_SHA256


def test_varied_profile_gives_every_video_its_own_background_and_colours_and_the_same_geometry():
    varied = [video_spec(0, "pool", i, size=64, seconds=2.0, appearance="varied") for i in range(20)]
    shared = [video_spec(0, "pool", i, size=64, seconds=2.0) for i in range(20)]
    backgrounds = [render_background(s, 64) for s in varied]
    # no two of 20 backgrounds within 0.015 (4 pixel levels, twice crf 28's mean error) mean absolute
    # difference (the closest pair here: 0.021); object colours apart too
    assert min(np.abs(a - b).mean() for a, b in combinations(backgrounds, 2)) > 0.015
    assert min(np.abs(np.subtract(a.obj_color, b.obj_color)).max() for a, b in combinations(varied, 2)) > 0.03
    assert len({s.background for s in varied}) == 4  # every design kind, drawn per video
    # the shared profile repeats its 8 backgrounds and 4 colours
    assert len({(s.background, s.bg_colors, s.bg_param) for s in shared}) <= NUM_BACKGROUNDS
    assert len({s.obj_color for s in shared}) <= len(OBJ_PALETTE)
    # the object stays visible: a bright object over muted background channels
    for s in varied:
        assert max(s.obj_color) >= 0.85 and max(max(c) for c in s.bg_colors) <= 0.4
    # same video, same labels and path in both profiles: only the looks differ
    geometry = lambda s: (s.motion, s.shape, s.radius, s.start, s.speed)  # noqa: E731
    assert [geometry(s) for s in varied] == [geometry(s) for s in shared]


def test_varied_dataset_is_compressed_at_its_own_crf_and_looks_differ(tmp_path):
    ds = make_dataset(tmp_path / "v", num_pool=4, num_train=0, num_val=0, size=32, seconds=1.0, appearance="varied",
                      show_progress=False)
    first = [read_video(ds.root / f"videos/pool/pool_{i:06d}.mp4", 8.0, None, None, "none")[0][0] for i in range(4)]
    corners = [f[:4, :4].reshape(-1, 3).mean(0) for f in first]  # far from the object's start (radius < 8 px)
    assert min(np.abs(a - b).max() for a, b in combinations(corners, 2)) > 3  # pixel levels
    # x264 writes its settings into the stream: the varied profile's default crf, the shared one's
    assert f"crf={DEFAULT_CRF['varied']}.0".encode() in (ds.root / "videos/pool/pool_000000.mp4").read_bytes()
    shared = make_dataset(tmp_path / "s", num_pool=1, num_train=0, num_val=0, size=32, seconds=1.0, show_progress=False)
    assert f"crf={DEFAULT_CRF['shared']}.0".encode() in (shared.root / "videos/pool/pool_000000.mp4").read_bytes()


def test_unknown_appearance_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="appearance must be one of shared, varied, got 'real'"):
        make_dataset(tmp_path, num_pool=1, num_train=0, num_val=0, appearance="real", show_progress=False)
    with pytest.raises(ValueError, match="got 'real'"):
        draw_spec(np.random.default_rng(0), motion=0, shape=0, size=32, seconds=1.0, appearance="real")
    assert not any(tmp_path.iterdir())  # nothing written
