"""Does a calibrated threshold keep its promise on images it was not chosen on? Held-out images only.

The held-out training images (training/calibration.py) are split in two halves, class by class:
`calibrate` chooses tau and the threshold(s) on half A with `--max-drop`, and the drop below the
final exit is read on half B at A's choice. Taking the cheapest of many threshold combinations
whose drop on A passes favours the ones A flatters, so B's drop comes out larger; a drop
confidence above 0.5 (the point estimate) asks for a margin. The test set is never read.

    python -m study.scripts.calibration_split_check results/fits/RUN-rebalance [...] [--splits 4]
        [--confidence 0.5 0.95] [--max-drop 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from training.calibration import DropBound, calibrate, heldout_split, stratified_half
from training.data import default_data_dir
from training.evaluation import early_exit_metrics, exit_logits
from training.logit_adjust import log_prior
from training.macs import exit_costs
from training.rundir import checkpoint_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fits", nargs="+", type=Path, help="run directories holding checkpoint.pt")
    p.add_argument("--splits", type=int, default=4)
    p.add_argument("--confidence", type=float, nargs="+", default=[0.5, 0.95])
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = p.parse_args()
    print("run | split | confidence | threshold chosen on A | drop on A | its bound | drop on B | MACs share on B")
    summary = {c: [] for c in args.confidence}
    for fit in args.fits:
        model, _, config, state = checkpoint_model(fit / "checkpoint.pt")
        heldout = heldout_split(args.data_dir, config.imbalance)
        costs = exit_costs(model)
        logits = exit_logits(model, heldout, 500)
        prior = log_prior(state["class_counts"])
        for split in range(args.splits):
            half = stratified_half(heldout.labels, 100 + split)
            a, b = np.flatnonzero(half), np.flatnonzero(~half)
            for confidence in args.confidence:
                chosen = calibrate(
                    model,
                    heldout.subset(a),
                    args.max_drop,
                    state["class_counts"],
                    "auto",
                    confidence=confidence,
                    logits=logits[:, a],
                )
                probs = (logits[:, b] - torch.tensor(chosen["taus"])[:, None, None] * prior).softmax(dim=2)
                m = early_exit_metrics(probs, heldout.labels[b], chosen["threshold"], costs)
                drop_b, _ = DropBound(heldout.labels[b], probs[-1].argmax(1).numpy(), 0.5)(m.predictions)
                summary[confidence].append(drop_b)
                print(
                    f"{fit.name} | {split} | {confidence:g} | {chosen['threshold']} | "
                    f"{chosen['final_exit_accuracy'] - chosen['heldout_accuracy']:.2f} | "
                    f"{chosen['drop_upper_bound']:.2f} | {drop_b:.2f} | {m.mean_macs_share:.3f}",
                    flush=True,
                )
    for confidence, drops in summary.items():
        print(
            f"confidence {confidence:g}: drop on B mean {np.mean(drops):.2f}, above {args.max_drop:g} in "
            f"{sum(d > args.max_drop for d in drops)} of {len(drops)}"
        )


if __name__ == "__main__":
    main()
