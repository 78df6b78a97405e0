"""A run directory: its files, its default name, its status and exit codes, and its model.

`train` writes one (config.json, train.log, metrics.json, checkpoint.pt); `fit-exits` writes one
of the same shape; `grid`, `report`, `evaluate`, `calibrate` and `export` read them. This module
is the one place that knows the layout.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import load_checkpoint
from .errors import TrainingError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
CONFIG = "config.json"
LOG = "train.log"

# metrics.json "status"; "new" is a directory without metrics yet, "stopped" a "running" one that no
# process holds (cut: `--resume` continues it).
NEW, RUNNING, STOPPED, COMPLETED, DIVERGED = "new", "running", "stopped", "completed", "diverged"
FINISHED = (COMPLETED, DIVERGED)


def run_name(variant: str, imbalance: int, seed: int) -> str:
    return f"{variant}-if{imbalance}-seed{seed}"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def planned_epochs(config: dict) -> int | None:
    """The epochs a run's config.json plans. Each command keeps its own in its own block (a fit's
    or rebalance's "config" is its parent's training config)."""
    block = next((config[k] for k in ("rebalance_config", "fit_config", "config") if k in config), None)
    return None if block is None else block["epochs"]


def machines(config: dict, metrics: dict) -> list[tuple[int, str]]:
    """(first epoch, machine) of each stretch of a run on one machine: where it started (its
    config's provenance), then each resume on another machine."""
    current = config.get("provenance", {}).get("device", "?")
    stretches = [(1, current)]
    for resume in metrics.get("resumes", []):
        if resume.get("device", current) != current:
            current = resume["device"]
            stretches.append((resume["epoch"] + 1, current))
    return stretches


@dataclass(frozen=True)
class RunState:
    """Where a `train`, `fit-exits` or `rebalance` run directory stands, from one read of its files."""

    status: str
    done: int  # epochs done
    planned: int | None  # None before config.json exists
    config: dict
    metrics: dict

    def pace(self, last: int = 20) -> tuple[float, str] | None:
        """(median seconds of the last `last` epochs since the run's latest start, the machine they
        ran on), or None before one epoch has run there. The median: one evaluated epoch or one
        slowed by other work beside it does not move it; a run resumed on another machine is paced
        by that machine's epochs only."""
        resumes = self.metrics.get("resumes", [])
        start = resumes[-1]["epoch"] if resumes else 0
        seconds = [e["seconds"] for e in self.metrics.get("epochs", []) if e["epoch"] > start and "seconds" in e]
        if not seconds:
            return None
        return statistics.median(seconds[-last:]), machines(self.config, self.metrics)[-1][1]


def state(run_dir: Path) -> RunState:
    run_dir = Path(run_dir)
    started = (run_dir / METRICS).is_file()
    metrics = read_json(run_dir / METRICS) if started else {}
    config = read_json(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else {}
    status = metrics.get("status", RUNNING) if started else NEW
    if status == RUNNING and not held(run_dir):
        status = STOPPED
    return RunState(
        status=status,
        done=len(metrics.get("epochs", [])),
        planned=planned_epochs(config),
        config=config,
        metrics=metrics,
    )


def status(run_dir: Path) -> str:
    return state(run_dir).status


@contextmanager
def claim(run_dir: Path, wait_s: float = 1.0):
    """Hold `run_dir` for this process while it trains there: a second trainer of the same
    directory is refused (the two would write one checkpoint), and `held` tells a run under way
    from a cut one. An flock on the directory itself: no file to leave behind, and the kernel lets
    go when the process ends, however it ends. `held` takes the lock for an instant, hence the
    short wait before refusing."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(fd, fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                raise TrainingError(
                    f"{run_dir} is being trained by another process (see `python -m training "
                    "status`); wait for it, or stop it (SIGTERM checkpoints it) and --resume"
                )
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)
        if created and not any(run_dir.iterdir()):  # a run that failed before writing leaves no directory
            run_dir.rmdir()


def held(run_dir: Path) -> bool:
    """Whether a process is training in `run_dir` now (holds its `claim`)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        return not _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # releases the shared lock, if it was taken


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).is_file() and (Path(run_dir) / CONFIG).is_file()


def checkpoint_model(path: Path, device="cpu"):
    """(model in eval mode, variant, training config, state) from a checkpoint of `train` or
    `fit-exits` (which keeps the parent's training config and adds a "fit" record)."""
    from .config import TrainConfig
    from .network import build_model
    from .variants import get_variant

    state = load_checkpoint(path, map_location=device)
    if "model" not in state or "config" not in state:
        raise TrainingError(f"{path} is not a training checkpoint of this project")
    config = TrainConfig.from_dict(state["config"])
    variant = get_variant(config.variant)
    fit = state.get("fit", {})
    if fit.get("exit_heads"):  # fit-exits may have replaced the early heads (and moved them)
        variant = variant.with_early_heads(tuple(fit["exit_heads"][:-1]), fit.get("exit_blocks"))
    model = build_model(variant).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, variant, config, state
