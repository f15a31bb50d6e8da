"""A release folder for a fine-tuned classifier: safetensors + config + labels + tokenizer reference + model card +
SHA256SUMS, and its verification (see `vimpac.export` for the files)."""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from video2token.atomic import atomic_dir
from video2token.checksum import sha256_file

from vimpac.eval.finetuned import RESULTS
from vimpac.model.checkpoint import CheckpointError, write_checkpoint_files
from vimpac.serve.classifier import (Classifier, PredictError, check_input, load_classifier, load_task_tokenizer,
                                     recorded_tokenizer_path)

TOKENIZER_DIR = "tokenizer"  # --with-tokenizer: the tokenizer's files, inside the release
FILES = ("model.safetensors", "config.json", "labels.json", "tokenizer.json", "README.md")


def find_results(checkpoint_path: str) -> dict[str, Any] | None:
    """results.json of the fine-tuning run that wrote this checkpoint (its parent directory), if any."""
    for d in (checkpoint_path, os.path.dirname(os.path.abspath(checkpoint_path))):
        p = os.path.join(d, RESULTS)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                return json.load(f)
    return None


def model_card(clf: Classifier, results: dict[str, Any] | None, tokenizer: dict[str, Any]) -> str:
    t, cfg = clf.task, clf.model.cfg
    lines = [f"# VIMPAC video classifier: {t.get('dataset', 'custom')}", "",
             "Fine-tuned from a VIMPAC pre-trained token transformer (Tan et al. 2021, arXiv 2106.11250): "
             "masked token prediction + contrastive pre-training on VQ-VAE codes of video frames, "
             "then a linear classifier on [CLS].", "",
             "| | |", "|---|---|",
             f"| model | {cfg.name}: {cfg.layers} layers x {cfg.hid_dim}, layout {cfg.layout}, pos {cfg.pos_emb} |",
             f"| input | T={cfg.clip_len} frames (every {t.get('frame_rate', 1)}-th at {t['fps']} FPS), " +
             (f"{t['frame_size']} px frames in ({cfg.grid_h}x{cfg.grid_w} patches of {cfg.patch_size} px; BEVT mode: "
              f"no tokenizer at inference) |" if cfg.input == "pixels" else
              f"{t['frame_size']} px -> {cfg.grid_h}x{cfg.grid_w} codes |"),
             f"| classes | {t['num_classes']} (labels.json) |",
             f"| tokenizer | {tokenizer.get('kind')} ({tokenizer.get('vocab_size')} codes), sha256 "
             f"{tokenizer.get('sha256') or 'unknown'} |",
             f"| test views | {t.get('num_test_clips')} uniform clips x crops {t.get('test_crops')} |", ""]
    if results:
        lines += ["## Evaluation", "", "| | top-1 % | top-5 % | clips x crops |", "|---|---|---|---|"]
        for key in ("final", "best"):
            r = results.get(key)
            if r:
                lines.append(f"| {key} | {r['top1']:.2f} | {r['top5']:.2f} | {r.get('num_test_clips')} x "
                             f"{r.get('num_crops')} |")
        for n, r in sorted(results.get("last_test_clips", {}).items(), key=lambda x: int(x[0])):
            lines.append(f"| final, {n} clips | {r['top1']:.2f} | {r['top5']:.2f} | {n} x {r.get('num_crops')} |")
        lines.append("")
    else:
        lines += ["No evaluation numbers were found (results.json missing).", ""]
    use = ("python -m vimpac.predict --checkpoint RELEASE_DIR VIDEO" if cfg.input == "pixels" or
           tokenizer.get("path") == TOKENIZER_DIR or
           str(tokenizer.get("path", "")).startswith(TOKENIZER_DIR + os.sep) else
           f"python -m vimpac.predict --checkpoint RELEASE_DIR --tokenizer {tokenizer.get('kind')} "
           f"--tokenizer-path TOKENIZER VIDEO")
    lines += ["## Use", "", "```", use, "```", ""]
    return "\n".join(lines)


