"""Exit assignment in training and loss routing (SPEC §4), and the inference exit rule."""
from __future__ import annotations

import torch

from .losses import Targets
from .network import ExitOutput

ROUTINGS = ("accumulative", "routed")


@torch.no_grad()
def first_confident_exit(probs: list[torch.Tensor] | torch.Tensor, threshold: float,
                         labels: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the first exit whose max softmax >= threshold (and, when labels are given,
    whose prediction is correct); the last exit when none qualifies. probs: K x N x C."""
    probs = torch.stack(list(probs)) if isinstance(probs, (list, tuple)) else probs
    conf, pred = probs.max(dim=2)  # K x N
    if not isinstance(threshold, (int, float)):  # one per early exit (the last exit takes all)
        threshold = torch.tensor([*threshold, 0.0], dtype=conf.dtype, device=conf.device)[:, None]
    ok = conf >= threshold
    if labels is not None:
        ok &= pred == labels.unsqueeze(0)
    ok[-1] = True
    return ok.to(torch.int8).argmax(dim=0)  # argmax returns the first maximal index


def training_exits(outputs: list[ExitOutput], targets: Targets, threshold: float) -> torch.Tensor:
    """A sample's exit e in training: first exit predicting its (dominant) label correctly with
    confidence >= the training threshold, else the final exit."""
    probs = [o.logits.detach().float().softmax(dim=1) for o in outputs]
    return first_confident_exit(probs, threshold, targets.dominant)


def exit_weights(exits: torch.Tensor, num_exits: int, routing: str) -> torch.Tensor:
    """K x N 0/1 matrix: which exits' losses count for each sample."""
    k = torch.arange(num_exits, device=exits.device).unsqueeze(1)
    if routing == "accumulative":
        return (k <= exits.unsqueeze(0)).float()
    if routing == "routed":
        return (k == exits.unsqueeze(0)).float()
    raise ValueError(f"unknown routing {routing!r}; expected one of {ROUTINGS}")


def routed_loss(per_exit: list[torch.Tensor], exits: torch.Tensor, routing: str) -> torch.Tensor:
    """Batch loss = (1/N) * sum over samples of their counted exits' losses."""
    losses = torch.stack(per_exit)  # K x N
    weights = exit_weights(exits, len(per_exit), routing).to(losses.dtype)
    return (losses * weights).sum() / losses.size(1)
