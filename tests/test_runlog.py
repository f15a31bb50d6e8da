"""video2token.runlog: metrics.jsonl logging, resume truncation, torn lines, curves PNG."""
from __future__ import annotations

import json
import os

import pytest

from video2token.runlog import MetricsLogger, plot_curves, read_metrics


def test_resume_truncates_torn_line_and_plots(tmp_path):
    out = str(tmp_path)
    log = MetricsLogger(out, tensorboard=False)
    for step in range(1, 6):
        log.log("train", None, step, recon_mse=1.0 / step, lr=1e-3)
    log.log("valid", 0, 5, psnr=20.0, copy_psnr=18.0)
    log.sync()
    log.close()
    with open(log.path, "a") as f:
        f.write('{"split": "train", "ste')  # torn line of a killed writer
    log = MetricsLogger(out, resume_step=3, tensorboard=False)
    log.log("train", None, 4, recon_mse=0.5)
    log.close()
    rows = read_metrics(log.path)
    assert [(r["split"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    assert "epoch" not in rows[0] and rows[-1]["recon_mse"] == 0.5
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]

    log = MetricsLogger(out, tensorboard=False)  # a fresh run starts a fresh log
    log.log("valid", 2, 7, psnr=21.0, copy_psnr=18.0)
    log.close()
    assert read_metrics(log.path) == [{"split": "valid", "epoch": 2, "step": 7, "psnr": 21.0, "copy_psnr": 18.0}]
    png = plot_curves(log.path, str(tmp_path / "curves.png"), keys=("psnr", "lr"), log_scale=("psnr",),
                      baselines={"psnr": ("copy_psnr", "copy baseline")})
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of the metrics \\('loss',\\) was logged"):
        plot_curves(log.path, str(tmp_path / "other.png"), keys=("loss",))


def test_bad_line_is_an_error_and_disabled_logger_writes_nothing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("not json\n" + json.dumps({"split": "train", "step": 1}) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:1: not a JSON object"):
        read_metrics(str(path))
    log = MetricsLogger(str(tmp_path / "other"), enabled=False)
    log.log("train", None, 1, loss=1.0)
    log.sync()
    log.close()
    assert not os.path.exists(tmp_path / "other")  # non-zero ranks write nothing
