"""Where the exit criterion in training sends the long-tailed training images, exit by exit.

SPEC §4: an image's training exit is the first exit that predicts its label with max softmax at or
above the variant's training threshold, else the final exit; a routed variant counts only that
exit's loss. For a variant freshly initialised (`--seed`, as `train` initialises it) or a
checkpoint, on the training set without augmentation, shuffled, in batches of 128 with batch
statistics (as a training step sees them): per exit, the share of images it is confident on, the class it
predicts most and that class's share of its predictions, and the share of images it is the
training exit of, with the classes they belong to. An early exit whose training images are one
class learns only that class (model4: README, Results).

    python -m study.scripts.training_exits model4 model7 results/runs/model4-if100-seed0/checkpoint.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from training import rundir
from training.augment import normalize_batch
from training.commands.common import DEFAULT_DATA_DIR
from training.data import build_datasets
from training.network import build_model
from training.routing import first_confident_exit
from training.variants import get_variant


def model_of(source: str, seed: int):
    """(model, variant, imbalance, what it is) for a variant name (initialised at its own
    imbalance) or a checkpoint path."""
    if Path(source).is_file():
        model, variant, config, state = rundir.checkpoint_model(Path(source))
        return model, variant, config.imbalance, f"{source} ({variant.name}, epoch {state['epoch']})"
    variant = get_variant(source)
    torch.manual_seed(seed)  # as train initialises the model
    return build_model(variant), variant, variant.imbalance, f"{variant.name} at initialisation (seed {seed})"


@torch.no_grad()
def probabilities(model, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """K x N x C softmax of every exit, BatchNorm on each batch's own statistics."""
    model.train()
    parts = [
        torch.stack([o.logits.float().softmax(1) for o in model(normalize_batch(images[i : i + batch_size]))])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts, dim=1)


def report(probs: torch.Tensor, labels: np.ndarray, threshold: float) -> list[str]:
    y = torch.from_numpy(labels).long()
    exits = first_confident_exit(probs, threshold, y).numpy()
    conf, pred = probs.max(dim=2)
    lines = [f"  exit  confident >= {threshold:<4g}  top class  its share  training exit of  its classes (images)"]
    for k in range(probs.size(0)):
        share = np.bincount(pred[k].numpy(), minlength=probs.size(2)) / probs.size(1)
        mine = labels[exits == k]
        classes = ", ".join(f"{c}: {n}" for c, n in enumerate(np.bincount(mine, minlength=probs.size(2))) if n)
        lines.append(
            f"  {k + 1:4d}  {100 * (conf[k] >= threshold).float().mean():16.1f}%"
            f"  {int(share.argmax()):>9d}  {100 * share.max():8.1f}%"
            f"  {100 * len(mine) / len(labels):15.1f}%  {classes or '-'}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="variant names (initialised) or checkpoint paths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    sets = {}
    for source in args.sources:
        model, variant, imbalance, what = model_of(source, args.seed)
        if imbalance not in sets:  # shuffled once: the set is sorted by class, and batch statistics
            train = build_datasets(args.data_dir, imbalance)[0]  # over one class are not a training batch's
            sets[imbalance] = train.subset(np.random.default_rng(args.seed).permutation(len(train)))
        train = sets[imbalance]
        print(
            f"{what}: {len(train)} training images (IF {imbalance}), training threshold "
            f"{variant.train_threshold:g}, {variant.routing} loss"
        )
        print("\n".join(report(probabilities(model, train.images), train.labels, variant.train_threshold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
