"""`slim`: completed runs' checkpoints down to their weights (the optimizer's state resumes nothing
once a run is finished), about half their size; for keeping or sharing a finished run."""

from __future__ import annotations

from pathlib import Path

from .. import rundir
from ..checkpoint import WEIGHTS_ONLY, load_checkpoint, save_checkpoint, weights_only
from ..errors import TrainingError


def add_arguments(parser) -> None:
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run directories of train, fit-exits or rebalance, each completed"
    )


def run(args) -> int:
    for run_dir in args.runs:  # every one checked before any is rewritten
        status = rundir.status(run_dir)
        if status != rundir.COMPLETED:
            raise TrainingError(f"{run_dir} is {status}, not completed: its checkpoint still resumes it")
        if not (run_dir / rundir.CHECKPOINT).is_file():
            raise TrainingError(f"{run_dir} holds no {rundir.CHECKPOINT}")
    for run_dir in args.runs:
        path = run_dir / rundir.CHECKPOINT
        before = path.stat().st_size
        state = load_checkpoint(path)
        if not state.get(WEIGHTS_ONLY):
            save_checkpoint(weights_only(state), path)
        print(f"{run_dir}: {before / 1e6:.2f} MB -> {path.stat().st_size / 1e6:.2f} MB")
    return 0
