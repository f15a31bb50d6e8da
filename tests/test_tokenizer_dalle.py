"""DALL-E dVAE tokenizer: a tiny random-weight dall_e Encoder/Decoder pickled like the release.

Paths: fp32 (`ExactDalleEncoder`, must give the package's fp32 codes exactly) and bf16
(`FastDalleEncoder`, agreement with the fp32 argmax); `auto` picks between them by hardware.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import OrderedDict

import numpy as np
import pytest
import torch
from dall_e import Decoder, Encoder, map_pixels, unmap_pixels

from video2token import precision as policy
from video2token.tokenizers import TokenizerError, load_tokenizer
from video2token.tokenizers.dalle import (ExactDalleEncoder, FastDalleEncoder, main as dalle_cli,
                                          torch_conv_uses_onednn)
from video2token.tokenizers.safe_pickle import UnsafePickleError

VOCAB = 512  # the package's validators need vocab_size >= 512 and n_hid >= 64


def tiny_models(n_blk_per_group: int = 1) -> tuple[Encoder, Decoder]:
    torch.manual_seed(0)
    enc = Encoder(n_hid=64, n_blk_per_group=n_blk_per_group, vocab_size=VOCAB)
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
    """The bf16 path, whatever this CPU's `auto` is."""
    return load_tokenizer("dalle", str(weights_dir), device="cpu", precision="bf16")


@pytest.fixture(scope="module")
def tok32(weights_dir):
    return load_tokenizer("dalle", str(weights_dir), device="cpu", precision="fp32")


@pytest.fixture
def threads():
    """Set torch's thread count for one test (the package's conv routing depends on it)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def package_fp32(encoder: Encoder, frames: np.ndarray) -> torch.Tensor:
    """The `dall-e` package's plain fp32 forward on mapped pixels, as its usage notebook: logits (N, V, h, w)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    with torch.inference_mode():
        return encoder(map_pixels(x).contiguous())


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


@pytest.mark.parametrize("num_threads", [1, 2])
def test_fp32_path_gives_the_package_fp32_codes_exactly(weights_dir, tok32, frames, threads, num_threads):
    threads(num_threads)
    assert tok32.precision == "fp32" and isinstance(tok32.fast_encoder, ExactDalleEncoder)
    for sub in (frames[:1], frames[:5], frames):  # batch sizes change torch's conv routing at one thread
        ref = package_fp32(tok32.encoder, sub)
        tok32.batch_size = len(sub)
        with torch.inference_mode():
            logits = tok32.fast_encoder.logits(tok32._map_pixels(sub))
        assert torch.equal(logits, ref), f"{num_threads} threads, batch {len(sub)}: logits differ bitwise"
        assert np.array_equal(tok32.encode(sub), ref.argmax(1).numpy())
    tok32.batch_size = 32


def test_fp32_path_without_a_foldable_gain(tmp_path, frames, threads):
    """3 blocks per group: post_gain 1/144 is not a power of two, so it is multiplied, not folded."""
    enc, _ = tiny_models(n_blk_per_group=3)
    torch.save(enc, tmp_path / "encoder.pkl")
    tok = load_tokenizer("dalle", str(tmp_path), device="cpu", precision="fp32")
    assert {gain for blocks, _ in tok.fast_encoder.groups for *_, gain in blocks} == {1 / 144}
    for n in (1, 2):
        threads(n)
        ref = package_fp32(tok.encoder, frames[:4])
        assert np.array_equal(tok.encode(frames[:4]), ref.argmax(1).numpy())


