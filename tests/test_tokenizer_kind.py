"""`--tokenizer auto`: a tokenizer path says which kind it is (video2token.tokenizers.detect_kind)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from video2token.extract import main as extract_main
from video2token.store import TokenStore
from video2token.tokenizers import TokenizerError, detect_kind, load_tokenizer
from video2token.videowriter import write_video


def test_detect_kind_from_files_alone(tmp_path, tiny_vqvae):
    assert detect_kind(tiny_vqvae)[0] == "vqvae"
    pkl = tmp_path / "encoder.pkl"
    pkl.write_bytes(b"not loaded")
    assert detect_kind(str(pkl))[0] == "dalle"
    assert detect_kind(str(tmp_path))[0] == "dalle"  # a directory holding encoder.pkl
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "config.json").write_text(json.dumps({"format": "vimpac-dalle-dvae", "version": 1}))
    assert detect_kind(str(converted))[0] == "dalle"
    assert detect_kind("https://cdn.openai.com/dall-e/encoder.pkl")[0] == "dalle"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect_kind(str(empty)) == (None, "a directory with neither a DALL-E encoder.pkl nor a VQ-VAE "
                                             "config.json + model.safetensors")
    assert detect_kind(str(tmp_path / "nope"))[0] is None


def test_auto_loads_the_kind_and_a_mismatch_says_what_the_path_is(tmp_path, tiny_vqvae):
    assert load_tokenizer("auto", tiny_vqvae, device="cpu").name == "vqvae"
    with pytest.raises(TokenizerError, match=r"--tokenizer dalle but .* is a VQ-VAE tokenizer directory.*"
                                             r"pass --tokenizer vqvae"):
        load_tokenizer("dalle", tiny_vqvae, device="cpu")
    pkl = tmp_path / "encoder.pkl"
    pkl.write_bytes(b"x")
    with pytest.raises(TokenizerError, match=r"is a pickle file \(DALL-E encoder.pkl\): pass --tokenizer dalle"):
        load_tokenizer("vqvae", str(pkl), device="cpu")
    with pytest.raises(TokenizerError, match="cannot tell the tokenizer kind of .*does not exist"):
        load_tokenizer("auto", str(tmp_path / "nope"))


def test_extract_without_tokenizer_flag_reads_a_vqvae_directory(tmp_path, tiny_vqvae):
    root = tmp_path / "videos"
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[:, 8:16, 8:16] = 200
    write_video(root / "a.mp4", frames, fps=4)
    anno = tmp_path / "list.txt"
    anno.write_text("a.mp4 0\n")
    out = tmp_path / "store"
    rc = extract_main(["--video-root", str(root), "--anno", str(anno), "--output", str(out), "--fps", "2",
                       "--frame-shorter-side", "32", "--crop-size", "32", "--tokenizer-path", tiny_vqvae,
                       "--num-workers", "0", "--no-progress", "--device", "cpu"])
    assert rc == 0
    store = TokenStore(str(out))
    assert store.video_ids == ["a.mp4"] and store.meta["tokenizer"]["name"] == "vqvae"
