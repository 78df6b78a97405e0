"""Per-sample losses (SPEC §4): base losses (CE with label smoothing, LDAM) and per-exit losses
(plain, simulated ResLT, full ResLT). Every function returns one loss per sample so that
accumulative and routed assignment (routing.py) can pick which exits count for which sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import mixup
from .constants import NUM_CLASSES, SPLIT_OF_CLASS
from .network import LDAM_SCALE, ExitOutput

LABEL_SMOOTHING = 0.1
LDAM_MAX_MARGIN = 0.5
RESLT_ALPHA = 0.95
# Simulated ResLT weight / full ResLT branch-mask count per split: many 1, medium 2, few 3.
SPLIT_WEIGHT = {"many": 1.0, "medium": 2.0, "few": 3.0}


@dataclass(frozen=True)
class Targets:
    """Labels of a (possibly mixed) batch: loss = lam * L(y_a) + (1 - lam) * L(y_b)."""

    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float = 1.0

    @classmethod
    def plain(cls, y: torch.Tensor) -> "Targets":
        return cls(y, y, 1.0)

    @property
    def dominant(self) -> torch.Tensor:
        """The label with the larger weight, used by the exit criterion."""
        return self.y_a if self.lam >= 0.5 else self.y_b

    def terms(self):
        yield self.y_a, self.lam
        if self.lam < 1.0:
            yield self.y_b, 1.0 - self.lam


def batch_targets(x: torch.Tensor, y: torch.Tensor, augmentation: str, rng) -> tuple[torch.Tensor, Targets]:
    """A batch's (inputs, Targets): Mixup applied where the variant's augmentation is Mixup."""
    if augmentation != "mixup":
        return x, Targets.plain(y)
    x, y_a, y_b, lam = mixup(x, y, rng)
    return x, Targets(y_a, y_b, lam)


class CrossEntropyLS:
    def __init__(self, smoothing: float = LABEL_SMOOTHING):
        self.smoothing = smoothing

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.smoothing)


class LDAMLoss:
    """LDAM: subtract s * m_y from the true-class logit, m_c proportional to n_c^(-1/4), max 0.5.

    The network's NormedLinear already multiplies cosines by s, so the margin is scaled too.
    """

    def __init__(self, class_counts, max_margin: float = LDAM_MAX_MARGIN, scale: float = LDAM_SCALE):
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if (counts <= 0).any():
            raise ValueError(f"LDAM needs a positive count for every class, got {class_counts}")
        margins = counts.pow(-0.25)
        self.margins = (margins * (max_margin / margins.max())).float()
        self.scale = scale

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        margin = self.scale * self.margins.to(logits.device)[y]
        adjusted = logits - F.one_hot(y, logits.size(1)).to(logits.dtype) * margin.unsqueeze(1)
        return F.cross_entropy(adjusted, y, reduction="none")


def make_base_loss(name: str, class_counts):
    if name == "ce":
        return CrossEntropyLS()
    if name == "ce_plain":
        return CrossEntropyLS(smoothing=0.0)
    if name == "ldam":
        return LDAMLoss(class_counts)
    raise ValueError(f"unknown loss {name!r}; expected 'ce', 'ce_plain' or 'ldam'")


def split_weights(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return torch.tensor([SPLIT_WEIGHT[SPLIT_OF_CLASS[c]] for c in range(num_classes)])


def branch_masks(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """3 x C: H sees every class, M medium + few, T few only."""
    allowed = {"many": (1, 0, 0), "medium": (1, 1, 0), "few": (1, 1, 1)}
    return torch.tensor([allowed[SPLIT_OF_CLASS[c]] for c in range(num_classes)],
                        dtype=torch.float32).T


class PlainExitLoss:
    def __init__(self, base):
        self.base = base

    def __call__(self, out: ExitOutput, t: Targets) -> torch.Tensor:
        return sum(w * self.base(out.logits, y) for y, w in t.terms())


class SimulatedExitLoss:
    """The same output's loss counted once (many), twice (medium) or three times (few)."""

    def __init__(self, base):
        self.base = base
        self.weights = split_weights()

    def __call__(self, out: ExitOutput, t: Targets) -> torch.Tensor:
        weights = self.weights.to(out.logits.device)
        return sum(w * weights[y] * self.base(out.logits, y) for y, w in t.terms())


class ResLTExitLoss:
    """alpha * branch + (1 - alpha) * fusion, decomposed per sample.

    ResLT's branch term is sum(mask * branch CE) / sum(mask) over the batch. Per sample that is
    sum_b(mask_b * CE_b) / mean_mask_count, with the mean taken over the whole batch, so that the
    batch mean of the per-sample losses equals ResLT's loss when every sample counts at the exit.
    """

    def __init__(self, base, alpha: float = RESLT_ALPHA):
        self.base = base
        self.alpha = alpha
        self.masks = branch_masks()

    def __call__(self, out: ExitOutput, t: Targets) -> torch.Tensor:
        if out.branches is None:
            raise ValueError("the full ResLT loss needs a ResLT head (three branches)")
        masks = self.masks.to(out.logits.device)
        branch = 0.0
        mask_count = 0.0
        fusion = 0.0
        for y, w in t.terms():
            m = masks[:, y]  # 3 x N
            branch = branch + w * sum(m[b] * self.base(out.branches[b], y) for b in range(3))
            mask_count = mask_count + w * m.sum(0)
            fusion = fusion + w * self.base(out.logits, y)
        return self.alpha * branch / mask_count.mean() + (1 - self.alpha) * fusion


_EXIT_LOSSES = {"plain": PlainExitLoss, "simulated": SimulatedExitLoss, "reslt": ResLTExitLoss}


def make_exit_losses(variant, class_counts) -> list:
    """One per-sample loss per exit, as the variant's exit_losses say (SPEC §4): in the simulated
    family the light exits' simulated loss and the final ResLT head's full ResLT loss."""
    base = make_base_loss(variant.loss, class_counts)
    return [_EXIT_LOSSES[kind](base) for kind in variant.exit_losses]
