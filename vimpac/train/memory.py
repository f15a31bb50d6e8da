"""Give freed heap memory back to the OS on Linux/glibc CPU training.

Training steps allocate and free many 0.1-10 MB tensors of varying sizes (the number of
masked positions changes every step). glibc's malloc raises its mmap threshold after such
frees, so later ones come from the heap, and the heap's free space is rarely returned: the
resident size of a tiny pre-training run grew by ~25 MB per step (1.5 GB after one epoch,
5.2 GB after 20) without any live tensor leaking. `malloc_trim(0)` hands the free pages back:
every 16 steps it kept that run at 1.7 GB after 3 epochs and 1.8 GB after 6, with step times
within the run-to-run noise (~5%).
Fixing the threshold instead (MALLOC_MMAP_THRESHOLD_) also stops the growth but made the steps
1.8x slower (every large tensor becomes a fresh, zeroed mapping).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only; musl and others lack it
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """Call `step()` once per optimizer step; trims the heap every `every` steps (0: never)."""

    def __init__(self, every: int = 16) -> None:
        self.every = every
        self.count = 0
        self.trim = _malloc_trim() if every > 0 else None

    def step(self) -> None:
        self.count += 1
        if self.trim is not None and self.count % self.every == 0:
            self.trim(0)
