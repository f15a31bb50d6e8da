"""Seeded synthetic video dataset: moving shapes over smooth backgrounds, as real H.264 files.

Stands in for UCF101-style data in tests and the CPU demo. Each video shows one object moving
in a straight line over a static, smooth background (solid / linear gradient / radial gradient /
soft low-frequency texture). There is no per-frame pixel noise on purpose: noise makes VQ tokens
flicker between frames, which hid the learning signal in an earlier prototype (SPEC.md).
Objects are 3-4 tokens wide (stride 8) and cross 70-100% of the frame, so motion shows in the
codes. Two appearance profiles (`appearance=`, CLI `--appearance`) decide how the videos look:

- "shared" (default): backgrounds come from a small seeded set (`background_designs`) and
  objects from a 4-colour palette, so no video is identified by its looks alone: a contrastive
  pair (two clips of one video) has to be matched by the object's shape, size, path and
  direction. H.264 at crf 18 unless told otherwise.
- "varied": like real footage, every video has its own look: background kind, its two colours
  and its angle / phase, and the object's colour are drawn per video from continuous ranges
  (`varied_appearance`), and H.264 at crf 28 (`DEFAULT_CRF`) adds the compression noise that
  makes tokens flicker between frames. A contrastive pair can then be matched by its looks
  alone. Objects, paths and labels are drawn exactly as in "shared" (same video, same geometry).

In both, the object stays visible in the codes: backgrounds are muted (every channel in
`BG_RANGE`), objects bright (largest channel >= 0.85), so an object differs from its background
by >= 0.45 in at least one channel.

Two label sets per labelled video:
- "motion" (temporal): direction of motion, left / right / up / down; any single frame is
  ambiguous (the start position is random), only the change over time decides it.
- "shape" (spatial): circle / square / triangle / diamond, decidable from one frame.

Layout written under `root` (MMAction2-style lists, `relpath label` or `relpath` per line):

    root/
      videos/pool/pool_000000.mp4 ...       unlabelled pre-training pool
      videos/train/train_000000.mp4 ...
      videos/val/val_000000.mp4 ...         model selection (learning rates, epochs)
      videos/test/test_000000.mp4 ...       reporting only (never looked at to choose anything)
      pretrain_videos.txt                   relpath
      motion_train_videos.txt               relpath label
      motion_val_videos.txt
      shape_train_videos.txt
      shape_val_videos.txt
      motion_test_videos.txt                (written with --num-test > 0)
      shape_test_videos.txt
      motion_pool_videos.txt                the pool's hidden labels (supervised ceiling only)
      shape_pool_videos.txt
      labels_motion.txt                     one class name per line, line i = label i
      labels_shape.txt

CLI: python -m video2token.synthetic --out DIR [--num-pool N --num-train N --num-val N --num-test N
     --size S --fps F --seconds D --seed S --appearance shared|varied --crf C]
"""

from __future__ import annotations

import argparse
import colorsys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from video2token.videowriter import write_video

MOTIONS = ("left", "right", "up", "down")
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = ("solid", "linear", "radial", "texture")
# (dx, dy) per motion class, image coordinates (y grows downwards).
_DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# New splits get new ids: a video depends on (seed, split id, index), so existing splits never change.
_SPLIT_IDS = {"pool": 0, "train": 1, "val": 2, "test": 3}
# Muted backgrounds and bright objects: the outline survives tokenization; few colours keep the
# codes about geometry (shape, position) rather than about one video's colours.
BG_PALETTE = ((0.16, 0.2, 0.3), (0.35, 0.33, 0.18), (0.36, 0.22, 0.16), (0.12, 0.3, 0.3), (0.38, 0.38, 0.4),
              (0.3, 0.18, 0.34))
