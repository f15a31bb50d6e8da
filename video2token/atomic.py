"""Crash-safe file writes: write to a temporary name, fsync, rename over the final name.

A reader therefore sees either the previous complete file or the new complete file, never
a half-written one, whatever moment a process is killed (kill -9 included). Temporary
names are `.<final name>.<8 random chars>.tmp` (and `<final dir>.old.tmp` during a directory
swap), so cleanup code recognises its own leftovers and nothing else. Every file and folder
these helpers put in place gets the mode a plain open() / mkdir() gives under the user's umask
(0o666 / 0o777 & ~umask), whatever wrote it: mkstemp / mkdtemp alone make 0600 / 0700, and some
writers (safetensors' save_file) make 0600 files too.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterable, Iterator

TMP_SUFFIX = ".tmp"
# what atomic_path / atomic_dir leave behind after a kill: ".<final>.<tempfile's 8 chars>.tmp", "<final>.old.tmp"
_LEFTOVER_RE = re.compile(r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp$|^(?P<old>.+)\.old\.tmp$")


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str, *, directory: bool = False) -> None:
    """Give `path` the mode a plain open() / mkdir() would have (mkstemp and mkdtemp ignore the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def follow_umask_tree(top: str) -> None:
    """follow_umask for `top` and every folder and file under it (symbolic links are left alone:
    chmod would change their targets)."""
    umask = current_umask()
    os.chmod(top, 0o777 & ~umask)
    for root, dirs, files in os.walk(top):
        for names, mode in ((dirs, 0o777 & ~umask), (files, 0o666 & ~umask)):
            for p in (os.path.join(root, n) for n in names):
                if not os.path.islink(p):
                    os.chmod(p, mode)


def fsync_dir(path: str) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path next to `final_path`; on success fsync it and rename it into place.

    On an exception the temporary file is removed and `final_path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(final_path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(final_path) + ".", suffix=TMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        yield tmp
        follow_umask(tmp)
        fsync_file(tmp)
        os.replace(tmp, final_path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(final_dir: str) -> Iterator[str]:
    """Yield a temporary directory next to `final_dir`; on success fsync its files and swap it in.

    An existing `final_dir` is replaced: it is first renamed to `<final>.old.tmp`, the new
    one renamed into place, then the old one deleted, so a kill at any moment leaves either
    the old or the new directory under the final name (plus `.tmp` leftovers to clean).
    Everything inside gets the umask's modes (follow_umask_tree) before the swap.
    """
    parent = os.path.dirname(os.path.abspath(final_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(final_dir) + ".", suffix=TMP_SUFFIX, dir=parent)
    try:
        yield tmp
        follow_umask_tree(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_file(os.path.join(root, name))
            fsync_dir(root)
        old = None
        if os.path.exists(final_dir):
            old = final_dir.rstrip("/") + ".old" + TMP_SUFFIX
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_dir(final_dir: str) -> bool:
    """After a kill inside `atomic_dir`'s swap, put the previous directory back under its name.

    Returns True when something was recovered. Call before reading a directory that is
    written with `atomic_dir` (checkpoints).
    """
    old = final_dir.rstrip("/") + ".old" + TMP_SUFFIX
    if not os.path.exists(final_dir) and os.path.isdir(old):
        os.replace(old, final_dir)
        fsync_dir(os.path.dirname(os.path.abspath(final_dir)) or ".")
        return True
    return False


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_leftover(name: str, finals: Iterable[str] | None = None) -> bool:
    """Whether `name` is a temporary that atomic_path / atomic_dir made (for one of `finals`, when given)."""
    m = _LEFTOVER_RE.match(name)
    if m is None:
        return False
    return finals is None or (m.group("final") or m.group("old")) in set(finals)


def remove_tmp_leftovers(directory: str, finals: Iterable[str] | None = None) -> list[str]:
    """Delete what a killed writer left in `directory`; return what was removed.

    Only this module's temporary names are touched (`.<final>.<8 chars>.tmp`, `<final>.old.tmp`),
    and with `finals` only those of these final names: a user's own `*.tmp` files stay.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    finals = None if finals is None else set(finals)
    for name in os.listdir(directory):
        if is_leftover(name, finals):
            p = os.path.join(directory, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            removed.append(p)
    return removed
