"""Fitting the early exits of a trained checkpoint (SPEC §4a).

Routed variants never train exits 1..K-1 (no sample meets an untrained head's criterion), so the
product fits them afterwards, learning from the final exit:

  frozen  the backbone and the final exit stay bit-identical (BN in eval mode, no gradient); only
          the early heads train ("disjoint"/IC-only training of Shallow-Deep Networks).
  mixed   backbone and every head fine-tune together, each exit distilled from a frozen copy of
          the parent's final exit and the final exit keeping its own variant loss too
          (Kubaty et al. 2024); the final exit may move, and the metrics say by how much.

Per-sample loss at an early exit k (long-tail aware through the simulated split weights 1/2/3):
    (1 - beta) * L_sim(z_k, y)  +  beta * w_y * T^2 * KL(softmax(t / T) || softmax(z_k / T))
with t the teacher's final-exit logits on the same (augmented, possibly mixed) image. In mixed
mode the final exit adds (1 - beta) * its variant loss + beta * T^2 * KL to the teacher.
Logits stay unadjusted here (they keep the final exit's prior), so one post-hoc logit adjustment
(logit_adjust.py) fits every exit.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .constants import NUM_CLASSES
from .data import build_datasets
from .device_data import DeviceBatches
from .errors import TrainingError
from .evaluation import EarlyExitMetrics
from .losses import (
    DISTILL_TEMPERATURE,
    DISTILL_WEIGHT,
    SimulatedExitLoss,
    Targets,
    batch_targets,
    distillation,
    make_base_loss,
    make_exit_losses,
    split_weights,
)
from .macs import exit_costs
from .network import build_model, check_exit_blocks, init_weights, make_head
from .second_stage import SecondStage, StageConfig

log = logging.getLogger(__name__)
MODES = ("frozen", "mixed")


@dataclass(frozen=True)
class FitConfig(StageConfig):
    mode: str = "frozen"
    epochs: int = 20
    lr: float = 0.1  # cosine-annealed to 0 over the fit
    head_lr: float | None = None  # the early heads' own (mixed mode: new heads need more than the backbone)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 2e-4
    temperature: float = DISTILL_TEMPERATURE
    distill_weight: float = DISTILL_WEIGHT  # beta: share of the distillation term, the label loss gets 1 - beta
    early_heads: str | None = None  # replace the early heads with fresh ones of this kind (e.g. light2)
    # Blocks (0-based, 0..13) the fresh early heads follow; None: where the parent's are.
    early_exit_blocks: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.early_exit_blocks is not None and self.early_heads is None:
            raise TrainingError("moving the early exits needs fresh heads: give --early-heads too")
        if self.mode not in MODES:
            raise TrainingError(f"unknown fit mode {self.mode!r}; expected one of {MODES}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise TrainingError(f"distill_weight must lie in [0, 1], got {self.distill_weight}")
        if self.temperature <= 0:
            raise TrainingError(f"temperature must be > 0, got {self.temperature}")


class ExitFitter(SecondStage):
    """Fits a parent checkpoint's early exits; `fit-exits`' job for the epoch loop (loop.py)."""

    kind, label = "fit-exits", "Fit"

    def __init__(
        self, parent: Path, config: FitConfig, out: Path, data_dir: Path, device: torch.device = torch.device("cpu")
    ):
        self.config, self.out, self.device = config, Path(out), device
        self.model = self.load_parent(parent)
        if self.variant.num_exits < 2:
            raise TrainingError(f"{parent}: variant {self.variant.name} has a single exit; nothing to fit")
        if config.early_heads is not None:
            self.replace_early_heads(config.early_heads, config.early_exit_blocks)
        self.train_set, self.test_set = build_datasets(
            data_dir, self.train_config.imbalance, config.max_train_samples, config.max_test_samples
        )
        self.class_counts = np.bincount(self.train_set.labels, minlength=10).tolist()
        self.batches = DeviceBatches(self.train_set, device, config.batch_size, self.variant.augmentation)
        base = make_base_loss(self.variant.loss, self.class_counts)
        self.early_loss = SimulatedExitLoss(base)
        self.final_loss = make_exit_losses(self.variant, self.class_counts)[-1]
        self.weights = split_weights().to(device)
        self.teacher = None
        head_params = [p for head in self.early_heads for p in head.parameters()]
        groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
        if config.mode == "mixed":
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
            heads = {id(p) for p in head_params}
            groups.append({"params": [p for p in self.model.parameters() if id(p) not in heads], "lr": config.lr})
        else:
            self.model.requires_grad_(False)
            for p in head_params:
                p.requires_grad_(True)
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.costs = exit_costs(self.model)
        self.history: list[dict] = []
        self.start_epoch = 0

    def replace_early_heads(self, kind: str, blocks: tuple[int, ...] | None = None) -> None:
        """Fresh early heads of another kind (their MACs are counted like any head's), after `blocks`
        if given (the parent's backbone and final exit carried over), else where the parent's were."""
        moved = blocks is not None
        blocks = tuple(blocks) if moved else self.model.exit_blocks[:-1]
        try:
            check_exit_blocks((*blocks, self.model.exit_blocks[-1]), len(blocks) + 1)
        except ValueError as exc:
            raise TrainingError(f"early exits after blocks {[b + 1 for b in blocks]} (1-based): {exc}") from None
        self.variant = self.variant.with_early_heads(
            (kind,) * len(blocks), (*blocks, self.model.exit_blocks[-1]) if moved else None
        )
        parent, final = self.model.state_dict(), f"exits.{self.model.num_exits - 1}."
        self.model = build_model(self.variant).to(self.device)
        kept = {k: v for k, v in parent.items() if not k.startswith("exits.")}
        kept |= {
            f"exits.{self.variant.num_exits - 1}.{k[len(final) :]}": v for k, v in parent.items() if k.startswith(final)
        }
        missing, unexpected = self.model.load_state_dict(kept, strict=False)
        fresh = tuple(f"exits.{k}." for k in range(self.variant.num_exits - 1))
        assert not unexpected and all(k.startswith(fresh) for k in missing), (missing, unexpected)
        self.model.eval()
        classifier = "normed" if self.variant.loss == "ldam" else "linear"
        torch.manual_seed(self.config.seed)  # the heads' initialisation depends on the seed alone
        for k in range(self.variant.num_exits - 1):
            head = make_head(kind, self.model.exit_channels[k], classifier, NUM_CLASSES)
            head.apply(init_weights)
            self.model.exits[k] = head.to(self.device)

    @property
    def early_heads(self) -> list[torch.nn.Module]:
        return list(self.model.exits[:-1])

    def set_train_mode(self) -> None:
        if self.config.mode == "mixed":
            self.model.train()
            return
        self.model.eval()  # frozen backbone and final exit: BN keeps its running statistics
        for head in self.early_heads:
            head.train()

    def forward(self, x: torch.Tensor):
        """(student exit outputs, teacher final logits)."""
        if self.config.mode == "mixed":
            with torch.no_grad():
                teacher = self.teacher(x)[-1].logits
            return self.model(x), teacher
        with torch.no_grad():
            features, h = [], x
            for segment in self.model.segments():
                h = segment(h)
                features.append(h)
            final = self.model.exits[-1](features[-1])
        outputs = [head(f) for head, f in zip(self.early_heads, features)] + [final]
        return outputs, final.logits

    def loss(self, outputs, teacher: torch.Tensor, targets: Targets) -> torch.Tensor:
        beta, t = self.config.distill_weight, self.config.temperature
        sample_weight = sum(w * self.weights[y] for y, w in targets.terms())
        total = 0.0
        for out in outputs[:-1]:
            total = (
                total
                + (1 - beta) * self.early_loss(out, targets)
                + beta * sample_weight * distillation(out.logits, teacher, t)
            )
        if self.config.mode == "mixed":
            total = (
                total
                + (1 - beta) * self.final_loss(outputs[-1], targets)
                + beta * distillation(outputs[-1].logits, teacher, t)
            )
        return total.mean()

    def batch_loss(self, x: torch.Tensor, y: torch.Tensor, rng) -> torch.Tensor:
        x, targets = batch_targets(x, y, self.variant.augmentation, rng)
        outputs, teacher = self.forward(x)
        return self.loss(outputs, teacher, targets)

    def evaluate(self, final: bool = False) -> EarlyExitMetrics:
        return self.evaluate_network(self.model)

    def metrics_header(self) -> dict:
        return {**super().metrics_header(), "mode": self.config.mode}

    def state(self, epoch: int) -> dict:
        """A checkpoint `evaluate`, `calibrate` and `export` read like a training one: the parent's
        training config and record, the fitted weights, and the fit's own record."""
        # The layout, where the exits are not at the variant's own places (a parent's fit may have moved them).
        blocks = {} if self.variant.exit_blocks is None else {"exit_blocks": list(self.variant.exit_blocks)}
        return self.stage_state(
            epoch,
            self.model.state_dict(),
            exit_heads=list(self.variant.exit_heads),
            **blocks,
            optimizer=self.optimizer.state_dict(),
        )

    def restore(self, state: dict) -> None:
        fit = self.restore_record(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(fit["optimizer"])
