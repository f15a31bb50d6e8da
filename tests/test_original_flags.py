"""Every flag of the original VIMPAC's `vimpac/param.py` on both entry points (read from its parser: tests/data/
original_param_flags.json), and the pieces behind the ones that were missing: --optim / --epsilon, --gradient-
accumulation, --label-smoothing, --slurm-multinode-dist and the architecture flags of fine-tuning without --load."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_prototype_store, make_store  # noqa: E402

import vimpac.finetune as finetune  # noqa: E402
import vimpac.pretrain as pretrain  # noqa: E402
from vimpac.data.pretrain_clips import ClipSampling  # noqa: E402
from vimpac.model.config import named_config  # noqa: E402
from vimpac.model.transformer import VimpacForPretraining  # noqa: E402
from vimpac.train import ds_compat  # noqa: E402
from vimpac.train.architecture import ArchitectureFlags  # noqa: E402
from vimpac.train.errors import TrainError  # noqa: E402
from vimpac.train.finetune_task import ClassifierInit, FinetuneTask  # noqa: E402
from vimpac.train.flags import no_effect_notes  # noqa: E402
from vimpac.train.optim import build_optimizer, param_groups  # noqa: E402
from vimpac.train.pretrain_task import KnnMonitor, PretrainData, PretrainObjective, PretrainTask  # noqa: E402
from vimpac.train.runtime import EngineError, plan_for_data, slurm_launch  # noqa: E402

FLAGS = json.loads((Path(__file__).parent / "data" / "original_param_flags.json").read_text())["flags"]
ENTRIES = {"pretrain": pretrain, "finetune": finetune}
BASE = ["--output", "out"]
SAMPLES = {"int": ["3", "2"], "float": ["0.3", "0.2"], "str": ["x"]}


def parse(entry: str, argv: list[str]) -> argparse.Namespace | None:
    """The entry point's namespace, None when argparse refuses the command line."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return ENTRIES[entry].build_parser().parse_args(BASE + argv)
    except SystemExit:
        return None


def shapes(flag: dict) -> list[list[str]]:
    """The flag in the original's shape: with each of its choices, a value of its type, or alone."""
    if not flag["takes_value"]:
        return [[flag["flag"]]]
    values = flag["choices"] or SAMPLES[flag["type"] or "str"]
    return [[flag["flag"], str(v)] for v in values]


def test_the_copied_flag_list_is_the_whole_original_parser():
    assert len(FLAGS) == 55 and len({f["flag"] for f in FLAGS}) == 55
    assert {"--optim", "--epsilon", "--gradient-accumulation", "--label-smoothing", "--knn-monitor",
            "--slurm-multinode-dist"} <= {f["flag"] for f in FLAGS}


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_every_original_flag_parses_in_its_original_shape(entry):
    parser = ENTRIES[entry].build_parser()
    refused = []
    for flag in FLAGS:
        for name in [flag["flag"], *flag["aliases"]]:
            action = parser._option_string_actions.get(name)  # the exact spelling, not an abbreviation
            if action is None or (action.nargs == 0) == flag["takes_value"]:
                refused.append(f"{name}: {'missing' if action is None else 'value or not differs'}")
        refused += [" ".join(argv) for argv in shapes(flag) if parse(entry, argv) is None]
    assert not refused, f"{entry} refuses: {refused}"


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_no_original_flag_is_silently_ignored(entry):
    """Each flag changes the parsed config, or is on the entry point's NO_EFFECT list, whose note says why."""
    module = ENTRIES[entry]
    plain = parse(entry, [])
    assert no_effect_notes(plain, module.NO_EFFECT) == []
    for flag in FLAGS:
        name = flag["flag"]
        parsed = [parse(entry, argv) for argv in shapes(flag)]
        if name in module.NO_EFFECT:
            for ns in parsed:
                assert [n for n in no_effect_notes(ns, module.NO_EFFECT) if n.startswith(name + " ")] == \
                    [f"{name} has no effect here: {module.NO_EFFECT[name]}"]
        else:
            assert any(vars(ns) != vars(plain) for ns in parsed), f"{entry} {name}: parsed but changes nothing"
    assert set(module.NO_EFFECT) <= {f["flag"] for f in FLAGS}  # the list holds original flags only


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_the_cli_prints_why_a_flag_has_no_effect(entry, tmp_path, capsys):
    module = ENTRIES[entry]
    argv = [a for flag in FLAGS if flag["flag"] in module.NO_EFFECT for a in shapes(flag)[0]]
    # no stores given: the run stops with its data error, after the notes
    assert module.main(argv + ["--output", str(tmp_path / "o"), "--train-tokens", str(tmp_path / "none")]) == 2
    out = capsys.readouterr().out
    for flag in module.NO_EFFECT:
        assert f"[{entry}] {flag} has no effect here: " in out, out


