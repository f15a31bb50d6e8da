"""Decode videos in worker processes, with a per-video deadline.

Decoders hang or crash on some broken files (decord is known to), so each worker process
decodes one video at a time; a worker that misses its deadline is killed, one that dies is
noticed through its sentinel, and in both cases the video is reported as failed and a
fresh worker takes its place. Decoding thereby overlaps encoding in the parent process.
Each decoded file's fingerprint (size + SHA-256 of its bytes, `checksum.file_fingerprint`) is
taken in the worker too, right after decoding, while the file is in the page cache.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Iterator

import numpy as np

from .checksum import file_fingerprint


@dataclass
class DecodeResult:
    key: Any
    frames: np.ndarray | None      # (T, H, W, 3) uint8 on success
    timestamps: np.ndarray | None  # (T,) float64 on success
    stage: str = "ok"              # ok | decode | timeout | crash
    reason: str = ""
    fingerprint: str = ""          # "BYTES:SHA256" of the file on success


DEFAULT_READER = "video2token.video:read_video"


def _import_reader(spec: str):
    """"module:function" -> the function (lets tests inject a decoder that hangs or crashes)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(conn, read_kwargs: dict, reader: str) -> None:
    # One decoder thread per worker: the parent's encoder wants the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    read_video = _import_reader(reader)  # imported here: the worker is a fresh (spawned) process
    conn.send("ready")  # deadlines start only once imports are done (slow on a loaded machine)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        key, path = task
        r = _decode(read_video, path, read_kwargs, key)
        conn.send((key, r.frames, r.timestamps, r.stage, r.reason, r.fingerprint))


def _decode(read_video, path: str, read_kwargs: dict, key: Any) -> DecodeResult:
    try:
        frames, ts = read_video(path, **read_kwargs)
        return DecodeResult(key, frames, ts, fingerprint=file_fingerprint(path))
    except Exception as e:  # reported per video; the job goes on
        return DecodeResult(key, None, None, "decode", f"{type(e).__name__}: {e}")


def read_inline(path: str, read_kwargs: dict, key: Any = None, reader: str = DEFAULT_READER) -> DecodeResult:
    return _decode(_import_reader(reader), path, read_kwargs, key)


class DecodePool:
    """`for result in pool.imap(tasks)`: results in completion order, failures included."""

    def __init__(self, num_workers: int, read_kwargs: dict, timeout: float, reader: str = DEFAULT_READER):
        if num_workers < 1:
            raise ValueError("DecodePool needs at least one worker (use read_inline for none)")
        self.reader = reader
        self.read_kwargs = dict(read_kwargs)
        self.timeout = float(timeout)
        self._ctx = mp.get_context("spawn")
        self._workers = [self._spawn() for _ in range(num_workers)]
        for w in self._workers:
            self._await_ready(w)

    def _spawn(self):
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker_main, args=(child, self.read_kwargs, self.reader), daemon=True)
        p.start()
        child.close()
        return {"proc": p, "conn": parent, "task": None, "since": 0.0}

    @staticmethod
    def _await_ready(w, timeout: float = 300.0) -> None:
        if not w["conn"].poll(timeout) or w["conn"].recv() != "ready":
            raise RuntimeError(f"decode worker did not start within {timeout:g} s (exit code {w['proc'].exitcode})")

    def _replace(self, i: int) -> None:
        w = self._workers[i]
        if w["proc"].is_alive():
            w["proc"].kill()
        w["proc"].join(timeout=5)
        w["conn"].close()
        self._workers[i] = self._spawn()
        self._await_ready(self._workers[i])

    def _crashed(self, i: int, key: Any) -> DecodeResult:
        w = self._workers[i]
        w["proc"].join(timeout=5)  # reap it, so the exit code (e.g. -11 for SIGSEGV) is known
        code = w["proc"].exitcode
        w["task"] = None
        self._replace(i)
        return DecodeResult(key, None, None, "crash", f"decoder process died (exit code {code})")

    def imap(self, tasks: Iterator[tuple[Any, str]]) -> Iterator[DecodeResult]:
        tasks = iter(tasks)
        exhausted = False
        while True:
            for w in self._workers:  # keep every worker busy
                if w["task"] is None and not exhausted:
                    nxt = next(tasks, None)
                    if nxt is None:
                        exhausted = True
                        break
                    w["conn"].send(nxt)
                    w["task"], w["since"] = nxt, time.monotonic()
            busy = [i for i, w in enumerate(self._workers) if w["task"] is not None]
            if not busy:
                return
            now = time.monotonic()
            wait_for = max(0.0, min(self._workers[i]["since"] + self.timeout - now for i in busy))
            handles = {}
            for i in busy:
                handles[self._workers[i]["conn"]] = i
                handles[self._workers[i]["proc"].sentinel] = i
            ready = wait(list(handles), timeout=wait_for + 0.01)
            done = set()
            for h in ready:
                i = handles[h]
                if i in done:
                    continue
                w = self._workers[i]
                key, path = w["task"]
                if h is w["conn"] or w["conn"].poll():
                    try:
                        k, frames, ts, stage, reason, fingerprint = w["conn"].recv()
                    except (EOFError, OSError):
                        done.add(i)
                        yield self._crashed(i, key)
                        continue
                    w["task"] = None
                    done.add(i)
                    yield DecodeResult(k, frames, ts, stage, reason, fingerprint)
                else:  # sentinel fired without a message: the worker died mid-video
                    done.add(i)
                    yield self._crashed(i, key)
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if i not in done and w["task"] is not None and now - w["since"] > self.timeout:
                    key, path = w["task"]
                    w["task"] = None
                    self._replace(i)
                    yield DecodeResult(key, None, None, "timeout",
                                       f"decoding took longer than {self.timeout:g} s; worker killed")

    def close(self) -> None:
        for w in self._workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w["proc"].join(timeout=2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(timeout=2)
            w["conn"].close()

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
