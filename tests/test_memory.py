"""HeapTrimmer: hands freed heap pages back every N optimizer steps (glibc), never otherwise."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vimpac.train.memory import HeapTrimmer, _malloc_trim  # noqa: E402


def test_trims_every_n_steps_and_never_when_off():
    calls = []
    t = HeapTrimmer(every=3)
    t.trim = calls.append  # count calls instead of trimming
    for _ in range(10):
        t.step()
    assert calls == [0, 0, 0]  # steps 3, 6, 9
    off = HeapTrimmer(every=0)
    assert off.trim is None
    off.step()


def test_glibc_trim_is_found_and_callable_on_linux():
    trim = _malloc_trim()
    if sys.platform.startswith("linux") and trim is not None:
        assert trim(0) in (0, 1)  # 1: memory was released
