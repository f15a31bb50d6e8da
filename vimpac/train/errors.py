"""The error a training run stops with: the message says why and what to do (entry points print it, exit 2)."""


class TrainError(RuntimeError):
    """The run cannot start or continue."""
