"""`status`: where run directories stand: new, running (also a cut run that `--resume` continues),
completed or diverged, with the epochs done of those planned. One tab-separated line each, the
status first, so a script reads it with `cut -f1` (scripts/cpu_study.sh, scripts/ship_default.sh)."""
from __future__ import annotations

from pathlib import Path

from .. import rundir


def add_arguments(parser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="a directory of `train`, `fit-exits` or `rebalance` (need not exist yet)")


def run(args) -> int:
    for run_dir in args.run_dirs:
        done, planned = rundir.progress(run_dir)
        print(f"{rundir.status(run_dir)}\t{done}/{'?' if planned is None else planned}\t{run_dir}")
    return 0
