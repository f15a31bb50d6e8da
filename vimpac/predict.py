"""Classify raw videos with a fine-tuned VIMPAC model: decode -> VQ tokens -> multi-clip x crop averaged scores.

Runs the same views as fine-tuning's test (`vimpac.eval.scores`): the checkpoint's frame rate, frame
size and test crops, `--num-test-clips` uniform clips per crop, softmax scores averaged.

    python -m vimpac.predict --checkpoint snap/finetune/ucf101 video1.mp4 video2.avi [--num-test-clips 10] [--json]
    python -m vimpac.predict --checkpoint release/ucf101 --tokenizer dalle --tokenizer-path weights/dalle video.mp4

The tokenizer is the one the checkpoint records (its SHA-256 checked) unless --tokenizer-path
says otherwise. A pixel model (BEVT mode, fine-tuned with --input pixels) reads the decoded frames
and never loads a tokenizer. A video that cannot be read is reported among the results and the others are
still classified; the exit code is then 1.

`--checkpoint` takes a fine-tuning output (its best/ or last/), one checkpoint dir, an export
from `vimpac.export`, or an original VIMPAC fine-tuned snapshot (converted in memory); only the
tokenizer's weights come from elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from video2token.cli import HelpFormatter
from video2token.precision import add_precision_flag, read_cpu_bf16, resolve_precision

from vimpac.model.config import INPUT_KINDS
from vimpac.serve.classifier import (PredictError, check_input, classify_codes, classify_frames, decode_views,
                                     load_classifier, load_task_tokenizer, tokenize_views, top_k)

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.predict", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, help="fine-tuning output, checkpoint dir or export dir")
    p.add_argument("--tokenizer", choices=("dalle", "vqvae"), default=None,
                   help="tokenizer kind (default: the checkpoint's record)")
    p.add_argument("--tokenizer-path", default=None,
                   help="tokenizer weights (default: the checkpoint's record; its SHA-256 is checked either way)")
    p.add_argument("--input", choices=INPUT_KINDS, default=None,
                   help="what the model must read: tokens or pixels (default: the checkpoint's kind; the other is "
                        "refused)")
    p.add_argument("--num-test-clips", type=int, default=None, help="default: the fine-tuning run's")
    p.add_argument("--top", type=int, default=5)
    add_precision_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0: every video classified; 1: some videos failed (reported with the others); 2: nothing could run."""
    p = build_parser()
    a = p.parse_args(argv)
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    try:
        precision = resolve_precision(a.precision, a.device, cpu_bf16=cpu_bf16)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"[predict] {precision.describe()}", file=sys.stderr, flush=True)  # stdout: the results only
    try:
        clf = load_classifier(a.checkpoint, device=a.device)
        for note in clf.notes:
            print(f"[predict] {note}", file=sys.stderr, flush=True)
        check_input(clf, a.input)
        tok = None
        if clf.pixels:  # frames in: no tokenizer at inference
            if a.tokenizer or a.tokenizer_path:
                print("[predict] --tokenizer / --tokenizer-path ignored: a pixel model reads the frames",
                      file=sys.stderr, flush=True)
        else:
            tok = load_task_tokenizer(clf, kind=a.tokenizer, path=a.tokenizer_path, device=a.device,
                                      precision=precision.name)
        num_clips = a.num_test_clips or int(clf.task.get("num_test_clips", 10))
        if num_clips < 1:
            raise PredictError(f"--num-test-clips must be >= 1, got {num_clips}")
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    results = []
    for video in a.videos:  # one bad video is reported; the others are still classified
        try:
            if not os.path.exists(video):
                raise PredictError(f"{video} does not exist")
            if clf.pixels:
                probs = classify_frames(clf, decode_views(video, clf.task), num_clips=num_clips,
                                        precision=precision.name)
            else:
                probs = classify_codes(clf, tokenize_views(video, tok, clf.task), num_clips=num_clips,
                                       precision=precision.name)
            results.append({"video": video, "top": top_k(probs, clf.label_names, a.top)})
        except PredictError as e:
            results.append({"video": video, "error": str(e)})
    failed = [r for r in results if "error" in r]
    if a.json:
        print(json.dumps({"checkpoint": clf.path, "num_test_clips": num_clips, "crops": clf.task.get("test_crops"),
                          "results": results, "failed": len(failed)}, indent=2))
    else:
        for r in results:
            print(r["video"])
            if "error" in r:
                print(f"  error: {r['error']}")
            for i, t in enumerate(r.get("top", []), 1):
                print(f"  {i}. {t['label']:<30s} {100 * t['prob']:6.2f}%")
        print(f"done: {len(results) - len(failed)} of {len(results)} video(s) classified"
              f"{f', {len(failed)} failed' if failed else ''}; {num_clips} clips x "
              f"{len(clf.task.get('test_crops') or [1])} crops each, model {clf.path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
