"""Pictures of tokenized videos: original frames over their reconstructions from stored VQ codes,
and the code map itself (the DALL-E paper's and VQ-VAE paper's reconstruction figures).

    python -m video2token.visualize STORE VIDEO_ID --out grid.png [--max-frames 8]
        [--tokenizer-path DIR_OR_FILE] [--decoder-path decoder.pkl] [--device cpu] [--precision auto]

Works with any tokenizer that has a decoder (`load_tokenizer`): the built-in VQ-VAE always
has one, the DALL-E dVAE needs `decoder.pkl` (found next to the encoder or given with
--decoder-path). `draw_grid` is the reusable part: pre-training draws masked-token
predictions with it.
"""
from __future__ import annotations

import argparse
import difflib
import os
import posixpath
import sys
from collections.abc import Sequence

import numpy as np

GRID_GAP = 2  # pixels between tiles, in frame pixels


def code_palette(vocab_size: int, *, seed: int = 0) -> np.ndarray:
    """A fixed random colour per code, uint8 (vocab_size, 3): equal codes get equal colours in
    every picture made with the same seed."""
    return np.random.default_rng(seed).integers(0, 256, size=(vocab_size, 3), dtype=np.uint8)


def codes_to_image(codes: np.ndarray, vocab_size: int, *, scale: int = 1, seed: int = 0) -> np.ndarray:
    """int codes (T, h, w) -> uint8 colour pictures (T, h*scale, w*scale, 3) via `code_palette`.

    Negative codes (e.g. an ignore index) are drawn black.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"expected codes of shape (T, h, w), got {codes.shape}")
    if codes.size and codes.max() >= vocab_size:
        raise ValueError(f"code {codes.max()} is outside the vocabulary of {vocab_size}")
    palette = np.concatenate([code_palette(vocab_size, seed=seed), np.zeros((1, 3), np.uint8)])
    img = palette[np.where(codes < 0, vocab_size, codes)]  # (T, h, w, 3)
    return img.repeat(scale, axis=1).repeat(scale, axis=2)


def draw_grid(rows: Sequence[np.ndarray], row_titles: Sequence[str], out_png: str, *,
              col_titles: Sequence[str] | None = None, title: str | None = None, tile_inches: float = 1.2) -> str:
    """Draw rows of frames as one PNG: row r is `rows[r]`, uint8 (T_r, H_r, W_r, 3), one tile per frame.

    Rows may differ in length and frame size (a code map next to 128 px frames); shorter rows
    leave blank tiles. Returns `out_png`.
    """
    if len(rows) == 0:
        raise ValueError("draw_grid needs at least one row")
    if len(row_titles) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_titles)} row titles")
    for r, row in enumerate(rows):
        if not isinstance(row, np.ndarray) or row.dtype != np.uint8 or row.ndim != 4 or row.shape[-1] != 3:
            raise ValueError(f"row {r} ({row_titles[r]!r}): expected uint8 (T, H, W, 3), got "
                             f"{getattr(row, 'dtype', type(row))} {getattr(row, 'shape', '')}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(row) for row in rows)
    if n_cols == 0:
        raise ValueError("draw_grid: every row is empty")
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(tile_inches * n_cols + 1.2, tile_inches * len(rows) + 0.6),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
        axes[r][0].set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def frame_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 (T, H, W, 3) pairs; inf where identical."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def pick_frames(num_frames: int, max_frames: int) -> np.ndarray:
    """Up to `max_frames` indices spread evenly over a video of `num_frames` frames."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, max_frames).round().astype(np.int64))


def _load_store_tokenizer(meta: dict, *, tokenizer_path: str | None, decoder_path: str | None, device: str | None,
                          precision: str = "auto", cpu_bf16: bool | None = None):
    from video2token.tokenizers import TokenizerError, load_tokenizer

    info = meta.get("tokenizer") or {}
    kind = info.get("name")
    path = tokenizer_path or info.get("path")
    if not kind or not path:
        raise TokenizerError(f"store metadata names no tokenizer (got {info!r}); pass --tokenizer-path")
    if kind == "dalle" and decoder_path is None:  # the release ships decoder.pkl next to encoder.pkl
        guess = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "decoder.pkl")
        if os.path.isfile(guess):
            decoder_path = guess
    tok = load_tokenizer(kind, path, decoder_path=decoder_path, device=device, precision=precision, cpu_bf16=cpu_bf16)
    print(f"[visualize] {kind} decoder: {tok.policy.describe()}", file=sys.stderr, flush=True)
    want, got = info.get("sha256"), tok.describe().get("sha256")
    if want and got and want != got:
        print(f"warning: tokenizer weights at {path} (sha256 {got[:12]}) differ from the ones the store was made "
              f"with ({want[:12]}); reconstructions will not match the stored codes' meaning", file=sys.stderr)
    if not tok.has_decoder:
        raise TokenizerError(f"the {kind} tokenizer at {path} was loaded without a decoder; pass --decoder-path "
                         f"(e.g. the DALL-E release's decoder.pkl) to reconstruct frames")
    return tok


