"""Exit assignment in training and loss routing (SPEC §4)."""

from __future__ import annotations

import torch

from modelrepo.exit_rule import FULL_DEPTH, early_exit_thresholds

from .losses import Targets
from .network import ExitOutput
from .registry import Registry

ROUTINGS = Registry("routing")


@torch.no_grad()
def first_confident_exit(
    probs: list[torch.Tensor] | torch.Tensor, threshold, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """The exit rule (modelrepo.exit_rule) on tensors, for training batches where they are: index
    of the first exit whose max softmax reaches its threshold (and, when labels are given, whose
    prediction is correct: the training criterion); the last exit when none qualifies.
    probs: K x N x C; threshold: one number or one per early exit."""
    probs = torch.stack(list(probs)) if isinstance(probs, (list, tuple)) else probs
    conf, pred = probs.max(dim=2)  # K x N
    ok = torch.ones_like(conf, dtype=torch.bool)
    if isinstance(threshold, (int, float)):  # every training step: no host-to-device copy
        ok[:-1] = (conf[:-1] >= threshold) & (threshold < FULL_DEPTH)
    else:
        t = torch.tensor(early_exit_thresholds(threshold, conf.size(0)), dtype=conf.dtype, device=conf.device)
        ok[:-1] = (conf[:-1] >= t) & (t < FULL_DEPTH)
    if labels is not None:
        ok &= pred == labels.unsqueeze(0)
        ok[-1] = True
    return ok.to(torch.int8).argmax(dim=0)  # argmax returns the first maximal index


def training_exits(outputs: list[ExitOutput], targets: Targets, threshold: float) -> torch.Tensor:
    """A sample's exit e in training: first exit predicting its (dominant) label correctly with
    confidence >= the training threshold, else the final exit."""
    probs = [o.logits.detach().float().softmax(dim=1) for o in outputs]
    return first_confident_exit(probs, threshold, targets.dominant)


@ROUTINGS.register("accumulative")
def accumulative(k: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """The losses of exits 1..e count."""
    return k <= exits


@ROUTINGS.register("routed")
def routed(k: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """Only exit e's loss counts."""
    return k == exits


@ROUTINGS.register("joint")
def joint(k: torch.Tensor, exits: torch.Tensor) -> torch.Tensor:
    """Every exit's loss counts for every sample, whatever its training exit (exits trained from
    the start, as in Shallow-Deep Networks)."""
    return torch.broadcast_to(k >= 0, (k.size(0), exits.size(-1)))


def exit_weights(exits: torch.Tensor, num_exits: int, routing: str) -> torch.Tensor:
    """K x N 0/1 matrix: which exits' losses count for each sample."""
    k = torch.arange(num_exits, device=exits.device).unsqueeze(1)
    return ROUTINGS.get(routing)(k, exits.unsqueeze(0)).float()


def routed_loss(per_exit: list[torch.Tensor], exits: torch.Tensor, routing: str) -> torch.Tensor:
    """Batch loss = (1/N) * sum over samples of their counted exits' losses."""
    losses = torch.stack(per_exit)  # K x N
    weights = exit_weights(exits, len(per_exit), routing).to(losses.dtype)
    return (losses * weights).sum() / losses.size(1)
