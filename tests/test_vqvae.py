"""The built-in VQ-VAE tokenizer: shapes, determinism, save/load, loading errors, trainer resume."""
from __future__ import annotations

import dataclasses
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


@pytest.mark.parametrize("caps, expected", [
    ({"cpu_name": "AMD EPYC", "avx2": True, "amx_bf16": False, "avx512_bf16": False}, "fp32"),
    ({"cpu_name": "Intel Xeon", "avx2": True, "amx_bf16": True, "avx512_bf16": True}, "bf16"),
], ids=["avx2", "amx"])
def test_precision_auto_follows_the_policy(tok_dir, frames, monkeypatch, caps, expected):
    from video2token import precision as policy

    monkeypatch.setattr(policy, "cpu_capabilities", lambda: dict(caps))
    tok = load_tokenizer("vqvae", tok_dir, device="cpu")
    assert tok.precision == expected and tok.describe()["precision"] == expected
    explicit = VQVAETokenizer.load(tok_dir, device="cpu", precision=expected)
    assert np.array_equal(tok.encode(frames), explicit.encode(frames))
    assert VQVAETokenizer.load(tok_dir, device="cpu", precision="fp32").describe()["precision"] == "fp32"


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


CKPT_FILES = ["model.safetensors", "optimizer.safetensors", "trainer_state.json"]


