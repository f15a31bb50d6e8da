"""End-to-end tests of `python -m vimpac.pretrain` on tiny synthetic stores (CPU, DeepSpeed with gloo).

One uninterrupted reference run (module fixture) is reused: the kill -9 + --resume run must
reproduce its steps, data order and weights; copies of its output are continued for the
atomic-save and stage-2 tests.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from store_factory import make_prototype_store, make_store  # noqa: E402

import vimpac.pretrain as pretrain  # noqa: E402
from video2token.precision import cpu_bf16_override, resolve_precision  # noqa: E402
from vimpac.model.checkpoint import load_checkpoint, load_pretrained  # noqa: E402
from vimpac.train.optim import LRSchedule  # noqa: E402
from vimpac.train.pretrain_task import PretrainTask  # noqa: E402
from video2token.runlog import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--layers", "2", "--hid-dim", "32", "--heads", "2", "--nce-proj-hid-dim", "32", "--clip-len", "4",
        "--mask-blocks", "2", "--num-workers", "0", "--no-tqdm", "--lr", "3e-3", "--warm-up", "0.1", "--seed", "3"]
# 48 videos, global batch 8 = 4 per micro-batch x 2 accumulation: 6 steps per epoch
BASE = TINY + ["--batch-size", "8", "--bs-per-gpu", "4", "--epochs", "3", "--interval", "2", "--debug",
               "--save-steps", "2", "--eval-max-batches", "2"]
STEPS_PER_EPOCH = 6


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # each run makes its own process group
    env.update(extra or {})
    return env


HOOKED = os.path.join(ROOT, "tests", "hooked_run.py")


def _cmd(args: list[str], hooks: list[str] | None) -> list[str]:
    """The trainer's command line; with test hooks (tests/hooked_run.py flags) when given."""
    if hooks:
        return [sys.executable, HOOKED, "pretrain", *hooks, "--", *args]
    return [sys.executable, "-m", "vimpac.pretrain", *args]


