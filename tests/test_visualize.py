"""video2token.visualize: the reusable grid, the code palette, and the store -> PNG CLI for both tokenizers."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from video2token.extract import ExtractConfig, run
from video2token.store import TokenStore
from video2token.tokenizers import load_tokenizer
from video2token.visualize import (closest_ids, code_palette, codes_to_image, draw_grid, frame_psnr, main, pick_frames,
                                   unknown_id_message, visualize_video)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    data = open(path, "rb").read(24)
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_draw_grid_rows_of_different_lengths_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)]
    out = draw_grid(rows, ["frames", "codes"], str(tmp_path / "sub" / "g.png"), col_titles=["a", "b", "c", "d"],
                    title="demo")
    w4, h2 = png_size(out)
    out2 = draw_grid(rows[:1] * 3, ["x", "y", "z"], str(tmp_path / "g3.png"))
    w4b, h3 = png_size(out2)
    assert h3 > h2  # one more row -> taller picture
    out3 = draw_grid([rows[0][:2]], ["x"], str(tmp_path / "g1.png"))
    assert png_size(out3)[0] < w4b  # fewer columns -> narrower


def test_draw_grid_errors(tmp_path):
    ok = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="2 rows but 1 row titles"):
        draw_grid([ok, ok], ["a"], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="row 1 \\('b'\\): expected uint8 \\(T, H, W, 3\\)"):
        draw_grid([ok, ok.astype(np.float32)], ["a", "b"], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="at least one row"):
        draw_grid([], [], str(tmp_path / "x.png"))


def test_code_palette_equal_codes_equal_colours():
    assert np.array_equal(code_palette(64), code_palette(64))
    codes = np.array([[[3, 3], [5, -1]]])
    img = codes_to_image(codes, 64, scale=4)  # (1, 8, 8, 3)
    assert img.shape == (1, 8, 8, 3) and img.dtype == np.uint8
    assert np.array_equal(img[0, 0, 0], img[0, 0, 7])  # both code 3
    assert np.array_equal(img[0, 4, 0], code_palette(64)[5])
    assert np.array_equal(img[0, 7, 7], [0, 0, 0])  # ignore index drawn black
    assert len({tuple(c) for c in code_palette(512)}) > 500  # codes are told apart
    with pytest.raises(ValueError, match="code 64 is outside the vocabulary of 64"):
        codes_to_image(np.full((1, 2, 2), 64), 64)


def test_small_helpers():
    assert pick_frames(5, 8).tolist() == [0, 1, 2, 3, 4]
    idx = pick_frames(100, 4)
    assert idx[0] == 0 and idx[-1] == 99 and len(idx) == 4
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    p = frame_psnr(a, b)
    assert p[0] == np.inf and p[1] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from video2token.synthetic import make_dataset

    root = tmp_path_factory.mktemp("vis_demo")
    make_dataset(root, num_pool=0, num_train=3, num_val=0, size=32, fps=4, seconds=2.0, seed=2, show_progress=False)
    return root


def extract(demo, out, kind: str, tok_path: str, crop: int = 32):
    cfg = ExtractConfig(video_root=str(demo), anno=(str(demo / "shape_train_videos.txt"),), output=str(out), fps=2,
                        frame_shorter_side=crop, crop_size=crop, tokenizer=kind, tokenizer_path=tok_path, batch_size=4,
                        num_workers=0, progress=False)
    run(cfg)
    return str(out)


def test_visualize_vqvae_store(demo, tmp_path, tiny_vqvae, capsys):
    store = extract(demo, tmp_path / "store", "vqvae", tiny_vqvae)
    vid = TokenStore(store).video_ids[1]
    out = tmp_path / "v.png"
    assert main([store, vid, "--out", str(out), "--max-frames", "3", "--device", "cpu"]) == 0
    assert "3 frames of" in capsys.readouterr().out
    w3, h3 = png_size(out)
    info = visualize_video(store, vid, str(tmp_path / "v2.png"), max_frames=3, device="cpu")
    assert info["has_originals"] and info["frames"] == 3
    # the PSNR shown is that of decode(stored codes) against the re-read frames
    from video2token.video import read_video

    frames, _ = read_video(os.path.join(str(demo), vid), 2, 32, 32)
    codes, _ = TokenStore(store).read(vid)
    tok = load_tokenizer("vqvae", tiny_vqvae, device="cpu")
    idx = pick_frames(len(codes), 3)
    expected = np.minimum(frame_psnr(frames[idx], tok.decode(codes[idx].astype(np.int64))), 99).mean()
    assert info["psnr"] == pytest.approx(expected)

    # the source video moved away: reconstructions and codes only (one row fewer), with a note
    shutil.move(os.path.join(str(demo), vid), str(tmp_path / "moved.mp4"))
    try:
        info = visualize_video(store, vid, str(tmp_path / "v3.png"), max_frames=3, device="cpu")
    finally:
        shutil.move(str(tmp_path / "moved.mp4"), os.path.join(str(demo), vid))
    assert not info["has_originals"] and info["psnr"] is None
    assert "not reachable" in capsys.readouterr().err
    assert png_size(tmp_path / "v3.png")[1] < h3

    assert main([store, "no/such.mp4", "--out", str(tmp_path / "x.png")]) == 2
    assert "no/such.mp4" in capsys.readouterr().err
    # the file name without its folder: the real id is suggested
    assert main([store, os.path.basename(vid), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: video id {os.path.basename(vid)!r} is not in token store") and f"did you mean {vid!r}?" in err


def test_unknown_ids_suggest_the_closest_real_ones():
    ids = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "Archery/v_Archery_g01_c01.avi", "Archery/v_Archery_g02_c01.avi"]
    assert closest_ids("v_Archery_g02_c01.avi", ids) == ["Archery/v_Archery_g02_c01.avi"]  # folder left out
    assert closest_ids("Archery/v_Archery_g2_c01.avi", ids)[0] == "Archery/v_Archery_g02_c01.avi"  # a typo
    assert closest_ids("zzz", ids) == []
    assert unknown_id_message("zzz", ids, "S").endswith(f"ids look like {ids[0]!r} (python -m video2token.inspect S lists them)")
    assert unknown_id_message("zzz", [], "S").endswith("(the store is empty)")


def test_visualize_dalle_store_needs_a_decoder(demo, tmp_path, capsys):
    from dall_e import Decoder, Encoder

    torch.manual_seed(0)
    weights = tmp_path / "dalle"
    weights.mkdir()
    # tiny random-weight models pickled like the release (the package needs vocab >= 512, n_hid >= 64)
    torch.save(Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512), weights / "encoder.pkl")
    store = extract(demo, tmp_path / "store", "dalle", str(weights / "encoder.pkl"))
    vid = TokenStore(store).video_ids[0]
    assert main([store, vid, "--out", str(tmp_path / "no.png"), "--device", "cpu"]) == 2
    assert "--decoder-path" in capsys.readouterr().err
    torch.save(Decoder(n_init=8, n_hid=64, n_blk_per_group=1, vocab_size=512), tmp_path / "decoder.pkl")
    out = tmp_path / "d.png"
    assert main([store, vid, "--out", str(out), "--decoder-path", str(tmp_path / "decoder.pkl"), "--device", "cpu",
                 "--fp32"]) == 0
    assert "[visualize] dalle decoder: precision fp32 on cpu" in capsys.readouterr().err
    png_size(out)
    # the release layout (decoder.pkl next to encoder.pkl) is found without the flag
    shutil.copy(tmp_path / "decoder.pkl", weights / "decoder.pkl")
    info = visualize_video(store, vid, str(tmp_path / "d2.png"), device="cpu")
    assert info["has_originals"] and info["psnr"] is not None
