"""Training throughput of the trainer's configurations side by side: reference path, fast path, compiled.

Each configuration is a real `training.engine.Run` (model, loss, routing, optimizer, data path)
timed on whole training steps (`train_one_epoch` capped at --batches), rounds interleaved so that
machine noise hits all alike; then one test-set evaluation each. The estimate of a 200-epoch run
is 200 x (a full epoch's steps + one evaluation). Issue 4's goals: on the CPU the fast path is not
slower than the reference path; on one H100, model8 IF 100 in under 3 minutes.

    python benchmarks/train_epoch_throughput.py [--device cpu|cuda] [--variant model8] [--batches 24]
        [--rounds 3] [--configs reference device device+compile] [--json out.json]

A reference-path round includes starting its DataLoader workers, as every real epoch does (there
amortised over 97 batches, here over --batches: raise it for a fairer reference figure).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from training.commands.common import DEFAULT_DATA_DIR
from training.config import TrainConfig
from training.engine import Run

# name -> TrainConfig fields; the fast path's pieces added one at a time.
CONFIGS = {
    "reference": {},
    "device": {"data_path": "device"},
    "device+compile": {"data_path": "device", "compile": "default"},
    "device+amp+cl": {"data_path": "device", "amp": True, "channels_last": True},
    "device+amp+cl+compile": {"data_path": "device", "amp": True, "channels_last": True, "compile": "default"},
    "device+amp+cl+cudagraphs": {"data_path": "device", "amp": True, "channels_last": True,
                                 "compile": "reduce-overhead"},
}
DEFAULTS = {"cpu": ["reference", "device", "device+compile"],
            "cuda": ["reference", "device", "device+amp+cl", "device+amp+cl+compile", "device+amp+cl+cudagraphs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--variant", default="model8")
    parser.add_argument("--imbalance", type=int, default=100)
    parser.add_argument("--batches", type=int, default=24, help="training steps per round and configuration")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the reference path")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = args.configs or DEFAULTS[args.device]

    runs, failed = {}, {}
    for name in names:
        config = TrainConfig(variant=args.variant, imbalance=args.imbalance, max_batches=args.batches,
                             **CONFIGS[name])
        run = Run(config, Path("unused"), device, args.data_dir, workers=args.workers)
        t0 = time.perf_counter()
        try:  # warm-up: allocator, cuDNN/oneDNN choice, compilation of both shapes and both modes
            run.train_one_epoch(0)
            run.evaluate()
        except Exception as exc:  # a configuration this machine cannot run is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            continue
        runs[name] = run
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f}s"
              + (f" (compile fell back to eager: {run.compile_fallback})" if run.compile_fallback else ""))

    steps = {name: [] for name in runs}
    evals = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run.train_one_epoch(1 + r)
            steps[name].append((time.perf_counter() - t0) / args.batches)
            t0 = time.perf_counter()
            run.evaluate()
            evals[name].append(time.perf_counter() - t0)

    print(f"machine: {platform.processor() or platform.machine()}"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, {torch.get_num_threads()} threads; {args.variant} IF {args.imbalance}, "
          f"batch 128, {args.rounds} rounds x {args.batches} steps (median)")
    results = {}
    base = None
    for name, run in runs.items():
        step, evaluation = statistics.median(steps[name]), statistics.median(evals[name])
        per_epoch = run.batches(0)[1] * step + evaluation
        base = base or step
        results[name] = {"ms_per_step": 1000 * step, "images_per_s": 128 / step, "eval_s": evaluation,
                         "estimated_200_epochs_s": 200 * per_epoch, "speedup_vs_first": base / step,
                         "compile_fallback": run.compile_fallback}
        print(f"  {name:<26} {1000 * step:8.1f} ms/step {128 / step:9.0f} img/s  eval {evaluation:6.2f}s  "
              f"200 epochs ~ {200 * per_epoch / 60:7.1f} min  x{base / step:.2f} vs {names[0]}")
    for name, why in failed.items():
        print(f"  {name:<26} failed: {why}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "variant": args.variant, "results": results,
                                         "failed": failed}, indent=1))


if __name__ == "__main__":
    main()
