"""Classifier re-balancing, a second stage after training (MiSLAS's stage 2, Zhong et al. CVPR 2021),
applied to every exit of a trained checkpoint.

A long-tailed training set leaves a network whose features are good but whose classifiers favour
the head classes (Kang et al.'s decoupling). The second stage keeps the backbone and each head's
feature layers frozen (BN in eval mode, unless `shift_bn` lets BN re-estimate its statistics on the
balanced batches) and re-trains only each exit's classifier layer(s), on class-balanced batches
(every class equally likely, then a random image of it; crop + flip, no Mixup), with

  * label-aware smoothing: class y's smoothing factor falls from `smooth_head` (the most frequent
    class) to `smooth_tail` (the rarest) along a concave curve, so head classes get the
    over-confidence penalty and tail classes keep their sharpened targets;
  * learnable weight scaling (LWS): a per-class scale on each exit's logits, at `lr`, while the
    classifier weights themselves move at `lr * classifier_lr_factor`.

Defaults are MiSLAS's CIFAR-10-LT stage-2 configuration (10 epochs, lr 0.1 cosine to 0, factor
0.5, smoothing 0.3 -> 0.0, no BN shift, batch 128, weight decay 2e-4). The scales are folded into
the classifier weights in the saved checkpoint (s * (W x + b) = (s W) x + s b; a ResLT head's three
branch classifiers each take the scale, since their logits are summed), so `evaluate`,
`calibrate` and `export` read the same network they always do.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import build_datasets
from .device_data import DeviceBatches
from .errors import TrainingError
from .evaluation import EarlyExitMetrics
from .macs import exit_costs
from .network import ExitOutput
from .second_stage import SecondStage, StageConfig


@dataclass(frozen=True)
class RebalanceConfig(StageConfig):
    epochs: int = 10
    lr: float = 0.1  # the logit scales'; cosine-annealed to 0
    classifier_lr_factor: float = 0.5  # the classifier weights train at lr * factor
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 2e-4
    smooth_head: float = 0.3
    smooth_tail: float = 0.0
    shift_bn: bool = False

    def __post_init__(self):
        for name in ("smooth_head", "smooth_tail"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TrainingError(f"{name} must lie in [0, 1), got {getattr(self, name)}")


def label_aware_smoothing(class_counts, head: float, tail: float) -> torch.Tensor:
    """Per-class smoothing factors: tail + (head - tail) * sin(pi/2 * (n - n_min) / (n_max - n_min))."""
    n = np.asarray(class_counts, dtype=np.float64)
    span = n.max() - n.min()
    position = (n - n.min()) / span if span > 0 else np.ones_like(n)
    return torch.tensor(tail + (head - tail) * np.sin(0.5 * math.pi * position), dtype=torch.float32)


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Per-sample CE against (1 - e_y) one_hot(y) + e_y / C, e_y the label's own factor."""
    logp = logits.float().log_softmax(dim=1)
    eps = smoothing[y]
    return -(1 - eps) * logp.gather(1, y[:, None]).squeeze(1) - eps * logp.mean(dim=1)


def exit_classifiers(head: nn.Module) -> list[nn.Linear]:
    """The layers of an exit head that map pooled features to logits (summed when several)."""
    found = [m for name, m in head.named_modules() if name.split(".")[0] in ("fc", "fcs") and name != "fcs"]
    if not found or not all(isinstance(m, nn.Linear) for m in found):
        raise TrainingError(
            f"rebalancing needs linear classifiers; {type(head).__name__} has "
            f"{[type(m).__name__ for m in found] or 'none'} (LDAM's cosine classifier has "
            "no logit scale to learn)"
        )
    return found


class ScaledExits(nn.Module):
    """The network with a learnable per-class scale on every exit's logits."""

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        self.scales = nn.Parameter(torch.ones(model.num_exits, num_classes))

    def forward(self, x: torch.Tensor) -> list[ExitOutput]:
        return [
            ExitOutput(out.logits * s, None if out.branches is None else out.branches * s)
            for out, s in zip(self.model(x), self.scales)
        ]

    def folded(self) -> nn.Module:
        """A copy of the network with the scales multiplied into its classifier layers."""
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for head, s in zip(model.exits, self.scales.detach()):
                for fc in exit_classifiers(head):
                    fc.weight.mul_(s[:, None])
                    if fc.bias is not None:
                        fc.bias.mul_(s)
        return model


class ClassifierRebalancer(SecondStage):
    """Re-trains a checkpoint's exit classifiers on class-balanced batches; `rebalance`'s job for
    the epoch loop (loop.py)."""

    kind, label = "rebalance", "Rebalance"

    def __init__(
        self,
        parent: Path,
        config: RebalanceConfig,
        out: Path,
        data_dir: Path,
        device: torch.device = torch.device("cpu"),
    ):
        self.config, self.out, self.device = config, Path(out), device
        model = self.load_parent(parent)
        self.train_set, self.test_set = build_datasets(
            data_dir, self.train_config.imbalance, config.max_train_samples, config.max_test_samples
        )
        self.class_counts = np.bincount(self.train_set.labels, minlength=10).tolist()
        self.batches = DeviceBatches(self.train_set, device, config.batch_size, "basic", balanced=True)
        self.smoothing = label_aware_smoothing(self.class_counts, config.smooth_head, config.smooth_tail).to(device)
        self.net = ScaledExits(model, len(self.class_counts)).to(device)
        model.requires_grad_(False)
        classifier_params = [p for head in model.exits for fc in exit_classifiers(head) for p in fc.parameters()]
        for p in classifier_params:
            p.requires_grad_(True)
        self.base_lrs = [config.lr * config.classifier_lr_factor, config.lr]
        self.optimizer = torch.optim.SGD(
            [
                {"params": classifier_params, "lr": self.base_lrs[0]},
                {"params": [self.net.scales], "lr": self.base_lrs[1]},
            ],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.costs = exit_costs(model)
        self.history: list[dict] = []
        self.start_epoch = 0

    def set_train_mode(self) -> None:
        """Frozen feature layers keep BN's running statistics, unless shift_bn re-estimates them."""
        self.net.train(self.config.shift_bn)

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, rng) -> torch.Tensor:
        return sum(smoothed_cross_entropy(out.logits, y, self.smoothing).mean() for out in self.net(x))

    def evaluate(self, final: bool = False) -> EarlyExitMetrics:
        return self.evaluate_network(self.net)

    def metrics_header(self) -> dict:
        return {**super().metrics_header(), "smoothing": self.smoothing.tolist()}

    def state(self, epoch: int) -> dict:
        """The folded network as `model`; the stage's record keeps what a resume needs (the unfolded
        network and its scales)."""
        return self.stage_state(
            epoch,
            self.net.folded().state_dict(),
            network=self.net.state_dict(),
            scales=self.net.scales.detach().tolist(),
            optimizer=self.optimizer.state_dict(),
        )

    def restore(self, state: dict) -> None:
        record = self.restore_record(state)
        self.net.load_state_dict(record["network"])
        self.optimizer.load_state_dict(record["optimizer"])
