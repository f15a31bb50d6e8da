"""Pre-training building blocks, in-process and fast: clip data, sampler, copy baseline, engine arithmetic,
checkpoint I/O, metrics log, dataset registry."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_store, store_meta  # noqa: E402

from video2token.store import ShardWriter, TokenStore, VideoRecord  # noqa: E402
import vimpac.data.registry as datasets  # noqa: E402
from vimpac.model.checkpoint import (CheckpointError, load_checkpoint, load_pretrained, save_checkpoint)  # noqa: E402
from vimpac.model.config import ModelConfig  # noqa: E402
from vimpac.eval.copy_baseline import copy_baseline_accuracy, copy_baseline_predictions  # noqa: E402
from vimpac.data.pretrain_clips import ClipPairDataset, ClipSampling, collate_pairs, sample_starts  # noqa: E402
from vimpac.data.sampler import EpochBatchSampler  # noqa: E402
from vimpac.data.stores import DataError, check_compatible_stores, shard_files, split_shards  # noqa: E402
from vimpac.train.deepspeed_setup import build_ds_config, load_overrides  # noqa: E402
from vimpac.train.optim import LRSchedule, ScheduleError, param_groups  # noqa: E402
from vimpac.train.runtime import DistInfo, EngineError, plan_batches  # noqa: E402
from vimpac.train.errors import TrainError  # noqa: E402
from vimpac.train.shard_check import check_shards  # noqa: E402
from video2token.runlog import MetricsLogger, plot_curves, read_metrics  # noqa: E402


# ----------------------------------------------------------------------------- copy baseline

def _copy_reference(codes, mask, valid):
    b, t, h, w = codes.shape
    correct = total = 0
    for bi in range(b):
        for ti in range(t):
            for i in range(h):
                for j in range(w):
                    if not (mask[bi, ti, i, j] and valid[bi, ti, i, j]):
                        continue
                    total += 1
                    usable = [s for s in range(t) if not mask[bi, s, i, j] and valid[bi, s, i, j]]
                    if not usable:
                        continue
                    src = min(usable, key=lambda s: (abs(s - ti), s))  # nearest, earlier on ties
                    correct += int(codes[bi, src, i, j] == codes[bi, ti, i, j])
    return correct, total


def test_copy_baseline_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 3, (3, 6, 3, 3), generator=g)
    mask = torch.rand(3, 6, 3, 3, generator=g) < 0.5
    mask[0, :, 0, 0] = True  # a column with nothing to copy from
    valid = torch.ones_like(mask)
    valid[1, 4:] = False  # [PAD] frames: neither targets nor sources
    correct, total = copy_baseline_accuracy(codes, mask, valid)
    assert (int(correct), int(total)) == _copy_reference(codes, mask, valid)


def test_copy_baseline_copies_from_nearest_frame():
    codes = torch.tensor([10, 11, 12, 13, 14]).view(1, 5, 1, 1)
    mask = torch.tensor([False, True, True, True, False]).view(1, 5, 1, 1)
    pred, found = copy_baseline_predictions(codes, mask)
    assert pred.flatten().tolist() == [10, 10, 10, 14, 14]  # t=2 ties -> earlier frame
    assert bool(found.all())


# ----------------------------------------------------------------------------- clip data

def _frame_index_store(path, num_frames, vocab=64, grid=2):
    """Each frame filled with its own index, so a clip reveals which frames it took."""
    w = ShardWriter(path, store_meta(vocab, grid * 8), shard_id=0, num_shards=1)
    for i, t in enumerate(num_frames):
        codes = np.broadcast_to(np.arange(t, dtype=np.int16)[:, None, None], (t, grid, grid)).copy()
        w.add(VideoRecord(i, f"v{i}.mp4", 0, codes, np.arange(t, dtype=np.float64)))
    w.finalize()
    return TokenStore(path)


def test_sample_starts_uniform_and_within_relevance_range():
    rng = np.random.default_rng(0)
    s = ClipSampling(clip_len=3, frame_rate=2)  # span 5
    starts = np.array([sample_starts(20, s, rng) for _ in range(3000)])
    assert starts.min() == 0 and starts.max() == 15  # every start where a clip fits
    assert abs(np.mean(starts[:, 0] == starts[:, 1]) - 1 / 16) < 0.03  # independent draws
    near = ClipSampling(clip_len=3, frame_rate=2, relevance_range=2)
    starts = np.array([sample_starts(20, near, rng) for _ in range(500)])
    assert np.abs(starts[:, 0] - starts[:, 1]).max() == 2
    assert sample_starts(4, s, rng) == (0, 0)  # shorter than a clip


def test_dataset_frames_stride_pad_mask_and_determinism(tmp_path):
    store = _frame_index_store(str(tmp_path / "s"), [12, 3])
    special_pad = 64 + 1
    ds = ClipPairDataset([store], ClipSampling(clip_len=4, frame_rate=2, mask_blocks=3), seed=5)
    item = ds[(0, 0)]
    assert item["codes"].shape == (2, 4, 2, 2) and item["codes"].dtype == torch.long
    for c, s0 in zip(item["codes"], item["starts"].tolist()):
        assert c[:, 0, 0].tolist() == [s0, s0 + 2, s0 + 4, s0 + 6]  # every 2nd stored frame
    short = ds[(0, 1)]
    assert short["codes"][0, :, 0, 0].tolist() == [0, 2, special_pad, special_pad]  # 3 frames -> 2 taken + [PAD]
    assert not bool((short["mask"] & (short["codes"] == special_pad)).any())  # [PAD] never masked
    masked_in = short["codes_in"][short["mask"]]
    assert bool((masked_in == ds.special.mask).all())
    again = ClipPairDataset([store], ds.sampling, seed=5)[(0, 0)]
    assert all(torch.equal(item[k], again[k]) for k in item)  # deterministic for (seed, epoch, index)
    other = [ClipPairDataset([store], ds.sampling, seed=5)[(e, 0)]["starts"].tolist() for e in range(1, 6)]
    assert any(o != item["starts"].tolist() for o in other)  # a new epoch draws new clips
    batch = collate_pairs([ds[(0, 0)], ds[(0, 1)]])
    assert batch["codes"].shape == (2, 2, 4, 2, 2) and batch["index"].tolist() == [0, 1]


def test_random_view_per_sample(tmp_path):
    a = TokenStore(make_store(str(tmp_path / "a"), num_videos=6, seed=1))
    b = TokenStore(make_store(str(tmp_path / "b"), num_videos=6, seed=2, hflip=True))
    ds = ClipPairDataset([a, b], ClipSampling(clip_len=3), seed=0)
    views = set()
    for k in range(6):
        item = ds[(0, k)]
        store = [a, b][int(item["view"])]
        s0 = int(item["starts"][0])
        expect = store.read_at(k, frames=slice(s0, s0 + 3))[0].astype(np.int64)
        assert np.array_equal(item["codes"][0].numpy(), expect)
        views.add(int(item["view"]))
    assert views == {0, 1}


def test_incompatible_stores_are_clear_errors(tmp_path):
    a = TokenStore(make_store(str(tmp_path / "a"), num_videos=4, vocab_size=32))
    b = TokenStore(make_store(str(tmp_path / "b"), num_videos=4, vocab_size=48, name="other"))
    c = TokenStore(make_store(str(tmp_path / "c"), num_videos=5, vocab_size=32))
    with pytest.raises(DataError, match="vocabulary mismatch.*48 codes"):
        check_compatible_stores([a, b], "--train-tokens")
    with pytest.raises(DataError, match="not views of the same split"):
        check_compatible_stores([a, c], "--train-tokens")


# ----------------------------------------------------------------------------- sampler

def test_sampler_partitions_ranks_and_resumes_mid_epoch():
    full = [list(EpochBatchSampler(22, micro_batch=2, world_size=2, rank=r, seed=3)) for r in range(2)]
    assert len(full[0]) == 5  # 22 // 4, tail dropped
    keys = [k for r in range(2) for batch in full[r] for k in batch]
    assert len({i for _, i in keys}) == 20  # disjoint across ranks and steps
    resumed = EpochBatchSampler(22, micro_batch=2, world_size=2, rank=1, seed=3)
    resumed.set_position(0, 3)
    assert list(resumed) == full[1][3:]
    resumed.set_position(1, 0)
    assert not np.array_equal(resumed.order(0), resumed.order(1))  # a new permutation per epoch
    assert all(e == 1 for batch in resumed for e, _ in batch)
    with pytest.raises(DataError, match="cannot fill one global micro-batch"):
        EpochBatchSampler(3, micro_batch=2, world_size=2)


# ----------------------------------------------------------------------------- engine arithmetic

def test_plan_batches():
    p = plan_batches(batch_size=1024, bs_per_gpu=32, world_size=4)
    assert (p.micro_batch, p.accumulation, p.world_size) == (32, 8, 4)
    with pytest.raises(EngineError, match="not divisible by --bs-per-gpu 24 x world size 2 = 48"):
        plan_batches(batch_size=100, bs_per_gpu=24, world_size=2)


def test_lr_schedule_warmup_decay_and_stage2_continuity():
    s = LRSchedule(kind="linear", warmup=0.1, epochs=10, steps_per_epoch=10)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear warm-up over the first 10%
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after it
    assert lrs[-1] == pytest.approx(1 / 90) and min(lrs) > 0  # no update is wasted at lr 0
    cos = LRSchedule(kind="cosine", warmup=0.0, epochs=2, steps_per_epoch=4)
    assert cos(4) == pytest.approx(0.5)  # half-way through: cos(pi/2)
    assert LRSchedule(kind="constant", warmup=0.5, epochs=1, steps_per_epoch=4)(3) == 1.0
    # stage 2: after 9 of 10 epochs at 10 steps/epoch, 5 steps/epoch; the curve over epochs is the same
    s2 = LRSchedule(kind="linear", warmup=0.1, epochs=10, steps_per_epoch=5, step_base=90, epoch_base=9)
    assert s2(90) == pytest.approx(s(90)) and s2(92) == pytest.approx(s(94))
    assert s2(94) == pytest.approx(s(98))
    with pytest.raises(ScheduleError, match="--lr-scheduler"):
        LRSchedule(kind="step", warmup=0.1, epochs=1, steps_per_epoch=1)


def test_param_groups_no_decay_for_biases_norms_positions():
    from vimpac.model.config import ModelConfig
    from vimpac.model.transformer import VimpacForPretraining

    model = VimpacForPretraining(ModelConfig(vocab_size=16, clip_len=2, grid_h=2, grid_w=2, layers=1, hid_dim=16,
                                             heads=2, head_dim=8, mlp_dim=32, nce_proj_hid_dim=16))
    decay, no_decay = param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "backbone.embeddings.code.weight" in decay["names"]
    assert "backbone.layers.0.mlp.fc1.weight" in decay["names"]
    for name in ("backbone.layers.0.mlp.fc1.bias", "backbone.embeddings.norm.weight", "backbone.embeddings.pos_t",
                 "cl_head.net.1.weight", "mp_head.bias"):
        assert name in no_decay["names"], name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ds_config_overrides_and_errors(tmp_path):
    plan = plan_batches(batch_size=16, bs_per_gpu=4, world_size=2)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "gradient_clipping": 0.5}))
    cfg = build_ds_config(plan, clip_grad_norm=1.0, zero_stage=2, precision="bf16", overrides=load_overrides(str(path)))
    assert cfg["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 1000}
    assert cfg["gradient_clipping"] == 0.5 and cfg["gradient_accumulation_steps"] == 2
    assert "bf16" not in cfg  # --bf16 is autocast over fp32 weights
    with pytest.raises(EngineError, match="train_batch_size=64 but the flags give 16"):
        build_ds_config(plan, clip_grad_norm=1.0, zero_stage=0, precision="fp32", overrides={"train_batch_size": 64})
    path.write_text('{"zero_optimization": {\n  "stage": 2,,}}')
    with pytest.raises(EngineError, match="invalid JSON at line 2"):
        load_overrides(str(path))


# ----------------------------------------------------------------------------- checkpoint I/O

def _tiny_cfg():
    return ModelConfig(vocab_size=16, clip_len=2, grid_h=2, grid_w=2, layers=1, hid_dim=8, heads=2, head_dim=4,
                       mlp_dim=16, nce_proj_hid_dim=8)


def test_checkpoint_round_trip_refuses_nan_and_recovers_swap(tmp_path):
    d = str(tmp_path / "last")
    from vimpac.model.transformer import VimpacForPretraining
    torch.manual_seed(0)
    weights = VimpacForPretraining(_tiny_cfg()).state_dict()  # loading checks the weights fit the config
    name = "backbone.embeddings.code.weight"
    moments = {f"{name}::exp_avg": torch.randn(weights[name].shape),
               f"{name}::exp_avg_sq": torch.rand(weights[name].shape)}
    save_checkpoint(d, model_state=weights, model_config=_tiny_cfg(), train_config={"lr": 1e-3}, step=5, epoch=1,
                    optimizer_state=moments, trainer_state={"step": 5})
    ck = load_checkpoint(d)
    assert ck.model_config == _tiny_cfg() and ck.trainer_state == {"step": 5} and ck.config["train"] == {"lr": 1e-3}
    assert all(torch.equal(ck.model_state[k], v) for k, v in weights.items()) and set(ck.model_state) == set(weights)
    assert torch.equal(ck.optimizer_state[f"{name}::exp_avg"], moments[f"{name}::exp_avg"])
    cfg, state = load_pretrained(d)  # the fine-tuning path: no DeepSpeed, no optimizer
    assert cfg.vocab_size == 16 and set(state) == set(weights)

    bad = dict(weights, **{name: torch.full_like(weights[name], float("nan"))})
    with pytest.raises(CheckpointError, match="non-finite values"):
        save_checkpoint(d, model_state=bad, model_config=_tiny_cfg(), train_config={}, step=6, epoch=1)
    assert load_checkpoint(d).config["step"] == 5  # previous checkpoint kept

    os.replace(d, d + ".old.tmp")  # a kill between atomic_dir's two renames
    assert load_checkpoint(d).config["step"] == 5
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- metrics

def test_metrics_resume_truncates_and_plots(tmp_path):
    out = str(tmp_path)
    log = MetricsLogger(out, enabled=True, tensorboard=False)
    for step in range(1, 6):
        log.log("train", 0, step, mp_loss=5 - step, mask_acc=0.1 * step, lr=1e-3)
    log.log("valid", 0, 5, mp_loss=1.0, mask_acc=0.5, copy_acc=0.6)
    log.close()
    with open(log.path, "a") as f:
        f.write('{"split": "train", "ste')  # torn line of a killed writer
    log = MetricsLogger(out, enabled=True, resume_step=3, tensorboard=False)
    log.log("train", 0, 4, mp_loss=0.5)
    log.close()
    rows = read_metrics(log.path)
    assert [(r["split"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    assert rows[-1]["mp_loss"] == 0.5
    png = plot_curves(log.path, str(tmp_path / "curves.png"), keys=("mp_loss",))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert not MetricsLogger(str(tmp_path / "other"), enabled=False).enabled
    assert not os.path.exists(tmp_path / "other")  # non-zero ranks write nothing


# ----------------------------------------------------------------------------- dataset registry

def test_dataset_registry_paths_and_missing_store(tmp_path):
    root = str(tmp_path)
    expect = os.path.join(root, "dalle_ucf101_train_split1_fps2_hflip0_128center128")
    os.makedirs(expect)
    assert datasets.store_paths("ucf101", "train", frame_size=128, root=root) == [expect]
    assert datasets.store_paths("howto100m", "valid", frame_size=128, root=root) == []  # no valid split
    with pytest.raises(FileNotFoundError, match="dalle_kinetics400_train_fps2_hflip0_256center256"):
        datasets.store_paths("kinetics400", "train", frame_size=256, root=root)
    with pytest.raises(ValueError, match="unknown --dataset-name 'nope'"):
        datasets.get_dataset("nope")
    datasets.register_dataset(datasets.DatasetSpec(name="mine_test", train_split="all", valid_split=None),
                              replace=True)
    assert "mine_test" in datasets.dataset_names() and "mine_test" not in datasets.finetune_names()  # unlabelled
    # one table for both stages: the fine-tuning frame rate is the one pre-training store names use too
    assert datasets.get_dataset("hmdb51").fps == datasets.get_finetune_spec("hmdb51").fps == 4.0


def test_iid_masking_matches_the_block_ratio_without_blocks(tmp_path):
    from vimpac.data.masking import expected_block_mask_ratio

    store = TokenStore(make_store(str(tmp_path / "s"), num_videos=4, grid=8, frames=(8, 10), seed=0))
    stats = {}
    for kind in ("block", "iid"):
        ds = ClipPairDataset([store], ClipSampling(clip_len=5, mask_blocks=3, masking=kind), seed=1)
        masks = torch.stack([ds[(e, k)]["mask"] for e in range(40) for k in range(4)])  # (160, 2, 5, 8, 8)
        # how often a masked position's next frame at the same place is masked too: blocks span time
        both = (masks[..., 1:, :, :] & masks[..., :-1, :, :]).sum() / masks[..., :-1, :, :].sum()
        stats[kind] = (float(masks.float().mean()), float(both))
    expected = expected_block_mask_ratio((5, 8, 8), 3)
    assert abs(stats["block"][0] - expected) < 0.03 and abs(stats["iid"][0] - expected) < 0.03
    assert stats["iid"][1] < 0.3 < stats["block"][1]
    with pytest.raises(ValueError, match="masking"):
        ClipSampling(clip_len=5, masking="random")


def test_batch_plan_follows_the_flags_given_and_fits_a_small_set():
    from vimpac.train.runtime import plan_for_data

    kw = dict(default_batch=1024, default_bs_per_gpu=32)
    plan, warning = plan_for_data(batch_size=None, bs_per_gpu=None, world_size=1, num_videos=5000, **kw)
    assert (plan.global_batch, plan.micro_batch, plan.accumulation) == (1024, 32, 32) and warning is None
    # a small set: the default global batch is capped by the data, with a warning that says so
    plan, warning = plan_for_data(batch_size=None, bs_per_gpu=None, world_size=2, num_videos=100, **kw)
    assert (plan.global_batch, plan.micro_batch) == (64, 32) and "100 training videos" in warning
    plan, warning = plan_for_data(batch_size=None, bs_per_gpu=None, world_size=1, num_videos=12, **kw)
    assert (plan.global_batch, plan.micro_batch, plan.accumulation) == (12, 12, 1) and "pass --batch-size" in warning
    # only --batch-size: the micro batch follows it (largest divisor of the per-rank share up to the default)
    plan, _ = plan_for_data(batch_size=48, bs_per_gpu=None, world_size=2, num_videos=12, **kw)
    assert (plan.micro_batch, plan.accumulation) == (24, 1)
    plan, _ = plan_for_data(batch_size=96, bs_per_gpu=None, world_size=1, num_videos=12, **kw)
    assert (plan.micro_batch, plan.accumulation) == (32, 3)
    # only --bs-per-gpu: the default global batch rounded to a multiple of it
    plan, _ = plan_for_data(batch_size=None, bs_per_gpu=24, world_size=1, num_videos=5000, **kw)
    assert (plan.global_batch, plan.accumulation) == (1008, 42)
    # both given and disagreeing: the error names both flags
    with pytest.raises(EngineError, match="--batch-size 100 is not divisible by --bs-per-gpu 32"):
        plan_for_data(batch_size=100, bs_per_gpu=32, world_size=1, num_videos=5000, **kw)


def test_shards_are_split_over_the_ranks_by_size_each_once(tmp_path):
    sizes = {"a": 700, "b": 100, "c": 400, "d": 300, "e": 300, "f": 0}
    for name, n in sizes.items():
        (tmp_path / name).write_bytes(b"x" * n)
    paths = [str(tmp_path / n) for n in sizes] + [str(tmp_path / "gone")]  # unreadable: 0 bytes, still checked
    shares = split_shards(paths, 2)
    assert sorted(p for share in shares for p in share) == sorted(paths)
    assert [[os.path.basename(p) for p in share] for share in shares] == [["a", "e"], ["c", "d", "b", "f", "gone"]]  # 1000 / 800 bytes
    assert split_shards(paths, 1) == [sorted(paths, key=lambda p: (-sizes.get(os.path.basename(p), 0), p))]
    assert split_shards(paths[:1], 3) == [paths[:1], [], []]  # more ranks than shards: some check nothing
    store = make_store(str(tmp_path / "store"), num_videos=4, shards=2)
    opened = TokenStore(store, verify=False)
    assert shard_files([opened, opened]) == opened.shard_paths and len(opened.shard_paths) == 2


def test_one_process_checks_every_shard_and_names_the_corrupt_ones(tmp_path):
    store = make_store(str(tmp_path / "store"), num_videos=6, shards=3)
    paths = TokenStore(store, verify=False).shard_paths
    seen, logs = [], []
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    check_shards(paths, one, check=lambda p: seen.append(p), log=logs.append)
    assert sorted(seen) == sorted(paths) and "SHA-256 of 3 shard(s)" in logs[0]
    assert check_shards([], one, check=seen.append) == 0.0 and len(seen) == 3
    for p in paths[1:]:
        with open(p, "ab") as f:
            f.write(b"\0")
    with pytest.raises(TrainError, match=r"token store check: shard .*shard-0000[12]-of-00003.h5 is corrupt: .* "
                                         r"\(and 1 more shard\(s\): shard .*is corrupt"):
        check_shards(paths, one, log=logs.append)
