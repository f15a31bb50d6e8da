"""What the SHA-256 check buys: 64 bytes of 0xFF at every 64-byte position of a shard, read with and without it.

    python benchmarks/store_corruption.py [--videos 12] [--timeout 5]

For each position a forked child opens the damaged store (`TokenStore(path, verify=...)`) and
reads every video; the parent counts the outcomes: `error` (a StoreError), `same` (the damage
hit bytes nobody reads), `WRONG` (codes, labels or timestamps differ from the clean store, read
without a word), `hang` (killed after --timeout s), `other` (any other exception).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from store_factory import make_store  # noqa: E402

from video2token.store import StoreError, TokenStore, shard_name  # noqa: E402

OUTCOMES = {0: "same", 3: "error", 4: "WRONG", 5: "other"}


def content(store: TokenStore) -> list:
    return [(store.read_at(k)[0].tobytes(), store.read_at(k)[1], store.timestamps(v).tobytes())
            for k, v in enumerate(store.video_ids)]


def outcome(path: str, verify: bool, reference: list, timeout: float) -> str:
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if content(TokenStore(path, verify=verify)) == reference else 4)
        except StoreError:
            os._exit(3)
        except BaseException:
            os._exit(5)
    t0 = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return OUTCOMES.get(os.waitstatus_to_exitcode(status), "other")
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang"
        time.sleep(0.005)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        clean = make_store(os.path.join(d, "clean"), num_videos=a.videos, frames=(20, 30))
        reference = content(TokenStore(clean))
        work = os.path.join(d, "work")
        shutil.copytree(clean, work)
        shard = os.path.join(work, shard_name(0, 1))
        original = open(os.path.join(clean, shard_name(0, 1)), "rb").read()
        positions = range(0, len(original), 64)
        print(f"shard of {a.videos} videos, {len(original)} bytes: 64 bytes of 0xFF at {len(positions)} positions")
        for verify in (True, False):
            counts = dict.fromkeys(["error", "same", "WRONG", "hang", "other"], 0)
            for off in positions:
                damaged = bytearray(original)
                damaged[off:off + 64] = b"\xff" * len(damaged[off:off + 64])
                with open(shard, "wb") as f:
                    f.write(damaged)
                counts[outcome(work, verify, reference, a.timeout)] += 1
            print(f"verify={verify}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
