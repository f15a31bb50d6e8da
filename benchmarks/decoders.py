"""decord vs PyAV through read_video, per container: speed, correctness, hangs.

For each container (mp4/H.264, mkv/H.264, webm/VP9, avi/MJPEG) it writes one test video
(moving pattern, --width x --height, --src-fps, --seconds), then reads it at 2 and 16 FPS
through `read_video` (resize 128, center crop 112) with each decoder, each run in a fresh
subprocess with a timeout (decord can hang on broken files). Reported:

- frames/s: sampled output frames per second of wall time (best of --repeats, in-process timing),
- decoded-src frames/s: source frames covered per second (video length * src fps / time),
- mad: mean absolute pixel difference to a reference (every frame decoded sequentially with
  plain PyAV, frame picked by pts, same resize/crop),
- wrong: sampled frames whose difference to the reference exceeds 8 levels (a mis-seek shows
  up here: a neighbouring frame of the moving pattern differs by much more).

Usage: PYTHONPATH=. python benchmarks/decoders.py [--seconds 20 --width 480 --height 270 --containers mp4,mkv]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av  # noqa: F401  (before decord, see video2token/video.py)
import numpy as np
from tqdm import tqdm

from video2token.video import decord_available, frame_indices, resize_crop_flip, sample_times
from video2token.videowriter import write_video

CONTAINERS = {  # suffix: (codec, extra encoder options)
    ".mp4": ("libx264", {"g": "60", "bf": "2"}),
    ".mkv": ("libx264", {"g": "60", "bf": "2"}),
    ".webm": ("libvpx-vp9", {"g": "60", "deadline": "realtime", "cpu-used": "8"}),
    ".avi": ("mjpeg", {}),
}
SHORTER_SIDE, CROP = 128, 112

_CHILD = r"""
import json, sys, time
import av
import numpy as np
from video2token.video import read_video
path, fps, decoder, repeats, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
best = float("inf")
for _ in range(repeats):
    t0 = time.perf_counter()
    frames, times = read_video(path, fps, %d, %d, "center", decoder=decoder)
    best = min(best, time.perf_counter() - t0)
np.save(out, frames)
print(json.dumps({"seconds": best, "n": len(times)}))
""" % (SHORTER_SIDE, CROP)


def make_source(path: Path, *, width: int, height: int, fps: float, seconds: float) -> Path:
    """A moving diagonal pattern plus a frame-counter bar: neighbouring frames differ clearly."""
    n = round(fps * seconds)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = ((xx + 3 * i) * 255 // width) % 256
        frames[i, ..., 1] = ((yy + 2 * i) * 255 // height) % 256
        frames[i, ..., 2] = (i * 37) % 256
    codec, options = CONTAINERS[path.suffix]
    return write_video(path, frames, fps, codec=codec, options=options)


def reference(path: Path, fps: float) -> np.ndarray:
    """Every frame decoded in order with plain PyAV, picked by pts: (K, CROP, CROP, 3)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else decoded[0][0]
    pts = np.array([p - start for p, _ in decoded])
    frames = np.stack([f for _, f in decoded])
    duration = pts[-1] + np.median(np.diff(pts))
    idx = frame_indices(pts, sample_times(duration, fps))
    return resize_crop_flip(frames[idx], shorter_side=SHORTER_SIDE, crop_size=CROP, crop_type="center")


def run_one(path: Path, fps: float, decoder: str, repeats: int, timeout: float, tmp: Path) -> dict:
    out = tmp / f"{path.stem}{path.suffix[1:]}_{decoder}_{fps:g}.npy"
    cmd = [sys.executable, "-c", _CHILD, str(path), str(fps), decoder, str(repeats), str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"HANG (>{timeout:g} s)"}
    if done.returncode != 0:
        return {"status": "ERROR: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["frames"] = np.load(out)
    result["status"] = "ok"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    parser.add_argument("--src-fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--containers", default=",".join(CONTAINERS), help="comma-separated suffixes")
    args = parser.parse_args()
    containers = [c if c.startswith(".") else "." + c for c in args.containers.split(",")]
    decoders = ["av"] + (["decord"] if decord_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        jobs = [(suffix, fps, dec) for suffix in containers for fps in (2.0, 16.0) for dec in decoders]
        sources, refs = {}, {}
        for suffix, fps, dec in tqdm(jobs, desc="decoder benchmark"):
            if suffix not in sources:
                sources[suffix] = make_source(
                    tmp / f"src{suffix}", width=args.width, height=args.height, fps=args.src_fps, seconds=args.seconds
                )
            if (suffix, fps) not in refs:
                refs[suffix, fps] = reference(sources[suffix], fps)
            res = run_one(sources[suffix], fps, dec, args.repeats, args.timeout, tmp)
            row = {"container": suffix, "fps": fps, "decoder": dec, "status": res["status"]}
            if res["status"] == "ok":
                ref, got = refs[suffix, fps], res["frames"]
                row["frames_per_s"] = res["n"] / res["seconds"]
                row["src_frames_per_s"] = args.seconds * args.src_fps / res["seconds"]
                if got.shape == ref.shape:
                    diff = np.abs(got.astype(np.int16) - ref).reshape(len(ref), -1).mean(1)
                    row["mad"], row["wrong"] = float(diff.mean()), f"{int((diff > 8).sum())}/{len(ref)}"
                else:
                    row["mad"], row["wrong"] = float("nan"), f"shape {got.shape} vs {ref.shape}"
            rows.append(row)
    print(
        f"\nread_video -> {SHORTER_SIDE} px, crop {CROP}; source {args.width}x{args.height} @ {args.src_fps:g} fps, "
        f"{args.seconds:g} s; best of {args.repeats}"
    )
    header = "| container | fps | decoder | out frames/s | src frames/s | mad | wrong | status |"
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        if r["status"] == "ok":
            print(
                f"| {r['container']} | {r['fps']:g} | {r['decoder']} | {r['frames_per_s']:.1f} | "
                f"{r['src_frames_per_s']:.0f} | {r['mad']:.2f} | {r['wrong']} | ok |"
            )
        else:
            print(f"| {r['container']} | {r['fps']:g} | {r['decoder']} | - | - | - | - | {r['status']} |")
    print(f"decoder benchmark: {len(rows)} runs, {sum(r['status'] == 'ok' for r in rows)} ok")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
