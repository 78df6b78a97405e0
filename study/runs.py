"""The study's runs, from the variant table (training/variants.py): the report's table, the
dataset-copy controls, the ablations beside model8 and the candidates for the shipped model."""

from __future__ import annotations

import sys
from pathlib import Path

from training.variants import all_variants


def ablation_runs() -> list[tuple[str, int]]:
    """The ablations, each at its own IF."""
    return [(v.name, v.imbalance) for v in all_variants() if v.family == "ablation"]


def product_runs() -> list[tuple[str, int]]:
    """The candidates for the shipped model, each at its own IF."""
    return [(v.name, v.imbalance) for v in all_variants() if v.family == "product"]


def control_runs() -> list[tuple[str, int]]:
    """The dataset-copy controls (SPEC §6): erm at IF 1 and IF 100."""
    return [(v.name, f) for v in all_variants() if v.family == "control" for f in sorted(v.reported)]


def study_runs() -> list[tuple[str, int]]:
    """The report's table as (variant, IF) runs: each numbered model at its own IF, and the two
    baselines at IF 100, 50 and 10 - 19 runs."""
    runs = []
    for v in all_variants():
        if v.family in ("control", "ablation", "product"):
            continue
        ifs = sorted(v.reported, reverse=True) if v.family in ("elf", "reslt") else [v.imbalance]
        runs += [(v.name, f) for f in ifs]
    return runs


def train_argv(variant: str, imbalance: int, seed: int, run_dir: Path, device: str, data_dir: Path) -> list[str]:
    """`python -m training train` of one study run (callers add the run's own flags)."""
    run = ["--variant", variant, "--imbalance", str(imbalance), "--seed", str(seed), "--out", str(run_dir)]
    return [sys.executable, "-m", "training", "train", *run, "--device", device, "--data-dir", str(data_dir)]
