"""Per-sample losses (SPEC §4): base losses (CE with label smoothing, LDAM) and per-exit losses
(plain, simulated ResLT, full ResLT). Every function returns one loss per sample so that
accumulative and routed assignment (routing.py) can pick which exits count for which sample.
Each registers itself by the name variants use (BASE_LOSSES, EXIT_LOSSES).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import augmentation_parts, mixup
from .constants import NUM_CLASSES, SPLIT_OF_CLASS
from .network import LDAM_SCALE, ExitOutput
from .registry import Registry

LABEL_SMOOTHING = 0.1
LDAM_MAX_MARGIN = 0.5
RESLT_ALPHA = 0.95
# Simulated ResLT weight / full ResLT branch-mask count per split: many 1, medium 2, few 3.
SPLIT_WEIGHT = {"many": 1.0, "medium": 2.0, "few": 3.0}
# The official ResLT code's branch masks on CIFAR-10-LT (an ablation, not SPEC §4's): M sees
# classes 2-9, T classes 4-9, by class index rather than by split.
OFFICIAL_RESLT_FIRST_CLASS = {"medium": 2, "tail": 4}

# Distillation of early exits from the final one (fit-exits, and the "distilled" exit loss).
DISTILL_TEMPERATURE = 2.0
DISTILL_WEIGHT = 0.5  # beta: the distillation term's share, the label loss gets 1 - beta

BASE_LOSSES = Registry("base loss")  # factory(class_counts) -> per-sample loss(logits, y)
# factory(base loss) -> per-sample loss(ExitOutput, Targets, teacher=the final exit's ExitOutput)
EXIT_LOSSES = Registry("exit loss")


@dataclass(frozen=True)
class Targets:
    """Labels of a (possibly mixed) batch: loss = lam * L(y_a) + (1 - lam) * L(y_b)."""

    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float = 1.0

    @classmethod
    def plain(cls, y: torch.Tensor) -> Targets:
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
    if "mixup" not in augmentation_parts(augmentation):
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


BASE_LOSSES.register("ce")(lambda class_counts: CrossEntropyLS())  # label smoothing 0.1
BASE_LOSSES.register("ce_plain")(lambda class_counts: CrossEntropyLS(smoothing=0.0))  # the erm control
BASE_LOSSES.register("ldam")(LDAMLoss)


@BASE_LOSSES.register("logit_adjusted")
class LogitAdjustedLoss:
    """Menon et al.'s logit-adjusted cross-entropy (ICLR 2021), label smoothing 0.1 as CE's:
    CE(logits + tau * log prior, y). At tau = 1 it is Balanced Softmax (Ren et al. 2020). The
    network's own logits are then already balanced at inference."""

    def __init__(self, class_counts, tau: float = 1.0, smoothing: float = LABEL_SMOOTHING):
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if (counts <= 0).any():
            raise ValueError(f"the logit-adjusted loss needs a positive count for every class, got {class_counts}")
        self.shift = (tau * (counts / counts.sum()).log()).float()
        self.ce = CrossEntropyLS(smoothing)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ce(logits + self.shift.to(logits.device, logits.dtype), y)


def make_base_loss(name: str, class_counts):
    return BASE_LOSSES.get(name)(class_counts)


