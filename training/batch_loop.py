"""The batch loop under the epoch loop (loop.py), the one every job's `run_epoch` drives: `train`'s
epochs and the second stages' (`fit-exits`, `rebalance`) alike. A job supplies what one optimizer
step is; the loop seeds the epoch's draws, counts, shows progress and stops on a non-finite loss."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from .config import epoch_seed
from .errors import Diverged

# step(x, y) -> (the batch's loss, its number of correct predictions or None where the job counts none)
Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]


def seed_epoch(seed: int, epoch: int) -> np.random.Generator:
    """Seed torch's generator (augmentation draws in this process) for the epoch and return the
    epoch's numpy generator (Mixup, rebalance's draws): both from (seed, epoch), so a resumed epoch
    repeats the draws the cut one made."""
    torch.manual_seed(epoch_seed(seed, epoch))
    return np.random.default_rng([seed, epoch])


def run_batches(batches: Iterable, total: int, step: Step, *, epoch: int, desc: str, device: torch.device) -> dict:
    """Run `step` on the first `total` batches; returns {"loss": mean per image} and, where `step`
    counts them, {"train_acc": percent correct}.

    Running sums stay on the device, so a GPU step never waits for the host; the first non-finite
    loss is remembered there and raised as Diverged (0-based `epoch`) once the epoch is over."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    bad_batch = torch.full((), -1, dtype=torch.int64, device=device)
    bad_loss = torch.zeros((), device=device)
    seen, counted = 0, False
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not sys.stderr.isatty(), unit="batch")
    for index, (x, y) in enumerate(bar):
        if index >= total:
            break
        loss, right = step(x, y)
        with torch.no_grad():
            first_bad = (bad_batch < 0) & ~torch.isfinite(loss)
            bad_batch = torch.where(first_bad, index, bad_batch)
            bad_loss = torch.where(first_bad, loss.detach().float(), bad_loss)
            loss_sum += loss.detach().double() * x.size(0)
            if right is not None:
                correct += right
                counted = True
        seen += x.size(0)
        if not bar.disable and index % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    if bad_batch.item() >= 0:
        raise Diverged(epoch + 1, f"loss is {bad_loss.item()} at batch {bad_batch.item() + 1}")
    totals = {"loss": loss_sum.item() / max(seen, 1)}
    if counted:
        totals["train_acc"] = 100.0 * correct.item() / max(seen, 1)
    return totals
