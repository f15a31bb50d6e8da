"""DALL-E dVAE tokenizer: a tiny random-weight dall_e Encoder/Decoder pickled like the release."""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from dall_e import Decoder, Encoder, unmap_pixels

from video2token.tokenizers import TokenizerError, load_tokenizer
from video2token.tokenizers.dalle import DalleTokenizer, main as dalle_cli
from video2token.tokenizers.safe_pickle import UnsafePickleError

VOCAB = 512  # the package's validators need vocab_size >= 512 and n_hid >= 64


def tiny_models() -> tuple[Encoder, Decoder]:
    torch.manual_seed(0)
    enc = Encoder(n_hid=64, n_blk_per_group=1, vocab_size=VOCAB)
    dec = Decoder(n_init=8, n_hid=64, n_blk_per_group=1, vocab_size=VOCAB)
    return enc, dec


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dalle")
    enc, dec = tiny_models()
    torch.save(enc, d / "encoder.pkl")  # a whole pickled module, like the released files
    torch.save(dec, d / "decoder.pkl")
    return d


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """(12, 48, 64, 3) uint8: blocky random images plus a little noise."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 6, 8, 3)).astype(np.float32)
    x = coarse.repeat(8, axis=1).repeat(8, axis=2) + rng.normal(0, 6, (12, 48, 64, 3))
    return x.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tok(weights_dir):
    return load_tokenizer("dalle", str(weights_dir), device="cpu")


def test_encode_shapes_dtype_range(tok, frames):
    assert tok.name == "dalle" and tok.vocab_size == VOCAB and tok.downsample == 8 and tok.has_decoder
    codes = tok.encode(frames)
    assert codes.shape == (12, 6, 8) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < VOCAB
    assert len(np.unique(codes)) > 10  # not a constant map


def test_deterministic_and_independent_of_batch(tok, frames):
    ref = tok.encode(frames)
    assert np.array_equal(tok.encode(frames), ref)
    try:
        for bs in (1, 5):
            tok.batch_size = bs
            assert np.array_equal(tok.encode(frames), ref), f"batch_size={bs} changed the codes"
        assert np.array_equal(tok.encode(frames[3:4]), ref[3:4])
    finally:
        tok.batch_size = 32


def test_fast_path_agrees_with_fp32_argmax(weights_dir, tok, frames):
    exact = DalleTokenizer.load(str(weights_dir), device="cpu", precision="fp32")
    logits = exact.encoder_logits(frames)  # (N, V, h, w) fp32, the package's forward
    assert np.array_equal(exact.encode(frames), logits.argmax(1).numpy())
    fast = tok.encode(frames)
    ref = logits.argmax(1).numpy()
    agree = (fast == ref).mean()
    print(f"bf16 fast path vs fp32 argmax agreement: {agree:.4f}")
    assert agree >= 0.9
    # Disagreements are near-ties of the fp32 logits, never confident positions.
    top2 = logits.topk(2, dim=1).values
    margin = ((top2[:, 0] - top2[:, 1]) / logits.std()).numpy()
    assert (fast[margin > 0.05] == ref[margin > 0.05]).all()


def test_decode_matches_package_usage(tok, frames):
    codes = tok.encode(frames[:4])
    out = tok.decode(codes)
    assert out.shape == (4, 48, 64, 3) and out.dtype == np.uint8
    # the dall-e usage notebook in fp32: one-hot -> decoder -> sigmoid -> unmap_pixels
    with torch.inference_mode():
        z = torch.nn.functional.one_hot(torch.from_numpy(codes), VOCAB).permute(0, 3, 1, 2).float()
        ref = unmap_pixels(torch.sigmoid(tok.decoder(z)[:, :3].float()))
        ref = (ref * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def test_decode_errors(weights_dir, tok):
    with pytest.raises(ValueError, match=r"codes must be in \[0, 512\)"):
        tok.decode(np.full((1, 2, 2), VOCAB))
    enc_only = load_tokenizer("dalle", str(weights_dir / "encoder.pkl"), device="cpu")
    assert not enc_only.has_decoder
    with pytest.raises(TokenizerError, match="without a decoder"):
        enc_only.decode(np.zeros((1, 2, 2), dtype=np.int64))


def test_describe_names_weights(tok, weights_dir):
    info = tok.describe()
    sha = hashlib.sha256((weights_dir / "encoder.pkl").read_bytes()).hexdigest()
    assert info["name"] == "dalle" and info["vocab_size"] == VOCAB and info["downsample"] == 8
    assert info["sha256"] == sha and info["path"].endswith("encoder.pkl")
    assert info["decoder_sha256"] == hashlib.sha256((weights_dir / "decoder.pkl").read_bytes()).hexdigest()
    json.dumps(info)


class _RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused(tmp_path, zip_format):
    marker = tmp_path / "X"
    enc, _ = tiny_models()
    bad = tmp_path / "encoder.pkl"
    torch.save({"encoder": enc, "payload": _RunsShell(marker)}, bad, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafePickleError, match=rf"{bad}: refused to unpickle global '{os.system.__module__}.system'"):
        load_tokenizer("dalle", str(bad), device="cpu")
    assert not marker.exists()

    torch.save(_RunsEval(), bad, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafePickleError, match="refused to unpickle global 'builtins.eval'"):
        load_tokenizer("dalle", str(bad), device="cpu")


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "encoder.pkl"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(path))
    with pytest.raises(UnsafePickleError, match="TorchScript archive"):
        load_tokenizer("dalle", str(path), device="cpu")


def test_wrong_object_is_refused(tmp_path):
    enc, _ = tiny_models()
    path = tmp_path / "encoder.pkl"
    torch.save(OrderedDict(enc.state_dict()), path)  # allowed globals only, but not a module
    with pytest.raises(TokenizerError, match="expected a pickled dall_e Encoder, found collections.OrderedDict"):
        load_tokenizer("dalle", str(path), device="cpu")


def test_missing_paths_are_named(tmp_path):
    missing = tmp_path / "nope" / "encoder.pkl"
    with pytest.raises(TokenizerError, match=f"DALL-E encoder not found: {missing}"):
        load_tokenizer("dalle", str(missing))
    with pytest.raises(TokenizerError, match=rf"{tmp_path}: directory has neither encoder.pkl"):
        load_tokenizer("dalle", str(tmp_path))


def test_corrupt_files_are_named(tmp_path):
    path = tmp_path / "encoder.pkl"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(TokenizerError, match=f"{path}: could not be read as a torch pickle"):
        load_tokenizer("dalle", str(path), device="cpu")
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # zip magic, no archive behind it
    with pytest.raises(TokenizerError, match=f"{path}: not a readable torch zip archive"):
        load_tokenizer("dalle", str(path), device="cpu")


def test_bad_frames_error(tok, frames):
    with pytest.raises(ValueError, match="60x64 is not a multiple of the stride 8"):
        tok.encode(np.zeros((1, 60, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="expected uint8 frames"):
        tok.encode(frames.astype(np.float32))


def test_convert_to_safetensors_roundtrip(tmp_path, weights_dir, tok, frames):
    out = tmp_path / "converted"
    dalle_cli(["convert", "--encoder", str(weights_dir / "encoder.pkl"),
               "--decoder", str(weights_dir / "decoder.pkl"), "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"config.json", "encoder.safetensors", "decoder.safetensors"}
    conv = load_tokenizer("dalle", str(out), device="cpu")
    assert conv.has_decoder and conv.vocab_size == VOCAB
    codes = conv.encode(frames)
    assert np.array_equal(codes, tok.encode(frames))
    assert np.array_equal(conv.decode(codes[:2]), tok.decode(codes[:2]))
    assert conv.describe()["source"]["encoder_sha256"] == tok.describe()["sha256"]

    cfg = json.loads((out / "config.json").read_text())
    del cfg["encoder"]["n_hid"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match=r"config.json: section 'encoder' is missing keys \['n_hid'\]"):
        load_tokenizer("dalle", str(out), device="cpu")
