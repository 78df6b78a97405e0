"""The epoch loop of `train` and `fit-exits`: run directory, resume, divergence, checkpoints,
status, log. Each command supplies a `Job` (what one epoch does, how it is evaluated, what is
saved); everything else happens here, once.

A run directory (rundir.py) holds config.json (written when the run starts), train.log (one line
per epoch), metrics.json (status "running" / "completed" / "diverged", every epoch's record, the
final evaluation) and checkpoint.pt (atomically, every `checkpoint_every` epochs and at the end).
SIGTERM (`kill`, a container's stop) ends a run at the end of the epoch under way, with a checkpoint
of that epoch (a second SIGTERM ends it at once), so that a stopped run loses no finished epoch.
Ctrl-C keeps stopping at once: it reaches DataLoader workers too, which then die mid-epoch.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from . import rundir
from .checkpoint import WEIGHTS_ONLY, load_checkpoint, save_checkpoint, write_json
from .errors import Diverged, Stopped, TrainingError
from .evaluation import EarlyExitMetrics


class LoopConfig(Protocol):
    epochs: int
    checkpoint_every: int
    eval_every: int  # epochs between evaluations; the last one always


class Job(Protocol):
    kind: str  # metrics.json "kind": "train" or "fit-exits"
    out: Path
    config: LoopConfig  # TrainConfig or FitConfig
    history: list[dict]  # one record per finished epoch (restored on resume)
    start_epoch: int

    def run_epoch(self, epoch: int) -> dict:
        """One pass over the training data (0-based epoch); raises Diverged on a non-finite loss."""

    def evaluate(self, final: bool) -> EarlyExitMetrics:
        """Test-set metrics after an evaluated epoch; `final` after the last one."""

    def check(self, epoch: int, test: EarlyExitMetrics) -> None:
        """Raise Diverged when the evaluation shows the run has failed."""

    def notes(self) -> list[str]:
        """Lines for the log besides the epoch's (each said once)."""

    def epoch_line(self, record: dict) -> str:
        """An epoch's log line from its record."""

    def config_record(self) -> dict:
        """config.json of a new run."""

    def metrics_header(self) -> dict:
        """metrics.json's fields besides kind, status, epochs and final."""

    def state(self, epoch: int) -> dict:
        """The checkpoint after `epoch` epochs."""

    def restore(self, state: dict) -> None:
        """Load a checkpoint (TrainingError when it belongs to another run); sets history and
        start_epoch."""


def config_diff(saved: dict, given: dict) -> list[str]:
    """'field: run has X, flags give Y' for each field that differs (resume checks)."""
    return [f"{k}: run has {v!r}, flags give {given.get(k)!r}" for k, v in saved.items() if v != given.get(k)]


def require_same_config(saved: dict, given: dict, out: Path) -> None:
    diffs = config_diff(saved, given)
    if diffs:
        raise TrainingError(f"--resume with a different config than {out}: " + "; ".join(diffs))


def prepare(job: Job, resume: bool) -> None:
    """Start a new run directory, or restore the checkpoint of the run being resumed."""
    out = job.out
    ckpt = out / rundir.CHECKPOINT
    if ckpt.exists():
        if not resume:
            raise TrainingError(
                f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out"
            )
        state = load_checkpoint(ckpt)
        if state.get(WEIGHTS_ONLY):
            raise TrainingError(
                f"{out} holds a finished run's weights only (`slim`): nothing to resume; "
                "evaluate, fit or export it, or start a new run in another --out"
            )
        job.restore(state)
        # Epochs after the checkpoint will run again: keep the log to what the checkpoint holds.
        (out / rundir.LOG).write_text(
            "".join(job.epoch_line(r) + "\n" for r in job.history) + f"# resumed from epoch {job.start_epoch}\n"
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / rundir.LOG).unlink(missing_ok=True)
    write_json(job.config_record(), out / rundir.CONFIG)


def metrics_document(job: Job, status: str, final: EarlyExitMetrics | None = None, **extra) -> dict:
    return {
        "kind": job.kind,
        **job.metrics_header(),
        "status": status,
        "epochs": job.history,
        "final": None if final is None else final.to_dict(),
        **extra,
    }


@contextmanager
def stop_requests():
    """A list that receives the signal number of the first SIGTERM while the block runs; a second
    SIGTERM takes its usual effect at once. Outside the main thread (where no handler can be
    installed) the list stays empty."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_signal(signum, frame) -> None:
        if requested:  # the second: as if the first had never been caught
            signal.signal(signum, previous)
            signal.raise_signal(signum)
            return
        requested.append(signum)
        print(
            "SIGTERM: stopping after this epoch, with a checkpoint (send it again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, on_signal)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(job: Job, emit=print) -> EarlyExitMetrics:
    """Epochs start_epoch..epochs-1; returns the final evaluation. On divergence metrics.json says
    `diverged` with the epoch and reason, and Diverged propagates (exit code 3); on a stop request
    (stop_requests) Stopped propagates after the epoch's checkpoint."""
    out = job.out
    final = None
    with (out / rundir.LOG).open("a") as log_file, stop_requests() as stop:

        def say(line: str) -> None:
            emit(line)
            log_file.write(line + "\n")
            log_file.flush()

        epochs, every = job.config.epochs, job.config.checkpoint_every
        for epoch in range(job.start_epoch, epochs):
            t0 = time.perf_counter()
            last = epoch + 1 == epochs
            test = None  # an epoch between evaluations records its training statistics only
            try:
                stats = job.run_epoch(epoch)
                if last or (epoch + 1) % job.config.eval_every == 0:
                    test = job.evaluate(final=last)
                    job.check(epoch, test)
            except Diverged as exc:
                say(f"DIVERGED at epoch {exc.epoch}: {exc.reason}")
                write_json(
                    metrics_document(job, rundir.DIVERGED, diverged_at=exc.epoch, reason=exc.reason),
                    out / rundir.METRICS,
                    compact=True,
                )
                raise
            record = {
                "epoch": epoch + 1,
                "seconds": time.perf_counter() - t0,
                **stats,
                **(test.summary() if test is not None else {}),
            }
            job.history.append(record)
            for note in job.notes():
                say(note)
            say(job.epoch_line(record))
            # Read once: a SIGTERM that lands after this line waits for the next epoch's end, so a
            # run never stops at an epoch it did not checkpoint.
            stopping = bool(stop) and not last
            if last or (epoch + 1) % every == 0 or stopping:
                save_checkpoint(job.state(epoch + 1), out / rundir.CHECKPOINT)
            write_json(
                metrics_document(job, rundir.COMPLETED if last else rundir.RUNNING, final=test if last else None),
                out / rundir.METRICS,
                compact=True,
            )
            final = test if last else None
            if stopping:
                raise Stopped(epoch + 1, stop[0])
    return final if final is not None else job.evaluate(final=True)
