"""Early-exit evaluation (SPEC §4 inference rule): accuracy by split, exit distribution, MACs."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from modelrepo.exit_rule import first_confident_exit
from modelrepo.manifest import ExitMetrics, OperatingPoint

from .augment import normalize_batch
from .constants import NUM_CLASSES, SPLITS
from .data import Split
from .macs import exit_costs


@torch.no_grad()
def exit_logits(model, split: Split, batch_size: int = 500, device="cpu", amp: bool = False) -> torch.Tensor:
    """K x N x C logits of every exit (float32, on the CPU); `amp`: forward in bf16 autocast."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        x = normalize_batch(split.images[start : start + batch_size]).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            chunks.append(torch.stack([o.logits.float() for o in model(x)]).cpu())
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def exit_probabilities(
    model, split: Split, batch_size: int = 500, device="cpu", adjustment: torch.Tensor | None = None, amp: bool = False
) -> torch.Tensor:
    """K x N x C softmax probabilities of every exit, after subtracting `adjustment` (K x C, row k
    from exit k's logits: logit_adjust.stage_adjustments) when given."""
    logits = exit_logits(model, split, batch_size, device, amp)
    return (logits if adjustment is None else logits - adjustment[:, None, :]).softmax(dim=2)


def split_accuracy(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Overall / many / medium / few accuracy in percent, plus per-class accuracy."""
    correct = pred == labels
    out = {"overall": 100.0 * correct.mean() if len(labels) else 0.0}
    for name, classes in SPLITS.items():
        member = np.isin(labels, classes)
        out[name] = 100.0 * correct[member].mean() if member.any() else None
    out["per_class"] = [
        100.0 * correct[labels == c].mean() if (labels == c).any() else None for c in range(NUM_CLASSES)
    ]
    return out


@dataclass(frozen=True)
class EarlyExitMetrics:
    """The inference rule's outcome on a labelled split. Fields a reader relies on are attributes,
    so a renamed one fails where it is read; JSON (metrics.json, the manifest) is made here only."""

    threshold: float | list[float]
    overall: float
    many: float | None
    medium: float | None
    few: float | None
    per_class: list[float | None]
    exit_counts: list[int]
    exit_distribution: list[float]
    mean_macs: float
    full_macs: int
    mean_macs_share: float
    per_exit: list[ExitMetrics]  # each exit alone
    # Per early exit: of the images leaving there, the share whose class equals the final exit's
    # (what the server's shadow runs measure online, without labels); None where none leave.
    agreement: list[float | None]
    predicted_class_share_max: float  # the largest share of one class among the predictions
    predictions: np.ndarray = field(repr=False)  # N, class answered
    exits: np.ndarray = field(repr=False)  # N, 1-based exit

    @property
    def images(self) -> int:
        return len(self.predictions)

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(
            threshold=self.threshold,
            overall=self.overall,
            many=self.many,
            medium=self.medium,
            few=self.few,
            exit_distribution=self.exit_distribution,
            mean_macs_share=self.mean_macs_share,
            agreement=self.agreement,
        )

    def summary(self) -> dict:
        """JSON of everything but the per-image arrays (an epoch's record)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("predictions", "exits")}
        d["per_exit"] = [row.model_dump() for row in self.per_exit]
        return d

    def to_dict(self) -> dict:
        """JSON with the per-image class and exit (metrics.json's final evaluation)."""
        return {**self.summary(), "predictions": self.predictions.tolist(), "exits": self.exits.tolist()}


def early_exit_metrics(probs: torch.Tensor, labels: np.ndarray, threshold, costs: list[dict]) -> EarlyExitMetrics:
    """Metrics of the exit rule (modelrepo.exit_rule) on every exit's probabilities K x N x C;
    `threshold` is one number, or one per early exit."""
    num_exits = probs.size(0)
    conf, pred = (t.numpy() for t in probs.max(dim=2))
    exits = first_confident_exit(conf, threshold)
    chosen = pred[exits, np.arange(len(exits))]
    counts = np.bincount(exits, minlength=num_exits)
    distribution = counts / max(len(exits), 1)
    cumulative = np.array([c["cumulative_macs"] for c in costs], dtype=np.float64)
    mean_macs = float((distribution * cumulative).sum())
    final = pred[-1]
    agreement = [
        float((chosen[exits == k] == final[exits == k]).mean()) if (exits == k).any() else None
        for k in range(num_exits - 1)
    ]
    per_exit = []
    for k in range(num_exits):
        acc = split_accuracy(pred[k], labels)
        per_exit.append(
            ExitMetrics(
                exit=k + 1,
                overall=acc["overall"],
                many=acc["many"],
                medium=acc["medium"],
                few=acc["few"],
                cumulative_macs=int(cumulative[k]),
            )
        )
    acc = split_accuracy(chosen, labels)
    return EarlyExitMetrics(
        threshold=float(threshold) if np.isscalar(threshold) else [float(t) for t in threshold],
        overall=acc["overall"],
        many=acc["many"],
        medium=acc["medium"],
        few=acc["few"],
        per_class=acc["per_class"],
        exit_counts=counts.tolist(),
        exit_distribution=distribution.tolist(),
        mean_macs=mean_macs,
        full_macs=int(cumulative[-1]),
        mean_macs_share=mean_macs / cumulative[-1],
        per_exit=per_exit,
        agreement=agreement,
        predicted_class_share_max=float(np.bincount(chosen, minlength=NUM_CLASSES).max() / max(len(chosen), 1)),
        predictions=chosen,
        exits=exits + 1,
    )


def evaluate_model(
    model,
    split: Split,
    threshold,
    batch_size: int = 500,
    device="cpu",
    costs: list[dict] | None = None,
    adjustment: torch.Tensor | None = None,
    amp: bool = False,
) -> tuple[torch.Tensor, EarlyExitMetrics]:
    """(every exit's probabilities, early-exit metrics) of a model on a split; `threshold` is one
    number or one per exit."""
    probs = exit_probabilities(model, split, batch_size, device, adjustment, amp)
    return probs, early_exit_metrics(probs, split.labels, threshold, costs or exit_costs(model))


def threshold_sweep(probs: torch.Tensor, labels: np.ndarray, costs: list[dict], thresholds) -> list[EarlyExitMetrics]:
    """Early-exit metrics (with per-image predictions) at each threshold, from one set of probs."""
    return [early_exit_metrics(probs, labels, float(t), costs) for t in thresholds]


def format_threshold(threshold) -> str:
    """0.5, or 0.62/0.71 for per-exit thresholds."""
    return f"{threshold:.2f}" if np.isscalar(threshold) else "/".join(f"{t:.2f}" for t in threshold)


def format_report(metrics: EarlyExitMetrics) -> str:
    """Human-readable table of early-exit metrics (the `evaluate` command's output)."""
    lines = [
        f"threshold {format_threshold(metrics.threshold)}",
        f"early-exit accuracy  overall {metrics.overall:.2f}%  many {metrics.many:.2f}%  "
        f"medium {metrics.medium:.2f}%  few {metrics.few:.2f}%",
        "exit distribution    "
        + "  ".join(f"exit {k + 1}: {100 * d:.1f}%" for k, d in enumerate(metrics.exit_distribution)),
        f"mean MACs / image    {metrics.mean_macs / 1e6:.2f}M of {metrics.full_macs / 1e6:.2f}M "
        f"({100 * metrics.mean_macs_share:.1f}% of the full network)",
        "each exit alone:",
        f"  {'exit':>4}  {'overall':>8}  {'many':>7}  {'medium':>7}  {'few':>7}  {'MACs':>8}",
    ]
    for row in metrics.per_exit:
        lines.append(
            f"  {row.exit:>4}  {row.overall:>7.2f}%  {row.many:>6.2f}%  "
            f"{row.medium:>6.2f}%  {row.few:>6.2f}%  {row.cumulative_macs / 1e6:>7.2f}M"
        )
    return "\n".join(lines)