def test_trainer_writes_tokenizer_and_resume_after_kill_matches_uninterrupted(demo, tmp_path):
    steps = 15
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = run_trainer(demo, full, steps)
    assert r.returncode == 0, r.stderr
    assert f"train_tokenizer: {steps} steps" in r.stdout and "held-out PSNR" in r.stdout
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "samples.png", "curves.png"):
        assert (full / name).is_file(), name
    assert (full / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tok = load_tokenizer("vqvae", str(full), device="cpu")
    assert tok.vocab_size == 32 and tok.config.channels == 16

    # the checkpoint: safetensors + JSON, no pickle anywhere in OUTPUT
    assert sorted(os.listdir(full / "last")) == CKPT_FILES
    state = json.loads((full / "last" / "trainer_state.json").read_text())
    assert state["step"] == steps and state["version"] == 2
    assert all(isinstance(v, int) for v in state["rng_torch"] + state["rng_sampler"])
    assert load_file(str(full / "last" / "model.safetensors")).keys() == load_file(str(full / "model.safetensors")).keys()
    assert all(k.startswith("state.") for k in load_file(str(full / "last" / "optimizer.safetensors")))
    for f in full.rglob("*"):  # every file is of a kind that cannot hold a pickle
        if not f.is_file():
            continue
        if f.suffix == ".safetensors":
            load_file(str(f))
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            [json.loads(line) for line in f.read_text().splitlines()]
        elif f.suffix == ".png":
            assert f.read_bytes()[:4] == b"\x89PNG"
        else:
            assert "tfevents" in f.name and f.parent.name == "tensorboard", f

    # refuse to clobber a finished run without --resume
    r = run_trainer(demo, full, steps)
    assert r.returncode == 2 and "pass --resume" in r.stderr and r.stderr.startswith("error: ")

    # kill -9 as soon as the first checkpoint lands, mid-run
    proc = subprocess.Popen(trainer_cmd(demo, killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    deadline = time.monotonic() + 240
    while not (killed / "last").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # what a kill inside atomic_dir's swap leaves: the previous checkpoint renamed aside, a half-written temp dir
    os.replace(killed / "last", killed / "last.old.tmp")
    (killed / ".last.abc12345.tmp").mkdir()  # atomic_dir's temp name: .<final>.<8 chars>.tmp
    (killed / ".last.abc12345.tmp" / "model.safetensors").write_bytes(b"partial")
    r = run_trainer(demo, killed, steps, "--resume")
    assert r.returncode == 0, r.stderr
    resumed_from = int(re.search(r"continuing from step (\d+)", r.stdout).group(1))
    assert resumed_from in range(3, steps + 1, 3) or resumed_from == steps
    assert not (killed / ".last.abc12345.tmp").exists() and not (killed / "last.old.tmp").exists()
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert train_rows(full) == train_rows(killed)

    # a resume with another model shape is refused, naming the difference
    r = run_trainer(demo, killed, steps + 3, "--resume", "--code-dim", "4")
    assert r.returncode == 2 and "code_dim: checkpoint 8 vs now 4" in r.stderr


def in_process_argv(demo, out, steps: int, *extra: str) -> list[str]:
    """trainer_cmd's flags for main() in this process (without --threads, which would stick to pytest)."""
    argv = trainer_cmd(demo, out, steps, *extra)[3:]
    i = argv.index("--threads")
    return argv[:i] + argv[i + 2:]


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any video is decoded."""
    import video2token.video

    def read_video(*a, **k):
        raise AssertionError("a video was decoded")

    monkeypatch.setattr(video2token.video, "read_video", read_video)


def test_output_checks_come_before_any_decoding(demo, tmp_path, capsys, no_decoding):
    from video2token.train_tokenizer import main

    old = tmp_path / "old"
    old.mkdir()
    (old / "train_state.pt").write_bytes(b"PK\x03\x04 a torch.save zip")
    for extra in ((), ("--resume",)):
        assert main(in_process_argv(demo, old, 3, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {old / 'train_state.pt'} is a checkpoint from an older version of "
                              f"train_tokenizer"), err

    done = tmp_path / "done"
    (done / "last").mkdir(parents=True)  # a run's checkpoint directory
    assert main(in_process_argv(demo, done, 3)) == 2
    assert f"{done} already holds a training run" in capsys.readouterr().err


def test_library_functions_raise_tokenizer_train_error(tmp_path, capsys):
    from video2token.train_tokenizer import DataConfig, TokenizerTrainError, load_checkpoint, main, prepare_data

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(TokenizerTrainError, match=f"--anno: no videos listed in {tmp_path / 'empty.txt'}"):
        prepare_data(DataConfig(video_root=str(tmp_path), anno=(str(tmp_path / "empty.txt"),), fps=4, frame_size=32), 0)
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "trainer_state.json").write_text('{"format": "vqvae-train-checkpoint", "version": 2}')
    with pytest.raises(TokenizerTrainError, match=f"{tmp_path / 'last' / 'model.safetensors'} is missing"):
        load_checkpoint(str(tmp_path / "last"))
    # main turns them into "error: ..." and exit code 2
    base = ["--video-root", str(tmp_path), "--anno", str(tmp_path / "empty.txt"), "--fps", "4", "--vocab-size", "32",
            "--output", str(tmp_path / "out")]
    assert main([*base, "--frame-size", "30"]) == 2
    assert "error: --frame-size 30 is not a multiple of --downsample 8" in capsys.readouterr().err
    assert main([*base, "--frame-size", "32", "--precision", "fp16", "--device", "cpu"]) == 2
    assert "error: --precision fp16 is not supported for training on cpu" in capsys.readouterr().err


def test_optimizer_state_flattening_round_trip():
    from video2token.train_tokenizer import flatten_optimizer_state, unflatten_optimizer_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    flat = flatten_optimizer_state(opt.state_dict()["state"])
    assert sorted(flat) == [f"state.{i}.{n}" for i in (0, 1) for n in ("exp_avg", "exp_avg_sq", "step")]
    back = unflatten_optimizer_state(flat)
    for i, per_param in opt.state_dict()["state"].items():
        assert back[i].keys() == per_param.keys()
        assert all(torch.equal(back[i][n], per_param[n]) for n in per_param)


def test_no_progress_hides_bars_and_precision_is_logged(demo, tmp_path, capsys):
    from video2token.precision import cpu_bf16_override, resolve_precision
    from video2token.train_tokenizer import load_frames, main

    video = str(next(demo.rglob("*.mp4")))
    load_frames([video], fps=4, frame_size=32, max_frames_per_video=4, desc="decoding test", progress=True)
    assert "decoding test" in capsys.readouterr().err  # the bar this test looks for

    assert main(in_process_argv(demo, tmp_path / "out", 2, "--precision", "auto", "--device", "cpu")) == 0
    out, err = capsys.readouterr()
    auto = resolve_precision("auto", "cpu", cpu_bf16=cpu_bf16_override(os.environ))  # as main resolves it
    assert out.startswith(auto.describe() + "\n"), out
    assert "train_tokenizer: 2 steps" in out
    for bar in ("decoding", "train vqvae", "it/s", "step/s", "%|"):
        assert bar not in err, err


def test_held_out_count_is_a_fraction_with_at_least_one_video_never_all():
    from video2token.train_tokenizer import held_out_count

    assert [held_out_count(n, val_videos=None, val_fraction=0.1) for n in (1, 2, 12, 25, 100)] == [0, 1, 1, 2, 10]
    assert held_out_count(12, val_videos=None, val_fraction=0.0) == 0
    assert held_out_count(12, val_videos=3, val_fraction=0.1) == 3
    assert held_out_count(4, val_videos=8, val_fraction=0.1) == 3  # never all of them


def test_hold_out_warning_says_how_many(demo, monkeypatch, capsys):
    import video2token.train_tokenizer as tt

    decoded: dict[str, list[str]] = {}

    def fake_load_frames(paths, *, desc, **kw):
        decoded[desc] = list(paths)
        return np.zeros((len(paths), 32, 32, 3), np.uint8), []

    monkeypatch.setattr(tt, "load_frames", fake_load_frames)
    data = tt.DataConfig(video_root=str(demo), anno=(str(demo / "pretrain_videos.txt"),), fps=4, frame_size=32)
    train, val = tt.prepare_data(data, seed=0, progress=False)
    assert (len(train), len(val)) == (5, 1)
    assert not set(decoded["decoding train videos"]) & set(decoded["decoding held-out videos"])
    assert "warning: holding out 1 of 6 videos (10%, --val-fraction)" in capsys.readouterr().err
    tt.prepare_data(dataclasses.replace(data, val_videos=9), seed=0, progress=False)
    assert "warning: holding out 5 of 6 videos, not --val-videos 9" in capsys.readouterr().err


def test_val_fraction_flag_checks_and_old_checkpoints_resume_with_val_videos(tmp_path):
    import video2token.train_tokenizer as tt

    base = ["--video-root", str(tmp_path), "--anno", "a.txt", "--fps", "4", "--frame-size", "32",
            "--vocab-size", "32", "--output", str(tmp_path / "out")]
    args = tt.build_parser().parse_args([*base, "--val-fraction", "1.5"])
    with pytest.raises(tt.TokenizerTrainError, match=r"--val-fraction must be in \[0, 1\)"):
        tt.configs_from_args(args)
    # a checkpoint from before --val-fraction (data_config without it, val_videos 8) resumes with --val-videos 8
    args = tt.build_parser().parse_args([*base, "--val-videos", "8", "--precision", "fp32"])
    model_cfg, train_cfg, data_cfg = tt.configs_from_args(args)
    model = VQVAE(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = tmp_path / "out" / "last"
    tt.save_checkpoint(str(ckpt), model=model, optimizer=optimizer, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       step=1, sampler=torch.Generator(), train_cfg=train_cfg, data_cfg=data_cfg, elapsed=0.0)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["data_config"]["val_fraction"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    assert tt.check_output(str(tmp_path / "out"), resume=True, model_cfg=model_cfg, train_cfg=train_cfg,
                           data_cfg=data_cfg) is not None
    _, _, fraction_cfg = tt.configs_from_args(tt.build_parser().parse_args([*base, "--precision", "fp32"]))
    with pytest.raises(tt.TokenizerTrainError, match="val_videos: checkpoint 8 vs now None"):
        tt.check_output(str(tmp_path / "out"), resume=True, model_cfg=model_cfg, train_cfg=train_cfg,
                        data_cfg=fraction_cfg)
