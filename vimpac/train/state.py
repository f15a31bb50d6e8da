"""What a training run carries from one process to the next: counters, data position, RNG streams."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch


@dataclass
class LoopState:
    """Counters of one run, saved in trainer_state.json and restored by --resume."""

    step: int = 0               # optimizer steps done (skipped steps included: they keep the schedule)
    epoch: int = 0              # current epoch
    samples_in_epoch: int = 0   # videos of the epoch already consumed (all ranks): the data position
    skipped_steps: int = 0
    nonfinite_in_a_row: int = 0
    adam_step: int = 0
    stage_starts: list[dict] = field(default_factory=list)  # where each run (stage) started
    task: dict[str, Any] = field(default_factory=dict)      # the task's own state (e.g. best top-1 so far)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, ts: dict[str, Any], where: str) -> "LoopState":
        """From trainer_state.json; a missing or malformed counter is an error naming the file and key."""
        ints = [f.name for f in fields(cls) if f.type == "int"]
        try:
            values = {k: int(ts[k]) for k in ints}
        except KeyError as e:
            raise ValueError(f"{where}: trainer state lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: malformed trainer state ({e})") from None
        task = ts.get("task", {})
        if not isinstance(task, dict):
            raise ValueError(f"{where}: 'task' must be an object, got {type(task).__name__}")
        return cls(**values, stage_starts=list(ts.get("stage_starts", [])), task=dict(task))


def rng_state() -> dict[str, Any]:
    npst = np.random.get_state()
    st = {"torch": torch.get_rng_state().tolist(), "python": _listify(random.getstate()),
          "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state().tolist()
    return st


def _listify(x):
    return [_listify(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    random.setstate(_tuplify(st["python"]))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(st["cuda"], dtype=torch.uint8))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
