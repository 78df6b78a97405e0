"""Post-hoc logit adjustment (Menon et al., ICLR 2021; SPEC §4a).

Each exit's logits minus tau_k * log(prior), the prior being the long-tailed training set's class
frequencies, before the softmax: a model trained on a skewed set favours its head classes by
about log(prior); subtracting it (tau = 1) is the Bayes-optimal correction for a balanced test
set. tau is chosen on held-out training images (calibration.py), never on the test set, one for
every exit or one per exit (an exit whose classifier was re-balanced, rebalance.py, wants less
than the final one); tau = 0 leaves the model unchanged. The export bakes each stage's adjustment
into its graph.
"""

from __future__ import annotations

import numpy as np
import torch

TAU_GRID = np.round(np.arange(0.0, 2.0001, 0.125), 3)


def log_prior(class_counts) -> torch.Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"logit adjustment needs a positive count for every class, got {class_counts}")
    return (counts / counts.sum()).log().float()


def adjustment(class_counts, tau: float) -> torch.Tensor:
    """The C-vector subtracted from every exit's logits."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return tau * log_prior(class_counts)


def stage_adjustments(class_counts, taus) -> torch.Tensor:
    """K x C: row k is subtracted from exit k's logits."""
    return torch.stack([adjustment(class_counts, float(t)) for t in taus])
