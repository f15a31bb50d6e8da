"""Shared fixtures: tiny tokenizers with random weights, saved through the real loading path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def original_fixtures() -> Path:
    """shared/fixtures/original-vimpac: beside the checkout (a CI clone, /work/main) or at /work/shared."""
    for root in (REPO.parent / "shared", Path("/work/shared")):
        if (root / "fixtures" / "original-vimpac").is_dir():
            return root / "fixtures" / "original-vimpac"
    return REPO.parent / "shared" / "fixtures" / "original-vimpac"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device, skipped without one (scripts/gpu_check.sh runs them)")


@pytest.fixture(scope="session")
def tiny_vqvae(tmp_path_factory) -> str:
    """A random-weight VQ-VAE tokenizer directory (vocab 64, stride 8), loadable by load_tokenizer("vqvae", ...)."""
    from video2token.tokenizers.vqvae import save_vqvae
    from video2token.vqvae_model import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    cfg = VQVAEConfig(vocab_size=64, downsample=8, channels=8, max_channels=16, num_res_blocks=1, code_dim=8,
                      kmeans_init=False)
    path = str(tmp_path_factory.mktemp("tok") / "vqvae64")
    save_vqvae(VQVAE(cfg).eval(), path)
    return path
