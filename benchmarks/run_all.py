"""`make bench`: run every benchmark script in turn and print its table.

Each script is also runnable alone (see benchmarks/README.md for what each measures and
the numbers we recorded). Run on an otherwise idle machine: the scripts time CPU work.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = [
    ("video decoding", ["decoders.py"]),
    ("DALL-E encoder", ["tokenizer_encode.py"]),
    ("extraction job", ["extract.py"]),
    ("VQ-VAE tokenizer", ["tokenizer.py"]),
    ("model train step", ["train_step.py", "--config", "small", "--batch-size", "4", "--clip-len", "5", "--grid", "16"]),
    ("pre-training throughput", ["pretrain_throughput.py"]),
    ("frames for training (stored vs online decode)", ["frames_loader.py"]),
]


def main() -> int:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    only = set(sys.argv[1:])
    failed = []
    for title, cmd in BENCHMARKS:
        if only and cmd[0].removesuffix(".py") not in only:
            continue
        if not os.path.exists(os.path.join(HERE, cmd[0])):
            print(f"\n### {title}: {cmd[0]} missing, skipped")
            continue
        print(f"\n### {title}: python benchmarks/{' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, os.path.join(HERE, cmd[0]), *cmd[1:]], env=env)
        print(f"({time.monotonic() - t0:.0f} s, exit {r.returncode})", flush=True)
        if r.returncode:
            failed.append(cmd[0])
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
