"""The launch scripts (scripts/lib/launch.sh, scripts/pretrain/*.sh, scripts/finetune/*.sh): which Python they
run, where run.sh / command.sh / log.log go, and quoting, through DRY_RUN=1 and a stand-in module."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash(script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", str(script), *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def dry(res: subprocess.CompletedProcess) -> tuple[str, list[str]]:
    """DRY_RUN=1 output -> (log path, command)."""
    assert res.returncode == 0, res.stderr
    log_line, cmd_line = res.stdout.splitlines()[:2]
    assert log_line.startswith("log: ")
    return log_line[len("log: "):], shlex.split(cmd_line)


DRY = {"DRY_RUN": "1", "PYTHON": sys.executable}


def values(cmd: list[str], flag: str) -> list[str]:
    i = len(cmd) - 1 - cmd[::-1].index(flag) + 1  # the last occurrence wins, as in argparse
    out = []
    while i < len(cmd) and not cmd[i].startswith("--"):
        out.append(cmd[i])
        i += 1
    return out


def test_custom_finetune_takes_paths_from_the_callers_directory(tmp_path):
    log, cmd = dry(bash(REPO / "scripts/finetune/custom.sh", "cpu:1", "pre trained/last", "a,b c", "test",
                        "my run", "--epochs", "2", cwd=tmp_path, env={"DRY_RUN": "1", "PYTHON": sys.executable}))
    assert cmd[:3] == [sys.executable, "-m", "vimpac.finetune"]
    assert values(cmd, "--dataset-name") == ["custom"]
    assert values(cmd, "--train-tokens") == [str(tmp_path / "a"), str(tmp_path / "b c")]
    assert values(cmd, "--valid-tokens") == [str(tmp_path / "test")]
    assert values(cmd, "--load") == [str(tmp_path / "pre trained/last")]
    assert values(cmd, "--output") == [str(tmp_path / "my run")] and cmd[-2:] == ["--epochs", "2"]
    assert log == str(tmp_path / "my run" / "log.log")


def test_custom_finetune_usage_and_missing_inputs(tmp_path):
    res = bash(REPO / "scripts/finetune/custom.sh", "cpu:1", "x", cwd=tmp_path)
    assert res.returncode == 2 and "usage: bash" in res.stderr and "TRAIN_STORES TEST_STORES OUTPUT" in res.stderr
    res = bash(REPO / "scripts/finetune/custom.sh", "cpu:1", "nope/last", "a", "b", "out", cwd=tmp_path)
    assert res.returncode == 2 and f"{tmp_path / 'nope/last'} does not exist" in res.stderr


def test_custom_pretrain_is_the_demos_main_recipe_with_the_callers_paths(tmp_path):
    from vimpac.demo.layout import MAIN_VARIANT, VARIANTS
    from vimpac.pretrain import build_parser
    log, cmd = dry(bash(REPO / "scripts/pretrain/custom.sh", "cpu:1", "a,b c", "val", "my run", "--epochs", "3",
                        cwd=tmp_path, env=DRY))
    assert cmd[:3] == [sys.executable, "-m", "vimpac.pretrain"]
    assert values(cmd, "--train-tokens") == [str(tmp_path / "a"), str(tmp_path / "b c")]
    assert values(cmd, "--valid-tokens") == [str(tmp_path / "val")]
    assert values(cmd, "--epochs") == ["3"] and log == str(tmp_path / "my run" / "log.log")
    # the recipe the README's ablation measured best: the demo's main variant's flags, on top of the defaults
    parser = build_parser()
    base = ["--train-tokens", "t", "--output", "o"]
    want = vars(parser.parse_args(base + list(VARIANTS[MAIN_VARIANT].stages[0].args)))
    got = vars(parser.parse_args(cmd[3:]))
    recipe_keys = ("fgbg_merge", "static_frac", "bg_erase", "mp_change_weight", "reverse_negatives", "masking",
                   "mask_blocks", "nce_weight", "input", "stream")
    assert {k: got.get(k) for k in recipe_keys} == {k: want.get(k) for k in recipe_keys}
    res = bash(REPO / "scripts/pretrain/custom.sh", "cpu:1", "nope", "val", "out", cwd=tmp_path)
    assert res.returncode == 2 and f"{tmp_path / 'nope'} does not exist" in res.stderr


def test_logs_follow_an_extra_output(tmp_path):
    log, cmd = dry(bash(REPO / "scripts/pretrain/small.sh", "cpu:1", "--output", str(tmp_path / "run 1"), cwd=tmp_path,
                        env=DRY))
    assert log == str(tmp_path / "run 1" / "log.log") and values(cmd, "--output") == [str(tmp_path / "run 1")]
    log, _ = dry(bash(REPO / "scripts/pretrain/small.sh", "cpu:1", cwd=tmp_path, env=DRY))
    assert log == "snap/pretrain/small/log.log"
    # stage 2 continues stage 1's run at --output; its own log goes beside it
    log, _ = dry(bash(REPO / "scripts/pretrain/large_frame256cont.sh", "cpu:1", f"--output={tmp_path}/big",
                      cwd=tmp_path, env=DRY))
    assert log == f"{tmp_path}/large_frame256cont/log.log"
    log, _ = dry(bash(REPO / "scripts/finetune/small_ucf101.sh", "cpu:1", "--output", str(tmp_path / "ft"),
                      cwd=tmp_path, env=DRY))
    assert log == str(tmp_path / "ft" / "log.log")


def fake_repo(tmp_path: Path, *, venv: bool) -> Path:
    """A copy of the launch library with a script whose 'module' prints its arguments."""
    repo = tmp_path / "repo with space"
    (repo / "scripts/lib").mkdir(parents=True)
    (repo / "scripts/demo_kind").mkdir()
    shutil.copy(REPO / "scripts/lib/launch.sh", repo / "scripts/lib/launch.sh")
    (repo / "echo_args.py").write_text("import sys\nprint('args:', sys.argv[1:])\n")
    (repo / "scripts/demo_kind/run.sh").write_text(
        'set -euo pipefail\nSCRIPT=$(realpath "$0")\nsource "$(dirname "$0")/../lib/launch.sh"\n'
        'OUTPUT=snap/default\nvimpac_launcher "$1" echo_args\nshift\nvimpac_run "$OUTPUT" --output "$OUTPUT" "$@"\n')
    if venv:
        (repo / ".venv/bin").mkdir(parents=True)
        wrapper = repo / ".venv/bin/python"  # a symlink would lose the venv's site-packages
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        wrapper.chmod(0o755)
    return repo


def test_run_writes_log_command_and_script_next_to_the_output(tmp_path):
    repo = fake_repo(tmp_path, venv=True)
    out = tmp_path / "elsewhere" / "a run"
    res = bash(repo / "scripts/demo_kind/run.sh", "cpu:1", "--output", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"args: ['--output', 'snap/default', '--output', '{out}']" in res.stdout
    assert sorted(os.listdir(out)) == ["command.sh", "log.log", "run.sh"]
    assert "args:" in (out / "log.log").read_text()
    assert shlex.split((out / "command.sh").read_text())[-1] == str(out)
    assert not (repo / "snap").exists()


def test_python_is_the_venv_or_PYTHON_or_a_clear_error(tmp_path):
    repo = fake_repo(tmp_path, venv=False)
    res = bash(repo / "scripts/demo_kind/run.sh", "cpu:1", cwd=tmp_path)
    assert res.returncode == 2 and ".venv/bin/python does not exist" in res.stderr and "PYTHON=" in res.stderr
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text("#!/bin/sh\nexit 1\n")
    no_torch.chmod(0o755)
    res = bash(repo / "scripts/demo_kind/run.sh", "cpu:1", cwd=tmp_path, env={"PYTHON": str(no_torch)})
    assert res.returncode == 2 and f"PYTHON={no_torch} cannot import torch" in res.stderr
    res = bash(repo / "scripts/demo_kind/run.sh", "cpu:1", cwd=tmp_path, env={"PYTHON": sys.executable})
    assert res.returncode == 0 and "args:" in res.stdout, res.stderr
