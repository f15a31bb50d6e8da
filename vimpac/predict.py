"""Classify raw videos with a fine-tuned VIMPAC model: decode -> VQ tokens -> multi-clip x crop averaged scores.

Runs the same views as fine-tuning's test (`vimpac.eval.scores`): the checkpoint's frame rate, frame
size and test crops, `--num-test-clips` uniform clips per crop, softmax scores averaged.

    python -m vimpac.predict --checkpoint snap/finetune/ucf101 --tokenizer dalle --tokenizer-path weights/dalle \
        video1.mp4 video2.avi [--num-test-clips 10] [--json]

`--checkpoint` takes a fine-tuning output (its best/ or last/), one checkpoint dir, an export
from `vimpac.export`, or an original VIMPAC fine-tuned snapshot (converted in memory); only the
tokenizer's weights come from elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from video2token.precision import add_precision_flag, resolve_precision

from vimpac.serve.classifier import PredictError, check_tokenizer, classify_codes, load_classifier, tokenize_views, top_k

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vimpac.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--checkpoint", required=True, help="fine-tuning output, checkpoint dir or export dir")
    p.add_argument("--tokenizer", choices=("dalle", "vqvae"), required=True)
    p.add_argument("--tokenizer-path", required=True)
    p.add_argument("--num-test-clips", type=int, default=None, help="default: the fine-tuning run's")
    p.add_argument("--top", type=int, default=5)
    add_precision_flag(p)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from video2token.tokenizers import TokenizerError, load_tokenizer

    try:
        precision = resolve_precision(a.precision, a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"[predict] {precision.describe()}", file=sys.stderr, flush=True)  # stdout: the results only
    try:
        clf = load_classifier(a.checkpoint, device=a.device)
        for note in clf.notes:
            print(f"[predict] {note}", file=sys.stderr, flush=True)
        try:
            tok = load_tokenizer(a.tokenizer, a.tokenizer_path, device=a.device)
        except (TokenizerError, OSError, ValueError) as e:
            raise PredictError(f"--tokenizer-path {a.tokenizer_path}: {e}") from None
        check_tokenizer(clf.task, tok.describe(), f"--tokenizer-path {a.tokenizer_path}")
        num_clips = a.num_test_clips or int(clf.task.get("num_test_clips", 10))
        if num_clips < 1:
            raise PredictError(f"--num-test-clips must be >= 1, got {num_clips}")
        results = []
        for video in a.videos:
            if not os.path.exists(video):
                raise PredictError(f"{video} does not exist")
            probs = classify_codes(clf, tokenize_views(video, tok, clf.task), num_clips=num_clips,
                                   precision=precision.name)
            results.append({"video": video, "top": top_k(probs, clf.label_names, a.top)})
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if a.json:
        print(json.dumps({"checkpoint": clf.path, "num_test_clips": num_clips,
                          "crops": clf.task.get("test_crops"), "results": results}, indent=2))
    else:
        for r in results:
            print(r["video"])
            for i, t in enumerate(r["top"], 1):
                print(f"  {i}. {t['label']:<30s} {100 * t['prob']:6.2f}%")
        print(f"done: {len(results)} video(s), {num_clips} clips x {len(clf.task.get('test_crops') or [1])} crops "
              f"each, model {clf.path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
