"""A read_video stand-in for the extraction tests: hangs or crashes on request, by file name.

Used through ExtractConfig(reader="tests.faulty_decoder:read_video"); decode workers are
spawned processes, so the fault has to live in an importable module, not a monkeypatch.
"""
import os
import signal
import time

from video2token.video import read_video as _real


def read_video(path, *args, **kwargs):
    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(3600)  # a decoder stuck forever
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder dying in native code
    return _real(path, *args, **kwargs)
