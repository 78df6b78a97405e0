"""Known failures: the CLI prints each as one line and exits with its code; anything else is a
bug and keeps its traceback."""
from __future__ import annotations

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3  # `train`/`fit-exits`: a diverged run is a result


class TrainingError(Exception):
    """Missing or malformed data, a bad or mismatched checkpoint, an unknown name, a run directory
    in the way, an impossible request."""

    exit_code = EXIT_USAGE


class Diverged(TrainingError):
    """Loss not finite, or predictions collapsed to one class: the run ends as `diverged`."""

    exit_code = EXIT_DIVERGED

    def __init__(self, epoch: int, reason: str):
        super().__init__(f"training diverged at epoch {epoch}: {reason}")
        self.epoch = epoch
        self.reason = reason
