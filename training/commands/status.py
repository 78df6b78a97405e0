"""`status`: where run directories stand: new, running (a process trains it now: rundir.claim),
stopped (cut; `--resume` continues it), completed or diverged, with the epochs done of those
planned and, for a run not finished, the time left at the median pace of its latest start's epochs
and the machine that pace was measured on (a run cut on a GPU is paced by the GPU until it resumes
here). One tab-separated line each, the status first, so a script reads it with `cut -f1`
(study/scripts/cpu_study.sh, scripts/ship_default.sh)."""

from __future__ import annotations

from pathlib import Path

from .. import rundir


def add_arguments(parser) -> None:
    what = "a directory of `train`, `fit-exits` or `rebalance` (need not exist yet)"
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help=what)


def run(args) -> int:
    for run_dir in args.run_dirs:
        run = rundir.state(run_dir)
        line = f"{run.status}\t{run.done}/{'?' if run.planned is None else run.planned}\t{run_dir}"
        pace = run.pace() if run.status not in rundir.FINISHED and run.planned else None
        if pace is not None:
            left = _duration(pace[0] * (run.planned - run.done))
            print(f"{line}\t~{left} left at {pace[0]:.1f} s an epoch ({pace[1]})")
        else:
            print(line)
    return 0


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