OBJ_PALETTE = ((0.95, 0.25, 0.2), (0.95, 0.88, 0.25), (0.3, 0.9, 0.95), (0.96, 0.96, 0.96))
NUM_BACKGROUNDS = 8
APPEARANCES = ("shared", "varied")
# H.264 quality when make_dataset is given none: "varied" is compressed about as much as real
# footage, so codes flicker between frames (crf 12: few artefacts, 18: x264 "visually lossless", 23: its default).
# Measured with the varied demo's 512-code tokenizer on 24 videos: of the background tokens away from the object,
# 10.6% change between 4-fps frames at crf 28, 9.4% at 23, 7.1% at 12, 6.5% without compression.
DEFAULT_CRF = {"shared": 18, "varied": 28}
# "varied": every background channel in BG_RANGE (the palette's 0.12-0.4), objects bright (HSV value 0.85-1).
BG_RANGE = (0.1, 0.4)
OBJ_SATURATION = (0.0, 0.8)
OBJ_VALUE = (0.85, 1.0)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video; drawn from a per-video RNG."""

    motion: int  # index into MOTIONS
    shape: int  # index into SHAPES
    background: str
    bg_colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_param: float  # gradient angle (radians) or texture phase
    obj_color: tuple[float, float, float]
    radius: float  # pixels
    start: tuple[float, float]  # (x, y) pixels
    speed: float  # pixels per second


@dataclass(frozen=True)
class SyntheticDataset:
    root: Path
    pretrain_list: Path
    train_lists: dict[str, Path]  # label set -> list file
    val_lists: dict[str, Path]
    test_lists: dict[str, Path]  # empty without test videos
    pool_lists: dict[str, Path]  # the pool's hidden labels: only for the all-labels supervised ceiling
    label_files: dict[str, Path]


def background_designs(seed: int, count: int = NUM_BACKGROUNDS) -> list[tuple[str, tuple, float]]:
    """`count` seeded backgrounds (kind, (colour0, colour1), angle/phase), each kind in turn.

    Videos pick from this small shared set, so a background never identifies one video: a
    contrastive positive pair (two clips of one video) must be matched by its object and motion.
    """
    rng = np.random.default_rng([seed, 1 << 21])
    designs = []
    for i in range(count):
        c0, c1 = rng.choice(len(BG_PALETTE), size=2, replace=False)
        designs.append((BACKGROUNDS[i % len(BACKGROUNDS)], (BG_PALETTE[c0], BG_PALETTE[c1]),
                        float(rng.uniform(0, 2 * np.pi))))
    return designs


def varied_appearance(rng: np.random.Generator) -> tuple[str, tuple, float, tuple[float, float, float]]:
    """One video's own look: (background kind, (colour0, colour1), angle/phase, object colour).

    Drawn from continuous ranges, so (unlike `background_designs`) no two videos share it: muted
    background channels in BG_RANGE, a bright object of any hue (HSV value >= 0.85, so its largest
    channel is >= 0.85 while every background channel is <= 0.4).
    """
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c0, c1 = (tuple(float(v) for v in rng.uniform(*BG_RANGE, size=3)) for _ in range(2))
    param = float(rng.uniform(0, 2 * np.pi))
    hue, sat, val = rng.uniform(0, 1), rng.uniform(*OBJ_SATURATION), rng.uniform(*OBJ_VALUE)
    obj = tuple(float(v) for v in colorsys.hsv_to_rgb(hue, sat, val))
    return kind, (c0, c1), param, obj


def draw_spec(rng: np.random.Generator, *, motion: int, shape: int, size: int, seconds: float,
              backgrounds: list[tuple[str, tuple, float]] | None = None, appearance: str = "shared") -> VideoSpec:
    """Random appearance for given labels; the path stays inside the frame for the whole video.

    The object is 3-4 tokens wide at stride 8 (so its outline, i.e. its shape, shows in the codes)
    and bright over a darker background. "shared": object colour from a small palette, background
    from `backgrounds` (default: seed 0's); "varied": both drawn for this video (`varied_appearance`).
    The geometry (size, path, speed) is drawn first, the same way in both: same rng, same geometry.
    """
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}")
    backgrounds = background_designs(0) if backgrounds is None else backgrounds
    radius = rng.uniform(0.17, 0.24) * size
    # Travel 70-100% of the free range: several tokens (stride 8) even within a short clip,
    # so the direction shows in the codes, while the object stays fully visible.
    distance = rng.uniform(0.7, 1.0) * (size - 2 * radius - 2)
    dx, dy = _DIRECTIONS[MOTIONS[motion]]
    margin = radius + 1
    lo_x = margin + max(0.0, -dx) * distance
    hi_x = size - margin - max(0.0, dx) * distance
    lo_y = margin + max(0.0, -dy) * distance
    hi_y = size - margin - max(0.0, dy) * distance
    start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
    if appearance == "varied":
        kind, colors, param, obj_color = varied_appearance(rng)
    else:
        kind, colors, param = backgrounds[int(rng.integers(len(backgrounds)))]
        obj_color = OBJ_PALETTE[int(rng.integers(len(OBJ_PALETTE)))]
    return VideoSpec(
        motion=motion,
        shape=shape,
        background=kind,
        bg_colors=colors,
        bg_param=param,
        obj_color=obj_color,
        radius=float(radius),
        start=start,
        speed=float(distance / seconds),
    )


def render_background(spec: VideoSpec, size: int) -> np.ndarray:
    """Static background (size, size, 3) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)  # (S, S) each
    c0, c1 = (np.asarray(c, dtype=np.float32) for c in spec.bg_colors)
    if spec.background == "solid":
        w = np.zeros_like(xx)
    elif spec.background == "linear":
        w = (np.cos(spec.bg_param) * (xx - 0.5) + np.sin(spec.bg_param) * (yy - 0.5)) / np.sqrt(2) + 0.5
    elif spec.background == "radial":
        cx, cy = 0.5 + 0.3 * np.cos(spec.bg_param), 0.5 + 0.3 * np.sin(spec.bg_param)
        w = np.clip(np.hypot(xx - cx, yy - cy) / 1.2, 0, 1)
    else:  # soft texture: two low-frequency waves, smooth at the token scale
        w = 0.5 + 0.25 * np.sin(2 * np.pi * (1.5 * xx + spec.bg_param)) + 0.25 * np.cos(2 * np.pi * (1.2 * yy - spec.bg_param))
    return (c0 * (1 - w[..., None]) + c1 * w[..., None]).astype(np.float32)


