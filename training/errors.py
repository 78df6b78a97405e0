"""Known failures: the CLI prints each as one line and exits with its code; anything else is a
bug and keeps its traceback."""

from __future__ import annotations

import signal

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


class Stopped(TrainingError):
    """SIGTERM (loop.stop_requests): the loop finished the epoch under way, checkpointed it and
    stopped; the run stays resumable. Exit code 128 + the signal's number, as a shell reports a
    signalled process."""

    def __init__(self, epoch: int, signum: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after epoch {epoch}, checkpointed: continue with --resume"
        )
        self.epoch = epoch
        self.exit_code = 128 + signum