def run(args: list[str], hooks: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args, hooks), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def start(args: list[str], hooks: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(_cmd(args, hooks), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def train_rows(out: str) -> list[dict]:
    return [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "train"]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early (rc {proc.returncode}): {proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the trainer")
        time.sleep(0.02)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return {
        "train": make_store(str(d / "train"), num_videos=48, grid=4, vocab_size=32, seed=0),
        "valid": make_store(str(d / "valid"), num_videos=8, grid=4, vocab_size=32, seed=1),
        # the same videos tokenized at twice the frame size (stage 2)
        "train8": make_store(str(d / "train8"), num_videos=48, grid=8, vocab_size=32, seed=0),
        "valid8": make_store(str(d / "valid8"), num_videos=8, grid=8, vocab_size=32, seed=1),
        "vocab48": make_store(str(d / "vocab48"), num_videos=8, grid=4, vocab_size=48, seed=2, name="other"),
    }


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    """Uninterrupted stage-1 run: 2 of 3 epochs (--interval 2), checkpoints every 2 steps."""
    out = str(tmp_path_factory.mktemp("ref") / "out")
    ok(run(["--train-tokens", stores["train"], "--valid-tokens", stores["valid"], "--output", out, *BASE]))
    return out


def test_reference_run_learns_and_writes_outputs(reference):
    rows = train_rows(reference)
    assert [r["step"] for r in rows] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    first = sum(r["mp_loss"] for r in rows[:3]) / 3
    last = sum(r["mp_loss"] for r in rows[-3:]) / 3
    assert last < first - 0.1, (first, last)  # masked-token loss goes down on a learnable store
    for key in ("mask_acc", "copy_acc", "cl_loss", "mask_ratio", "pad_ratio", "grad_norm", "lr", "clips_per_s"):
        assert key in rows[-1], key
    valid = [r for r in read_metrics(os.path.join(reference, "metrics.jsonl")) if r["split"] == "valid"]
    assert [r["epoch"] for r in valid] == [1, 2] and 0 < valid[-1]["copy_acc"] <= 1
    for name in ("curves.png", "mask_examples.png"):
        with open(os.path.join(reference, name), "rb") as f:
            assert f.read(4) == b"\x89PNG"
    cfg, state = load_pretrained(os.path.join(reference, "last"))  # fine-tuning's loader, no DeepSpeed
    from vimpac.model.transformer import VimpacForPretraining

    VimpacForPretraining(cfg).load_state_dict(state)
    ck = load_checkpoint(os.path.join(reference, "last"))
    assert ck.trainer_state["step"] == 2 * STEPS_PER_EPOCH and ck.trainer_state["epoch"] == 2


def test_kill9_then_resume_reproduces_uninterrupted_run(stores, reference, tmp_path):
    out = str(tmp_path / "out")
    args = ["--train-tokens", stores["train"], "--valid-tokens", stores["valid"], "--output", out, *BASE]
    proc = start(args, ["--step-sleep", "0.5"])
    state = os.path.join(out, "last", "trainer_state.json")

    def mid_epoch_checkpoint():
        try:
            with open(state) as f:
                return json.load(f)["step"] >= 2
        except (OSError, ValueError):
            return False
    wait_for(mid_epoch_checkpoint, proc)
    kill9(proc)
    killed_at = load_checkpoint(os.path.join(out, "last")).trainer_state["step"]
    assert 2 <= killed_at < 2 * STEPS_PER_EPOCH
    ok(run(args + ["--resume"]))

    ref_rows, rows = train_rows(reference), train_rows(out)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # same step count, no duplicates
    assert [r["videos"] for r in rows] == [r["videos"] for r in ref_rows]  # same data order
    assert [r["mp_loss"] for r in rows] == pytest.approx([r["mp_loss"] for r in ref_rows], rel=1e-4)
    a = load_checkpoint(os.path.join(reference, "last"))
    b = load_checkpoint(os.path.join(out, "last"))
    for k, v in a.model_state.items():
        torch.testing.assert_close(b.model_state[k], v, rtol=1e-4, atol=1e-6, msg=k)
    for k, v in a.optimizer_state.items():
        torch.testing.assert_close(b.optimizer_state[k], v, rtol=1e-4, atol=1e-7, msg=k)


def test_kill_during_save_keeps_previous_checkpoint(stores, reference, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(reference, out)
    proc = start(["--train-tokens", stores["train"], "--output", out, *BASE, "--resume", "--save-steps", "0"],
                 ["--sleep-before-swap", "120"])

    def finished_temp_dir():  # the new checkpoint is complete under a temp name, waiting for its swap
        return any(n.startswith(".last.") and os.path.exists(os.path.join(out, n, "trainer_state.json"))
                   for n in os.listdir(out))
    wait_for(finished_temp_dir, proc)
    kill9(proc)
    ck = load_checkpoint(os.path.join(out, "last"))
    assert ck.trainer_state["step"] == 2 * STEPS_PER_EPOCH  # the previous checkpoint, intact
    os.replace(os.path.join(out, "last"), os.path.join(out, "last.old.tmp"))  # a kill between the renames
    assert load_checkpoint(os.path.join(out, "last")).trainer_state["step"] == 2 * STEPS_PER_EPOCH


def script(name: str, devices: str, args: list[str], snap_root: str, extra_env: dict | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "pretrain", name), devices, *args], cwd=ROOT,
                          env=_env({"SNAP_ROOT": snap_root, "PYTHON": sys.executable, **(extra_env or {})}),
                          capture_output=True, text=True, timeout=300)


def test_stage2_script_continues_schedule_at_larger_grid(stores, reference, tmp_path):
    """large_frame256cont.sh right after stage 1: 8x8 codes instead of 4x4, ZeRO-1 and bf16 now."""
    snap = str(tmp_path / "snap")
    out = os.path.join(snap, "large")
    shutil.copytree(reference, out)  # stage 1's output where large.sh leaves it
    before = load_checkpoint(os.path.join(out, "last"))
    tiny = ["--config", "small", "--nce-proj-layers", "2", "--frame-size", "64", "--bs-per-gpu", "4",
            "--num-workers", "0"]
    log = ok(script("large_frame256cont.sh", "cpu:1", [*BASE, *tiny, "--train-tokens", stores["train8"],
                                                        "--valid-tokens", stores["valid8"]], snap))
    assert "stage 2" in log and "4x4 to T=4, 8x8" in log and "ZeRO-1" in log
    # the policy's dtype (bf16 where the CPU computes it natively) is what the engine really computes in
    # (DeepSpeed's forward keeps the trainer's autocast)
    dtype = resolve_precision("auto", "cpu", cpu_bf16=cpu_bf16_override(os.environ)).dtype
    assert f"the first Linear (backbone.layers.0.attn.0.qkv) computes in {dtype}" in log
    after = load_checkpoint(os.path.join(out, "last"))
    assert (after.model_config.grid_h, after.model_config.grid_w) == (8, 8)
    assert after.trainer_state["step"] == 3 * STEPS_PER_EPOCH and after.trainer_state["epoch"] == 3
    assert after.model_state["backbone.embeddings.pos_h"].shape == (8, 32)
    assert after.optimizer_state["backbone.embeddings.pos_h::exp_avg_sq"].shape == (8, 32)
    assert after.trainer_state["adam_step"] == before.trainer_state["adam_step"] + STEPS_PER_EPOCH
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    sched = LRSchedule(kind="linear", warmup=0.1, epochs=3, steps_per_epoch=STEPS_PER_EPOCH)
    for r in rows:  # one schedule over both stages
        assert r["lr"] == pytest.approx(3e-3 * sched(r["step"] - 1), rel=1e-6), r["step"]
    stage2 = os.path.join(snap, "large_frame256cont")
    with open(os.path.join(stage2, "log.log")) as f:
        assert "done: step 18 (epoch 3/3)" in f.read()
    assert os.path.exists(os.path.join(stage2, "run.sh")) and os.path.exists(os.path.join(stage2, "command.sh"))


def test_two_cpu_ranks_script_zero2_bf16(stores, tmp_path):
    """small.sh cpu:2: two gloo ranks through the deepspeed launcher, ZeRO-2, --precision auto."""
    with socket.socket() as sock:  # a free port for this run's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    snap = str(tmp_path / "snap")
    log = ok(script("small.sh", "cpu:2", ["--train-tokens", stores["train"], "--valid-tokens", stores["valid"],
                                          *TINY, "--frame-size", "32", "--batch-size", "8", "--bs-per-gpu", "2",
                                          "--epochs", "1", "--zero-stage", "2", "--eval-max-batches", "1",
                                          "--debug"], snap, {"MASTER_PORT": port}))
    auto = resolve_precision("auto", "cpu", cpu_bf16=cpu_bf16_override(os.environ)).name  # left to the policy
    assert "rank 0/2" in log and f"precision {auto} on cpu" in log and "ZeRO-2" in log
    assert f"computes in torch.{'bfloat16' if auto == 'bf16' else 'float32'}" in log
    assert "(2 x 2 accumulation x 2 ranks)" in log
    out = os.path.join(snap, "small")
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS_PER_EPOCH + 1))
    assert all(len(set(r["videos"])) == 8 for r in rows)  # each step: 8 distinct videos over both ranks
    ck = load_checkpoint(os.path.join(out, "last"))
    assert ck.trainer_state["adam_step"] == STEPS_PER_EPOCH and len(ck.trainer_state["rng"]) == 2
    assert all(torch.isfinite(v).all() for v in ck.model_state.values() if v.is_floating_point())
    assert os.path.exists(os.path.join(out, "log.log")) and os.path.exists(os.path.join(out, "run.sh"))


