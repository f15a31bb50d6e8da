"""What the training entry points share around their run: errors as one line on rank 0, the process group closed."""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from vimpac.data.stores import DataError
from vimpac.model.checkpoint import CheckpointError
from vimpac.train.errors import TrainError
from vimpac.train.optim import ScheduleError
from vimpac.train.runtime import EngineError, Launch

#: errors whose message says what to do: printed as `error: ...` (exit 2), no traceback
RUN_ERRORS = (TrainError, EngineError, ScheduleError, CheckpointError, DataError)


def run_guarded(run: Callable[[], tuple[dict[str, Any], bool]]) -> tuple[dict[str, Any], bool] | None:
    """run() -> (summary, whether this process prints it); None after a run error (printed on rank 0)."""
    try:
        return run()
    except RUN_ERRORS as e:
        if Launch.from_environ().is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
