"""One writer per token store (per shard): OS file locks held for the whole extraction job.

Locks are `flock` locks on small files inside the store; the kernel drops them when the
process ends, kill -9 included, so there is never a stale lock to clean up by hand.

    STORE/.setup.lock                  exclusive for milliseconds: checking / writing meta.json,
                                       taking the locks below, merging errors.jsonl
    STORE/.lock                        shared by every writer of the store for its whole job;
                                       exclusive for a job that replaces the store (--overwrite
                                       with other settings or another shard count)
    STORE/.shard-00001-of-00004.lock   exclusive for the job writing that shard; it holds the
                                       holder's pid, host and start time for error messages

So a second job on the same shard, or a job that would replace a store others are writing,
stops at once with an error naming the holder; jobs of different shards run side by side.
Lock files are never deleted (deleting a held lock file would let a second writer in).
On NFS, flock is carried by the NFS lock manager (Linux >= 2.6.12); every machine must mount
the store with locking enabled (no `nolock`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from typing import Iterator

SETUP_LOCK = ".setup.lock"
STORE_LOCK = ".lock"
_SHARD_LOCK_RE = re.compile(r"^\.shard-(\d{5})-of-(\d{5})\.lock$")
LOCK_NAME_RE = re.compile(r"^\.(setup\.)?lock$|^\.shard-\d{5}-of-\d{5}\.lock$")


class StoreLockedError(RuntimeError):
    """Another job holds the lock this job needs."""


def shard_lock_name(shard_id: int, num_shards: int) -> str:
    return f".shard-{shard_id:05d}-of-{num_shards:05d}.lock"


def _open(path: str) -> int:
    # 0o666 & ~umask, like any file; O_CLOEXEC (Python's default): decode workers never inherit it
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise StoreLockedError(f"cannot open the lock file {path}: {e.strerror} (a writer needs write access to "
                               f"the store directory and its lock files)") from None


def _try_flock(fd: int, mode: int, path: str) -> bool:
    """Take the lock without waiting: True when taken, False when another holds it."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise StoreLockedError(f"cannot lock {path}: {e.strerror}; the store's filesystem must support file "
                                   f"locks (on NFS, mount it without `nolock`)") from None
        raise


def _holder(path: str) -> str:
    """The holder a lock file names ("pid 123 on host h, shard 0/1, since ..."), or a neutral phrase."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.loads(f.read() or "{}")
        return (f"pid {info['pid']} on host {info['host']} (shard {info['shard']}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (holder unknown)"


def _write_holder(fd: int, shard: str) -> None:
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "shard": shard, "started": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)


def held_shard_locks(store_dir: str, *, except_name: str | None = None) -> list[tuple[str, str]]:
    """[(lock name, holder)] of the shard locks some other job holds right now (probed without waiting)."""
    out = []
    for name in sorted(os.listdir(store_dir)):
        if not _SHARD_LOCK_RE.match(name) or name == except_name:
            continue
        path = os.path.join(store_dir, name)
        fd = _open(path)
        try:
            if _try_flock(fd, fcntl.LOCK_EX, path):
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                out.append((name, _holder(path)))
        finally:
            os.close(fd)
    return out


def shard_counts_in_use(store_dir: str, *, except_name: str | None = None) -> set[int]:
    """Shard counts of the jobs writing the store right now."""
    return {int(_SHARD_LOCK_RE.match(n).group(2)) for n, _ in held_shard_locks(store_dir, except_name=except_name)}


@contextlib.contextmanager
def setup_lock(store_dir: str, timeout: float = 60.0) -> Iterator[None]:
    """Exclusive for a moment: serialises the set-up and the end of the writers of one store."""
    path = os.path.join(store_dir, SETUP_LOCK)
    fd = _open(path)
    try:
        deadline = time.monotonic() + timeout
        while not _try_flock(fd, fcntl.LOCK_EX, path):
            if time.monotonic() > deadline:
                raise StoreLockedError(f"{store_dir}: could not take {SETUP_LOCK} within {timeout:.0f} s (another "
                                       f"extraction job is starting or finishing on this store and seems stuck)")
            time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class ShardLock:
    """The locks of one extraction job on one shard (take them inside `setup_lock`); `release()` at the end."""

    def __init__(self, store_dir: str, shard_id: int, num_shards: int, *, replace_store: bool = False) -> None:
        self.store_dir = store_dir
        self.name = shard_lock_name(shard_id, num_shards)
        self._fds: list[int] = []
        try:
            self._take(store_dir, f"{shard_id}/{num_shards}", replace_store)
        except BaseException:
            self.release()
            raise

    def _take(self, store_dir: str, shard: str, replace_store: bool) -> None:
        path = os.path.join(store_dir, self.name)
        fd = _open(path)
        self._fds.append(fd)
        if not _try_flock(fd, fcntl.LOCK_EX, path):
            raise StoreLockedError(f"{store_dir}: shard {shard} is being written by another extraction job: "
                                   f"{_holder(path)}. Wait for it to finish (or stop it), then rerun; two jobs "
                                   f"writing one shard would lose videos")
        _write_holder(fd, shard)
        store_lock = os.path.join(store_dir, STORE_LOCK)
        fd = _open(store_lock)
        self._fds.append(fd)
        if replace_store:
            if not _try_flock(fd, fcntl.LOCK_EX, store_lock):
                others = held_shard_locks(store_dir, except_name=self.name)
                who = "; ".join(f"{n[1:-5]}: {h}" for n, h in others) or "another process"
                raise StoreLockedError(f"{store_dir}: cannot replace this store while other jobs write it ({who})")
            fcntl.flock(fd, fcntl.LOCK_SH)  # under setup_lock nobody can slip in between
        elif not _try_flock(fd, fcntl.LOCK_SH, store_lock):  # cannot happen under setup_lock; be clear anyway
            raise StoreLockedError(f"{store_dir}: another job is replacing this store")

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock
        self._fds = []

    @property
    def held(self) -> bool:
        return bool(self._fds)