# ----------------------------------------------------------------------------- --optim, --epsilon

def test_optimizers_of_the_original_choices():
    model = VimpacForPretraining(named_config("small", layers=1, hid_dim=32, heads=2, head_dim=16, mlp_dim=64,
                                              nce_proj_hid_dim=32, vocab_size=16, clip_len=2, grid_h=2, grid_w=2))
    kw = dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.05, eps=1e-7)
    adamw, adam, sgd = (build_optimizer(model, kind=k, **kw) for k in ("adamw", "adam", "sgd"))
    assert type(adamw) is torch.optim.AdamW and type(adam) is torch.optim.Adam and type(sgd) is torch.optim.SGD
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    assert [g["weight_decay"] for g in adam.param_groups] == [0.0, 0.0]  # the original's Adam: no decay
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.05, 0.0] and sgd.defaults["momentum"] == 0.8
    assert adamw.defaults["eps"] == adam.defaults["eps"] == 1e-7 and adam.defaults["betas"] == (0.8, 0.95)
    names = param_groups(model, weight_decay=0.05)
    assert [len(g["params"]) for g in sgd.param_groups] == [len(g["names"]) for g in names]
    assert ds_compat.state_keys(adamw) == ds_compat.state_keys(adam) == ("exp_avg", "exp_avg_sq")
    assert ds_compat.state_keys(sgd) == ("momentum_buffer",)
    assert ds_compat.state_keys(build_optimizer(model, kind="sgd", **{**kw, "betas": (0.0, 0.9)})) == ()


# ----------------------------------------------------------------------------- --gradient-accumulation

def test_gradient_accumulation_sets_the_micro_batch_unless_bs_per_gpu_is_given():
    kw = dict(default_batch=64, default_bs_per_gpu=8, num_videos=1000)
    plan, warning = plan_for_data(batch_size=64, bs_per_gpu=None, world_size=2, accumulation=4, **kw)
    assert (plan.global_batch, plan.micro_batch, plan.accumulation, warning) == (64, 8, 4, None)
    plan, warning = plan_for_data(batch_size=None, bs_per_gpu=None, world_size=1, accumulation=1, **kw)
    assert (plan.global_batch, plan.micro_batch, plan.accumulation) == (64, 64, 1)  # the original: batch / N
    plan, warning = plan_for_data(batch_size=64, bs_per_gpu=16, world_size=2, accumulation=4, **kw)
    assert (plan.micro_batch, plan.accumulation) == (16, 2)
    assert "--gradient-accumulation 4 not used: --bs-per-gpu 16 wins" in warning
    plan, warning = plan_for_data(batch_size=None, bs_per_gpu=None, world_size=2, accumulation=3,
                                  **{**kw, "num_videos": 20})  # the default batch capped by the data
    assert (plan.global_batch, plan.micro_batch, plan.accumulation) == (18, 3, 3) and "using 18" in warning
    with pytest.raises(EngineError, match="--batch-size 64 is not divisible by world size 2 x --gradient-accum"):
        plan_for_data(batch_size=64, bs_per_gpu=None, world_size=2, accumulation=3, **kw)
    with pytest.raises(EngineError, match="--gradient-accumulation must be >= 1"):
        plan_for_data(batch_size=64, bs_per_gpu=None, world_size=2, accumulation=0, **kw)


# ----------------------------------------------------------------------------- --label-smoothing

def test_label_smoothing_is_the_originals_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])

    def original(x, target, s):  # the original's LabelSmoothingCrossEntropy, written out
        logp = F.log_softmax(x, dim=-1)
        return ((1 - s) * -logp.gather(-1, target[:, None])[:, 0] + s * -logp.mean(-1)).mean()

    loop = SimpleNamespace(dist=SimpleNamespace(device=torch.device("cpu")),
                           precision=SimpleNamespace(autocast=contextlib.nullcontext))
    batch = {"codes": torch.zeros(6, 1, 1, 1, dtype=torch.long), "frame_valid": torch.ones(6, 1, dtype=torch.bool),
             "label": labels}
    for s in (0.0, 0.1, 0.5):
        task = FinetuneTask(None, ClassifierInit(), None, seed=0, clip_counts=[], output="o", label_smoothing=s)
        loss, _ = task.forward(lambda codes, **kw: logits, batch, loop)
        assert float(loss) == pytest.approx(float(original(logits, labels, s)), rel=1e-6)
    with pytest.raises(TrainError, match=r"--label-smoothing must be in \[0, 1\)"):
        FinetuneTask(None, ClassifierInit(), None, seed=0, clip_counts=[], output="o", label_smoothing=1.0)


