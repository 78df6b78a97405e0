"""Study: does an early-exit ensemble (exit k answers with the mean of exits 1..k's log-probabilities,
as ensemble-of-exits networks do) beat each exit answering alone?

On the held-out training images that `calibrate` uses (never the test set), each exit's tau chosen
as `calibrate` chooses it, for both ways: every exit's balanced accuracy, and the cheapest per-exit
thresholds within --max-drop of that way's final exit (calibrate's own search).

    python -m study.scripts.exit_ensemble --checkpoint results/fits/model8-if100-seed0-fit-light2-mixed30-rebalance/checkpoint.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from training.calibration import DropBound, _per_exit_search, balanced_accuracy, choose_taus, heldout_split
from training.data import default_data_dir
from training.evaluation import exit_logits
from training.logit_adjust import log_prior
from training.macs import exit_costs
from training.rundir import checkpoint_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument(
        "--drop-confidence",
        type=float,
        default=0.5,
        help="as calibrate's; 0.5 (the point estimate) is what results/DEFAULT_MODEL.md's numbers used",
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    model, _, config, state = checkpoint_model(args.checkpoint)
    heldout = heldout_split(args.data_dir, config.imbalance)
    labels, prior = heldout.labels, log_prior(state["class_counts"])
    logits = exit_logits(model, heldout)
    taus, _ = choose_taus(logits, labels, prior)
    alone = (logits - torch.tensor(taus)[:, None, None] * prior).log_softmax(2)
    ensemble = torch.stack([alone[: k + 1].mean(0) for k in range(len(alone))])
    cumulative = np.array([c["cumulative_macs"] for c in exit_costs(model)], dtype=np.float64)
    print(f"{len(heldout)} held-out images, tau {'/'.join(f'{t:g}' for t in taus)}")
    for name, logp in (("each exit alone", alone), ("ensemble of exits 1..k", ensemble)):
        accuracy = [balanced_accuracy(z.argmax(1).numpy(), labels) for z in logp]
        bound = DropBound(labels, logp[-1].argmax(1).numpy(), args.drop_confidence)
        best = _per_exit_search(logp.softmax(2), cumulative, bound, args.max_drop)
        print(
            f"{name}: exits {' / '.join(f'{a:.2f}' for a in accuracy)}; thresholds "
            f"{'/'.join(f'{t:g}' for t in best['threshold'])}: {best['accuracy']:.2f} at "
            f"{best['mean_macs'] / cumulative[-1]:.3f} of the MACs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
