"""Parameter counts of a named VIMPAC config (paper table 6).

    python -m vimpac.modeling --config small --vocab-size 8192 [--clip-len T --grid h --layout T,H|W]
"""
from __future__ import annotations

import argparse

import torch

from video2token.cli import HelpFormatter
from vimpac.model.config import CONFIG_NAMES, apply_halving, named_config
from vimpac.model.transformer import VimpacForPretraining, param_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vimpac.modeling", description="Parameter counts of a named VIMPAC config.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--config", choices=CONFIG_NAMES, default="small")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--clip-len", type=int, default=None)
    ap.add_argument("--grid", type=int, default=None, help="code-map side h = w (frame size / tokenizer stride)")
    ap.add_argument("--layout", default=None)
    ap.add_argument("--halve-att", action="store_true")
    ap.add_argument("--halve-mlp", action="store_true")
    a = ap.parse_args(argv)
    overrides = dict(vocab_size=a.vocab_size)
    if a.clip_len is not None:
        overrides["clip_len"] = a.clip_len
    if a.grid is not None:
        overrides.update(grid_h=a.grid, grid_w=a.grid)
    if a.layout is not None:
        overrides["layout"] = a.layout
    cfg = apply_halving(named_config(a.config, **overrides), halve_att=a.halve_att, halve_mlp=a.halve_mlp)
    with torch.device("meta"):  # counts only: no memory, no init cost
        model = VimpacForPretraining(cfg)
    rows = param_table(model)
    print(f"config {cfg.name}: layers={cfg.layers} dim={cfg.hid_dim} heads={cfg.heads}x{cfg.head_dim} "
          f"mlp={cfg.mlp_dim} layout={cfg.layout} vocab={cfg.vocab_size} clip_len={cfg.clip_len} "
          f"grid={cfg.grid_h}x{cfg.grid_w}")
    width = max(len(n) for n, _ in rows) + 2
    heads = [r for r in rows if r[0].startswith(("mp_head", "cl_head"))]
    body = [r for r in rows if r not in heads]
    for name, n in body:
        print(f"{name:<{width}}{n:>14,}")
    print("heads (left out of the total, as in the paper's table):")
    for name, n in heads:
        print(f"  {name:<{width - 2}}{n:>14,}")
    print(f"{'with heads':<{width}}{sum(n for _, n in rows):>14,}")
    # The paper's counts (29.4M / 119.7M / 210.1M) match embeddings + transformer layers.
    print(f"total params: {sum(n for _, n in body)}")


if __name__ == "__main__":
    main()
