"""GPU check (issues 16, 21): the whole pipeline on one GPU in about 8 minutes, each step timed and reported.

Run it through `scripts/gpu_check.sh OUTDIR --commit SHA [--cpu-dry-run]` (see there for the device
command). Steps, each with its own time limit inside one overall budget; a failure is recorded and
the next step runs:

  0. install   the wheels of `make gpu-wheels` into a target directory put on PYTHONPATH
               (the machine's torch stays: checked before and after)
  1. env       GPU, driver, torch, CUDA, CPUs; which precision flags the entry points take
  2. cuda_tests  pytest -m cuda tests/test_cuda.py, among them the dtype a Linear computes in inside the
               DeepSpeed engine for fp32 / bf16 / fp16 (ZeRO-1)
  3. extract   random-weight DALL-E (full architecture) at 128 px: encoder-only frames/s, decode-only
               frames/s (the job's decode workers over the job's videos, no encoder), then
               `python -m video2token.extract` on copies of generated videos with one decode worker per core
  4. pretrain  Small (T=5, 16x16 codes, vocab 8192, MP + CL, block masks, 32 videos per step) at
               --precision auto (its last steps profiled by torch.profiler), the loader alone (store ->
               masked batch on the device) against it, auto with --compile (profiled too), Large (large_half),
               layouts T,H,W and joint THW (paper table 13), fp16 with ZeRO-2; steady videos/s, peak GPU
               memory, MFU, and the dtype each run's first Linear computes in (from its log)
  5. bare_step benchmarks/train_step.py --device cuda (Small, 32 clips) against the original VIMPAC code
               at its best precision when a checkout was carried (--original-repo, default
               WHEELS/vimpac-original), else alone; a torch.profiler summary of the same step (bf16)
  6. finetune  --different-shape (T=10, 32x32 codes) from step 4's checkpoint, then
               `python -m vimpac.predict` on a video file
  7. resume    kill -9 of a pre-training run after a mid-epoch checkpoint, then --resume

The profiles give the share of the profiled steps' wall time per kernel class (kernel_profile.py:
matmul, attention, elementwise/copy, norm/reduction, other, idle); in the dry run they are CPU ops.

OUTDIR receives report.json (rewritten after every step, so a timeout still leaves results; its "git"
records the commit measured: --commit, else `git_record`'s careful guess),
report.md (the same as tables, the issue's targets first) and logs.tar.gz (per-step logs, trainer
summaries and metrics): the device tool returns at most 8 files. Scratch files go under --work.

This driver uses the standard library only: everything that needs torch runs in a child process
(scripts/gpu_check/fixtures.py, probes.py, kernel_profile.py, the project's entry points and
benchmarks), so a broken install is reported instead of stopping the check.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

#: paper table 13 (V100, Small, T=5, 128 px): pre-training videos/s per attention layout
PAPER_TABLE13 = {"T,H|W": 32.0, "T,H,W": 26.4, "THW": 12.6}
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64")
TINY_MODEL_FLAGS = ("--layers", "2", "--hid-dim", "64", "--heads", "2", "--nce-proj-hid-dim", "64")
ORIGINAL_DIR = "vimpac-original"  # a checkout of github.com/airsplay/vimpac inside the carried wheel folder


# ----------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Profile:
    """Every size and limit of one mode (the GPU run or the CPU dry run)."""

    mode: str
    device: str                      # torch device for the tokenizer, probes and predict
    budget_s: float                  # the whole check
    limits: dict[str, float]         # per step, seconds
    # extraction
    video_size: int
    video_fps: float
    video_seconds: float
    video_count: int                 # distinct generated videos (the job lists copies)
    dalle_tiny: bool
    extract_batch: int
    encode_frames: int               # frames per timed encode call
    encode_seconds: float
    job_seconds: float               # the job is sized to about this much encoder time
    job_videos: tuple[int, int]      # (min, max) listed videos
    # pre-training
    model_flags: tuple[str, ...]     # the Small model; other configs swap the --config value
    vocab: int
    grid: int
    clip_len: int
    store_frames: int
    batch: int
    large_micro: int                 # Large: --bs-per-gpu (the batch in micro-batches of this size)
    workers: int
    train_seconds: float             # each run is sized to about this much training
    first_steps: int                 # the first run, before any rate is known
    steps_range: tuple[int, int]
    skip_steps: int                  # warm-up steps left out of the steady rate
    profile_steps: int               # steps the profiled runs' torch.profiler window holds (their last ones)
    compile_s: float                 # allowance for --compile's compilation in a run's time limit
    loader_seconds: float            # the loader alone is timed this long
    # bare step (benchmarks/train_step.py) and its profile
    bare_batch: int                  # clips per step
    bare_steps: int
    bare_flags: tuple[str, ...]      # sizes for train_step.py (the dry run's small codes)
    # fine-tuning
    ft_grid: int
    ft_clip_len: int
    ft_frames: int
    ft_videos: tuple[int, int]       # train, valid
    ft_batch: int
    # kill -9 / resume
    res_steps: int
    res_batch: int
    res_save_steps: int

    def model_flags_for(self, config: str) -> tuple[str, ...]:
        """model_flags with `--config config` (the dry run's tiny overrides stay)."""
        flags = list(self.model_flags)
        flags[flags.index("--config") + 1] = config
        return tuple(flags)

    @property
    def tiny(self) -> bool:
        return "--hid-dim" in self.model_flags


GPU = Profile(
    mode="gpu", device="cuda", budget_s=490,
    limits={"install": 45, "env": 30, "cuda_tests": 75, "extract": 65, "pretrain": 240, "bare_step": 50,
            "finetune": 60, "resume": 60},
    video_size=128, video_fps=25, video_seconds=8, video_count=16, dalle_tiny=False, extract_batch=64,
    encode_frames=1024, encode_seconds=3.0, job_seconds=6.0, job_videos=(16, 400),
    model_flags=("--config", "small"), vocab=8192, grid=16, clip_len=5, store_frames=10, batch=32, large_micro=16,
    workers=6, train_seconds=4.0, first_steps=50, steps_range=(15, 400), skip_steps=6, profile_steps=4,
    compile_s=120.0, loader_seconds=3.0,
    bare_batch=32, bare_steps=5, bare_flags=(),
    ft_grid=32, ft_clip_len=10, ft_frames=12, ft_videos=(128, 16), ft_batch=16,
    res_steps=60, res_batch=16, res_save_steps=20)

DRY = Profile(
    mode="cpu-dry-run", device="cpu", budget_s=900,
    limits={"install": 60, "env": 60, "cuda_tests": 90, "extract": 120, "pretrain": 420, "bare_step": 150,
            "finetune": 150, "resume": 150},
    video_size=32, video_fps=8, video_seconds=4, video_count=4, dalle_tiny=True, extract_batch=16,
    encode_frames=64, encode_seconds=1.0, job_seconds=3.0, job_videos=(8, 40),
    model_flags=("--config", "small", *TINY_MODEL_FLAGS), vocab=512, grid=4, clip_len=5, store_frames=8, batch=4,
    large_micro=2, workers=1, train_seconds=3.0, first_steps=10, steps_range=(9, 16), skip_steps=2, profile_steps=3,
    compile_s=240.0, loader_seconds=1.0,
    bare_batch=4, bare_steps=2, bare_flags=("--grid", "4", "--vocab-size", "512"),
    ft_grid=8, ft_clip_len=10, ft_frames=12, ft_videos=(16, 4), ft_batch=4,
    res_steps=24, res_batch=4, res_save_steps=8)


# ----------------------------------------------------------------------------- processes

@dataclass
class CmdResult:
    rc: int | None          # None: killed at its time limit
    seconds: float
    stdout: str             # also appended to the step's log

    @property
    def ok(self) -> bool:
        return self.rc == 0


class GpuMemSampler:
    """Highest `memory.used` (MiB) nvidia-smi reports for GPU 0 while a command runs; None without nvidia-smi."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5)
                value = float(out.stdout.strip().splitlines()[0])
                self.peak = value if self.peak is None else max(self.peak, value)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return  # no nvidia-smi here (CPU dry run): stays None
            self._stop.wait(self.period)

    def __enter__(self) -> "GpuMemSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StepTimeout(RuntimeError):
    """No time left in this step (or in the whole check) for the next command."""


class Check:
    """The report, the work directory and the time limits; runs child processes for the steps."""

    def __init__(self, profile: Profile, out: str, work: str, wheels: str, python: str, budget_s: float,
                 commit: str | None = None, original_repo: str | None = None) -> None:
        self.p = profile
        self.out = os.path.abspath(out)
        self.work = os.path.abspath(work)
        self.wheels = os.path.abspath(wheels)
        self.original_repo = original_repo  # None: look in the wheel folder (find_original)
        self.python = python
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.step_deadline = self.deadline
        self.pythonpath = [REPO]
        self.log_path = ""
        self.flags: dict[str, bool] = {}    # entry point -> takes --precision
        self.env_info: dict[str, Any] = {}
        self.report: dict[str, Any] = {
            "check": "vimpac GPU check (issues 16, 21)", "mode": profile.mode,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": budget_s, "profile": asdict(profile), "git": git_record(REPO, commit), "steps": {}}
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "logs"))
        os.makedirs(self.out, exist_ok=True)

    # -- report
    def save(self) -> None:
        """report.json, report.md and logs.tar.gz in OUTDIR, each replaced atomically."""
        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        steps = self.report["steps"]
        self.report["summary"] = {s: [k for k, v in steps.items() if v.get("status") == s]
                                  for s in ("pass", "fail", "skipped", "running")}
        _write_atomic(os.path.join(self.out, "report.json"), json.dumps(self.report, indent=2, default=str))
        _write_atomic(os.path.join(self.out, "report.md"), render_markdown(self.report))
        tmp = os.path.join(self.out, "logs.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for path in self._artifacts():
                tar.add(path, arcname=os.path.relpath(path, self.work))
        os.replace(tmp, os.path.join(self.out, "logs.tar.gz"))

    def _artifacts(self) -> list[str]:
        pats = ["logs/*.log", "*.xml", "pretrain/*/summary.json", "pretrain/*/metrics.jsonl", "pretrain/*/curves.png",
                "pretrain/*/profile.json", "bare_step/*.json",
                "finetune/ft/results.json", "finetune/ft/metrics.jsonl", "resume/run/metrics.jsonl",
                "resume/run/summary.json", "extract/store/meta.json", "extract/store/errors*.jsonl"]
        return sorted(p for pat in pats for p in glob.glob(os.path.join(self.work, pat)) if os.path.isfile(p))

    # -- time
    def remaining(self) -> float:
        return min(self.step_deadline, self.deadline) - time.monotonic()

    def need(self, seconds: float, what: str) -> None:
        if self.remaining() < seconds:
            raise StepTimeout(f"{self.remaining():.0f} s left in the step, {what} needs about {seconds:.0f} s")

    # -- processes
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(self.pythonpath), PYTHONUNBUFFERED="1")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # each trainer makes its own one-process group
        if self.p.device == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
        env.update(extra or {})
        return env

    def _log(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text)

    def start(self, args: list[str]) -> subprocess.Popen:
        """A child in its own process group (so a time limit kills its workers too), output to the step log."""
        self._log(f"\n$ {' '.join(args)}\n")
        log = open(self.log_path, "a", encoding="utf-8")
        try:
            return subprocess.Popen(args, cwd=REPO, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def finish(self, proc: subprocess.Popen, t0: float, timeout: float) -> CmdResult:
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            rc = None
        kill_group(proc)
        seconds = time.monotonic() - t0
        self._log(f"[gpu_check] exit {rc if rc is not None else 'killed at the time limit'} after {seconds:.1f} s\n")
        return CmdResult(rc=rc, seconds=round(seconds, 1), stdout=self._log_tail_since(t0))

    def _log_tail_since(self, t0: float) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        cut = text.rfind("\n$ ")
        return text[cut + 1:] if cut >= 0 else text

    def run(self, args: list[str], *, timeout: float | None = None, min_s: float = 5.0, what: str = "") -> CmdResult:
        self.need(min_s, what or os.path.basename(args[1] if len(args) > 1 else args[0]))
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        t0 = time.monotonic()
        return self.finish(self.start(args), t0, limit)

    def py(self, *args: str, **kw) -> CmdResult:
        return self.run([self.python, *args], **kw)

    def json_of(self, res: CmdResult, what: str) -> dict:
        """The JSON object on the last line a helper printed; raises with the output's end otherwise."""
        for line in reversed(res.stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    break
        raise RuntimeError(f"{what} failed (exit {res.rc}): {_tail(res.stdout, 800)}")

    def precision_args(self, entry: str, precision: str) -> list[str]:
        """`--precision X`, or before that flag existed the old spelling (`auto` -> --bf16)."""
        if self.flags.get(entry, True):
            return ["--precision", precision]
        return [] if precision == "fp32" and entry == "predict" else [f"--{'bf16' if precision == 'auto' else precision}"]

    # -- steps
    def step(self, name: str, fn: Callable[["Check"], dict], *, needs: tuple[str, ...] = ()) -> None:
        p = self.p
        rec: dict[str, Any] = {"status": "running", "log": f"logs/{len(self.report['steps']):02d}_{name}.log"}
        self.report["steps"][name] = rec
        self.log_path = os.path.join(self.work, rec["log"])
        open(self.log_path, "w").close()
        t0 = time.monotonic()
        self.step_deadline = min(t0 + p.limits[name], self.deadline)
        rec["limit_s"] = round(self.step_deadline - t0, 1)
        missing = [n for n in needs if self.report["steps"].get(n, {}).get("status") != "pass"]
        print(f"[gpu_check] {name} (limit {rec['limit_s']:.0f} s) ...", flush=True)
        try:
            if self.step_deadline - t0 < 10:
                raise StepTimeout(f"only {self.step_deadline - t0:.0f} s of the {self.report['budget_s']:.0f} s budget left")
            if missing:
                rec["note"] = f"runs although {', '.join(missing)} did not pass"
            rec.update(fn(self))
            rec["status"] = rec.get("status_override", "pass")
            rec.pop("status_override", None)
        except StepTimeout as e:
            rec.update(status="skipped" if time.monotonic() - t0 < 1 else "fail", error=f"out of time: {e}")
        except Exception as e:  # noqa: BLE001 - every failure is recorded and the next step runs
            rec.update(status="fail", error=f"{type(e).__name__}: {e}")
        rec["seconds"] = round(time.monotonic() - t0, 1)
        if rec["status"] != "pass":
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                rec["log_tail"] = _tail(f.read(), 2500)
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']} s"
              + (f" ({_tail(rec.get('error', ''), 300)})" if rec.get("error") else ""), flush=True)
        self.save()


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


UNKNOWN_COMMIT = "unknown (pass --commit)"
COMMIT_RE = re.compile(r"[0-9a-f]{7,40}")


def commit_arg(text: str) -> str:
    """--commit: a commit hash (7 to 40 hex digits, as `git rev-parse HEAD` prints it)."""
    if not COMMIT_RE.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected a git commit hash (7 to 40 hex digits, e.g. from "
                                         f"`git rev-parse HEAD`), got {text!r}")
    return text.strip().lower()


def git_record(repo: str, commit: str | None) -> dict:
    """The report's "git": the commit measured, never a stale one.

    `commit` (--commit / GPU_CHECK_COMMIT) is recorded as given. Without it, `git rev-parse HEAD` is
    trusted only when `repo` is itself the top of a git checkout whose tracked files are unchanged; a
    device machine gets a copy of the working tree without usable git refs (or inside another
    repository), so anything else records UNKNOWN_COMMIT and why.
    """
    if commit:
        return {"commit": commit, "source": "--commit"}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20)

    try:
        top = git("rev-parse", "--show-toplevel")
        head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"git did not run ({e})"
    else:
        if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(repo):
            why = "this tree is not a git checkout of its own (a copy without .git?)"
        elif head.returncode or not head.stdout.strip():
            why = "git has no commit for HEAD here (a copy without refs?)"
        elif dirty.returncode:
            why = f"git status failed: {dirty.stderr.strip()[:200]}"
        elif dirty.stdout.strip():
            n, sha = len(dirty.stdout.splitlines()), head.stdout.strip()
            return {"commit": UNKNOWN_COMMIT, "head": sha, "modified_files": n,
                    "note": f"{n} tracked files differ from HEAD {sha[:10]}; the working tree may differ from "
                            f"any commit"}
        else:
            return {"commit": head.stdout.strip(), "source": "git rev-parse HEAD, tracked files unchanged",
                    "modified_files": 0}
    return {"commit": UNKNOWN_COMMIT, "note": f"{why}; the working tree may differ from any commit"}


