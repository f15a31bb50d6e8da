"""scripts/gpu_check: the driver's parsing and a short CPU dry run (the full `--cpu-dry-run` takes ~3 min on 2 cores)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("gpu_check_run", os.path.join(ROOT, "scripts", "gpu_check", "run.py"))
run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = run  # dataclasses look their module up while the file executes
_spec.loader.exec_module(run)


def test_steady_rate_leaves_out_warm_up_and_weights_by_time():
    rows = [{"split": "train", "step": s, "videos_per_s": 1.0} for s in (1, 2)]  # warm-up: slow
    rows += [{"split": "train", "step": s, "videos_per_s": r} for s, r in zip(range(3, 7), (10.0, 10.0, 20.0, 20.0))]
    rows.append({"split": "train_epoch", "step": 6, "videos_per_s": 99.0})
    got = run.steady_rate(rows, skip=2)
    assert got["steps_logged"] == 6 and got["steps_used"] == 4
    assert got["videos_per_s"] == pytest.approx(4 / (2 / 10 + 2 / 20), abs=0.01)  # n / sum(1 / rate)
    assert got["videos_per_s_median"] == 20.0


def test_table13_ratios_and_json_document():
    t = run.table13({"bf16_zero0": {"videos_per_s": 100.0}, "auto_T-H-W": {"videos_per_s": 80.0},
                     "auto_THW": {}})
    assert t["ours_vs_T,H|W"] == {"T,H|W": 1.0, "T,H,W": 0.8, "THW": None}
    assert t["paper_vs_T,H|W"]["THW"] == pytest.approx(12.6 / 32.0, abs=1e-3)
    text = "loading...\n{\n  \"results\": [{\"top\": [{\"label\": \"a\"}]}]\n}\ndone\n"
    assert run._json_document(text) == {"results": [{"top": [{"label": "a"}]}]}


def test_dry_run_records_a_failed_step_and_goes_on(tmp_path):
    """No wheels: install fails with its reason, env and the (skipped) CUDA tests still run; reports are written."""
    out, work, empty = tmp_path / "out", tmp_path / "work", tmp_path / "no_wheels"
    empty.mkdir()
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(out), "--cpu-dry-run", "--only", "cuda_tests",
                           "--work", str(work), "--wheels", str(empty)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHON=sys.executable, GPU_CHECK_COMMIT="0123ABCD"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert steps["install"]["status"] == "fail" and "make gpu-wheels" in steps["install"]["error"]
    assert steps["env"]["status"] == "pass" and steps["env"]["torch"]
    assert steps["cuda_tests"]["status"] == "pass" and steps["cuda_tests"]["tests"] >= 1
    assert set(os.listdir(out)) == {"report.json", "report.md", "logs.tar.gz"}
    assert report["git"] == {"commit": "0123abcd", "source": "--commit"}  # GPU_CHECK_COMMIT, read by the script
    assert "git 0123abcd;" in (out / "report.md").read_text()


GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")


def _git(cwd, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True)
    return proc.stdout.strip()


def _report_git(tmp_path, monkeypatch, repo, **kwargs) -> dict:
    """The "git" record a check started in `repo` writes (run.py measures the tree it lives in: REPO)."""
    monkeypatch.setattr(run, "REPO", str(repo))
    c = run.Check(run.DRY, str(tmp_path / "out"), str(tmp_path / "work"), str(tmp_path / "wheels"), sys.executable,
                  60.0, **kwargs)
    return c.report


def _checkout(path):
    path.mkdir()
    _git(path, "init", "-q")
    (path / "code.py").write_text("x = 1\n")
    _git(path, "add", "code.py")
    _git(path, "commit", "-qm", "first")
    return _git(path, "rev-parse", "HEAD")


def test_a_copy_without_git_refs_records_no_stale_commit(tmp_path, monkeypatch):
    """The device machine's copy of the tree: inside another checkout git would name that one's HEAD; with an
    empty .git, `git rev-parse HEAD` prints "HEAD". Neither is the commit measured."""
    parent = tmp_path / "parent"
    _checkout(parent)
    inside = parent / "copy"  # untracked in the parent
    inside.mkdir()
    no_refs = tmp_path / "no_refs"
    no_refs.mkdir()
    _git(no_refs, "init", "-q")
    for repo in (inside, no_refs):
        report = _report_git(tmp_path, monkeypatch, repo)
        assert report["git"]["commit"] == "unknown (pass --commit)", (repo, report["git"])
        assert "the working tree may differ from any commit" in report["git"]["note"]
        assert "git unknown (pass --commit): " in run.render_markdown(report)


def test_git_commit_only_for_an_unchanged_checkout_and_commit_flag_wins(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    head = _checkout(repo)
    (repo / "new_untracked.txt").write_text("not part of the measured code's identity")
    git = _report_git(tmp_path, monkeypatch, repo)["git"]
    assert git["commit"] == head and git["modified_files"] == 0
    (repo / "code.py").write_text("x = 2\n")
    git = _report_git(tmp_path, monkeypatch, repo)["git"]
    assert git["commit"] == "unknown (pass --commit)" and git["head"] == head and git["modified_files"] == 1
    assert f"1 tracked files differ from HEAD {head[:10]}" in git["note"]
    assert _report_git(tmp_path, monkeypatch, repo, commit="feedbeef")["git"] == {"commit": "feedbeef",
                                                                                 "source": "--commit"}


def test_commit_flag_must_be_a_hash(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out"), "--commit", "HEAD~1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert "argument --commit: expected a git commit hash (7 to 40 hex digits" in proc.stderr
    assert "got 'HEAD~1'" in proc.stderr