def export_release(checkpoint: str, output: str, *, tokenizer_kind: str | None = None,
                   tokenizer_path: str | None = None, with_tokenizer: bool = False, overwrite: bool = False,
                   input_kind: str | None = None, log=print) -> str:
    """Write the release folder of a fine-tuned checkpoint -> the folder.

    with_tokenizer: copy the tokenizer (given, or the checkpoint's record, SHA-256 checked) into
    RELEASE/tokenizer/, so the release is self-contained: `predict --checkpoint RELEASE VIDEO`.
    """
    clf = load_classifier(checkpoint)
    check_input(clf, input_kind)
    if clf.pixels and (with_tokenizer or tokenizer_path):
        log("[export] a pixel model (BEVT mode) reads frames: no tokenizer is copied or checked "
            "(tokenizer.json still names the one whose codes were its pre-training targets)")
        with_tokenizer, tokenizer_path = False, None
    if os.path.exists(output) and not overwrite:
        raise PredictError(f"--output {output} already exists; pass --overwrite to replace it")
    described = dict(clf.task.get("tokenizer", {}))
    source = None
    if tokenizer_path is not None or with_tokenizer:
        source = tokenizer_path or recorded_tokenizer_path(clf)
        load_task_tokenizer(clf, kind=tokenizer_kind, path=source)  # loads it and checks its SHA-256
    tokenizer = {"kind": tokenizer_kind or described.get("name"), "path": tokenizer_path or described.get("path"),
                 "sha256": described.get("sha256"), "vocab_size": described.get("vocab_size"),
                 "downsample": described.get("downsample"), "describe": described}
    task = clf.task
    if with_tokenizer:
        inside = os.path.join(TOKENIZER_DIR, os.path.basename(os.path.normpath(source))) if os.path.isfile(source) \
            else TOKENIZER_DIR
        tokenizer["path"] = inside
        task = {**clf.task, "tokenizer": {**described, "path": inside}}
    results = find_results(clf.path)
    try:
        with atomic_dir(output) as tmp:  # a kill leaves the previous release or this one; modes follow the umask
            write_checkpoint_files(tmp, model_state=clf.model.state_dict(), model_config=clf.model.cfg,
                                   train_config={"task": task, "results": results,
                                                 "source": os.path.abspath(clf.path)},
                                   step=0, epoch=0, name=output)
            _write_release_files(tmp, clf, results, tokenizer, source=source if with_tokenizer else None)
    except CheckpointError as e:
        raise PredictError(str(e)) from None
    return output


def _write_release_files(out: str, clf: Classifier, results: dict[str, Any] | None, tokenizer: dict[str, Any], *,
                         source: str | None) -> None:
    """labels.json, tokenizer.json, README.md, the tokenizer's files (`source`, when given) and SHA256SUMS."""
    with open(os.path.join(out, "labels.json"), "w", encoding="utf-8") as f:
        json.dump({str(i): n for i, n in enumerate(clf.label_names)}, f, indent=2)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, indent=2)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(clf, results, tokenizer))
    files = list(FILES)
    if source is not None:
        target = os.path.join(out, TOKENIZER_DIR)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            os.makedirs(target)
            shutil.copy2(source, target)
        files += sorted(os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(target) for n in names)
    with open(os.path.join(out, "SHA256SUMS"), "w", encoding="utf-8") as f:
        f.writelines(f"{sha256_file(os.path.join(out, n))}  {n}\n" for n in files)


def verify_release(path: str) -> None:
    """Check every file against SHA256SUMS (a clear error names the file that changed)."""
    sums = os.path.join(path, "SHA256SUMS")
    if not os.path.exists(sums):
        raise PredictError(f"{sums} is missing: not a release folder written by vimpac.export")
    with open(sums, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            digest, _, name = line.strip().partition("  ")
            if not name:
                raise PredictError(f"{sums}:{n}: expected 'SHA256  FILE'")
            if not os.path.exists(os.path.join(path, name)) or sha256_file(os.path.join(path, name)) != digest:
                raise PredictError(f"{os.path.join(path, name)}: missing or does not match {sums}:{n}")