def _read_originals(store, video_id: str, idx: np.ndarray) -> np.ndarray | None:
    """The stored frames re-read from the source video with the store's view, or None (with a
    note) when the source is not reachable."""
    from video2token.video import VideoError, read_video

    meta, src = store.meta, store.source_path(video_id)
    if not os.path.isfile(src):
        print(f"note: source video {src} is not reachable; drawing reconstructions only", file=sys.stderr)
        return None
    try:
        frames, _ = read_video(src, meta["fps"], meta["frame_shorter_side"], meta["crop_size"],
                               crop_type=meta.get("crop_type", "center"), hflip=bool(meta.get("hflip", False)),
                               channel_order=meta.get("channel_order", "rgb"))
    except (VideoError, ValueError, KeyError) as e:
        print(f"note: could not re-read {src} ({e}); drawing reconstructions only", file=sys.stderr)
        return None
    if len(frames) <= idx.max():
        print(f"note: {src} now decodes to {len(frames)} frames, fewer than stored; drawing reconstructions only",
              file=sys.stderr)
        return None
    return frames[idx]


def closest_ids(video_id: str, ids: Sequence[str], n: int = 3) -> list[str]:
    """The stored ids `video_id` most likely meant: the same file name in another folder first (a
    relpath typed without its class folder), then the closest spellings (difflib)."""
    name = posixpath.basename(video_id)
    same_name = [i for i in ids if posixpath.basename(i) == name]
    if same_name:
        return same_name[:n]
    return difflib.get_close_matches(video_id, ids, n=n, cutoff=0.5)


def unknown_id_message(video_id: str, ids: Sequence[str], store_path: str) -> str:
    close = closest_ids(video_id, ids)
    hint = (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else
            f"; ids look like {ids[0]!r} (python -m video2token.inspect {store_path} lists them)" if ids else
            " (the store is empty)")
    return f"video id {video_id!r} is not in token store {store_path}{hint}"


def visualize_video(store_path: str, video_id: str, out_png: str, *, max_frames: int = 8,
                    tokenizer_path: str | None = None, decoder_path: str | None = None,
                    device: str | None = None, precision: str = "auto", cpu_bf16: bool | None = None) -> dict:
    """Draw originals (when reachable) / reconstructions / code maps of one stored video; returns facts
    about the picture (frames drawn, mean PSNR when originals were found). `precision` / `cpu_bf16`:
    the --precision flag and VIMPAC_CPU_BF16 (video2token.precision)."""
    from video2token.store import TokenStore

    with TokenStore(store_path) as store:
        try:
            codes, label = store.read(video_id)  # (T, h, w) int16
        except KeyError:
            if video_id in store.video_ids:
                raise
            raise KeyError(unknown_id_message(video_id, store.video_ids, store_path)) from None
        idx = pick_frames(len(codes), max_frames)
        codes = codes[idx].astype(np.int64)
        times = store.timestamps(video_id)[idx]
        tok = _load_store_tokenizer(store.meta, tokenizer_path=tokenizer_path, decoder_path=decoder_path, device=device,
                                    precision=precision, cpu_bf16=cpu_bf16)
        recon = tok.decode(codes)  # (t, H, W, 3)
        originals = _read_originals(store, video_id, idx)
        label_names = store.label_names
    rows, titles = [], []
    col_titles = [f"t={t:.2f}s" for t in times]
    mean_psnr = None
    if originals is not None and originals.shape == recon.shape:
        p = frame_psnr(originals, recon)
        mean_psnr = float(np.mean(np.minimum(p, 99.0)))
        col_titles = [f"t={t:.2f}s\n{q:.1f} dB" for t, q in zip(times, p)]
        rows.append(originals)
        titles.append("original")
    rows += [recon, codes_to_image(codes, tok.vocab_size, scale=tok.downsample)]
    titles += [f"{tok.name} decode", f"codes ({codes.shape[1]}x{codes.shape[2]})"]
    label_text = "" if label < 0 else f", label {label}" + (f" ({label_names[label]})" if label_names and label < len(label_names) else "")
    psnr_text = "" if mean_psnr is None else f", mean PSNR {mean_psnr:.2f} dB"
    draw_grid(rows, titles, out_png, col_titles=col_titles, title=f"{video_id}{label_text}{psnr_text}")
    return {"out": out_png, "frames": len(idx), "psnr": mean_psnr, "has_originals": originals is not None}


def main(argv: list[str] | None = None) -> int:
    from video2token.precision import add_precision_flag, read_cpu_bf16  # torch stays out of draw_grid's imports

    from video2token.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m video2token.visualize", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("store", help="token store directory (or shard file)")
    p.add_argument("video_id", help="video id (its relpath in the annotation list)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--max-frames", type=int, default=8, help="frames drawn, spread over the video")
    p.add_argument("--tokenizer-path", default=None, help="override the tokenizer path stored in the metadata")
    p.add_argument("--decoder-path", default=None, help="DALL-E decoder.pkl (default: next to the encoder)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    add_precision_flag(p)
    args = p.parse_args(argv)
    if args.max_frames < 1:
        p.error("--max-frames must be >= 1")
    cpu_bf16 = read_cpu_bf16(p, os.environ)
    from video2token.store import StoreError
    from video2token.tokenizers import TokenizerError

    try:
        info = visualize_video(args.store, args.video_id, args.out, max_frames=args.max_frames,
                               tokenizer_path=args.tokenizer_path, decoder_path=args.decoder_path, device=args.device,
                               precision=args.precision, cpu_bf16=cpu_bf16)
    except (StoreError, TokenizerError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    psnr = "" if info["psnr"] is None else f", mean PSNR {info['psnr']:.2f} dB"
    print(f"visualize: {info['frames']} frames of {args.video_id} -> {info['out']}{psnr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
