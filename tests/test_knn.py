"""The weighted kNN classifier of `vimpac.eval.knn` (pure scoring) and the [CLS] features it reads (a tiny
random-initialised backbone on CPU)."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_prototype_store, make_store  # noqa: E402

from vimpac.data.clips import ClipSpec  # noqa: E402
from vimpac.data.stores import DataError  # noqa: E402
from vimpac.eval.knn import centre_clips, extract_cls_features, knn_accuracy, knn_scores  # noqa: E402
from vimpac.model.config import named_config  # noqa: E402
from vimpac.model.transformer import VimpacBackbone  # noqa: E402


def test_scores_are_the_temperature_weighted_vote_of_the_k_most_similar():
    # one bank entry of class 0 at cosine 1 with the query, two of class 1 at cosine 0.6, one of class 2 at -1
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]]) * torch.tensor([[2.0], [1.0], [3.0], [1.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[5.0, 0.0]])  # features are normalised: scale does not matter
    s = knn_scores(bank, labels, q, num_classes=3, k=4, temperature=0.07)
    assert s[0].tolist() == pytest.approx([math.exp(1 / 0.07), 2 * math.exp(0.6 / 0.07), math.exp(-1 / 0.07)],
                                          rel=1e-5)
    assert knn_accuracy(bank, labels, q, torch.tensor([0]), k=4, temperature=0.07) == (100.0, 100.0)
    # a high temperature makes it a plain majority vote: the two class-1 entries win
    assert knn_accuracy(bank, labels, q, torch.tensor([0]), k=4, temperature=10.0)[0] == 0.0
    # k = 1: only the nearest entry votes; k beyond the bank is capped
    assert knn_scores(bank, labels, q, num_classes=3, k=1)[0, 1:].tolist() == [0.0, 0.0]
    assert torch.equal(knn_scores(bank, labels, q, num_classes=3, k=200), knn_scores(bank, labels, q, num_classes=3,
                                                                                        k=4))


def test_top5_counts_the_label_among_the_five_best_classes_and_chunks_agree():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(40, 8, generator=g), torch.arange(40) % 8
    queries, qlabels = torch.randn(30, 8, generator=g), torch.arange(30) % 8
    s = knn_scores(bank, labels, queries, num_classes=8, k=10)
    assert torch.allclose(s, knn_scores(bank, labels, queries, num_classes=8, k=10, chunk=7))
    top5 = s.topk(5, dim=1).indices
    want = 100.0 * float((top5 == qlabels[:, None]).any(1).float().mean())
    top1, got5 = knn_accuracy(bank, labels, queries, qlabels, k=10)
    assert got5 == pytest.approx(want) and top1 == pytest.approx(100.0 * float((s.argmax(1) == qlabels).float().mean()))


def test_bad_inputs_are_clear_errors():
    bank, labels = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="must share D"):
        knn_scores(bank, labels, torch.randn(2, 5), num_classes=2)
    with pytest.raises(ValueError, match="one label per bank row"):
        knn_scores(bank, labels[:3], torch.randn(2, 3), num_classes=2)
    with pytest.raises(ValueError, match="k must be >= 1 and the temperature > 0"):
        knn_scores(bank, labels, torch.randn(2, 3), num_classes=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"bank labels must lie in \[0, 2\)"):
        knn_scores(bank, torch.tensor([0, 1, 2, -1]), torch.randn(2, 3), num_classes=2)


def test_cls_features_of_a_random_model_separate_copies_of_prototypes(tmp_path):
    """Videos that are copies of 4 prototypes, label = prototype: 1-NN over [CLS] of an untrained model finds all."""
    bank = centre_clips([make_prototype_store(str(tmp_path / "bank"), num_videos=8)], ClipSpec(4), what="bank")
    queries = centre_clips([make_prototype_store(str(tmp_path / "q"), num_videos=12)], ClipSpec(4), what="q")
    torch.manual_seed(0)
    backbone = VimpacBackbone(named_config("small", layers=2, hid_dim=32, heads=2, head_dim=16, mlp_dim=64,
                                           vocab_size=32, clip_len=4, grid_h=4, grid_w=4))
    backbone.train()
    feats, labels = extract_cls_features(backbone, bank, device="cpu", batch_size=3)
    assert feats.shape == (8, 32) and labels.tolist() == [0, 1, 2, 3] * 2 and backbone.training  # mode restored
    qf, ql = extract_cls_features(backbone, queries, device="cpu", batch_size=5)
    assert knn_accuracy(feats, labels, qf, ql, k=2) == (100.0, 100.0)
    odd, odd_labels = extract_cls_features(backbone, queries, device="cpu", indices=range(1, 12, 2))
    assert torch.equal(odd_labels, ql[1::2]) and torch.allclose(odd, qf[1::2], atol=1e-5)  # batch-independent


def test_centre_clips_refuse_unlabelled_stores(tmp_path):
    from store_factory import store_meta
    from video2token.store import ShardWriter, VideoRecord
    import numpy as np

    path = str(tmp_path / "unlabelled")
    w = ShardWriter(path, store_meta(32, 32), shard_id=0, num_shards=1)
    w.add(VideoRecord(source_index=0, video_id="v0", label=-1, codes=np.zeros((4, 4, 4), np.int16),
                      timestamps=np.arange(4, dtype=np.float64)))
    w.finalize()
    with pytest.raises(DataError, match="--knn-train-tokens: .* has label -1"):
        centre_clips([path], ClipSpec(4), what="--knn-train-tokens")
    ok = centre_clips([make_store(str(tmp_path / "l"), num_videos=3)], ClipSpec(2), what="x")
    assert ok[0]["codes"].shape == (1, 2, 4, 4)  # one centre clip of one view


def _save(path, **cfg) -> str:
    from vimpac.model.checkpoint import save_checkpoint
    from vimpac.model.config import ModelConfig
    from vimpac.model.transformer import VimpacForPretraining

    torch.manual_seed(0)
    config = ModelConfig(**{**dict(vocab_size=32, clip_len=4, grid_h=4, grid_w=4, layers=1, hid_dim=32, heads=2,
                                   head_dim=16, mlp_dim=64, nce_proj_hid_dim=16, nce_proj_out_dim=8), **cfg})
    return save_checkpoint(str(path), model_state=VimpacForPretraining(config).state_dict(), model_config=config,
                           train_config={}, step=1, epoch=1)


def test_knn_cli_finds_every_copy_of_a_prototype_and_writes_its_json(tmp_path, capsys):
    import json

    from vimpac import knn

    ckpt = _save(tmp_path / "pre" / "last")
    bank = make_prototype_store(str(tmp_path / "bank"), num_videos=8)
    queries = make_prototype_store(str(tmp_path / "q"), num_videos=12)
    args = ["--load", ckpt, "--train-tokens", bank, "--valid-tokens", queries, "--precision", "fp32"]
    assert knn.main(args + ["--json", "--output", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "out" / "knn.json").read_text())
    assert printed == written and (written["top1"], written["top5"]) == (100.0, 100.0)
    assert (written["bank_videos"], written["query_videos"], written["k"], written["init"]) == (8, 12, 8, "pretrained")
    assert knn.main(args + ["--from-scratch", "--seed", "3"]) == 0  # random weights: copies still coincide
    assert capsys.readouterr().out.startswith("kNN top-1 100.00 top-5 100.00 (k=8, temperature 0.07; 8 bank videos, "
                                              "12 queries; random weights in the architecture of")
    # the backbone is the checkpoint's, or (--from-scratch) the same architecture with other weights
    loaded, _ = knn.load_backbone(ckpt, from_scratch=False, seed=0)
    fresh, _ = knn.load_backbone(ckpt, from_scratch=True, seed=3)
    from vimpac.model.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt, weights_only=True).model_state
    assert torch.equal(loaded.state_dict()["layers.0.mlp.fc1.weight"], state["backbone.layers.0.mlp.fc1.weight"])
    assert fresh.cfg == loaded.cfg and not torch.equal(fresh.state_dict()["layers.0.mlp.fc1.weight"],
                                                       loaded.state_dict()["layers.0.mlp.fc1.weight"])


def test_knn_cli_reads_frames_for_a_pixel_model_and_refuses_stores_that_do_not_fit(tmp_path, capsys):
    from store_factory import make_pixel_store

    from vimpac import knn

    pixel = _save(tmp_path / "pixel", vocab_size=16, input="pixels", patch_size=4)
    frames = [make_pixel_store(str(tmp_path / name), num_videos=n, seed=s) for name, n, s in (("a", 6, 0), ("b", 4, 1))]
    assert knn.main(["--load", pixel, "--train-tokens", frames[0], "--valid-tokens", frames[1], "--json"]) == 0
    out = capsys.readouterr().out
    assert '"input": "pixels"' in out and '"query_videos": 4' in out
    codes_only = make_store(str(tmp_path / "codes"), num_videos=4, vocab_size=16)
    assert knn.main(["--load", pixel, "--train-tokens", codes_only, "--valid-tokens", frames[1]]) == 2
    err = capsys.readouterr().err
    assert f"--train-tokens: {codes_only} holds codes only" in err and "--keep-frames" in err
    big_patches = _save(tmp_path / "patch8", vocab_size=16, input="pixels", patch_size=8)  # 4x4 patches of 32 px
    assert knn.main(["--load", big_patches, "--train-tokens", frames[0], "--valid-tokens", frames[1]]) == 2
    assert "--train-tokens: frames of shape (T=4, 16x16 px) do not fit" in capsys.readouterr().err
    motion, shape = (make_prototype_store(str(tmp_path / n), num_videos=4, label_names=names) for n, names in
                     (("m", ["left", "right", "up", "down"]), ("s", ["circle", "square", "triangle", "diamond"])))
    tokens = _save(tmp_path / "tokens")
    assert knn.main(["--load", tokens, "--train-tokens", motion, "--valid-tokens", shape]) == 2
    assert f"--valid-tokens: {shape}'s label map ['circle'" in capsys.readouterr().err
    other = make_store(str(tmp_path / "v16"), num_videos=4, vocab_size=16)
    assert knn.main(["--load", tokens, "--train-tokens", other, "--valid-tokens", other]) == 2
    err = capsys.readouterr().err
    assert f"--train-tokens: {other} holds 16 codes on 4x4 maps, the model takes 32 codes" in err
