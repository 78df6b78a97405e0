"""Seconds per epoch of the trainer's paths side by side, for each network family.

Each (variant, path) is a real `training.engine.Run` (model, losses, routing, optimizer, data path)
timed on whole training steps (`run_epoch` capped at --batches), rounds interleaved so that
machine noise hits every path alike; then one per-epoch test-set evaluation each (bf16 on paths
with --amp, as `train` runs it), and the augmentation alone (batches drawn, no step), so that a data
path that became the bottleneck shows. A full epoch is estimated as the epoch's batches x the
median step + the median evaluation. The goal: the CPU fast path >= 1.8x the fp32 reference
path per epoch for the simulated family.

    python benchmarks/train_epoch_throughput.py [--device cpu|cuda] [--variants model8 model7 model14 elf erm]
        [--paths reference cpu-fast] [--batches 12] [--rounds 2] [--json out.json]

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
from training.config import CPU_FAST_PATH, REFERENCE_PATH, TrainConfig, default_path
from training.engine import Run
from training.variants import get_variant

# name -> TrainConfig path fields; "cpu-fast" is `train`'s CPU default for the variant (channels-last
# or not by its widths). One family per default variant: simulated with Mixup (model8) and with
# AutoAugment (model7), full power (model14), ELF, the plain control (erm).
PATHS = {
    "reference": REFERENCE_PATH,
    "cpu-fast": None,
    "cpu-fast+cl": CPU_FAST_PATH,
    "device": {**REFERENCE_PATH, "data_path": "device"},
    "device+compile": {**REFERENCE_PATH, "data_path": "device", "compile": "default"},
    "device+cl+compile": {**REFERENCE_PATH, "data_path": "device", "channels_last": True, "compile": "default"},
    "reference+amp+cl": {**REFERENCE_PATH, "amp": True, "channels_last": True},
    "device+amp": {**CPU_FAST_PATH, "channels_last": False},
    "cpu-fast+compile": {**CPU_FAST_PATH, "compile": "default"},
    "gpu-fast": {**CPU_FAST_PATH, "compile": "reduce-overhead"},
}
DEFAULT_PATHS = {"cpu": ["reference", "cpu-fast"], "cuda": ["reference", "cpu-fast", "gpu-fast"]}


def augmentation_seconds(run: Run, batches: int) -> float:
    """Seconds to draw `batches` augmented batches of an epoch, with no training step."""
    it, _ = run.batches(0)
    t0 = time.perf_counter()
    for step, _batch in enumerate(it):
        if step + 1 >= batches:
            break
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--variants", nargs="+", default=["model8", "model7", "model14", "elf", "erm"])
    parser.add_argument("--imbalance", type=int, default=100)
    parser.add_argument("--batches", type=int, default=12, help="training steps per round and path")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=None)
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers of the reference path"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = args.paths or DEFAULT_PATHS[args.device]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} threads; IF {args.imbalance}, batch 128, "
        f"{args.rounds} rounds x {args.batches} steps (median)"
    )
    print(
        f"  {'variant':<8} {'path':<18} {'ms/step':>8} {'train s':>8} {'eval s':>7} {'augment s':>9} "
        f"{'epoch s':>8} {'train x':>8} {'epoch x':>8} {'200 ep min':>10}"
    )
    results = {}
    for variant in args.variants:
        results[variant] = measure_variant(variant, names, device, args)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "results": results}, indent=1))


def measure_variant(variant: str, names: list[str], device: torch.device, args) -> dict:
    runs, failed = {}, {}
    for name in names:
        path = PATHS[name] or default_path("cpu", get_variant(variant).widths)
        config = TrainConfig(variant=variant, imbalance=args.imbalance, max_batches=args.batches, **path)
        run = Run(config, Path("unused"), device, args.data_dir, workers=args.workers)
        try:  # warm-up: allocator, oneDNN/cuDNN choice, compilation of both shapes and both modes
            run.run_epoch(0)
            run.evaluate()
        except Exception as exc:  # a path this machine cannot run is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            continue
        runs[name] = run
    steps = {name: [] for name in runs}
    evals = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run.run_epoch(1 + r)
            steps[name].append((time.perf_counter() - t0) / args.batches)
            t0 = time.perf_counter()
            run.evaluate()
            evals[name].append(time.perf_counter() - t0)
    out, base = {}, None
    for name, run in runs.items():
        step, evaluation = statistics.median(steps[name]), statistics.median(evals[name])
        n_batches = run.batches(0)[1]
        augment = augmentation_seconds(run, args.batches) / args.batches * n_batches
        train_s = n_batches * step
        epoch_s = train_s + evaluation
        base = base or (train_s, epoch_s)
        out[name] = {
            "ms_per_step": 1000 * step,
            "train_s_per_epoch": train_s,
            "eval_s": evaluation,
            "augment_s_per_epoch": augment,
            "epoch_s": epoch_s,
            "train_speedup": base[0] / train_s,
            "epoch_speedup": base[1] / epoch_s,
            "compile_fallback": run.compile_fallback,
        }
        print(
            f"  {variant:<8} {name:<18} {1000 * step:8.1f} {train_s:8.1f} {evaluation:7.2f} {augment:9.2f} "
            f"{epoch_s:8.1f} {base[0] / train_s:7.2f}x {base[1] / epoch_s:7.2f}x {200 * epoch_s / 60:10.1f}"
            + (f"  (compile fell back to eager: {run.compile_fallback})" if run.compile_fallback else "")
        )
    for name, why in failed.items():
        print(f"  {variant:<8} {name:<18} failed: {why}")
    return {"paths": out, "failed": failed}


if __name__ == "__main__":
    main()
