"""Where a checkpoint's predictions go, exit by exit and, at a ResLT head, branch by branch.

For each checkpoint: accuracy on held-out training images (calibration.heldout_split: 500 a class
that the long-tailed set left out; never the test set), the share of predictions each class gets
and the mean logit per class, for every exit and for the final ResLT head's H, M and T branches
alone. A head whose predictions pile onto some classes shows it here (hybrid-lt: results/DEFAULT_MODEL.md).

    python -m study.scripts.branch_bias results/runs/hybrid-lt-if100-seed0/checkpoint.pt results/runs/model8-if100-seed0/checkpoint.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from training import rundir
from training.calibration import heldout_split
from training.commands.common import DEFAULT_DATA_DIR
from training.evaluation import normalize_batch


def row(name: str, logits: torch.Tensor, labels: np.ndarray) -> str:
    pred = logits.argmax(1).numpy()
    share = np.bincount(pred, minlength=logits.shape[1]) / len(pred)
    return (
        f"  {name:8s} {100 * (pred == labels).mean():5.1f}%  predictions {' '.join(f'{s:.2f}' for s in share)}"
        f"  mean logit {' '.join(f'{v:+.1f}' for v in logits.mean(0).tolist())}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--imbalance", type=int, default=100, help="the long-tailed set whose left-out images are used")
    args = parser.parse_args()
    heldout = heldout_split(args.data_dir, args.imbalance)
    x = normalize_batch(heldout.images)
    print(f"{len(heldout)} held-out images (IF {args.imbalance}); per class 0..9")
    for path in args.checkpoints:
        model, variant, _, state = rundir.checkpoint_model(path)
        with torch.no_grad():
            outputs = model(x)
        print(f"{path} ({variant.name}, epoch {state['epoch']})")
        for k, out in enumerate(outputs):
            print(row(f"exit {k + 1}", out.logits, heldout.labels))
        if outputs[-1].branches is not None:
            for name, logits in zip("HMT", outputs[-1].branches):
                print(row(f"branch {name}", logits, heldout.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