def test_conv_routing_mirrors_torch(threads):
    """`torch_conv_uses_onednn` says where F.conv2d sends a dense fp32 conv: oneDNN gives the same
    bits as a oneDNN-tensor conv, torch's own kernels do not (for these shapes)."""
    torch.manual_seed(0)
    for n_threads in (1, 2):
        threads(n_threads)
        for n, c, size, k in [(1, 64, 8, 1), (2, 64, 8, 1), (16, 64, 8, 1), (1, 64, 8, 3), (1, 256, 16, 3), (2, 3, 8, 7)]:
            x, w, b = torch.randn(n, c, size, size).relu(), torch.randn(32, c, k, k) / (c * k * k) ** 0.5, torch.randn(32)
            dense = torch.nn.functional.conv2d(x, w, b, padding=k // 2)
            onednn = torch.mkldnn_convolution(x.to_mkldnn(), w.to_mkldnn(), b, [k // 2] * 2, [1, 1], [1, 1], 1)
            assert torch.equal(dense, onednn.to_dense()) == torch_conv_uses_onednn((n, c, size, size), k), \
                (n_threads, n, c, size, k)


def test_bf16_path_agrees_with_fp32_argmax(weights_dir, tok, frames):
    assert tok.precision == "bf16" and isinstance(tok.fast_encoder, FastDalleEncoder)
    logits = tok.encoder_logits(frames)  # (N, V, h, w) fp32, the package's forward
    ref = logits.argmax(1).numpy()
    fast = tok.encode(frames)
    agree = (fast == ref).mean()
    print(f"bf16 path vs fp32 argmax agreement: {agree:.4f}")
    assert agree >= 0.9
    # Disagreements are near-ties of the fp32 logits, never confident positions.
    top2 = logits.topk(2, dim=1).values
    margin = ((top2[:, 0] - top2[:, 1]) / logits.std()).numpy()
    assert (fast[margin > 0.05] == ref[margin > 0.05]).all()


@pytest.mark.parametrize("caps, expected, path", [
    ({"cpu_name": "AMD EPYC", "avx2": True, "amx_bf16": False, "avx512_bf16": False}, "fp32", ExactDalleEncoder),
    ({"cpu_name": "Intel Xeon", "avx2": True, "amx_bf16": True, "avx512_bf16": True}, "bf16", FastDalleEncoder),
], ids=["avx2", "amx"])
def test_auto_follows_the_policy(weights_dir, monkeypatch, caps, expected, path):
    monkeypatch.setattr(policy, "cpu_capabilities", lambda: dict(caps))
    auto = load_tokenizer("dalle", str(weights_dir / "encoder.pkl"), device="cpu")
    assert auto.precision == expected and isinstance(auto.fast_encoder, path)
    assert auto.describe()["precision"] == expected and auto.policy.requested == "auto"
    with pytest.raises(ValueError, match="--precision must be one of"):
        load_tokenizer("dalle", str(weights_dir / "encoder.pkl"), device="cpu", precision="fast")


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


def test_describe_names_weights_and_precision(tok, tok32, weights_dir):
    assert tok32.describe()["precision"] == "fp32"
    info = tok.describe()
    sha = hashlib.sha256((weights_dir / "encoder.pkl").read_bytes()).hexdigest()
    assert info["name"] == "dalle" and info["vocab_size"] == VOCAB and info["downsample"] == 8
    assert info["sha256"] == sha and info["path"].endswith("encoder.pkl")
    assert info["decoder_sha256"] == hashlib.sha256((weights_dir / "decoder.pkl").read_bytes()).hexdigest()
    assert info["precision"] == "bf16"
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
    conv = load_tokenizer("dalle", str(out), device="cpu", precision="bf16")
    assert conv.has_decoder and conv.vocab_size == VOCAB
    codes = conv.encode(frames)
    assert np.array_equal(codes, tok.encode(frames))
    conv32 = load_tokenizer("dalle", str(out), device="cpu", precision="fp32")
    assert np.array_equal(conv32.encode(frames), package_fp32(conv32.encoder, frames).argmax(1).numpy())
    assert np.array_equal(conv.decode(codes[:2]), tok.decode(codes[:2]))
    assert conv.describe()["source"]["encoder_sha256"] == tok.describe()["sha256"]

    cfg = json.loads((out / "config.json").read_text())
    del cfg["encoder"]["n_hid"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match=r"config.json: section 'encoder' is missing keys \['n_hid'\]"):
        load_tokenizer("dalle", str(out), device="cpu")


def test_a_download_follows_the_umask_and_lands_whole(tmp_path, monkeypatch):
    """The encoder.pkl cache is shared on clusters: mkstemp's 0600 must not stay (no network: requests faked)."""
    import requests

    from video2token.tokenizers.dalle import _fetch

    class FakeResponse:
        headers = {"content-length": "6"}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, chunk_size):
            yield b"abc"
            yield b"def"

    monkeypatch.setattr(requests, "get", lambda url, stream, timeout: FakeResponse())
    old = os.umask(0o022)
    try:
        path = _fetch("https://example.invalid/dalle/encoder.pkl", tmp_path / "cache")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abcdef" and path.name.endswith("-encoder.pkl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no .part left