def test_two_slurm_ranks_with_the_knn_monitor_adam_and_gradient_accumulation(stores, tmp_path):
    """--slurm-multinode-dist: two srun tasks (fake SLURM variables, host names injected instead of scontrol).

    The kNN bank holds one copy of each of 4 prototype videos, so each rank's half of the bank alone
    misses half the prototypes; the 8 queries are copies too (label = prototype): 100% only when the
    bank is gathered, and the log counts the gathered queries.
    """
    bank = make_prototype_store(str(tmp_path / "bank"), num_videos=4)
    queries = make_prototype_store(str(tmp_path / "queries"), num_videos=8)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = str(tmp_path / "out")
    args = ["--slurm-multinode-dist", "--train-tokens", stores["train"], "--output", out, *TINY, "--epochs", "1",
            "--batch-size", "8", "--gradient-accumulation", "2", "--optim", "adam", "--epsilon", "1e-7",
            "--knn-monitor", "--knn-train-tokens", bank, "--knn-valid-tokens", queries, "--knn-k", "1"]
    procs = [subprocess.Popen(_cmd(args, ["--hostnames", "127.0.0.1,127.0.0.2"]), cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env({"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_NTASKS": "2",
                                        "SLURM_JOB_NODELIST": "node[1-2]", "MASTER_PORT": port}))
             for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "rank 0/2" in logs[0] and "[pretrain]" not in logs[1]  # rank 1 prints nothing of its own
    assert "(2 x 2 accumulation x 2 ranks)" in logs[0]  # --batch-size 8 / 2 ranks / --gradient-accumulation 2
    assert "optimizer: Adam (betas (0.9, 0.98), eps 1e-07, no weight decay; --weight-decay 0.05 unused" in logs[0]
    assert "kNN top-1 100.00 top-5 100.00 (k=1; 4 bank, 8 query videos)" in logs[0]
    valid = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["split"] == "valid"]
    assert [(r["knn_top1"], r["knn_query_videos"]) for r in valid] == [(100.0, 8)]
    assert "knn_top1" in PretrainTask.curve_keys and os.path.exists(os.path.join(out, "curves.png"))
    assert load_checkpoint(os.path.join(out, "last")).trainer_state["optimizer"] == "adam"


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_two_ranks_hash_each_shard_once_and_a_corrupt_one_stops_both(tmp_path):
    """Two gloo ranks (one process each, as a launcher starts them): the shards' SHA-256 check is split between
    them, each shard hashed exactly once in all; a corrupt shard stops both ranks with the error naming it."""
    import h5py

    train = make_store(str(tmp_path / "train"), num_videos=24, grid=4, vocab_size=32, seed=0, shards=3)
    valid = make_store(str(tmp_path / "valid"), num_videos=8, grid=4, vocab_size=32, seed=1)
    shards = sorted(os.path.join(train, f"shard-0000{k}-of-00003.h5") for k in range(3))
    shards.append(os.path.join(valid, "shard-00000-of-00001.h5"))
    bad = shards[1]
    with h5py.File(bad, "r+") as f:  # bit rot inside the vocabulary: only the SHA-256 notices
        f["codes"][:50] = (f["codes"][:50] + 1) % 32
    port = _free_port()
    args = ["--train-tokens", train, "--valid-tokens", valid, "--output", str(tmp_path / "out"), *TINY,
            "--batch-size", "4", "--bs-per-gpu", "2", "--epochs", "1"]
    procs = []
    for rank in range(2):
        env = _env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        procs.append(subprocess.Popen(_cmd(args, ["--log-shard-checks", str(tmp_path / f"rank{rank}.txt")]), cwd=ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 2 and "Traceback" not in err, out[-2000:] + err[-3000:]  # a run error, no crash
    assert f"error: --train-tokens: shard {bad} is corrupt: SHA-256" in outs[0][1], outs[0][1][-3000:]
    assert not os.path.exists(os.path.join(tmp_path, "out", "metrics.jsonl"))  # no step was taken
    checked = [open(tmp_path / f"rank{rank}.txt").read().split() for rank in range(2)]
    assert all(checked) and sorted(checked[0] + checked[1]) == shards  # split, and each shard hashed once
    # the stores were opened with the index checks only; --no-verify-stores leaves nothing to hash
    assert sorted(pretrain.build_task(pretrain.build_parser().parse_args(args)).shards_to_verify()) == shards
    assert pretrain.build_task(pretrain.build_parser().parse_args([*args, "--no-verify-stores"])).shards_to_verify() == {}


def test_nonfinite_steps_are_skipped_then_stop(stores, tmp_path):
    out = str(tmp_path / "out")
    proc = run(["--train-tokens", stores["train"], "--output", out, *TINY, "--batch-size", "8", "--bs-per-gpu", "4",
                "--epochs", "2", "--save-steps", "1", "--max-nonfinite", "3", "--zero-stage", "1"],
               ["--nan-steps", "2,4,5,6"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3 non-finite steps in a row (at step 6" in proc.stderr
    rows = train_rows(out)
    assert [r["step"] for r in rows if r["skipped"]] == [2, 4, 5, 6]
    assert rows[-1]["skipped_steps"] == 4
    ck = load_checkpoint(os.path.join(out, "last"))  # the last save (step 5) holds finite weights
    assert ck.trainer_state["step"] == 5 and ck.trainer_state["skipped_steps"] == 3
    assert ck.trainer_state["adam_step"] == 2  # only steps 1 and 3 updated the weights
    assert all(torch.isfinite(v).all() for v in ck.model_state.values() if v.is_floating_point())


def test_clear_errors(stores, reference, tmp_path, capsys):
    def fails(args: list[str], pattern: str) -> None:
        assert pretrain.main(args) == 2
        err = capsys.readouterr().err
        assert pattern in err, err

    out = str(tmp_path / "out")
    fails(["--train-tokens", str(tmp_path / "missing"), "--output", out, *TINY],
          f"token store {tmp_path / 'missing'} does not exist")
    fails(["--train-tokens", stores["train"], "--valid-tokens", stores["vocab48"], "--output", out, *TINY],
          "vocabulary mismatch between splits: train stores have 32 codes")
    fails(["--train-tokens", stores["train"], "--output", out, *TINY, "--resume"], "--resume: no usable checkpoint")
    resumed = str(tmp_path / "resumed")
    shutil.copytree(reference, resumed)
    fails(["--train-tokens", stores["vocab48"], "--output", resumed, *TINY, "--resume"],
          "vocabulary mismatch: the checkpoint was trained on 32 codes but the token stores have 48")
    fails(["--train-tokens", stores["train"], "--output", resumed, *TINY],
          "already holds a checkpoint")  # a fresh run never overwrites a run's checkpoint
    fails(["--train-tokens", stores["train"], "--output", out, *TINY, "--batch-size", "10", "--bs-per-gpu", "4"],
          "--batch-size 10 is not divisible by --bs-per-gpu 4")
    fails(["--dataset-name", "ucf101", "--frame-size", "128", "--data-root", str(tmp_path), "--output", out, *TINY],
          "dalle_ucf101_train_split1_fps2_hflip0_128center128 does not exist")
    fails(["--train-tokens", stores["train"], "--output", out, *TINY, "--model", "T,H|W"],
          "expected 'efflayout' followed by a layout")


def test_a_small_set_trains_with_default_batch_flags_and_debug_is_quick(stores, tmp_path):
    out = str(tmp_path / "out")
    log = ok(run(["--train-tokens", stores["train"], "--valid-tokens", stores["valid"], "--output", out, *TINY,
                  "--epochs", "1"]))  # no --batch-size / --bs-per-gpu: the paper's 1024 would not fit 48 videos
    assert "warning: --batch-size not given" in log and "using 32 (32 per rank" in log
    assert [r["step"] for r in train_rows(out)] == [1]
    big = make_store(str(tmp_path / "big"), num_videos=80, grid=4, vocab_size=32, seed=4)
    log = ok(run(["--train-tokens", big, "--output", str(tmp_path / "dbg"), *TINY, "--epochs", "1", "--batch-size",
                  "4", "--debug"]))
    assert "--debug: 8 of 20 steps per epoch" in log and len(train_rows(str(tmp_path / "dbg"))) == 8