# ----------------------------------------------------------------------------- --slurm-multinode-dist

SLURM = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[07-10]",
         "SLURM_NTASKS_PER_NODE": "2", "DS_ACCELERATOR": "cpu"}


def test_slurm_launch_reads_srun_variables_and_the_first_host():
    asked = []

    def hostnames(nodelist):
        asked.append(nodelist)
        return ["gpu07", "gpu08", "gpu09", "gpu10"]

    launch = slurm_launch(SLURM, hostnames)
    assert asked == ["gpu[07-10]"]
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (5, 8, 1, 2)
    assert launch.launched and launch.cpu and not launch.is_main
    assert dict(launch.rendezvous) == {"MASTER_ADDR": "gpu07", "MASTER_PORT": "29500", "RANK": "5", "WORLD_SIZE": "8",
                                       "LOCAL_RANK": "1"}
    assert dict(slurm_launch({**SLURM, "MASTER_PORT": "31000"}, hostnames).rendezvous)["MASTER_PORT"] == "31000"
    assert slurm_launch({**SLURM, "SLURM_NTASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": "4(x2)"},
                        hostnames).local_world_size == 4


def test_slurm_launch_errors_name_what_is_missing():
    with pytest.raises(EngineError, match="SLURM_PROCID, SLURM_JOB_NODELIST not set; start every rank with srun"):
        slurm_launch({k: v for k, v in SLURM.items() if k not in ("SLURM_PROCID", "SLURM_JOB_NODELIST")},
                     lambda n: ["h"])
    with pytest.raises(EngineError, match="SLURM_PROCID 8 / SLURM_LOCALID 1 out of range for SLURM_NTASKS 8"):
        slurm_launch({**SLURM, "SLURM_PROCID": "8"}, lambda n: ["h"])
    with pytest.raises(EngineError, match="not an integer"):
        slurm_launch({**SLURM, "SLURM_NTASKS": "eight"}, lambda n: ["h"])
    with pytest.raises(EngineError, match="names no host"):
        slurm_launch(SLURM, lambda n: [])


def test_the_cli_reads_slurm_variables_only_with_the_flag(tmp_path, capsys):
    argv = ["--train-tokens", str(tmp_path / "none"), "--output", str(tmp_path / "o"), "--slurm-multinode-dist"]
    assert pretrain.main(argv, environ={"DS_ACCELERATOR": "cpu"}, hostnames=lambda n: ["h"]) == 2
    assert "--slurm-multinode-dist: SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_JOB_NODELIST not set" in \
        capsys.readouterr().err
    # rank 1 of 2 under SLURM: the data error is rank 0's to print
    assert finetune.main(argv, environ={**SLURM, "SLURM_PROCID": "1"}, hostnames=lambda n: ["h"]) == 2
    assert capsys.readouterr().err == ""
    assert finetune.main(argv[:-1], environ={**SLURM, "SLURM_PROCID": "1"}) == 2  # without the flag: not read
    assert "error:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- architecture flags