def split_weights(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return torch.tensor([SPLIT_WEIGHT[SPLIT_OF_CLASS[c]] for c in range(num_classes)])


def branch_masks(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """3 x C: H sees every class, M medium + few, T few only."""
    allowed = {"many": (1, 0, 0), "medium": (1, 1, 0), "few": (1, 1, 1)}
    return torch.tensor([allowed[SPLIT_OF_CLASS[c]] for c in range(num_classes)], dtype=torch.float32).T


def official_branch_masks(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """3 x C as the official ResLT code masks CIFAR-10-LT: H every class, M classes 2-9, T 4-9."""
    c = torch.arange(num_classes)
    return torch.stack(
        [
            torch.ones(num_classes),
            (c >= OFFICIAL_RESLT_FIRST_CLASS["medium"]).float(),
            (c >= OFFICIAL_RESLT_FIRST_CLASS["tail"]).float(),
        ]
    )


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample T^2 * KL(softmax(teacher / T) || softmax(student / T))."""
    log_p = F.log_softmax(teacher.float() / temperature, dim=1)
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(dim=1)


@EXIT_LOSSES.register("plain")
class PlainExitLoss:
    def __init__(self, base):
        self.base = base

    def __call__(self, out: ExitOutput, t: Targets, teacher: ExitOutput | None = None) -> torch.Tensor:
        return sum(w * self.base(out.logits, y) for y, w in t.terms())


@EXIT_LOSSES.register("simulated")
class SimulatedExitLoss:
    """The same output's loss counted once (many), twice (medium) or three times (few)."""

    def __init__(self, base):
        self.base = base
        self.weights = split_weights()

    def __call__(self, out: ExitOutput, t: Targets, teacher: ExitOutput | None = None) -> torch.Tensor:
        weights = self.weights.to(out.logits.device)
        return sum(w * weights[y] * self.base(out.logits, y) for y, w in t.terms())


@EXIT_LOSSES.register("distilled")
class DistilledExitLoss:
    """An early exit trained with the network from the start (joint routing), learning from the
    final exit of the same forward pass (self-distillation, no gradient into the teacher):
    (1 - beta) * simulated loss + beta * w_y * T^2 * KL(final || exit), the fit-exits loss.
    `weighted=False` drops the simulated loss's split weights w_y (the "distilled_plain" loss), for
    a base loss that is balanced already (logit-adjusted): the two together favour the tail twice."""

    def __init__(
        self, base, temperature: float = DISTILL_TEMPERATURE, beta: float = DISTILL_WEIGHT, weighted: bool = True
    ):
        self.label_loss = SimulatedExitLoss(base) if weighted else PlainExitLoss(base)
        self.weights = split_weights() if weighted else torch.ones(NUM_CLASSES)
        self.temperature, self.beta = temperature, beta

    def __call__(self, out: ExitOutput, t: Targets, teacher: ExitOutput | None = None) -> torch.Tensor:
        if teacher is None:
            raise ValueError("the distilled exit loss needs the final exit's output")
        weights = self.weights.to(out.logits.device)
        sample_weight = sum(w * weights[y] for y, w in t.terms())
        return (1 - self.beta) * self.label_loss(out, t) + self.beta * sample_weight * distillation(
            out.logits, teacher.logits.detach(), self.temperature
        )


EXIT_LOSSES.register("distilled_plain")(lambda base: DistilledExitLoss(base, weighted=False))


@EXIT_LOSSES.register("reslt")
class ResLTExitLoss:
    """alpha * branch + (1 - alpha) * fusion, decomposed per sample.

    ResLT's branch term is sum(mask * branch CE) / sum(mask) over the batch, one normaliser for the
    three branches. Per sample that is sum_b(mask_b * CE_b) / mean_mask_count, with the mean taken
    over the whole batch, so that the batch mean of the per-sample losses equals ResLT's loss when
    every sample counts at the exit. The fusion term is the loss of the three branches' summed logits.
    """

    def __init__(self, base, alpha: float = RESLT_ALPHA, masks: torch.Tensor | None = None):
        self.base = base
        self.alpha = alpha
        self.masks = branch_masks() if masks is None else masks

    def __call__(self, out: ExitOutput, t: Targets, teacher: ExitOutput | None = None) -> torch.Tensor:
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


@EXIT_LOSSES.register("reslt_official")
def official_reslt_loss(base) -> ResLTExitLoss:
    """The full ResLT loss with the official code's class-index masks (the model8-reslt-official
    ablation)."""
    return ResLTExitLoss(base, masks=official_branch_masks())


# Exit losses that read the three branches of a ResLT head.
BRANCH_LOSSES = ("reslt", "reslt_official")


def make_exit_losses(variant, class_counts) -> list:
    """One per-sample loss per exit, as the variant's exit_losses say (SPEC §4): in the simulated
    family the light exits' simulated loss and the final ResLT head's full ResLT loss."""
    base = make_base_loss(variant.loss, class_counts)
    return [EXIT_LOSSES.get(kind)(base) for kind in variant.exit_losses]
