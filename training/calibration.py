"""Logit adjustment and threshold calibration on held-out training images (never the test set).

Held-out images are the CIFAR-10 training images that the run's long-tailed training set left
out (the model never saw them). The score is class-balanced accuracy (the mean of per-class
accuracies, like the balanced test set) over the classes that have held-out images; at IF 100
class 0 keeps all 5,000 of its images, so it has none and is left out.

Two choices, in this order (SPEC §4a):
1. tau, the post-hoc logit adjustment (logit_adjust.py): for each exit the grid value that
   maximises that exit's held-out balanced accuracy (ties: the smaller tau), or ("shared") the
   final exit's best for every exit;
2. the inference threshold at those taus: the lowest-compute one whose held-out accuracy is within
   `max_drop` points of the final exit's; one threshold for every exit, or one per early exit
   (a grid over every combination) when that spends fewer MACs ("auto").
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from .data import Split, load_cifar10, longtail_indices
from .errors import TrainingError
from modelrepo.exit_rule import first_confident_exit
from .evaluation import early_exit_metrics, exit_logits
from .logit_adjust import TAU_GRID, log_prior
from .macs import exit_costs

GRID = np.round(np.linspace(0, 1, 101), 2)  # one threshold for every exit
PER_EXIT_GRID = np.round(np.linspace(0, 1, 51), 2)  # each early exit's own threshold
THRESHOLD_MODES = ("single", "per-exit", "auto")
TAU_MODES = ("per-exit", "shared")


def heldout_split(data_dir, imbalance: int, per_class: int = 500, seed: int = 0) -> Split:
    train, _ = load_cifar10(data_dir)
    unused = np.setdiff1d(np.arange(len(train)), longtail_indices(train.labels, imbalance))
    if len(unused) == 0:
        raise TrainingError(f"IF {imbalance} trains on every CIFAR-10 training image: no held-out images to calibrate on")
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(unused[train.labels[unused] == c])[:per_class] for c in range(10)])
    return train.subset(np.sort(keep))


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    return float(np.mean([100.0 * (pred[labels == c] == c).mean() for c in classes]))


def choose_taus(logits: torch.Tensor, labels: np.ndarray, prior: torch.Tensor, taus=TAU_GRID,
                per_exit: bool = True) -> tuple[list[float], list]:
    """(one tau per exit, the sweep: each grid tau with every exit's balanced accuracy)."""
    rows = [{"tau": float(t), "exit_accuracy": [balanced_accuracy((z - float(t) * prior).argmax(1).numpy(), labels)
                                                for z in logits]} for t in taus]
    best = [max(rows, key=lambda r: (r["exit_accuracy"][k], -r["tau"]))["tau"] for k in range(len(logits))]
    return (best if per_exit else [best[-1]] * len(logits)), rows


def _per_exit_search(probs: torch.Tensor, labels: np.ndarray, cumulative: np.ndarray, floor: float):
    """Cheapest per-early-exit thresholds whose balanced accuracy >= floor (None when K == 1)."""
    conf, pred = (t.numpy() for t in probs.max(dim=2))
    k, n = conf.shape
    if k == 1:
        return None
    classes = np.unique(labels)
    class_index = np.searchsorted(classes, labels)
    class_size = np.bincount(class_index)
    best = None
    for thresholds in itertools.product(PER_EXIT_GRID, repeat=k - 1):
        exits = first_confident_exit(conf, thresholds)
        correct = pred[exits, np.arange(n)] == labels
        acc = 100.0 * float(np.mean(np.bincount(class_index, weights=correct, minlength=len(classes)) / class_size))
        macs = float(cumulative[exits].mean())
        if acc >= floor and (best is None or (macs, -acc) < (best["mean_macs"], -best["accuracy"])):
            best = {"threshold": [float(t) for t in thresholds], "mean_macs": macs, "accuracy": acc,
                    "exit_distribution": (np.bincount(exits, minlength=k) / n).tolist()}
    return best


def calibrate(model, heldout: Split, max_drop: float, class_counts, threshold_mode: str = "single",
              adjust: bool = True, batch_size: int = 500, tau_mode: str = "per-exit") -> dict:
    """tau(s) (unless adjust is False), then the threshold(s); every number on held-out images."""
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {threshold_mode!r}; expected one of {THRESHOLD_MODES}")
    if tau_mode not in TAU_MODES:
        raise ValueError(f"unknown tau mode {tau_mode!r}; expected one of {TAU_MODES}")
    logits = exit_logits(model, heldout, batch_size)
    prior = log_prior(class_counts)
    taus, tau_sweep = choose_taus(logits, heldout.labels, prior, TAU_GRID if adjust else [0.0],
                                  tau_mode == "per-exit")
    probs = (logits - torch.tensor(taus)[:, None, None] * prior).softmax(dim=2)
    costs = exit_costs(model)
    cumulative = np.array([c["cumulative_macs"] for c in costs], dtype=np.float64)
    final = balanced_accuracy(probs[-1].argmax(1).numpy(), heldout.labels)
    sweep = [{"threshold": m.threshold, "mean_macs": m.mean_macs, "exit_distribution": m.exit_distribution,
              "accuracy": balanced_accuracy(m.predictions, heldout.labels)}
             for m in (early_exit_metrics(probs, heldout.labels, float(t), costs) for t in GRID)]
    ok = [row for row in sweep if row["accuracy"] >= final - max_drop]
    # Threshold 1 always qualifies; among equal costs prefer accuracy, then the safer higher threshold.
    best = min(ok, key=lambda row: (row["mean_macs"], -row["accuracy"], -row["threshold"]))
    per_exit = (_per_exit_search(probs, heldout.labels, cumulative, final - max_drop)
                if threshold_mode != "single" else None)
    if threshold_mode == "per-exit" or (per_exit is not None and per_exit["mean_macs"] < best["mean_macs"]):
        best = per_exit or best
    return {"threshold": best["threshold"], "threshold_mode": threshold_mode, "tau": taus[-1], "taus": taus,
            "tau_mode": tau_mode,
            "class_counts": [int(c) for c in class_counts], "max_drop": max_drop,
            "heldout_images": len(heldout), "heldout_classes": sorted(set(heldout.labels.tolist())),
            "heldout_accuracy": best["accuracy"], "final_exit_accuracy": final,
            "final_exit_accuracy_unadjusted": tau_sweep[0]["exit_accuracy"][-1],
            "mean_macs": best["mean_macs"], "mean_macs_share": best["mean_macs"] / cumulative[-1],
            "exit_distribution": best["exit_distribution"], "sweep": sweep, "tau_sweep": tau_sweep,
            "per_exit": per_exit}
