r"""Release folder for a fine-tuned VIMPAC classifier (safetensors + config + labels + tokenizer reference + model card).

    python -m vimpac.export --checkpoint snap/finetune/ucf101 --output release/vimpac-small-ucf101 \
        [--tokenizer dalle --tokenizer-path weights/dalle]

Writes `model.safetensors` and `config.json` (the checkpoint format, so `vimpac.predict --checkpoint
RELEASE` and `vimpac.serve.classifier.load_classifier` read it as they read a fine-tuning output),
`labels.json`, `tokenizer.json` (kind, path and SHA-256 of the tokenizer the stores were made
with; the weights themselves are not copied), `README.md` (a short model card with the evaluation
numbers of results.json) and `SHA256SUMS`. With --tokenizer-path the tokenizer is loaded and
checked against the one the fine-tuning stores were made with.

The folder is written beside --output and renamed into place whole (`video2token.atomic.atomic_dir`):
a kill leaves the previous release or the new one, never a mix. Its files and folders get the
modes a plain `open()` / `mkdir()` gives under your umask (0644 / 0755 under umask 022, 0640 /
0750 under 027), so a group can read a release it is meant to share.
"""
from __future__ import annotations

import argparse
import sys

from video2token.cli import HelpFormatter

from vimpac.model.config import INPUT_KINDS
from vimpac.serve.classifier import PredictError
from vimpac.serve.release import FILES, export_release, verify_release

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vimpac.export", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fine-tuning output (best/ or last/) or checkpoint dir")
    p.add_argument("--output", required=True, help="release folder to write")
    p.add_argument("--tokenizer", choices=("dalle", "vqvae"), default=None)
    p.add_argument("--tokenizer-path", default=None, help="check this tokenizer against the fine-tuning stores'")
    p.add_argument("--with-tokenizer", action="store_true",
                   help="copy the tokenizer into RELEASE/tokenizer/ (self-contained: predict needs no tokenizer flags)")
    p.add_argument("--input", choices=INPUT_KINDS, default=None,
                   help="tokens or pixels: what the model must read (default: the checkpoint's kind; the other is "
                        "refused). A pixel model's release needs no tokenizer")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    a = p.parse_args(argv)
    try:
        out = export_release(a.checkpoint, a.output, tokenizer_kind=a.tokenizer, tokenizer_path=a.tokenizer_path,
                             with_tokenizer=a.with_tokenizer, overwrite=a.overwrite, input_kind=a.input)
        verify_release(out)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"done: release {out} ({', '.join(FILES)}, SHA256SUMS)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
