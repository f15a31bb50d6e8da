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
                          cwd=ROOT, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    steps = report["steps"]
    assert steps["install"]["status"] == "fail" and "make gpu-wheels" in steps["install"]["error"]
    assert steps["env"]["status"] == "pass" and steps["env"]["torch"]
    assert steps["cuda_tests"]["status"] == "pass" and steps["cuda_tests"]["tests"] >= 1
    assert set(os.listdir(out)) == {"report.json", "report.md", "logs.tar.gz"}
