"""Threshold calibration on held-out training images (never the test set).

Held-out images are the CIFAR-10 training images that the run's long-tailed training set left
out (the model never saw them). The score is class-balanced accuracy (the mean of per-class
accuracies, like the balanced test set) over the classes that have held-out images; at IF 100
class 0 keeps all 5,000 of its images, so it has none and is left out. The chosen threshold is
the lowest-compute one whose held-out accuracy is within `max_drop` points of the final exit's.
"""
from __future__ import annotations

import numpy as np

from .data import Split, load_cifar10, longtail_indices
from .evaluation import exit_probabilities, threshold_sweep
from .macs import exit_costs

GRID = np.round(np.linspace(0, 1, 101), 2)


def heldout_split(data_dir, imbalance: int, per_class: int = 500, seed: int = 0) -> Split:
    train, _ = load_cifar10(data_dir)
    unused = np.setdiff1d(np.arange(len(train)), longtail_indices(train.labels, imbalance))
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(unused[train.labels[unused] == c])[:per_class] for c in range(10)])
    return train.subset(np.sort(keep))


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    return float(np.mean([100.0 * (pred[labels == c] == c).mean() for c in classes]))


def calibrate(model, heldout: Split, max_drop: float, batch_size: int = 500) -> dict:
    probs = exit_probabilities(model, heldout, batch_size)
    costs = exit_costs(model)
    final = balanced_accuracy(probs[-1].argmax(1).numpy(), heldout.labels)
    sweep = [{"threshold": m["threshold"], "mean_macs": m["mean_macs"],
              "exit_distribution": m["exit_distribution"],
              "accuracy": balanced_accuracy(np.asarray(m["predictions"]), heldout.labels)}
             for m in threshold_sweep(probs, heldout.labels, costs, GRID)]
    ok = [row for row in sweep if row["accuracy"] >= final - max_drop]
    # Threshold 1 always qualifies; among equal costs prefer accuracy, then the safer higher threshold.
    best = min(ok, key=lambda row: (row["mean_macs"], -row["accuracy"], -row["threshold"]))
    return {"threshold": best["threshold"], "max_drop": max_drop, "heldout_images": len(heldout),
            "heldout_classes": sorted(set(heldout.labels.tolist())), "heldout_accuracy": best["accuracy"],
            "final_exit_accuracy": final, "mean_macs": best["mean_macs"],
            "mean_macs_share": best["mean_macs"] / costs[-1]["cumulative_macs"], "sweep": sweep}
