"""The built-in VQ-VAE tokenizer: shapes, determinism, save/load, loading errors, trainer resume."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from video2token.tokenizers import TokenizerError, load_tokenizer
from video2token.tokenizers.vqvae import CONFIG_FILE, WEIGHTS_FILE, VQVAETokenizer, save_vqvae
from video2token.vqvae_model import VQVAE, VQVAEConfig, codebook_stats, frames_to_tensor, psnr, tensor_to_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=32, channels=16, max_channels=16, code_dim=8, num_res_blocks=1)


def blocky_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): smooth blocks plus noise, so codes vary across a frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 4, size // 4, 3)).astype(np.float32)
    x = coarse.repeat(4, axis=1).repeat(4, axis=2) + rng.normal(0, 8, (n, size, size, 3))
    return x.clip(0, 255).astype(np.uint8)


def initialised_model(config: VQVAEConfig, seed: int = 0) -> VQVAE:
    """A random-weight model whose codebook was k-means initialised by one training-mode forward,
    as after the first training step."""
    torch.manual_seed(seed)
    model = VQVAE(config)
    model.train()
    with torch.no_grad():
        model(frames_to_tensor(torch.from_numpy(blocky_frames(16, 32, seed=seed + 1))))
    return model.eval()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vqvae")
    save_vqvae(initialised_model(VQVAEConfig(downsample=8, **TINY)), str(d))
    return str(d)


@pytest.fixture(scope="module")
def frames():
    return blocky_frames(12, 32, seed=5)


def test_config_validation_and_strict_dict():
    with pytest.raises(ValueError, match="downsample"):
        VQVAEConfig(downsample=6)
    with pytest.raises(ValueError, match="vocab_size"):
        VQVAEConfig(vocab_size=1)
    with pytest.raises(ValueError, match="patch_size"):
        VQVAEConfig(downsample=4, patch_size=8)
    with pytest.raises(ValueError, match="unknown VQ-VAE config keys \\['n_hid'\\]"):
        VQVAEConfig.from_dict({**VQVAEConfig().to_dict(), "n_hid": 3})
    cfg = VQVAEConfig(vocab_size=300, downsample=16)
    assert VQVAEConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("downsample,patch_size", [(4, 2), (8, 2), (8, 4), (16, 1)])
def test_round_trip_shapes(downsample, patch_size):
    model = initialised_model(VQVAEConfig(downsample=downsample, patch_size=patch_size, **TINY))
    x = frames_to_tensor(torch.from_numpy(blocky_frames(3, 32)))  # (3, 3, 32, 32)
    for train_mode in (True, False):
        model.train(train_mode)
        recon, codes, commit = model(x)
        assert recon.shape == x.shape and recon.dtype == torch.float32
        assert codes.shape == (3, 32 // downsample, 32 // downsample) and codes.dtype == torch.long
        assert 0 <= int(codes.min()) and int(codes.max()) < TINY["vocab_size"] and commit.ndim == 0
    model.eval()
    with torch.no_grad():
        assert model.decode_codes(codes).shape == x.shape
        # decoding the codes is what the forward pass does after quantization
        torch.testing.assert_close(model.decode_codes(codes), model(x)[0])


def test_tokenizer_encode_decode_shapes(tok_dir, frames):
    tok = load_tokenizer("vqvae", tok_dir, device="cpu")
    assert isinstance(tok, VQVAETokenizer) and tok.name == "vqvae" and tok.has_decoder
    assert tok.vocab_size == 32 and tok.downsample == 8
    codes = tok.encode(frames)
    assert codes.shape == (12, 4, 4) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 32
    assert len(np.unique(codes)) > 1  # the codebook is used, not one collapsed code
    recon = tok.decode(codes)
    assert recon.shape == frames.shape and recon.dtype == np.uint8
    rect = tok.encode(blocky_frames(2, 48)[:, :, :40])  # non-square frames: (48, 40) -> (6, 5)
    assert rect.shape == (2, 6, 5)


def test_codes_are_deterministic_and_batch_independent(tok_dir, frames):
    for precision in ("bf16", "fp32"):
        tok = VQVAETokenizer.load(tok_dir, device="cpu", precision=precision)
        ref = tok.encode(frames)
        assert np.array_equal(tok.encode(frames), ref)
        for bs in (1, 5):  # extraction batches frames across videos; codes must not depend on it
            tok.batch_size = bs
            assert np.array_equal(tok.encode(frames), ref), (precision, bs)
        again = VQVAETokenizer.load(tok_dir, device="cpu", precision=precision)  # a fresh load, a new "run"
        assert np.array_equal(again.encode(frames), ref)


def test_quantizer_runs_in_fp32_under_autocast(tok_dir, frames):
    tok = load_tokenizer("vqvae", tok_dir, device="cpu")
    with torch.no_grad():
        z = tok.model.encoder(frames_to_tensor(torch.from_numpy(frames)))
        # move every vector close to a boundary's neighbourhood: bf16 distances would flip many codes
        z = z + 1e-3 * torch.randn_like(z)
        _, plain, _ = tok.model.quantize(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantized, in_autocast, _ = tok.model.quantize(z)
        assert quantized.dtype == torch.float32
        assert torch.equal(plain, in_autocast)
        cb = tok.model.quantizer.codebook  # (V, D)
        exact = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double(), cb.double()).argmin(-1)
        assert torch.equal(plain.flatten(), exact)


def test_save_load_identity(tmp_path, frames):
    model = initialised_model(VQVAEConfig(downsample=8, **TINY), seed=3)
    save_vqvae(model, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [CONFIG_FILE, WEIGHTS_FILE]
    tok = VQVAETokenizer.load(str(tmp_path), device="cpu", precision="fp32")
    assert tok.config == model.config
    saved, loaded = model.state_dict(), tok.model.state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    with torch.no_grad():
        direct = model.encode(frames_to_tensor(torch.from_numpy(frames))).numpy()
    assert np.array_equal(tok.encode(frames), direct)
    info = tok.describe()
    assert info["name"] == "vqvae" and info["vocab_size"] == 32 and info["downsample"] == 8
    assert info["path"] == str(tmp_path) and len(info["sha256"]) == 64
    json.dumps(info)  # stored in token-store metadata
    # different weights -> different checksum
    other = tmp_path / "other"
    save_vqvae(initialised_model(VQVAEConfig(downsample=8, **TINY), seed=4), str(other))
    assert VQVAETokenizer.load(str(other), device="cpu").describe()["sha256"] != info["sha256"]


def test_missing_or_incomplete_directory_errors(tmp_path, tok_dir):
    missing = tmp_path / "nope"
    with pytest.raises(TokenizerError, match=f"{missing} does not exist"):
        load_tokenizer("vqvae", str(missing))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TokenizerError, match="is a file, not a directory"):
        load_tokenizer("vqvae", str(f))

    def copy(name: str, *, skip: str | None = None):
        d = tmp_path / name
        d.mkdir()
        for fn in (CONFIG_FILE, WEIGHTS_FILE):
            if fn != skip:
                (d / fn).write_bytes(open(os.path.join(tok_dir, fn), "rb").read())
        return d

    d = copy("no_config", skip=CONFIG_FILE)
    with pytest.raises(TokenizerError, match=f"{d} is incomplete: config.json is missing"):
        load_tokenizer("vqvae", str(d))
    d = copy("no_weights", skip=WEIGHTS_FILE)
    with pytest.raises(TokenizerError, match=f"{d} is incomplete: model.safetensors is missing"):
        load_tokenizer("vqvae", str(d))
    d = copy("bad_json")
    (d / CONFIG_FILE).write_text('{"vocab_size": 32,')
    with pytest.raises(TokenizerError, match="config.json: not a valid JSON file"):
        load_tokenizer("vqvae", str(d))
    d = copy("bad_key")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    (d / CONFIG_FILE).write_text(json.dumps({**cfg, "hidden": 4}))
    with pytest.raises(TokenizerError, match="config.json: invalid VQ-VAE config: unknown VQ-VAE config keys \\['hidden'\\]"):
        load_tokenizer("vqvae", str(d))
    d = copy("bad_value")
    (d / CONFIG_FILE).write_text(json.dumps({**cfg, "downsample": 5}))
    with pytest.raises(TokenizerError, match="config.json: invalid VQ-VAE config: downsample must be one of"):
        load_tokenizer("vqvae", str(d))
    d = copy("truncated")
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="model.safetensors: not a readable safetensors file"):
        load_tokenizer("vqvae", str(d))
    d = copy("other_vocab")
    (d / CONFIG_FILE).write_text(json.dumps({**cfg, "vocab_size": 64}))
    with pytest.raises(TokenizerError, match="model.safetensors does not match .*config.json: shape mismatch"):
        load_tokenizer("vqvae", str(d))
    d = copy("missing_key")
    state = load_file(str(d / WEIGHTS_FILE))
    del state["decoder.conv_out.weight"]
    save_file(state, str(d / WEIGHTS_FILE))
    with pytest.raises(TokenizerError, match="missing keys \\['decoder.conv_out.weight'\\]"):
        load_tokenizer("vqvae", str(d))


def test_untrained_model_is_a_usable_tokenizer(tmp_path, frames):
    """Random-weight models saved without training (tests, benchmarks) load, and encoding never runs
    the k-means initialisation (which would make codes depend on the batch they came in)."""
    save_vqvae(VQVAE(VQVAEConfig(**TINY)), str(tmp_path))
    tok = load_tokenizer("vqvae", str(tmp_path), device="cpu")
    codes = tok.encode(frames)
    assert codes.shape == (12, 4, 4) and codes.min() >= 0 and codes.max() < 32
    tok.batch_size = 1
    assert np.array_equal(tok.encode(frames), codes)
    assert not bool(tok.model.quantizer._codebook.initted)


def test_bad_frames_and_codes(tok_dir):
    tok = load_tokenizer("vqvae", tok_dir, device="cpu")
    with pytest.raises(ValueError, match="not a multiple of the stride 8"):
        tok.encode(np.zeros((1, 36, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 frames"):
        tok.encode(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="codes must be in \\[0, 32\\)"):
        tok.decode(np.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="expected integer codes of shape"):
        tok.decode(np.zeros((4, 4), np.int64))


def test_metrics_helpers():
    a = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0, 0] = 255  # one pixel off by 255 among 96: MSE = 255^2 / 96
    assert psnr(a, b) == pytest.approx(10 * np.log10(96))
    assert psnr(a, a) == float("inf")
    usage, ppl = codebook_stats(torch.tensor([0, 0, 1, 1]), 8)
    assert usage == pytest.approx(2 / 8) and ppl == pytest.approx(2.0)
    x = torch.from_numpy(blocky_frames(2, 8))
    assert torch.equal(tensor_to_frames(frames_to_tensor(x)), x)


def test_augment_batch_is_a_seeded_per_frame_rearrangement():
    from video2token.train_tokenizer import augment_batch

    x = torch.randn(16, 3, 8, 8)
    y1 = augment_batch(x, "full", torch.Generator().manual_seed(1))
    y2 = augment_batch(x, "full", torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and not torch.equal(y1, x)
    for a, b in zip(x, y1):  # flips, rotations and channel permutations only move values around
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


# ----------------------------------------------------------------------------- the trainer CLI


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from video2token.synthetic import make_dataset

    root = tmp_path_factory.mktemp("demo")
    make_dataset(root, num_pool=6, num_train=0, num_val=0, size=32, fps=4, seconds=1.0, seed=1, show_progress=False)
    return root


def trainer_cmd(demo, out, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "video2token.train_tokenizer", "--video-root", str(demo),
            "--anno", str(demo / "pretrain_videos.txt"), "--fps", "4", "--frame-size", "32", "--vocab-size", "32",
            "--channels", "16", "--max-channels", "16", "--code-dim", "8", "--num-res-blocks", "1",
            "--batch-size", "8", "--steps", str(steps), "--val-videos", "2", "--save-every", "3", "--eval-every", "3",
            "--log-every", "1", "--warmup-steps", "2", "--threads", "1", "--no-progress", "--output", str(out), *extra]


ENV = {**os.environ, "PYTHONPATH": REPO}


def run_trainer(demo, out, steps: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_cmd(demo, out, steps, *extra), capture_output=True, text=True, env=ENV, timeout=300)


def train_rows(out) -> list[dict]:
    with open(out / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def test_trainer_writes_tokenizer_and_resume_after_kill_matches_uninterrupted(demo, tmp_path):
    steps = 15
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_trainer(demo, full, steps)
    assert r.returncode == 0, r.stderr
    assert f"train_tokenizer: {steps} steps" in r.stdout and "held-out PSNR" in r.stdout
    for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "samples.png", "curves.png"):
        assert (full / name).is_file(), name
    assert (full / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tok = load_tokenizer("vqvae", str(full), device="cpu")
    assert tok.vocab_size == 32 and tok.config.channels == 16

    # refuse to clobber a finished run without --resume
    r = run_trainer(demo, full, steps)
    assert r.returncode != 0 and "pass --resume" in r.stderr

    # kill -9 as soon as the first checkpoint lands, mid-run
    proc = subprocess.Popen(trainer_cmd(demo, killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    deadline = time.monotonic() + 240
    while not (killed / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed / ".train_state.pt.abc.tmp").write_bytes(b"partial")  # what a kill inside a save leaves behind
    r = run_trainer(demo, killed, steps, "--resume")
    assert r.returncode == 0, r.stderr
    resumed_from = int(re.search(r"continuing from step (\d+)", r.stdout).group(1))
    assert resumed_from in range(3, steps + 1, 3) or resumed_from == steps
    assert not (killed / ".train_state.pt.abc.tmp").exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_rows(full) == train_rows(killed)

    # a resume with another model shape is refused, naming the difference
    r = run_trainer(demo, killed, steps + 3, "--resume", "--code-dim", "4")
    assert r.returncode != 0 and "code_dim: checkpoint 8 vs now 4" in r.stderr