def _coverage(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance with a 1-pixel ramp."""
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        sd = np.hypot(dx, dy) - r
    elif shape == "square":
        sd = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    elif shape == "diamond":
        sd = (np.abs(dx) + np.abs(dy)) / np.sqrt(2) - 0.8 * r
    else:  # upright triangle: apex r above the centre, flat base r / 2 below it
        sd = np.maximum((np.sqrt(3.0) * np.abs(dx) - dy) / 2 - 0.5 * r, dy - 0.5 * r)
    return np.clip(0.5 - sd, 0.0, 1.0)


def render_video(spec: VideoSpec, *, size: int, fps: float, seconds: float) -> np.ndarray:
    """Frames (T, size, size, 3) uint8, T = round(fps * seconds)."""
    n_frames = max(1, round(fps * seconds))
    background = render_background(spec, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = _DIRECTIONS[MOTIONS[spec.motion]]
    color = np.asarray(spec.obj_color, dtype=np.float32)
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    for i in range(n_frames):
        travelled = spec.speed * i / fps
        cx, cy = spec.start[0] + dx * travelled, spec.start[1] + dy * travelled
        alpha = _coverage(SHAPES[spec.shape], xx, yy, cx, cy, spec.radius)[..., None]
        frames[i] = np.round((background * (1 - alpha) + color * alpha) * 255).astype(np.uint8)
    return frames


def balanced_label(seed: int, split: str, label_set: int, index: int, n_classes: int) -> int:
    """Label of video `index`: each run of n_classes videos is a fresh permutation of the classes.

    Any prefix of a split is balanced (class counts within 1), and the label of video i does
    not depend on how many videos the split has, so growing a split keeps earlier videos.
    """
    block, offset = divmod(index, n_classes)
    perm = np.random.default_rng([seed, _SPLIT_IDS[split], label_set, block, 1 << 20]).permutation(n_classes)
    return int(perm[offset])


def video_spec(seed: int, split: str, index: int, *, size: int, seconds: float, appearance: str = "shared",
               backgrounds: list[tuple[str, tuple, float]] | None = None) -> VideoSpec:
    """The spec of video `index` of `split`: depends only on (seed, split, index, appearance) and the frame
    geometry; "shared" draws backgrounds from `backgrounds` (default: `background_designs(seed)`)."""
    motion = balanced_label(seed, split, 0, index, len(MOTIONS))
    shape = balanced_label(seed, split, 1, index, len(SHAPES))
    return draw_spec(np.random.default_rng([seed, _SPLIT_IDS[split], index]), motion=motion, shape=shape, size=size,
                     seconds=seconds, appearance=appearance,
                     backgrounds=background_designs(seed) if backgrounds is None else backgrounds)


def make_dataset(
    root: str | Path,
    *,
    num_pool: int = 200,
    num_train: int = 80,
    num_val: int = 40,
    num_test: int = 0,
    size: int = 64,
    fps: float = 8.0,
    seconds: float = 2.0,
    seed: int = 0,
    appearance: str = "shared",
    crf: int | None = None,
    show_progress: bool = True,
) -> SyntheticDataset:
    """Render and encode the dataset under `root` (see the module docstring for the layout).

    Video i of a split depends only on (seed, split, i, appearance): growing a count keeps earlier
    videos. Labels are balanced per split for both label sets (independently shuffled). The rendered
    frames and the lists are exactly reproducible; the H.264 bytes can differ by a few pixel
    levels between runs in one process (see videowriter.write_video). crf None: DEFAULT_CRF[appearance].
    """
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {', '.join(APPEARANCES)}, got {appearance!r}")
    crf = DEFAULT_CRF[appearance] if crf is None else crf
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be > 0, got fps={fps}, seconds={seconds}")
    if min(num_pool, num_train, num_val, num_test) < 0:
        raise ValueError("video counts must be >= 0")
    root = Path(root)
    t0 = time.perf_counter()
    counts = {"pool": num_pool, "train": num_train, "val": num_val, "test": num_test}
    jobs = [(split, i) for split, count in counts.items() for i in range(count)]
    backgrounds = background_designs(seed)
    rows: dict[str, list[str]] = {split: [] for split in counts}
    labels: dict[str, list[tuple[int, int]]] = {split: [] for split in counts}
    for split, i in tqdm(jobs, desc="synthetic videos", disable=not show_progress):
        spec = video_spec(seed, split, i, size=size, seconds=seconds, appearance=appearance, backgrounds=backgrounds)
        frames = render_video(spec, size=size, fps=fps, seconds=seconds)
        relpath = f"videos/{split}/{split}_{i:06d}.mp4"
        # Short GOP keeps seeking cheap; tiny frames gain nothing from encoder threads.
        write_video(root / relpath, frames, fps, codec="libx264", crf=crf, options={"g": str(max(1, round(fps)))}, threads=1)
        rows[split].append(relpath)
        labels[split].append((spec.motion, spec.shape))

    pretrain_list = root / "pretrain_videos.txt"
    pretrain_list.write_text("".join(f"{r}\n" for r in rows["pool"]))
    train_lists, val_lists, test_lists, pool_lists, label_files = {}, {}, {}, {}, {}
    for set_index, (name, classes) in enumerate((("motion", MOTIONS), ("shape", SHAPES))):
        label_files[name] = root / f"labels_{name}.txt"
        label_files[name].write_text("".join(f"{c}\n" for c in classes))
        for split, out in (("train", train_lists), ("val", val_lists), ("test", test_lists), ("pool", pool_lists)):
            if split == "test" and not num_test:
                continue
            out[name] = root / f"{name}_{split}_videos.txt"
            out[name].write_text("".join(f"{r} {lab[set_index]}\n" for r, lab in zip(rows[split], labels[split])))
    print(
        f"synthetic: {len(jobs)} videos ({num_pool} pool, {num_train} train, {num_val} val"
        f"{f', {num_test} test' if num_test else ''}), "
        f"{size}x{size} px, {fps:g} fps, {seconds:g} s, seed {seed}, {appearance} appearance, crf {crf} -> {root} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return SyntheticDataset(
        root=root, pretrain_list=pretrain_list, train_lists=train_lists, val_lists=val_lists, test_lists=test_lists,
        pool_lists=pool_lists,
        label_files=label_files,
    )


def main(argv: list[str] | None = None) -> None:
    from video2token.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m video2token.synthetic", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-pool", type=int, default=200, help="unlabelled pre-training videos")
    parser.add_argument("--num-train", type=int, default=80, help="labelled training videos")
    parser.add_argument("--num-val", type=int, default=40, help="labelled validation videos (for choosing settings)")
    parser.add_argument("--num-test", type=int, default=0,
                        help="labelled test videos (for reporting only; 0: no test split, no test lists)")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (square)")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--appearance", choices=APPEARANCES, default="shared",
                        help="shared: 8 backgrounds and 4 object colours for all videos; varied: every video its own "
                             "background and colours (see the module docstring)")
    parser.add_argument("--crf", type=int, default=None,
                        help="H.264 quality, lower: fewer artefacts, bigger files (default: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_CRF.items()) + ")")
    args = parser.parse_args(argv)
    make_dataset(
        args.out,
        num_pool=args.num_pool,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        size=args.size,
        fps=args.fps,
        seconds=args.seconds,
        seed=args.seed,
        appearance=args.appearance,
        crf=args.crf,
    )


if __name__ == "__main__":
    main()
