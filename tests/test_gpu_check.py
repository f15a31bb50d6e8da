"""scripts/gpu_check: the driver's parsing, the profile's kernel classes, and a short CPU dry run (the full
`--cpu-dry-run` takes ~6 min on 2 cores)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str, file: str):
    return _load_file(name, os.path.join(ROOT, "scripts", "gpu_check", file))


def _load_file(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


run = _load("gpu_check_run", "run.py")
kp = _load("gpu_check_kernel_profile", "kernel_profile.py")


def test_steady_rate_leaves_out_warm_up_and_weights_by_time():
    rows = [{"split": "train", "step": s, "videos_per_s": 1.0} for s in (1, 2)]  # warm-up: slow
    rows += [{"split": "train", "step": s, "videos_per_s": r} for s, r in zip(range(3, 7), (10.0, 10.0, 20.0, 20.0))]
    rows.append({"split": "train_epoch", "step": 6, "videos_per_s": 99.0})
    got = run.steady_rate(rows, skip=2)
    assert got["steps_logged"] == 6 and got["steps_used"] == 4
    assert got["videos_per_s"] == pytest.approx(4 / (2 / 10 + 2 / 20), abs=0.01)  # n / sum(1 / rate)
    assert got["videos_per_s_median"] == 20.0
    # a profiled window at the end (steps 5-6) is left out
    got = run.steady_rate(rows, skip=2, until=4)
    assert got["steps_logged"] == 4 and got["steps_used"] == 2 and got["videos_per_s"] == 10.0


def test_table13_ratios_and_json_document():
    t = run.table13({"auto": {"videos_per_s": 100.0}, "auto_T-H-W": {"videos_per_s": 80.0},
                     "auto_THW": {}})
    assert t["ours_vs_T,H|W"] == {"T,H|W": 1.0, "T,H,W": 0.8, "THW": None}
    assert t["paper_vs_T,H|W"]["THW"] == pytest.approx(12.6 / 32.0, abs=1e-3)
    text = "loading...\n{\n  \"results\": [{\"top\": [{\"label\": \"a\"}]}]\n}\ndone\n"
    assert run._json_document(text) == {"results": [{"top": [{"label": "a"}]}]}


@pytest.mark.parametrize("name, cls", [
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__"
     "5x_cublas", "matmul"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>(Params)", "matmul"),
    ("void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>(cublasSplitKParams<float>)", "matmul"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>, true>(Flash_fwd_params)",
     "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t>::Params)",
     "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(...)>(int, ...)",
     "elementwise/copy"),
    ("void at::native::elementwise_kernel<128, 2, ...>(int, ...)", "elementwise/copy"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>(...)", "elementwise/copy"),
    ("Memcpy HtoD (Pinned -> Device)", "elementwise/copy"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>(...)",
     "elementwise/copy"),
    ("triton_poi_fused__to_copy_add_native_dropout_0", "elementwise/copy"),
    ("aten::copy_", "elementwise/copy"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(...)",
     "norm/reduction"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ...>>(...)", "norm/reduction"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, ...>(...)",
     "norm/reduction"),
    ("void at::native::batch_norm_collect_statistics_kernel<...>(...)", "norm/reduction"),
    ("triton_red_fused_add_native_layer_norm_1", "norm/reduction"),
    ("triton_per_fused_native_layer_norm_backward_2", "norm/reduction"),
    ("aten::native_layer_norm", "norm/reduction"),
    ("aten::mm", "matmul"),
    ("aten::addmm", "matmul"),
    ("void at::native::(anonymous namespace)::embedding_backward_feature_kernel<...>(...)", "elementwise/copy"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "other"),
    ("## Call CompiledFxGraph fabc ##", "other"),
])
def test_kernel_class(name, cls):
    assert kp.kernel_class(name) == cls


def test_profile_summary_shares_and_idle_from_a_trace():
    """Kernels on two streams overlap: busy is their union; idle is the rest of the wall time; CPU events are not
    device time."""
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16", "ts": 0.0, "dur": 400.0},
        {"ph": "X", "cat": "kernel", "name": "flash_fwd_kernel", "ts": 300.0, "dur": 200.0},   # overlaps by 100
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 600.0, "dur": 100.0},
        {"ph": "X", "cat": "kernel", "name": "vectorized_layer_norm_kernel", "ts": 800.0, "dur": 100.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5000.0},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#1", "ts": 0.0, "dur": 900.0},
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 0.0},
    ]}
    items, busy = kp.device_times(trace)
    assert busy == pytest.approx(700.0)  # [0, 500) + [600, 700) + [800, 900)
    assert len(items) == 4
    s = kp.summarize(items, busy_us=busy, wall_us=2000.0, steps=2, source="test")
    assert s["share"]["matmul"] == 0.2 and s["share"]["attention"] == 0.1
    assert s["share"]["elementwise/copy"] == 0.05 and s["share"]["norm/reduction"] == 0.05
    assert s["share"]["idle"] == 0.65 and s["share"]["other"] == 0.0
    assert s["wall_ms_per_step"] == 1.0 and s["ms_per_step"]["matmul"] == 0.2
    assert [t["name"] for t in s["top"]][:2] == ["sm90_xmma_gemm_bf16", "flash_fwd_kernel"]
    assert kp.interval_union([]) == 0.0 and kp.interval_union([(0, 1), (1, 2), (5, 6)]) == 3.0


def test_first_linear_and_loader_ratio():
    log = ("[pretrain] rank 0/1 ...\n[pretrain] the first Linear (backbone.layers.0.attn.0.qkv) computes in "
           "torch.bfloat16 (input torch.float32, weights torch.float32)\nstep 1 ...\n")
    got = run.first_linear(log)
    assert got["computes_in"] == "torch.bfloat16" and got["module"] == "backbone.layers.0.attn.0.qkv"
    assert got["weights"] == "torch.float32" and run.first_linear("no such line") == {}
    runs = {"auto": {"config": "small", "status": "ok", "videos_per_s": 100.0},
            "auto_compile": {"config": "small", "status": "ok", "videos_per_s": 150.0},
            "large_auto": {"config": "large_half", "status": "ok", "videos_per_s": 400.0},
            "auto_THW": {"config": "small", "status": "failed", "videos_per_s": 900.0}}
    assert run.loader_vs_trainer({"videos_per_s": 600.0}, runs) == {
        "vs_run": "auto_compile", "trainer_videos_per_s": 150.0, "ratio": 4.0, "target_ratio": 3.0}
    assert run.loader_vs_trainer({"error": "x"}, runs) == {}


def test_cuda_test_lines_after_progress_dots():
    text = ("tests/test_cuda.py fp32: loss 7.18e-08, hidden 3.76e-07\n.bf16: loss 1.2e-03, hidden 4e-03\n"
            "..fp16-weights: loss 2e-04, hidden 1e-03\n...fp16: loss 3e-04, hidden 2e-03\n"
            "....engine bf16: first Linear computes in torch.bfloat16 inside engine(...) (ZeRO-0)\n"
            ".engine fp32: first Linear computes in torch.float32 inside engine(...) (ZeRO-0, TF32 on)\n")
    errors, engine = run.cuda_test_lines(text)
    assert set(errors) == {"fp32", "bf16", "fp16", "fp16-weights"} and errors["fp16"] == "loss 3e-04, hidden 2e-03"
    assert engine == {"bf16": "first Linear computes in torch.bfloat16 inside engine(...) (ZeRO-0)",
                      "fp32": "first Linear computes in torch.float32 inside engine(...) (ZeRO-0, TF32 on)"}


def test_report_markdown_names_the_commit_first_and_holds_the_new_tables():
    prof = kp.summarize([("nvjet_tst_128x256", 600.0), ("flash_fwd_kernel", 200.0)], busy_us=800.0, wall_us=1000.0,
                        steps=1, source="CUDA kernels")
    report = {"mode": "gpu", "started": "t", "budget_s": 490, "elapsed_s": 1.0,
              "git": {"commit": "0123abcd", "source": "--commit"},
              "steps": {"cuda_tests": {"status": "pass", "engine_dtypes": {"bf16": "first Linear computes in "
                                                                                   "torch.bfloat16"}},
                        "extract": {"status": "pass", "encoder": {"encoder_frames_per_s": 2000.0, "frame_size": 128},
                                    "decode": {"decode_frames_per_s": 1500.0, "vs_encoder": 0.75},
                                    "job": {"frames_per_s": 1000.0, "vs_encoder": 0.5, "vs_decode": 0.667}},
                        "pretrain": {"status": "pass", "batch": 32, "peak_tflops": 989.4,
                                     "runs": {"auto": {"status": "ok", "config": "small", "videos_per_s": 300.0,
                                                       "mfu": 0.1234, "peak_gpu_mem_mb": 9000.0,
                                                       "first_linear": {"computes_in": "torch.bfloat16"},
                                                       "profile": {**prof, "what": "trainer steps 41-44"}}},
                                     "loader": {"videos_per_s": 1200.0, "ratio": 4.0, "vs_run": "auto"}},
                        "bare_step": {"status": "pass", "batch_clips": 32,
                                      "train_step": {"clips_per_s": 1000.0, "speedup_vs_original_best": 2.5,
                                                     "original_clips_per_s": {"fp32": 100.0, "bf16": 400.0}},
                                      "profile": {**prof, "what": "bare step"}}}}
    md = run.render_markdown(report)
    assert md.splitlines()[2] == "**Commit measured: `0123abcd`** (--commit)"
    assert "| `python -m vimpac.pretrain --precision auto`, Small, 32 videos/GPU | 300.0 videos/s, MFU 12.3%" in md
    assert "| bare step vs the original code at its best precision | 2.5x (1000.0 clips/s) | >= 3x |" in md
    assert "| 2000.0 frames/s | 1500.0 frames/s" in md and "| 0.5 | 0.667 |" in md
    assert "torch.bfloat16" in md and "4.0x the fastest Small trainer run" in md
    assert md.count("| 60.0% | 20.0% | 0.0% | 0.0% | 0.0% | 20.0% |") == 2  # the bare and the trainer profile


def test_loader_alone_rolls_over_epochs_and_moves_every_batch(tmp_path):
    """benchmarks/pretrain_throughput.py --loader-only's timing: the first batch untimed, then batches past the end
    of an epoch (8 videos = 2 batches of 4 per epoch) until max_batches."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from store_factory import make_store

    pt = _load_file("pretrain_throughput_under_test", os.path.join(ROOT, "benchmarks", "pretrain_throughput.py"))
    store = make_store(str(tmp_path / "store"), num_videos=8, frames=(6, 8), grid=4)
    got = pt.loader_timing(store, clip_len=3, micro=4, workers=0, device="cpu", max_batches=5)
    assert got["batches"] == 5 and got["videos"] == 20 and got["videos_per_s"] > 0
    assert got["store_videos"] == 8 and got["pinned"] is False
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pretrain_throughput.py"), "--loader-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "--loader-only needs --store DIR" in proc.stderr


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