def _commit_text(git: dict) -> str:
    commit = str(git.get("commit"))
    return commit[:10] if COMMIT_RE.fullmatch(commit) else f"{commit}: {git.get('note', '')}"


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_rows(path: str) -> list[dict]:
    """metrics.jsonl rows; a line cut by a kill is skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return rows


def error_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error:" in ln or ln.startswith("RuntimeError") or "Traceback" in ln:
            return ln[:600]
    return lines[-1][:600] if lines else None


def raise_with(results: dict, msg: str) -> None:
    """Fail the step but keep what it measured: the results go into the report with the error."""
    results.update(status_override="fail", error=msg)
    raise _Done(results)


class _Done(Exception):
    def __init__(self, results: dict) -> None:
        super().__init__("")
        self.results = results


def keep_results(fn: Callable[[Check], dict]) -> Callable[[Check], dict]:
    def wrapped(c: Check) -> dict:
        try:
            return fn(c)
        except _Done as d:
            return d.results
    wrapped.__name__ = fn.__name__
    return wrapped


# ----------------------------------------------------------------------------- 0. install

def step_install(c: Check) -> dict:
    wheels = sorted(glob.glob(os.path.join(c.wheels, "*.whl")))
    if not wheels:
        raise RuntimeError(f"no wheels in {c.wheels}: run `make gpu-wheels` where pip works and carry that folder")
    names = [os.path.basename(w) for w in wheels]
    bad = [n for n in names if re.match(r"(torch|torchvision|torchaudio|triton)-\d|nvidia", n, re.I)]
    if bad:
        raise RuntimeError(f"the wheel folder holds {bad}: it must never replace the machine's torch or CUDA")
    site = os.path.join(c.work, "site")
    pip = [c.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--target", site]
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'file': torch.__file__, "
             "'cuda': torch.version.cuda}))")
    if c.p.mode != "gpu":
        # here the venv has every package; unpack the wheels as the GPU machine's Python would, to catch a
        # wheel that would not install there (tags, duplicates), and leave them off PYTHONPATH
        plat = [x for p in WHEEL_PLATFORMS for x in ("--platform", p)]
        res = c.run(pip + ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", *plat, *wheels],
                    what="pip install (cp312 tags)")
        if not res.ok:
            raise RuntimeError(f"pip could not install the wheels for cp312: {error_line(res.stdout)}")
        return {"wheels": names, "note": "dry run: wheels unpacked for CPython 3.12 into a scratch dir and not used; "
                                         "this venv provides the packages"}
    before = c.json_of(c.py("-c", probe, what="torch probe"), "torch probe")
    res = c.run(pip + wheels, what="pip install")
    if not res.ok:
        raise RuntimeError(f"pip install failed: {error_line(res.stdout)}")
    c.pythonpath = [REPO, site]
    imports = ("import json, torch, deepspeed, av, decord, dall_e, vector_quantize_pytorch, einx, pydantic, hjson; "
               "print(json.dumps({'torch': torch.__version__, 'file': torch.__file__, 'cuda': torch.version.cuda, "
               "'deepspeed': deepspeed.__version__, 'av': av.__version__, 'pydantic': pydantic.VERSION}))")
    after = c.json_of(c.py("-c", imports, what="imports"), "imports after the install")
    if (after["torch"], after["file"]) != (before["torch"], before["file"]) or after["file"].startswith(site):
        raise RuntimeError(f"torch changed: {before} -> {after}")
    shadowed = sorted(d for d in os.listdir(site) if d.split("-")[0].lower() in ("torch", "torchvision", "nvidia"))
    if shadowed:
        raise RuntimeError(f"{site} holds {shadowed}")
    check = c.py("-m", "pip", "check", what="pip check")  # informative: the image's own packages may complain
    return {"wheels": names, "site": site, "torch_before": before, "after": after,
            "pip_check": _tail(check.stdout.strip().split("\n", 1)[-1], 1500)}


# ----------------------------------------------------------------------------- 1. env

def step_env(c: Check) -> dict:
    c.need(10, "env probe")
    t0 = time.monotonic()
    env_proc = c.start([c.python, os.path.join(HERE, "probes.py"), "env"])
    helps = {}
    for entry in ("pretrain", "finetune", "predict"):  # --help imports torch: run them side by side
        helps[entry] = subprocess.Popen([c.python, "-m", f"vimpac.{entry}", "--help"], cwd=REPO, env=c.env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    info = c.json_of(c.finish(env_proc, t0, c.remaining()), "env probe")
    for entry, proc in helps.items():
        try:
            text, _ = proc.communicate(timeout=max(c.remaining(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            text = ""
        c.flags[entry] = "--precision" in text
        c._log(f"\n$ python -m vimpac.{entry} --help: {'takes' if c.flags[entry] else 'lacks'} --precision\n")
    c.env_info = info
    c.report["env"] = info
    if c.p.mode == "gpu" and not info.get("cuda_available"):
        raise RuntimeError("torch sees no CUDA device")
    return {"gpu": info.get("gpu"), "driver": (info.get("nvidia_smi", {}).get("gpus") or [{}])[0].get("driver"),
            "torch": info.get("torch"), "cuda": info.get("torch_cuda"), "cpu_count": info.get("cpu_count"),
            "peak_tflops": info.get("peak_tflops"),
            "precision_flag": {e: ("--precision" if v else "--bf16/--fp16/--fp32 (no --precision yet)")
                               for e, v in c.flags.items()}}


# ----------------------------------------------------------------------------- 2. CUDA tests

def step_cuda_tests(c: Check) -> dict:
    xml = os.path.join(c.work, "cuda_tests.xml")
    res = c.py("-m", "pytest", "-q", "-s", "-rA", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "tests/test_cuda.py", min_s=20, what="pytest")
    counts = _junit_counts(xml)
    errors, engine = cuda_test_lines(res.stdout)
    out = {**counts, "relative_errors": errors, "engine_dtypes": engine, "exit": res.rc}
    if res.rc is None:
        raise RuntimeError(f"pytest hit the time limit: {json.dumps(counts)}")
    if res.rc not in (0, 5) or counts.get("failures") or counts.get("errors"):
        out["status_override"] = "fail"
        out["error"] = f"{counts.get('failures', '?')} failed, {counts.get('errors', '?')} errors"
    if c.p.mode == "gpu" and "tests" in counts and counts["skipped"] == counts["tests"]:
        out["status_override"] = "fail"
        out["error"] = "every CUDA test was skipped on the GPU machine"
    return out


def cuda_test_lines(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """What tests/test_cuda.py prints: ({precision: its relative errors}, {precision: the engine's dtype line}); under
    `pytest -q -s` a line may follow the progress dots of the tests before it."""
    errors = {m.group(1): m.group(2) for m in re.finditer(r"(?<![\w-])(fp32|bf16|fp16-weights|fp16): (loss [^\n]*)",
                                                        text)}
    engine = {m.group(1): m.group(2) for m in re.finditer(r"(?<![\w-])engine (fp32|bf16|fp16): ([^\n]*)", text)}
    return errors, engine


def _junit_counts(path: str) -> dict:
    try:
        import xml.etree.ElementTree as ET

        root = ET.parse(path).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        counts["failed_tests"] = []
        for tc in suite.iter("testcase"):
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            if bad is not None:
                counts["failed_tests"].append(f"{tc.get('name')}: {bad.get('message', '')[:300]}")
        return counts
    except (OSError, ET.ParseError, AttributeError):
        return {"junit": "missing"}


# ----------------------------------------------------------------------------- 3. extraction

@keep_results
def step_extract(c: Check) -> dict:
    p, d = c.p, os.path.join(c.work, "extract")
    fx = os.path.join(HERE, "fixtures.py")
    made = c.json_of(c.py(fx, "videos", "--out", os.path.join(d, "src"), "--count", str(p.video_count), "--size",
                          str(p.video_size), "--fps", str(p.video_fps), "--seconds", str(p.video_seconds)), "videos")
    c.report["videos"] = made["videos"]
    dalle = c.json_of(c.py(fx, "dalle", "--out", os.path.join(c.work, "dalle"), *(["--tiny"] if p.dalle_tiny else [])),
                      "random DALL-E")
    enc = c.json_of(c.py(os.path.join(HERE, "probes.py"), "encode", "--tokenizer-path", dalle["path"], "--video",
                         made["videos"][0], "--size", str(p.video_size), "--fps", str(p.video_fps), "--batch-size",
                         str(p.extract_batch), "--device", p.device, "--frames", str(p.encode_frames),
                         "--min-seconds", str(p.encode_seconds), min_s=15, what="encoder probe"), "encoder probe")
    per_video = int(p.video_fps * p.video_seconds)
    count = int(min(max(math.ceil(enc["encoder_frames_per_s"] * p.job_seconds / per_video), p.job_videos[0]),
                    p.job_videos[1]))
    job = c.json_of(c.py(fx, "copies", "--src", os.path.dirname(made["videos"][0]), "--out", os.path.join(d, "root"),
                         "--count", str(count)), "video copies")
    workers = os.cpu_count() or 1
    out: dict[str, Any] = {"dalle": dalle, "encoder": enc}
    # decoding alone: the job's decode workers over the job's videos, no encoder
    res = c.py(os.path.join(HERE, "probes.py"), "decode", "--video-root", job["video_root"], "--anno", job["anno"],
               "--size", str(p.video_size), "--fps", str(p.video_fps), "--workers", str(workers), min_s=15,
               what="decode-only probe")
    try:
        out["decode"] = c.json_of(res, "decode-only probe")
        out["decode"]["vs_encoder"] = round(out["decode"]["decode_frames_per_s"] / enc["encoder_frames_per_s"], 3)
    except RuntimeError as e:
        out["decode"] = {"error": str(e)}
    args = ["-m", "video2token.extract", "--video-root", job["video_root"], "--anno", job["anno"], "--anno-format",
            "list", "--output", os.path.join(d, "store"), "--fps", str(p.video_fps), "--frame-shorter-side",
            str(p.video_size), "--crop-size", str(p.video_size), "--crop-type", "center", "--tokenizer", "dalle",
            "--tokenizer-path", dalle["path"], "--batch-size", str(p.extract_batch), "--num-workers", str(workers),
            "--device", p.device, "--no-progress"]
    res = c.py(*args, min_s=20, what="extraction job")
    m = re.search(r"(\d+) videos stored.*?(\d+) frames in ([\d.]+) s = ([\d.]+) frames/s", res.stdout)
    out["job"] = {"videos": count, "frames_per_video": per_video, "workers": workers, "wall_s": res.seconds,
                  "exit": res.rc}
    if not res.ok or not m:
        raise_with(out, f"extraction job failed (exit {res.rc}): {error_line(res.stdout)}")
    stored, frames, secs, fps = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
    out["job"].update(stored=stored, frames=frames, job_seconds=secs, frames_per_s=fps,
                      frames_per_s_wall=round(frames / res.seconds, 1),
                      vs_encoder=round(fps / enc["encoder_frames_per_s"], 3))
    dec = out["decode"].get("decode_frames_per_s")
    if dec:
        out["job"]["vs_decode"] = round(fps / dec, 3)
    problems = []
    if stored != count:
        problems.append(f"{stored} of {count} videos stored")
    if "error" in out["decode"]:
        problems.append(f"decode-only probe: {out['decode']['error'][:300]}")
    if problems:
        out.update(status_override="fail", error="; ".join(problems))
    return out


# ----------------------------------------------------------------------------- 4. pre-training

@dataclass(frozen=True)
class PretrainRun:
    name: str
    layout: str
    precision: str
    zero: int
    config: str = "small"
    compile: bool = False     # --compile
    profile: bool = False     # torch.profiler over the run's last steps (kernel_profile.py trainer)


#: in this order, so that a step running out of time loses the least asked-for runs (issue 21's table: auto, Large,
#: the layouts); --compile's compilation time is not known before it runs, so it comes after them, and fp16 +
#: ZeRO-2 (the V100 / T4 path) last
PRETRAIN_RUNS = (
    PretrainRun("auto", "T,H|W", "auto", 0, profile=True),
    PretrainRun("large_auto", "T,H|W", "auto", 0, config="large_half"),
    PretrainRun("auto_T-H-W", "T,H,W", "auto", 0),
    PretrainRun("auto_THW", "THW", "auto", 0),
    PretrainRun("auto_compile", "T,H|W", "auto", 0, compile=True, profile=True),
    PretrainRun("fp16_zero2", "T,H|W", "fp16", 2),
)
RUN_OVERHEAD_S = 20  # start-up + final checkpoint + plots, measured per run and updated
FIRST_LINEAR_RE = re.compile(r"the first Linear \(([^)]*)\) computes in (\S+) \(input (\S+), weights ([^)\s]+)\)")


def steady_rate(rows: list[dict], skip: int, until: int | None = None) -> dict:
    """Time-weighted videos/s over the logged train steps after the first `skip` (and their median); steps after
    `until` (a profiled window) are left out."""
    train = sorted((r for r in rows if r.get("split") == "train" and r.get("videos_per_s")
                    and (until is None or r["step"] <= until)), key=lambda r: r["step"])
    steady = train[skip:] if len(train) > skip + 2 else train[len(train) // 2:]
    if not steady:
        return {"steps_logged": len(train)}
    rates = sorted(r["videos_per_s"] for r in steady)
    # each row: one optimizer step of the same global batch, so videos/s over them = n / sum(1 / rate)
    weighted = len(rates) / sum(1.0 / r for r in rates)
    return {"steps_logged": len(train), "steps_used": len(steady), "videos_per_s": round(weighted, 2),
            "videos_per_s_median": round(rates[len(rates) // 2], 2)}


def first_linear(log: str) -> dict:
    """The run log's "the first Linear (NAME) computes in DTYPE (input ..., weights ...)" -> its parts ({}: absent)."""
    m = FIRST_LINEAR_RE.search(log)
    if not m:
        return {}
    return {"computes_in": m.group(2), "module": m.group(1), "input": m.group(3), "weights": m.group(4),
            "line": m.group(0)}


def flops_key(config: str, layout: str) -> str:
    return f"{config}:{layout}"


def plan_steps(p: Profile, run: PretrainRun, flops: dict, rate_ref: float | None) -> int:
    """Optimizer steps for about p.train_seconds of `run`, from the first run's rate scaled by FLOPs per video;
    a profiled run adds its window after at least skip + 3 steady steps."""
    if rate_ref is None:
        steps = p.first_steps
    else:
        f_ref = _flops_of(flops, flops_key("small", "T,H|W"))
        f_run = _flops_of(flops, flops_key(run.config, run.layout))
        factor = f_ref / f_run if f_ref and f_run else 1.0
        steps = round(p.train_seconds * rate_ref * factor / p.batch)
    steps = int(min(max(steps, p.steps_range[0]), p.steps_range[1]))
    if run.profile:
        steps = max(steps, p.skip_steps + 3 + p.profile_steps)
    return steps


@keep_results
def step_pretrain(c: Check) -> dict:
    p, d = c.p, os.path.join(c.work, "pretrain")
    fx = os.path.join(HERE, "fixtures.py")
    specs = list(dict.fromkeys(flops_key(r.config, r.layout) for r in PRETRAIN_RUNS))
    flops_res = c.py(os.path.join(HERE, "probes.py"), "flops", "--specs", *specs, "--vocab", str(p.vocab),
                     "--clip-len", str(p.clip_len), "--grid", str(p.grid), "--device", p.device,
                     *(["--tiny"] if p.tiny else []), min_s=15, timeout=90, what="FLOP count")
    try:
        flops = c.json_of(flops_res, "FLOP count")["specs"]
    except RuntimeError as e:
        flops = {"error": str(e)}
    peak = c.env_info.get("peak_tflops")
    out: dict[str, Any] = {"flops": flops, "peak_tflops": peak, "batch": p.batch, "runs": {}}
    c.report["steps"]["pretrain"].update(out)
    rate_ref: float | None = None   # steady videos/s of the first run, for sizing the others
    overhead = RUN_OVERHEAD_S
    stores: dict[int, str] = {}
    for run in PRETRAIN_RUNS:
        rec: dict[str, Any] = {"config": run.config, "layout": run.layout, "precision": run.precision,
                               "zero_stage": run.zero, "compile": run.compile}
        out["runs"][run.name] = rec
        steps = plan_steps(p, run, flops, rate_ref)
        expected = overhead + p.train_seconds * 1.5 + (p.compile_s if run.compile else 0)
        if c.remaining() < min(expected, overhead + 5):
            rec.update(status="skipped", error=f"{c.remaining():.0f} s left in the step")
            continue
        if steps not in stores:
            stores[steps] = c.json_of(c.py(fx, "store", "--out", os.path.join(d, f"store_{steps}"), "--videos",
                                           str(steps * p.batch), "--frames", str(p.store_frames), "--grid",
                                           str(p.grid), "--vocab", str(p.vocab), what="store"), "store")["path"]
        outdir = os.path.join(d, run.name)
        micro = p.large_micro if run.config != "small" else p.batch
        flags = ["--train-tokens", stores[steps], "--output", outdir, *p.model_flags_for(run.config),
                 "--model", f"efflayout{run.layout}", "--clip-len", str(p.clip_len), "--frame-size", str(p.grid * 8),
                 "--mask-blocks", "5", "--epochs", "1", "--batch-size", str(p.batch), "--bs-per-gpu", str(micro),
                 "--zero-stage", str(run.zero), *c.precision_args("pretrain", run.precision), "--num-workers",
                 str(p.workers), "--no-tqdm", "--eval-per-epochs", "0", "--log-steps", "1", "--seed", "0",
                 *(["--compile"] if run.compile else [])]
        until = None
        if run.profile:  # the run's last profile_steps steps, left out of its steady rate
            until = steps - p.profile_steps
            args = [os.path.join(HERE, "kernel_profile.py"), "trainer", "--start-after", str(until), "--steps",
                    str(p.profile_steps), "--out", os.path.join(outdir, "profile.json"), "--", *flags]
        else:
            args = ["-m", "vimpac.pretrain", *flags]
        rec.update(steps_planned=steps, micro_batch=micro)
        with GpuMemSampler() as mem:
            res = c.py(*args, min_s=10, timeout=expected + 60 if run.compile else max(60.0, 3 * expected),
                       what=run.name)
        rows = read_rows(os.path.join(outdir, "metrics.jsonl"))
        summary = _read_json(os.path.join(outdir, "summary.json")) or {}
        m = re.search(r"rank 0/1 on (\S+), (.*?); ZeRO-(\d)", res.stdout) or \
            re.search(r"rank 0/1 on (\S+), precision (\w+), ZeRO-(\d)", res.stdout)
        rec.update(exit=res.rc, wall_s=res.seconds, **steady_rate(rows, p.skip_steps, until))
        if m:
            rec["trainer_says"] = f"{m.group(1)}, {m.group(2)}, ZeRO-{m.group(3)}"
        rec["first_linear"] = first_linear(res.stdout)
        for key in ("steps", "videos_per_s", "seconds", "train_seconds", "precision", "peak_gpu_mem_mb",
                    "startup_seconds"):
            if key in summary:
                rec[f"summary_{key}"] = summary[key]
        rec["peak_gpu_mem_mb"] = summary.get("peak_gpu_mem_mb")
        rec["peak_gpu_mem_source"] = "summary.json (max_memory_allocated)" if "peak_gpu_mem_mb" in summary else None
        rec["nvidia_smi_peak_used_mb"] = mem.peak
        if rec["peak_gpu_mem_mb"] is None and mem.peak is not None:
            rec.update(peak_gpu_mem_mb=mem.peak, peak_gpu_mem_source="nvidia-smi memory.used (sampled every 0.25 s)")
        fpv = _flops_of(flops, flops_key(run.config, run.layout))
        if fpv and rec.get("videos_per_s"):
            rec["achieved_tflops"] = round(rec["videos_per_s"] * fpv / 1e12, 2)
            if peak:
                rec["mfu"] = round(rec["videos_per_s"] * fpv / (peak * 1e12), 4)
            fa = (flops.get(flops_key(run.config, run.layout)) or {}).get("analytic_gflops_per_video")
            if peak and fa:
                rec["mfu_analytic"] = round(rec["videos_per_s"] * fa * 1e9 / (peak * 1e12), 4)
        if run.profile:
            prof = _read_json(os.path.join(outdir, "profile.json"))
            rec["profile"] = prof if prof else {"error": "no profile written (the run ended before its window closed)"}
        if res.ok and rows:
            rec["status"] = "ok"
            final = summary.get("train") or {}
            rec["final_mp_loss"] = final.get("mp_loss")
            if rate_ref is None and rec.get("videos_per_s"):
                rate_ref = rec["videos_per_s"]
            if summary.get("train_seconds") is not None and not run.compile:
                overhead = max(10.0, res.seconds - summary["train_seconds"])
            if "checkpoint" not in out and os.path.isdir(os.path.join(outdir, "last")):
                out["checkpoint"] = os.path.join(outdir, "last")
        elif res.rc is None:
            rec.update(status="timeout", error=f"killed after {res.seconds} s (rates above are from its metrics)")
        elif not rows:
            rec.update(status="rejected", error=error_line(res.stdout))
        else:
            rec.update(status="failed", error=error_line(res.stdout))
        if run.profile and rec.get("status") == "ok" and "error" in rec["profile"]:
            rec.update(status="failed", error=rec["profile"]["error"])
        c.save()
        if run.name == "auto" and rec.get("status") == "ok":
            out["loader"] = loader_alone(c, stores[steps])
            c.save()
    out["table13"] = table13(out["runs"])
    if "loader" in out:
        out["loader"].update(loader_vs_trainer(out["loader"], out["runs"]))
    # fp16 needs a GPU: on a CPU the trainer refusing it is an answer, not a failure
    may_refuse = {"fp16_zero2"} if p.device == "cpu" else set()
    bad = [n for n, r in out["runs"].items()
           if not (r.get("status") == "ok" or (r.get("status") == "rejected" and n in may_refuse))]
    if "error" in out.get("loader", {"error": "not measured (the auto run did not pass)"}):
        bad.append("loader")
    if bad:
        out.update(status_override="fail", error=f"not ok: {', '.join(bad)}")
    return out


def loader_alone(c: Check, store: str) -> dict:
    """benchmarks/pretrain_throughput.py --loader-only on the auto run's store: its workers and batch, batches
    moved to the run's device (pinned, non_blocking)."""
    p = c.p
    res = c.py(os.path.join(REPO, "benchmarks", "pretrain_throughput.py"), "--loader-only", "--store", store,
               "--device", p.device, "--clip-len", str(p.clip_len), "--batch", str(p.batch), "--workers",
               str(p.workers), "--seconds", str(p.loader_seconds), min_s=10, timeout=60 + p.loader_seconds,
               what="loader alone")
    try:
        return c.json_of(res, "loader alone")
    except RuntimeError as e:
        return {"error": str(e)}


def loader_vs_trainer(loader: dict, runs: dict) -> dict:
    """The loader's videos/s over the fastest Small trainer run's (the issue asks for at least 3x)."""
    small = {n: r["videos_per_s"] for n, r in runs.items()
             if r.get("config") == "small" and r.get("status") == "ok" and r.get("videos_per_s")}
    if not small or not loader.get("videos_per_s"):
        return {}
    name = max(small, key=small.get)
    return {"vs_run": name, "trainer_videos_per_s": small[name],
            "ratio": round(loader["videos_per_s"] / small[name], 2), "target_ratio": 3.0}


def _flops_of(flops: dict, key: str) -> float | None:
    row = flops.get(key) if isinstance(flops, dict) else None
    return row.get("flops_per_video") if isinstance(row, dict) else None


def table13(runs: dict) -> dict:
    """Videos/s per layout at --precision auto and ZeRO-0, with the paper's V100 numbers and ratios."""
    ours = {"T,H|W": runs.get("auto", {}).get("videos_per_s"),
            "T,H,W": runs.get("auto_T-H-W", {}).get("videos_per_s"),
            "THW": runs.get("auto_THW", {}).get("videos_per_s")}
    base = ours["T,H|W"]
    return {"ours_videos_per_s": ours, "paper_v100_videos_per_s": PAPER_TABLE13,
            "ours_vs_T,H|W": {k: round(v / base, 3) if v and base else None for k, v in ours.items()},
            "paper_vs_T,H|W": {k: round(v / PAPER_TABLE13["T,H|W"], 3) for k, v in PAPER_TABLE13.items()},
            "note": "every layout at --precision auto (bf16 on an H100 / H200), ZeRO-0, no --compile"}


# ----------------------------------------------------------------------------- 5. the bare step and its profile

def find_original(c: Check) -> str | None:
    """The original VIMPAC checkout: --original-repo, else WHEELS/vimpac-original when it holds vimpac/modeling.py."""
    path = c.original_repo or os.path.join(c.wheels, ORIGINAL_DIR)
    return path if os.path.isfile(os.path.join(path, "vimpac", "modeling.py")) else None


@keep_results
def step_bare_step(c: Check) -> dict:
    p, d = c.p, os.path.join(c.work, "bare_step")
    os.makedirs(d, exist_ok=True)
    original = find_original(c)
    looked = c.original_repo or os.path.join(c.wheels, ORIGINAL_DIR)
    out: dict[str, Any] = {"batch_clips": p.bare_batch,
                           "original": original or f"not carried ({looked} has no vimpac/modeling.py): the bare step "
                                                   f"alone"}
    ref = ["--original-repo", original, "--reference", "native"] if original else ["--reference", "none"]
    res = c.py(os.path.join(REPO, "benchmarks", "train_step.py"), "--device", p.device, "--config", "small",
               "--batch-size", str(p.bare_batch), *p.bare_flags, "--precision", "auto", "--no-memory", "--json",
               "--warmup", "2", "--steps", str(p.bare_steps), "--budget-s", f"{max(20.0, c.remaining() / 2 - 15):.0f}",
               *ref,
               min_s=20, timeout=c.remaining() / 2 + 10, what="train_step.py")
    problems = []
    try:
        ts = c.json_of(res, "train_step.py")
        keep = ("precision", "precision_reason", "device_name", "clips_per_s", "clips_per_s_best", "step_s_median",
                "gflop_per_clip", "achieved_tflops", "matmul_tflops", "fraction_of_matmul", "reference",
                "speedup_vs_original_best", "original_best_precision", "wall_s")
        out["train_step"] = {k: ts[k] for k in keep if k in ts}
        out["train_step"].update({k: v for k, v in ts.items() if k.startswith("speedup_vs_")})
        if original:
            out["train_step"]["original_clips_per_s"] = {prec: r.get("clips_per_s")
                                                         for prec, r in (ts.get("original") or {}).items()}
    except RuntimeError as e:
        problems.append(str(e)[:400])
    prof_path = os.path.join(d, "profile.json")
    precision = "bf16"  # the profile: the Small bare step in bf16
    res = c.py(os.path.join(HERE, "kernel_profile.py"), "bare", "--device", p.device, "--batch-size",
               str(p.bare_batch), "--precision", precision, "--clip-len", str(p.clip_len), "--grid", str(p.grid),
               "--vocab", str(p.vocab), "--steps", str(p.profile_steps), *(["--tiny"] if p.tiny else []), "--out",
               prof_path, min_s=15, what="bare-step profile")
    prof = _read_json(prof_path)
    if res.ok and prof:
        out["profile"] = prof
        if "error" in prof:
            problems.append(f"bare-step profile: {prof['error']}")
    else:
        problems.append(f"bare-step profile failed (exit {res.rc}): {error_line(res.stdout)}")
    if problems:
        out.update(status_override="fail", error="; ".join(problems))
    return out


# ----------------------------------------------------------------------------- 6. fine-tuning + predict

@keep_results
def step_finetune(c: Check) -> dict:
    p, d = c.p, os.path.join(c.work, "finetune")
    fx = os.path.join(HERE, "fixtures.py")
    dalle = os.path.join(c.work, "dalle")
    videos = c.report.get("videos") or []
    if not os.path.exists(os.path.join(dalle, "encoder.pkl")) or not videos:
        raise RuntimeError("needs the extract step's random DALL-E and videos")
    ckpt = (c.report["steps"].get("pretrain") or {}).get("checkpoint")
    out: dict[str, Any] = {}
    if ckpt and os.path.isdir(ckpt):
        out["init"] = f"pre-training checkpoint {os.path.relpath(ckpt, c.work)}"
    else:
        ckpt = c.json_of(c.py(fx, "checkpoint", "--out", os.path.join(d, "init"), "--vocab", str(p.vocab),
                              "--clip-len", str(p.clip_len), "--grid", str(p.grid),
                              *(["--tiny"] if p.tiny else []), what="checkpoint"),
                         "fallback checkpoint")["path"]
        out["init"] = "no pre-training checkpoint: a freshly initialised one (save_checkpoint)"
    tokmeta = c.json_of(c.py(fx, "tokmeta", "--tokenizer-path", dalle, "--device", p.device, "--out",
                             os.path.join(d, "tokenizer.json"), what="tokenizer meta"), "tokenizer meta")["path"]
    stores = {}
    for split, n in zip(("train", "valid"), p.ft_videos):
        stores[split] = c.json_of(c.py(fx, "store", "--out", os.path.join(d, split), "--videos", str(n), "--frames",
                                       str(p.ft_frames), "--grid", str(p.ft_grid), "--vocab", str(p.vocab),
                                       "--labels", "4", "--tokenizer-meta", tokmeta, "--seed", str(len(stores)),
                                       what="labelled store"), "labelled store")["path"]
    ft = os.path.join(d, "ft")
    args = ["-m", "vimpac.finetune", "--load", ckpt, "--dataset-name", "custom", "--train-tokens", stores["train"],
            "--valid-tokens", stores["valid"], "--different-shape", "--clip-len", str(p.ft_clip_len), "--frame-size",
            str(p.ft_grid * 8), "--epochs", "1", "--batch-size", str(p.ft_batch), "--bs-per-gpu", str(p.ft_batch),
            *c.precision_args("finetune", "auto"), "--num-workers", str(min(p.workers, 4)), "--no-tqdm",
            "--num-test-clips", "2", "--output", ft]
    with GpuMemSampler() as mem:
        res = c.py(*args, min_s=20, what="fine-tuning")
    results = _read_json(os.path.join(ft, "results.json")) or {}
    run_info = results.get("run") or {}
    out["finetune"] = {"exit": res.rc, "wall_s": res.seconds, "nvidia_smi_peak_used_mb": mem.peak,
                       "clip_len": p.ft_clip_len, "grid": p.ft_grid, "batch": p.ft_batch,
                       "train_clips_per_s": run_info.get("train_clips_per_s"), "first_linear": first_linear(res.stdout),
                       "steady": steady_rate(read_rows(os.path.join(ft, "metrics.jsonl")), 2),
                       "results": {k: results.get(k) for k in ("final", "best", "run") if k in results}}
    m = re.search(r"positional|resampl|interpolat", res.stdout, re.I)
    out["finetune"]["resampling_logged"] = bool(m)
    if not res.ok:
        raise_with(out, f"fine-tuning failed (exit {res.rc}): {error_line(res.stdout)}")
    res = c.py("-m", "vimpac.predict", "--checkpoint", ft, "--tokenizer", "dalle", "--tokenizer-path", dalle,
               "--device", p.device, *c.precision_args("predict", "auto"), "--num-test-clips", "2", "--json",
               videos[0], min_s=15, what="predict")
    out["predict"] = {"exit": res.rc, "wall_s": res.seconds, "video": os.path.basename(videos[0])}
    doc = _json_document(res.stdout)
    if not res.ok or not doc:
        raise_with(out, f"predict failed (exit {res.rc}): {error_line(res.stdout)}")
    top = (doc.get("results") or [{}])[0].get("top") or []
    out["predict"].update(top1=top[0] if top else None, classes_scored=len(top),
                          probs_sum_top=round(sum(t.get("prob", 0) for t in top), 4))
    return out


def _json_document(text: str) -> dict | None:
    """The (indented) JSON document a command printed among other lines."""
    start = text.find("{\n")
    while start >= 0:
        depth = 0
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                try:
                    return json.loads(text[start:i + 1])
                except ValueError:
                    break
        start = text.find("{\n", start + 1)
    return None


# ----------------------------------------------------------------------------- 7. kill -9 + resume

@keep_results
def step_resume(c: Check) -> dict:
    p, d = c.p, os.path.join(c.work, "resume")
    store = c.json_of(c.py(os.path.join(HERE, "fixtures.py"), "store", "--out", os.path.join(d, "store"), "--videos",
                           str(p.res_steps * p.res_batch), "--frames", str(p.store_frames), "--grid", str(p.grid),
                           "--vocab", str(p.vocab), what="store"), "store")["path"]
    run_dir = os.path.join(d, "run")
    args = [c.python, "-m", "vimpac.pretrain", "--train-tokens", store, "--output", run_dir, *p.model_flags,
            "--clip-len", str(p.clip_len), "--frame-size", str(p.grid * 8), "--epochs", "1", "--batch-size",
            str(p.res_batch), "--bs-per-gpu", str(p.res_batch), *c.precision_args("pretrain", "auto"),
            "--num-workers", "2", "--no-tqdm", "--eval-per-epochs", "0", "--save-steps", str(p.res_save_steps),
            "--seed", "0"]
    state_file = os.path.join(run_dir, "last", "trainer_state.json")
    c.need(40, "two trainer runs")
    t0 = time.monotonic()
    proc = c.start(args)
    out: dict[str, Any] = {"steps_per_epoch": p.res_steps, "save_steps": p.res_save_steps}
    killed_at = None
    while proc.poll() is None and time.monotonic() - t0 < c.remaining() - 20:
        state = _read_json(state_file)
        if state and state.get("step", 0) >= p.res_save_steps:
            os.kill(proc.pid, signal.SIGKILL)  # the trainer itself, as `kill -9 PID` would
            killed_at = state["step"]
            break
        time.sleep(0.02)
    first = c.finish(proc, t0, 30)
    rows_before = [r["step"] for r in read_rows(os.path.join(run_dir, "metrics.jsonl")) if r.get("split") == "train"]
    state = _read_json(state_file) or {}
    out["kill"] = {"exit": first.rc, "checkpoint_step_seen": killed_at, "checkpoint_step_after": state.get("step"),
                   "last_logged_step": max(rows_before, default=None), "wall_s": first.seconds}
    if killed_at is None:
        raise_with(out, f"the run {'ended' if first.rc is not None else 'was stopped'} before a mid-epoch checkpoint "
                        f"was seen (exit {first.rc}); raise res_steps")
    if first.rc != -signal.SIGKILL:
        raise_with(out, f"the run was not killed by SIGKILL (exit {first.rc})")
    res = c.run(args + ["--resume"], min_s=15, what="resume")
    rows = sorted((r for r in read_rows(os.path.join(run_dir, "metrics.jsonl")) if r.get("split") == "train"),
                  key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    summary = _read_json(os.path.join(run_dir, "summary.json")) or {}
    m = re.search(r"starting at step (\d+)", res.stdout)
    resumed_at = int(m.group(1)) if m else None
    last_loss = rows[-1].get("mp_loss") if rows else None
    out["resume"] = {"exit": res.rc, "wall_s": res.seconds, "starting_step_logged": resumed_at,
                     "final_step": summary.get("steps"), "steps_this_run": summary.get("steps_this_run"),
                     "final_mp_loss": last_loss, "logged_steps_contiguous": steps == list(range(1, len(steps) + 1))}
    problems = []
    if not res.ok:
        problems.append(f"--resume failed (exit {res.rc}): {error_line(res.stdout)}")
    if resumed_at is not None and resumed_at != out["kill"]["checkpoint_step_after"]:
        problems.append(f"resumed at step {resumed_at}, the checkpoint holds step {out['kill']['checkpoint_step_after']}")
    if summary.get("steps") != p.res_steps:
        problems.append(f"final step {summary.get('steps')}, expected {p.res_steps}")
    if steps != list(range(1, p.res_steps + 1)):
        problems.append(f"logged train steps are not 1..{p.res_steps} once each")
    if not isinstance(last_loss, (int, float)) or not math.isfinite(last_loss):
        problems.append(f"final mp_loss {last_loss!r} is not finite")
    if problems:
        raise_with(out, "; ".join(problems))
    return out


# ----------------------------------------------------------------------------- report.md

PROFILE_COLUMNS = ("matmul", "attention", "elementwise/copy", "norm/reduction", "other", "idle")


def render_markdown(r: dict) -> str:
    env = r.get("env", {})
    git = r.get("git", {})
    lines = [f"# GPU check ({r['mode']}), {r['started']}", "",
             f"**Commit measured: `{git.get('commit')}`** ({git.get('source') or git.get('note', '')})", "",
             f"{env.get('gpu', 'no GPU')}, driver {(env.get('nvidia_smi', {}).get('gpus') or [{}])[0].get('driver')}, "
             f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), {env.get('cpu_count')} CPUs; "
             f"git {_commit_text(git)}; {r.get('elapsed_s')} s of {r['budget_s']:.0f} s", "",
             "| step | status | seconds | limit | note |", "|---|---|---|---|---|"]
    for name, s in r["steps"].items():
        lines.append(f"| {name} | {s.get('status')} | {s.get('seconds', '')} | {s.get('limit_s', '')} | "
                     f"{_md(s.get('error') or s.get('note') or '')} |")
    steps = r["steps"]
    lines += _targets(steps)
    engine = (steps.get("cuda_tests") or {}).get("engine_dtypes")
    if engine:
        lines += ["", "Precision inside the DeepSpeed engine (tests/test_cuda.py): "
                  + "; ".join(f"{k}: {v}" for k, v in engine.items())]
    ex = steps.get("extract", {})
    if ex.get("encoder"):
        job, dec = ex.get("job", {}), ex.get("decode", {})
        lines += ["", f"Extraction ({ex['encoder'].get('frame_size')} px, batch {ex['encoder'].get('batch_size')}, "
                      f"{job.get('workers')} decode workers):", "",
                  "| encoder only | decode only (no encoder) | whole job | job / encoder | job / decode |",
                  "|---|---|---|---|---|",
                  f"| {ex['encoder'].get('encoder_frames_per_s')} frames/s | {dec.get('decode_frames_per_s')} frames/s "
                  f"({dec.get('decode_frames_per_s_after_start')} after the workers started) | "
                  f"{job.get('frames_per_s')} frames/s ({job.get('frames')} frames) | {job.get('vs_encoder')} | "
                  f"{job.get('vs_decode')} |"]
    pre = steps.get("pretrain", {})
    if pre.get("runs"):
        lines += ["", f"Pre-training, batch {pre.get('batch')} videos (steady = after the first steps, the profiled "
                      f"ones left out; MFU against {pre.get('peak_tflops')} TFLOP/s):", "",
                  "| run | status | config | precision | ZeRO | layout | compile | first Linear computes in | steps | "
                  "videos/s | median | peak MiB | TFLOP/s | MFU | error |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, x in pre["runs"].items():
            fl = x.get("first_linear") or {}
            lines.append(f"| {name} | {x.get('status')} | {x.get('config')} (micro {x.get('micro_batch', '')}) | "
                         f"{x.get('precision')} -> {x.get('summary_precision', '')} | {x.get('zero_stage')} | "
                         f"{x.get('layout')} | {'yes' if x.get('compile') else 'no'} | "
                         f"{fl.get('computes_in', 'not logged')} | {x.get('steps_logged', '')} | "
                         f"{x.get('videos_per_s', '')} | {x.get('videos_per_s_median', '')} | "
                         f"{x.get('peak_gpu_mem_mb', '')} | {x.get('achieved_tflops', '')} | {x.get('mfu', '')} | "
                         f"{_md(x.get('error') or '')} |")
        t = pre.get("table13")
        if t:
            lines += ["", "Table 13 (videos/s; ratio to T,H|W): " + ", ".join(
                f"{k}: ours {t['ours_videos_per_s'][k]} ({t['ours_vs_T,H|W'][k]}), paper V100 "
                f"{t['paper_v100_videos_per_s'][k]} ({t['paper_vs_T,H|W'][k]})" for k in PAPER_TABLE13)]
        ld = pre.get("loader")
        if ld:
            lines += ["", "Loader alone (benchmarks/pretrain_throughput.py --loader-only: store -> masked batch on "
                          f"{ld.get('device')}, pinned {ld.get('pinned')}, {ld.get('workers')} workers, batch "
                          f"{ld.get('micro_batch')}): " + (f"error {_md(ld['error'])}" if "error" in ld else
                                                          f"{ld.get('videos_per_s')} videos/s = {ld.get('ratio')}x the "
                                                          f"fastest Small trainer run ({ld.get('vs_run')}, "
                                                          f"{ld.get('trainer_videos_per_s')} videos/s; target >= 3x)")]
    bare = steps.get("bare_step", {})
    ts = bare.get("train_step")
    if ts:
        orig = ts.get("original_clips_per_s")
        lines += ["", f"Bare step (benchmarks/train_step.py, Small, {bare.get('batch_clips')} clips, "
                      f"{ts.get('precision')}): {ts.get('clips_per_s')} clips/s, {ts.get('achieved_tflops')} TFLOP/s = "
                      f"{ts.get('fraction_of_matmul')} of a plain {ts.get('precision')} matmul "
                      f"({ts.get('matmul_tflops')} TFLOP/s); "
                      + (f"original VIMPAC code {' / '.join(f'{k} {v}' for k, v in orig.items())} clips/s, "
                         f"speedup vs its best precision "
                         f"({ts.get('original_best_precision')}): {ts.get('speedup_vs_original_best')}x"
                         if orig else f"original code: {_md(bare.get('original'))}")]
    profiles = [(f"bare step: {bare['profile'].get('what', '')}", bare["profile"])] if bare.get("profile") else []
    profiles += [(f"trainer {name}: {x['profile'].get('what', '')}", x["profile"])
                 for name, x in (pre.get("runs") or {}).items() if isinstance(x.get("profile"), dict)
                 and "share" in x["profile"]]
    if profiles:
        lines += ["", "Profile (torch.profiler, share of the profiled steps' wall time; "
                      f"{profiles[0][1].get('source')}):",
                  "", "| profiled | wall ms/step | " + " | ".join(PROFILE_COLUMNS) + " | top kernels |",
                  "|---|---|" + "---|" * len(PROFILE_COLUMNS) + "---|"]
        for what, pr in profiles:
            share = pr.get("share", {})
            top = ", ".join(f"{t['name'][:40]} {t['share']:.0%}" for t in pr.get("top", [])[:3])
            lines.append(f"| {_md(what)} | {pr.get('wall_ms_per_step')} | "
                         + " | ".join(f"{share.get(k, 0):.1%}" for k in PROFILE_COLUMNS) + f" | {_md(top)} |")
    return "\n".join(lines) + "\n"


def _targets(steps: dict) -> list[str]:
    """Issue 21's table: what the target asks and what this run measured."""
    pre, bare, ex, ft = (steps.get(k, {}) for k in ("pretrain", "bare_step", "extract", "finetune"))
    runs = pre.get("runs") or {}

    def run_text(name: str) -> str:
        x = runs.get(name) or {}
        if x.get("status") != "ok":
            return f"{x.get('status', 'not run')}: {_md(x.get('error') or '')}"
        mfu = f"MFU {x['mfu']:.1%}" if isinstance(x.get("mfu"), float) else "MFU ?"
        return f"{x.get('videos_per_s')} videos/s, {mfu}, peak {x.get('peak_gpu_mem_mb')} MiB"

    ts = bare.get("train_step") or {}
    layouts = ", ".join(f"{k} {v}" for k, v in ((pre.get("table13") or {}).get("ours_videos_per_s") or {}).items())
    ftx = ft.get("finetune") or {}
    job, ld = ex.get("job") or {}, pre.get("loader") or {}
    rows = [("`python -m vimpac.pretrain --precision auto`, Small, 32 videos/GPU", run_text("auto"), "MFU >= 30%"),
            ("the same with `--compile`", run_text("auto_compile"), "MFU >= 30%"),
            ("bare step vs the original code at its best precision",
             f"{ts.get('speedup_vs_original_best')}x ({ts.get('clips_per_s')} clips/s)"
             if ts.get("speedup_vs_original_best") else f"{ts.get('clips_per_s', '?')} clips/s, no original code",
             ">= 3x"),
            ("Large (large_half)", run_text("large_auto"), "reported"),
            ("layouts T,H|W / T,H,W / THW (videos/s)", layouts or "?", "reported"),
            ("fp16 + ZeRO-2", run_text("fp16_zero2"), "reported"),
            (f"fine-tuning --different-shape T={ftx.get('clip_len', '?')}, "
             f"{ftx.get('grid', '?')}x{ftx.get('grid', '?')}",
             f"{(ftx.get('steady') or {}).get('videos_per_s', '?')} videos/s steady, peak "
             f"{ftx.get('nvidia_smi_peak_used_mb')} MiB (nvidia-smi), exit {ftx.get('exit')}", "reported"),
            ("loader alone / fastest Small trainer run",
             f"{ld.get('ratio', '?')}x ({ld.get('videos_per_s', '?')} videos/s)", ">= 3x"),
            ("extraction job / encoder", f"{job.get('vs_encoder', '?')} (decode alone "
             f"{(ex.get('decode') or {}).get('vs_encoder', '?')} of the encoder)", ">= 0.9")]
    return ["", "Issue 21's targets:", "", "| measure | this run | target |", "|---|---|---|"] + \
        [f"| {a} | {b} | {c} |" for a, b, c in rows]


def _md(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")[:300]


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="report.json, report.md, logs.tar.gz")
    ap.add_argument("--cpu-dry-run", action="store_true", help="every step on CPU with tiny sizes")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "vimpac_gpu_check"),
                    help="scratch directory (emptied first)")
    ap.add_argument("--wheels", default=os.path.join(REPO, "gpu_wheels"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"whole check (default: {GPU.budget_s:.0f} on GPU, {DRY.budget_s:.0f} dry)")
    ap.add_argument("--original-repo", default=None,
                    help="checkout of github.com/airsplay/vimpac for the bare-step comparison (default: "
                         f"WHEELS/{ORIGINAL_DIR} when it exists; without one the bare step is timed alone)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these steps (install and env always run)")
    ap.add_argument("--commit", type=commit_arg, default=None,
                    help="the commit the working tree is (gpu_check.sh also takes GPU_CHECK_COMMIT); default: "
                         "`git rev-parse HEAD` when this is a git checkout with unchanged tracked files, else "
                         f"{UNKNOWN_COMMIT!r}")
    a = ap.parse_args(argv)
    profile = DRY if a.cpu_dry_run else GPU
    c = Check(profile, a.out, a.work, a.wheels, sys.executable, a.budget_s or profile.budget_s, commit=a.commit,
              original_repo=os.path.abspath(a.original_repo) if a.original_repo else None)
    steps = [("install", step_install, ()), ("env", step_env, ()), ("cuda_tests", step_cuda_tests, ("env",)),
             ("extract", step_extract, ("env",)), ("pretrain", step_pretrain, ("env",)),
             ("bare_step", step_bare_step, ("env",)), ("finetune", step_finetune, ("extract",)),
             ("resume", step_resume, ("env",))]
    for name, fn, needs in steps:
        if a.only and name not in a.only and name not in ("install", "env"):
            continue
        c.step(name, fn, needs=needs)
    c.save()
    s = c.report["summary"]
    print(f"[gpu_check] done in {c.report['elapsed_s']} s: pass {s['pass']}, fail {s['fail']}, skipped {s['skipped']}; "
          f"{os.path.join(c.out, 'report.json')}", flush=True)
    return 0 if not s["fail"] else 1


if __name__ == "__main__":
    sys.exit(main())