def test_architecture_flags_build_pretrainings_model_and_check_a_loaded_one():
    a = pretrain.build_parser().parse_args(["--output", "o", "--layers", "2", "--hid-dim", "128", "--halve-mlp"])
    cfg = ArchitectureFlags.from_flags(a).model_config(vocab_size=32, grid=(4, 4), clip_len=4)
    assert (cfg.layers, cfg.hid_dim, cfg.heads, cfg.mlp_dim, cfg.layout, cfg.pos_emb) == (2, 128, 2, 256, "T,H|W",
                                                                                          "hw_separation")
    ft = finetune.build_parser().parse_args(["--output", "o", "--layers", "2", "--hid-dim", "128", "--halve-mlp",
                                             "--nce-proj-hid-dim", "7"])  # no effect in fine-tuning
    arch = ArchitectureFlags.from_flags(ft, contrastive_head=False)
    assert arch.model_config(vocab_size=32, grid=(4, 4), clip_len=4).to_dict() == cfg.to_dict()  # same defaults
    assert arch.mismatches(cfg, "--load X") == []
    wrong = ArchitectureFlags(model="efflayoutT,H,W", pos_emb="default", layers=6, pre_activation=True,
                              halve_att=True).mismatches(cfg, "--load X")
    assert wrong == ["--model efflayoutT,H,W but --load X has efflayoutT,H|W", "--pos-emb default but --load X has "
                     "hw_separation", "--layers 6 but --load X has 2", "--pre-activation but the model of --load X "
                     "is not built that way", "--halve-att but the model of --load X is not built that way"]
    for kind in ("pre_defined", "frozen"):
        with pytest.raises(TrainError, match=f"--pos-emb {kind}: the original VIMPAC accepted it but never"):
            ArchitectureFlags(pos_emb=kind).model_config(vocab_size=32, grid=(4, 4), clip_len=4)
    with pytest.raises(TrainError, match="--model 'T,H': expected 'efflayout'"):
        ArchitectureFlags(model="T,H").model_config(vocab_size=32, grid=(4, 4), clip_len=4)



# ----------------------------------------------------------------------------- --knn-monitor's stores

def test_knn_monitor_stores_given_or_the_registrys_ucf101_split1(tmp_path):
    def knn(*argv: str):
        return pretrain.knn_from_flags(pretrain.build_parser().parse_args(["--output", "o", *argv]))

    assert knn() is None
    given = knn("--knn-monitor", "--knn-train-tokens", "A", "B", "--knn-valid-tokens", "C", "--knn-k", "7")
    assert (given.train, given.valid, given.k, given.temperature) == (("A", "B"), ("C",), 7, 0.07)
    root = tmp_path / "video_tokens"
    with pytest.raises(TrainError, match=r"--knn-monitor: token store .*dalle_ucf101_train_split1_fps2_hflip0_"
                                         r"32center32 does not exist.* or pass --knn-train-tokens"):
        knn("--knn-monitor", "--frame-size", "32", "--data-root", str(root))
    for name in ("train_split1_fps2_hflip0_32center32", "train_split1_fps2_hflip1_32center32",
                 "val_split1_fps2_hflip0_32center32", "val_split1_fps2_hflip0_32top32"):
        make_prototype_store(str(root / f"dalle_ucf101_{name}"), num_videos=2)
    found = knn("--knn-monitor", "--frame-size", "32", "--data-root", str(root))
    assert found.train == (str(root / "dalle_ucf101_train_split1_fps2_hflip0_32center32"),)  # the center view only
    assert found.valid == (str(root / "dalle_ucf101_val_split1_fps2_hflip0_32center32"),)
    with pytest.raises(TrainError, match="--knn-monitor needs labelled stores: --knn-train-tokens STORE"):
        knn("--knn-monitor")  # no --frame-size to find the default stores with
    with pytest.raises(TrainError, match="give both --knn-train-tokens"):
        knn("--knn-monitor", "--knn-valid-tokens", "C")
    with pytest.raises(TrainError, match="add --knn-monitor"):
        knn("--knn-train-tokens", "A", "--knn-valid-tokens", "C")


def test_knn_stores_must_fit_the_pretraining_stores(tmp_path):
    train = make_store(str(tmp_path / "train"), num_videos=4)
    small, big = (make_prototype_store(str(tmp_path / f"g{g}"), num_videos=4, grid=g) for g in (4, 8))
    data = PretrainData(train=(train,), valid=(), sampling=ClipSampling(clip_len=4))
    arch = ArchitectureFlags(layers=1, hid_dim=32, heads=2)

    def task(knn: KnnMonitor) -> PretrainTask:
        return PretrainTask(data, PretrainObjective(),
                            lambda v, g: arch.model_config(vocab_size=v, grid=g, clip_len=4), knn=knn)

    assert len(task(KnnMonitor(train=(small,), valid=(small,))).knn_sets[1]) == 4
    with pytest.raises(TrainError, match=r"--knn-valid-tokens: .*g8 holds 32 codes on 8x8 maps, the pre-training "
                                         r"stores 32 codes on 4x4 maps"):
        task(KnnMonitor(train=(small,), valid=(big,)))
    with pytest.raises(TrainError, match="--knn-k must be >= 1"):
        task(KnnMonitor(train=(small,), valid=(small,), k=0))
