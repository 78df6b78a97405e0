"""`grid`: the study's runs (SPEC §6, or a part), several at a time, one progress view.

Each run is a `python -m training train` process writing its own run directory (metrics.json is
its results file). Completed runs are skipped; runs with a checkpoint are resumed on the data path
and speed options they were started with (a run's config must not change midway). On one GPU,
several concurrent runs raise throughput, since one ResNet-32 run leaves it mostly idle.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from training import rundir
from training.commands.common import DEFAULT_DATA_DIR, positive_int
from training.config import TrainConfig
from training.errors import EXIT_DIVERGED, EXIT_OK
from training.variants import get_variant

from ..runs import control_runs, study_runs, train_argv


def add_arguments(parser) -> None:
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="variant names (default: the whole study; name erm for the controls)",
    )
    parser.add_argument(
        "--imbalance",
        nargs="+",
        type=int,
        choices=(100, 50, 10, 1),
        default=None,
        help="imbalance factors (default: each study run's own)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--parallel", type=positive_int, default=4, help="runs at a time")
    parser.add_argument("--out", type=Path, default=Path("results/runs"), help="folder of run directories")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="INDEX/COUNT",
        help="only the runs of shard INDEX (0-based) of COUNT: run i of the plan belongs to "
        "shard i mod COUNT (a Kubernetes Indexed Job passes $(JOB_COMPLETION_INDEX))",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "train_args",
        nargs="*",
        metavar="-- TRAIN-FLAG",
        help="flags passed on to every `train` (after --), e.g. -- --data-path device --amp",
    )


# `train` flags that choose the data path and speed options, with how many values each takes.
PATH_FLAGS = {
    "--data-path": 1,
    "--amp": 0,
    "--no-amp": 0,
    "--channels-last": 0,
    "--no-channels-last": 0,
    "--compile": 1,
}


def shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT, e.g. 3/19, got {text!r}") from None
    if not (count > 0 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"expected 0 <= INDEX < COUNT, got {text!r}")
    return index, count


def planned_runs(args) -> list[tuple[str, int, int]]:
    variants = [get_variant(v).name for v in args.variants] if args.variants else None
    runs = []
    # Controls (erm) only when named: they measure the dataset copy, not the report's table.
    for name, imbalance in study_runs() + (control_runs() if variants else []):
        if variants is not None and name not in variants:
            continue
        for f in args.imbalance or [imbalance]:
            runs += [(name, f, seed) for seed in args.seeds]
    runs = list(dict.fromkeys(runs))
    if args.shard is not None:
        index, count = args.shard
        runs = runs[index::count]
    return runs


def without_path_flags(flags: list[str]) -> list[str]:
    kept, i = [], 0
    while i < len(flags):
        name = flags[i].split("=", 1)[0]
        if name in PATH_FLAGS:
            i += 1 + (PATH_FLAGS[name] if "=" not in flags[i] else 0)
            continue
        kept.append(flags[i])
        i += 1
    return kept


def resume_flags(run_dir: Path, train_args: list[str]) -> list[str]:
    """train_args, with the path flags replaced by those the run in run_dir was started with."""
    saved = TrainConfig.from_dict(rundir.read_json(run_dir / rundir.CONFIG)["config"])
    return [*without_path_flags(train_args), *saved.path_flags(), "--resume"]


def run(args) -> int:
    jobs = []
    for name, imbalance, seed in planned_runs(args):
        run_dir = args.out / rundir.run_name(name, imbalance, seed)
        if rundir.status(run_dir) in rundir.FINISHED:
            continue
        cmd = train_argv(name, imbalance, seed, run_dir, args.device, args.data_dir)
        resuming = rundir.has_checkpoint(run_dir)
        cmd += resume_flags(run_dir, args.train_args) if resuming else args.train_args
        jobs.append((run_dir, cmd))
    if args.dry_run or not jobs:
        for _, cmd in jobs:
            print(" ".join(["python", *cmd[1:]]))
        print(f"{len(jobs)} runs to do")
        return 0

    pending, active, failed = list(jobs), {}, []
    bar = tqdm(total=len(jobs), desc="grid", unit="run")
    while pending or active:
        while pending and len(active) < args.parallel:
            run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = (run_dir.parent / f"{run_dir.name}.stdout").open("a")
            active[run_dir] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for run_dir, (proc, log) in list(active.items()):
            if proc.poll() is not None:
                log.close()
                del active[run_dir]
                bar.update(1)
                if proc.returncode not in (EXIT_OK, EXIT_DIVERGED):
                    failed.append(run_dir.name)
                bar.write(f"{run_dir.name}: {rundir.status(run_dir)} (exit code {proc.returncode})")
        bar.set_postfix_str(" | ".join(f"{d.name}: {_last_epoch(d)}" for d in active))
        time.sleep(2)
    bar.close()
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (see their .stdout files)", file=sys.stderr)
        return 1
    return 0


def _last_epoch(run_dir: Path) -> str:
    log = run_dir / rundir.LOG
    lines = [line for line in log.read_text().splitlines() if line.startswith("Epoch")] if log.is_file() else []
    return lines[-1].split("\t")[0].replace("Epoch ", "ep ") if lines else "starting"
