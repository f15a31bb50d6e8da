"""What the training entry points share around their run: the launch read once at the command line (the
launcher's variables, or SLURM's with --slurm-multinode-dist), notes and errors as lines on rank 0, the
process group closed."""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

import torch

from vimpac.data.stores import DataError
from vimpac.model.checkpoint import CheckpointError
from vimpac.train.errors import TrainError
from vimpac.train.optim import ScheduleError
from vimpac.train.runtime import EngineError, Launch, scontrol_hostnames, slurm_launch

#: errors whose message says what to do: printed as `error: ...` (exit 2), no traceback
RUN_ERRORS = (TrainError, EngineError, ScheduleError, CheckpointError, DataError)


def launch_for(*, slurm: bool, environ: Mapping[str, str],
               hostnames: Callable[[str], Sequence[str]] | None = None) -> Launch | None:
    """This process's launch (`slurm`: from srun's variables, `hostnames` expanding the node list, by default
    `scontrol show hostnames`); None after an error, printed."""
    try:
        return slurm_launch(environ, hostnames or scontrol_hostnames) if slurm else Launch.from_environ(environ)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return None


def say(launch: Launch, lines: Sequence[str]) -> None:
    """Print on rank 0 only."""
    if launch.is_main:
        for line in lines:
            print(line, flush=True)


def run_guarded(run: Callable[[], tuple[dict[str, Any], bool]],
                launch: Launch | None = None) -> tuple[dict[str, Any], bool] | None:
    """run() -> (summary, whether this process prints it); None after a run error (printed on rank 0)."""
    try:
        return run()
    except RUN_ERRORS as e:
        if (launch or Launch.from_environ()).is_main:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
