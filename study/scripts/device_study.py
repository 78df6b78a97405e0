"""The study's open runs on a lent GPU machine, in one device call, packed into $OUT.

Runs go in priority order (the product candidates, then the report's table), PARALLEL at a
time, each a `python -m training train` process on the CPU fast path's flags (bf16, batched
augmentation on the device, channels-last where the CPU would take it; eager), so that a run cut
by the budget resumes on this project's CPU or the next GPU with the same config. At the deadline
every run gets SIGTERM (it ends its epoch under way with a checkpoint); then run directories are
packed, metrics and logs of all of them, checkpoints in priority order while they fit what a device
call brings back. A run whose new start fails is tried once more on the reference data path.

On the device machine, from the repo root, .carry/ holding the dataset archive:
    python3 -m study.scripts.device_study --budget 460 --parallel 12
results/ is too large to travel with a call, so runs already under way travel apart: copy their
directories into .carry/runs/ and pass `--runs .carry/runs`, and name the open runs with `--plan`
(a finished run that is not there would be trained again), e.g.
    --plan model12:50 hybrid-lt-mid:100 model13:10 --runs .carry/runs
Try the plumbing on a CPU first:
    OUT=/tmp/out python3 -m study.scripts.device_study --device cpu --budget 60 --parallel 2 \
        --smoke "--epochs 2 --max-batches 2 --max-test-samples 200"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from training import rundir
from training.config import TrainConfig, default_path
from training.variants import get_variant

from .. import runs as study_runs

# What a device call brings back: 8 files of at most 16 MiB (one is the log archive).
ARCHIVE_BYTES, ARCHIVES = 15 * 2**20, 7


def plan_entry(text: str) -> tuple[str, int]:
    variant, _, imbalance = text.partition(":")
    try:
        return get_variant(variant).name, int(imbalance)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"expected VARIANT:IF with a known variant, got {text!r}") from None


# (variant, IF), most wanted first (the default of --plan: this project's open runs on 2026-12-04, 23:00 UTC).
PLAN = [
    plan_entry(entry)
    for entry in (
        "model13:10",
        "hybrid-lt-sam:100",
        "model7:100",
        "model14:100",
        "model15:50",
        "model16:10",
        "model1:100",
        "model2:100",
        "model3:100",
        "model4:100",
        "model5:100",
        "model6:100",
        "reslt:50",
        "reslt:10",
        "elf:50",
        "elf:10",
        "erm:1",
    )
]


def train_command(args, variant: str, imbalance: int, run_dir: Path, reference: bool) -> list[str]:
    cmd = study_runs.train_argv(variant, imbalance, 0, run_dir, args.device, args.data)
    cmd += ["--checkpoint-every", "5", *shlex.split(args.smoke)]
    if rundir.has_checkpoint(run_dir):  # `--resume` keeps the run's own path and evaluation interval
        return cmd + ["--resume"]
    path = default_path("cpu", get_variant(variant).widths, bf16=True)
    if reference:
        path["data_path"] = "reference"
        cmd += ["--workers", "2"]
    return cmd + [
        "--eval-every",
        str(get_variant(variant).study_eval_every),
        *TrainConfig(variant, imbalance, **path).path_flags(),
    ]


def gpu_sampler(out: Path):
    if not subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        return None
    return subprocess.Popen(
        ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used", "--format=csv", "-l", "10"],
        stdout=(out / "gpu-samples.csv").open("w"),
    )


def start_mps(out: Path) -> bool:
    """CUDA MPS lets the runs' small kernels share the GPU at once instead of time-slicing."""
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps-log"}
    for d in ("/tmp/mps", "/tmp/mps-log"):
        os.makedirs(d, exist_ok=True)
    try:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=20)
        subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.ones(8, device='cuda').sum().item())"],
            env=env,
            check=True,
            timeout=45,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        (out / "mps.txt").write_text(f"MPS not used: {exc}\n")
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", env=env, timeout=20)
        return False
    os.environ.update({k: env[k] for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")})
    (out / "mps.txt").write_text("MPS in use\n")
    return True


def run_all(args) -> dict:
    deadline = time.monotonic() + args.budget
    pending = list(args.plan)
    active, retried, events = {}, set(), []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()

    def launch(variant, imbalance, reference=False):
        run_dir = args.runs / rundir.run_name(variant, imbalance, 0)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = train_command(args, variant, imbalance, run_dir, reference)
        log = (args.runs / f"{run_dir.name}.stdout").open("a")
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        active[run_dir] = (
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
            log,
            variant,
            imbalance,
            time.monotonic(),
        )

    while (pending or active) and time.monotonic() < deadline:
        while pending and len(active) < args.parallel:
            variant, imbalance = pending.pop(0)
            if rundir.status(args.runs / rundir.run_name(variant, imbalance, 0)) not in rundir.FINISHED:
                launch(variant, imbalance)
        for run_dir, (proc, log, variant, imbalance, started) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del active[run_dir]
            events.append(
                {
                    "run": run_dir.name,
                    "exit": proc.returncode,
                    "seconds": round(time.monotonic() - started),
                    "at": round(time.monotonic() - t0),
                    "status": rundir.status(run_dir),
                }
            )
            print(json.dumps(events[-1]), flush=True)
            if proc.returncode not in (0, 3) and not rundir.has_checkpoint(run_dir) and run_dir not in retried:
                retried.add(run_dir)
                launch(variant, imbalance, reference=True)
        time.sleep(2)
    for proc, *_ in active.values():
        proc.send_signal(signal.SIGTERM)
    grace = time.monotonic() + args.grace
    for run_dir, (proc, log, *_rest) in active.items():
        try:
            proc.wait(max(1.0, grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        events.append({"run": run_dir.name, "exit": proc.returncode, "cut": True, "status": rundir.status(run_dir)})
    return {"events": events, "seconds": round(time.monotonic() - t0)}


def last_epoch(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / rundir.METRICS).read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return 0


def pack(runs: Path, meta: Path, out: Path, plan: list[tuple[str, int]]) -> list[str]:
    """Logs and metrics of every run (and this machine's notes, under _device/) in one archive;
    checkpoints, most wanted first, in up to ARCHIVES archives of ARCHIVE_BYTES (a checkpoint that
    does not fit is said, not sent)."""
    order = [rundir.run_name(variant, imbalance, 0) for variant, imbalance in plan]
    dirs = sorted(
        (d for d in runs.iterdir() if d.is_dir()), key=lambda d: order.index(d.name) if d.name in order else len(order)
    )
    with tarfile.open(out / "runs-metrics.tar.gz", "w:gz") as tar:
        for p in sorted(runs.rglob("*")):
            if p.is_file() and p.name != rundir.CHECKPOINT:
                tar.add(p, arcname=str(p.relative_to(runs)))
        tar.add(meta, arcname="_device")
    left_out, groups = [], [[]]
    sizes = [0]
    for d in dirs:
        ckpt = d / rundir.CHECKPOINT
        if not ckpt.is_file() or last_epoch(d) == 0:
            continue
        size = ckpt.stat().st_size
        if sizes[-1] + size > ARCHIVE_BYTES:
            if len(groups) == ARCHIVES:
                left_out.append(d.name)
                continue
            groups.append([])
            sizes.append(0)
        groups[-1].append(ckpt)
        sizes[-1] += size
    for i, group in enumerate(g for g in groups if g):
        with tarfile.open(out / f"ckpt-{i}.tar", "w") as tar:
            for ckpt in group:
                tar.add(ckpt, arcname=str(ckpt.relative_to(runs)))
    return left_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, required=True, help="seconds of training before the cut")
    parser.add_argument(
        "--plan", nargs="+", type=plan_entry, default=PLAN, metavar="VARIANT:IF", help="runs, most wanted first"
    )
    parser.add_argument("--parallel", type=int, default=12)
    parser.add_argument("--grace", type=float, default=40, help="seconds for cut runs to checkpoint")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/runs"))
    parser.add_argument("--smoke", default="", help="extra train flags (plumbing tries)")
    parser.add_argument("--mps", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    out = Path(os.environ["OUT"])
    out.mkdir(parents=True, exist_ok=True)
    meta = args.runs.parent / "device-meta"  # $OUT takes 8 files: notes travel in the metrics archive
    meta.mkdir(parents=True, exist_ok=True)
    if not (args.data / "cifar-10-batches-py").is_dir():
        subprocess.run(
            [sys.executable, ".carry/build_cifar10_batches.py", str(args.data)],
            check=True,
            stdout=(meta / "build.log").open("w"),
            stderr=subprocess.STDOUT,
        )
    args.runs.mkdir(parents=True, exist_ok=True)
    sampler = gpu_sampler(meta)
    mps = args.device == "cuda" and args.mps and start_mps(meta)
    summary = {"mps": mps, **run_all(args)}
    if sampler:
        sampler.terminate()
    summary["runs"] = {
        d.name: {"status": rundir.status(d), "epochs": last_epoch(d)} for d in sorted(args.runs.iterdir()) if d.is_dir()
    }
    (meta / "summary.json").write_text(json.dumps(summary, indent=1))
    print("checkpoints left out:", pack(args.runs, meta, out, args.plan))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
