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

"Within max_drop" is read with a margin: the one-sided upper confidence bound (`confidence`,
default 0.95) of the held-out drop must be at most max_drop, the drop's standard error taken from
the paired per-image differences, class by class. Taking the cheapest of thousands of threshold
combinations whose point estimate passes picks the ones the held-out sample flatters: chosen on
one half of the held-out images, the thresholds lost 1.6 points on average on the other half
(results/DEFAULT_MODEL.md, "Calibration's winner's curse"). confidence 0.5 is the point estimate.
"""

from __future__ import annotations

import itertools
from statistics import NormalDist

import numpy as np
import torch

from modelrepo.exit_rule import first_confident_exit

from .data import Split, load_cifar10, longtail_indices
from .errors import TrainingError
from .evaluation import early_exit_metrics, exit_logits
from .logit_adjust import TAU_GRID, log_prior
from .macs import exit_costs

GRID = np.round(np.linspace(0, 1, 101), 2)  # one threshold for every exit
PER_EXIT_GRID = np.round(np.linspace(0, 1, 51), 2)  # each early exit's own threshold
THRESHOLD_MODES = ("single", "per-exit", "auto")
TAU_MODES = ("per-exit", "shared")
EPS = 1e-9  # float slack in "drop <= max_drop" (confidence 0.5, max_drop 0)


def heldout_split(data_dir, imbalance: int, per_class: int = 500, seed: int = 0) -> Split:
    train, _ = load_cifar10(data_dir)
    unused = np.setdiff1d(np.arange(len(train)), longtail_indices(train.labels, imbalance))
    if len(unused) == 0:
        raise TrainingError(
            f"IF {imbalance} trains on every CIFAR-10 training image: no held-out images to calibrate on"
        )
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(unused[train.labels[unused] == c])[:per_class] for c in range(10)])
    return train.subset(np.sort(keep))


def stratified_half(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random half of every class (rounded down), as a mask: for checking a choice made on one
    half of the held-out images against the other."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        half[rng.permutation(idx)[: len(idx) // 2]] = True
    return half


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    return float(np.mean([100.0 * (pred[labels == c] == c).mean() for c in classes]))


def choose_taus(
    logits: torch.Tensor, labels: np.ndarray, prior: torch.Tensor, taus=TAU_GRID, per_exit: bool = True
) -> tuple[list[float], list]:
    """(one tau per exit, the sweep: each grid tau with every exit's balanced accuracy)."""
    rows = [
        {
            "tau": float(t),
            "exit_accuracy": [balanced_accuracy((z - float(t) * prior).argmax(1).numpy(), labels) for z in logits],
        }
        for t in taus
    ]
    best = [max(rows, key=lambda r: (r["exit_accuracy"][k], -r["tau"]))["tau"] for k in range(len(logits))]
    return (best if per_exit else [best[-1]] * len(logits)), rows


class DropBound:
    """The class-balanced drop (points) of a prediction below the final exit's on held-out images,
    and its one-sided upper confidence bound; the images are paired, so the standard error comes
    from each image's difference (final right, this wrong: +1; the reverse: -1), class by class."""

    def __init__(self, labels: np.ndarray, final_pred: np.ndarray, confidence: float):
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        self.labels = labels
        self.classes = np.searchsorted(np.unique(labels), labels)
        self.size = np.bincount(self.classes)
        self.final = (final_pred == labels).astype(np.float64)
        self.final_accuracy = balanced_accuracy(final_pred, labels)
        self.z = NormalDist().inv_cdf(confidence)

    def __call__(self, pred: np.ndarray) -> tuple[float, float]:
        d = self.final - (pred == self.labels)
        mean = np.bincount(self.classes, weights=d, minlength=len(self.size)) / self.size
        square = np.bincount(self.classes, weights=d * d, minlength=len(self.size)) / self.size
        var_of_mean = np.maximum(square - mean**2, 0) / np.maximum(self.size - 1, 1)
        drop = 100.0 * float(mean.mean())
        return drop, drop + self.z * 100.0 * float(np.sqrt(var_of_mean.sum())) / len(self.size)


def _per_exit_search(probs: torch.Tensor, cumulative: np.ndarray, bound: DropBound, max_drop: float):
    """Cheapest per-early-exit thresholds whose drop bound is within max_drop (None when K == 1)."""
    conf, pred = (t.numpy() for t in probs.max(dim=2))
    k, n = conf.shape
    if k == 1:
        return None
    best = None
    for thresholds in itertools.product(PER_EXIT_GRID, repeat=k - 1):
        exits = first_confident_exit(conf, thresholds)
        drop, upper = bound(pred[exits, np.arange(n)])
        macs = float(cumulative[exits].mean())
        if upper <= max_drop + EPS and (best is None or (macs, drop) < (best["mean_macs"], best["drop"])):
            best = {
                "threshold": [float(t) for t in thresholds],
                "mean_macs": macs,
                "drop": drop,
                "drop_upper_bound": upper,
                "exit_distribution": (np.bincount(exits, minlength=k) / n).tolist(),
            }
    if best is not None:
        best["accuracy"] = bound.final_accuracy - best["drop"]
    return best


def calibrate(
    model,
    heldout: Split,
    max_drop: float,
    class_counts,
    threshold_mode: str = "single",
    adjust: bool = True,
    batch_size: int = 500,
    tau_mode: str = "per-exit",
    confidence: float = 0.95,
    logits: torch.Tensor | None = None,
) -> dict:
    """tau(s) (unless adjust is False), then the threshold(s); every number on held-out images.
    `logits`: the model's exit logits of `heldout`, when the caller has them (scripts that
    calibrate many subsets of one held-out set)."""
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {threshold_mode!r}; expected one of {THRESHOLD_MODES}")
    if tau_mode not in TAU_MODES:
        raise ValueError(f"unknown tau mode {tau_mode!r}; expected one of {TAU_MODES}")
    if logits is None:
        logits = exit_logits(model, heldout, batch_size)
    prior = log_prior(class_counts)
    taus, tau_sweep = choose_taus(logits, heldout.labels, prior, TAU_GRID if adjust else [0.0], tau_mode == "per-exit")
    probs = (logits - torch.tensor(taus)[:, None, None] * prior).softmax(dim=2)
    costs = exit_costs(model)
    cumulative = np.array([c["cumulative_macs"] for c in costs], dtype=np.float64)
    bound = DropBound(heldout.labels, probs[-1].argmax(1).numpy(), confidence)
    final = bound.final_accuracy
    sweep = []
    for m in (early_exit_metrics(probs, heldout.labels, float(t), costs) for t in GRID):
        drop, upper = bound(m.predictions)
        sweep.append(
            {
                "threshold": m.threshold,
                "mean_macs": m.mean_macs,
                "exit_distribution": m.exit_distribution,
                "accuracy": final - drop,
                "drop_upper_bound": upper,
            }
        )
    ok = [row for row in sweep if row["drop_upper_bound"] <= max_drop + EPS]
    # Threshold 1 always qualifies (no image leaves early: drop and bound 0); among equal costs
    # prefer accuracy, then the safer higher threshold.
    best = min(ok, key=lambda row: (row["mean_macs"], -row["accuracy"], -row["threshold"]))
    per_exit = _per_exit_search(probs, cumulative, bound, max_drop) if threshold_mode != "single" else None
    if threshold_mode == "per-exit" or (per_exit is not None and per_exit["mean_macs"] < best["mean_macs"]):
        best = per_exit or best
    return {
        "threshold": best["threshold"],
        "threshold_mode": threshold_mode,
        "tau": taus[-1],
        "taus": taus,
        "tau_mode": tau_mode,
        "class_counts": [int(c) for c in class_counts],
        "max_drop": max_drop,
        "drop_confidence": confidence,
        "drop_upper_bound": best["drop_upper_bound"],
        "heldout_images": len(heldout),
        "heldout_classes": sorted(set(heldout.labels.tolist())),
        "heldout_accuracy": best["accuracy"],
        "final_exit_accuracy": final,
        "final_exit_accuracy_unadjusted": tau_sweep[0]["exit_accuracy"][-1],
        "mean_macs": best["mean_macs"],
        "mean_macs_share": best["mean_macs"] / cumulative[-1],
        "exit_distribution": best["exit_distribution"],
        "sweep": sweep,
        "tau_sweep": tau_sweep,
        "per_exit": per_exit,
    }
