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
import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from modelrepo.manifest import sha256_file
from . import runinfo
from .config import epoch_seed
from .data import build_datasets
from .device_data import DeviceBatches
from .errors import Diverged, TrainingError
from .evaluation import EarlyExitMetrics, evaluate_model
from .loop import require_same_config
from .losses import (DISTILL_TEMPERATURE, DISTILL_WEIGHT, SimulatedExitLoss, Targets, batch_targets,
                     distillation, make_base_loss, make_exit_losses, split_weights)
from .constants import NUM_CLASSES
from .macs import exit_costs
from .network import init_weights, make_head
from .rundir import checkpoint_model

log = logging.getLogger(__name__)
MODES = ("frozen", "mixed")


@dataclass(frozen=True)
class FitConfig:
    mode: str = "frozen"
    epochs: int = 20
    lr: float = 0.1  # cosine-annealed to 0 over the fit
    head_lr: float | None = None  # the early heads' own (mixed mode: new heads need more than the backbone)
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 2e-4
    temperature: float = DISTILL_TEMPERATURE
    distill_weight: float = DISTILL_WEIGHT  # beta: share of the distillation term, the label loss gets 1 - beta
    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    max_batches: int | None = None
    eval_batch_size: int = 500
    checkpoint_every: int = 1
    early_heads: str | None = None  # replace the early heads with fresh ones of this kind (e.g. light2)

    def __post_init__(self):
        if self.mode not in MODES:
            raise TrainingError(f"unknown fit mode {self.mode!r}; expected one of {MODES}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise TrainingError(f"distill_weight must lie in [0, 1], got {self.distill_weight}")
        if self.temperature <= 0:
            raise TrainingError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cosine_factor(config: FitConfig, epoch: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / config.epochs))


class ExitFitter:
    """Fits a parent checkpoint's early exits; `fit-exits`' job for the epoch loop (loop.py)."""

    kind = "fit-exits"

    def __init__(self, parent: Path, config: FitConfig, out: Path, data_dir: Path,
                 device: torch.device = torch.device("cpu")):
        self.parent, self.config, self.out, self.device = Path(parent), config, Path(out), device
        self.model, self.variant, self.train_config, self.parent_state = checkpoint_model(self.parent, device)
        if self.variant.num_exits < 2:
            raise TrainingError(f"{parent}: variant {self.variant.name} has a single exit; nothing to fit")
        if config.early_heads is not None:
            self.replace_early_heads(config.early_heads)
        self.parent_sha256 = sha256_file(self.parent)
        self.train_set, self.test_set = build_datasets(
            data_dir, self.train_config.imbalance, config.max_train_samples, config.max_test_samples)
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
        self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.costs = exit_costs(self.model)
        self.history: list[dict] = []
        self.start_epoch = 0

    def replace_early_heads(self, kind: str) -> None:
        """Fresh early heads of another kind (their MACs are counted like any head's)."""
        heads = (kind,) * (self.variant.num_exits - 1) + self.variant.exit_heads[-1:]
        self.variant = dataclasses.replace(self.variant, exit_heads=heads)
        classifier = "normed" if self.variant.loss == "ldam" else "linear"
        torch.manual_seed(self.config.seed)
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
            total = total + (1 - beta) * self.early_loss(out, targets) \
                + beta * sample_weight * distillation(out.logits, teacher, t)
        if self.config.mode == "mixed":
            total = total + (1 - beta) * self.final_loss(outputs[-1], targets) \
                + beta * distillation(outputs[-1].logits, teacher, t)
        return total.mean()

    def run_epoch(self, epoch: int) -> dict:
        cfg = self.config
        factor = cosine_factor(cfg, epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        lr = self.optimizer.param_groups[-1]["lr"]  # the backbone's in mixed mode
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        rng = np.random.default_rng([cfg.seed, epoch])
        self.set_train_mode()
        total = len(self.batches) if cfg.max_batches is None else min(cfg.max_batches, len(self.batches))
        loss_sum, seen = 0.0, 0
        bar = tqdm(self.batches.epoch(seed), total=total, desc=f"fit {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not sys.stderr.isatty(), unit="batch")
        for step, (x, y) in enumerate(bar):
            if step >= total:
                break
            x, targets = batch_targets(x, y, self.variant.augmentation, rng)
            outputs, teacher = self.forward(x)
            loss = self.loss(outputs, teacher, targets)
            if not torch.isfinite(loss):
                raise Diverged(epoch + 1, f"loss is {loss.item()} at batch {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * x.size(0)
            seen += x.size(0)
        return {"lr": lr, "loss": loss_sum / max(seen, 1)}

    def evaluate(self, final: bool = False) -> EarlyExitMetrics:
        _, metrics = evaluate_model(self.model, self.test_set, self.variant.infer_threshold,
                                    self.config.eval_batch_size, self.device, self.costs)
        return metrics

    def check(self, epoch: int, test: EarlyExitMetrics) -> None:
        """Nothing beyond the loss: the final exit (frozen) or the teacher (mixed) anchors a fit."""

    def notes(self) -> list[str]:
        return []

    @staticmethod
    def epoch_line(record: dict) -> str:
        alone = "/".join(f"{row['overall']:.2f}" for row in record["per_exit"])
        exits = "/".join(f"{100 * d:.1f}" for d in record["exit_distribution"])
        return (f"Fit {record['epoch']}\tTime: {record['seconds']:.1f}s\tLR: {record['lr']:.5f}\t"
                f"Loss: {record['loss']:.4f}\tEach exit alone: {alone}%\tTest Acc: {record['overall']:.2f}% "
                f"at threshold {record['threshold']:g}\tExits: {exits}%")

    def config_record(self) -> dict:
        return {"kind": self.kind, "fit_config": self.config.to_dict(),
                "parent": {"path": str(self.parent), "sha256": self.parent_sha256},
                "config": self.train_config.to_dict(), "variant": self.parent_state.get("variant"),
                "provenance": runinfo.provenance(self.device)}

    def metrics_header(self) -> dict:
        return {"variant": self.variant.name, "imbalance": self.train_config.imbalance,
                "seed": self.config.seed, "mode": self.config.mode,
                "parent": {"path": str(self.parent), "sha256": self.parent_sha256}, "exit_costs": self.costs}

    def state(self, epoch: int) -> dict:
        """A checkpoint `evaluate`, `calibrate` and `export` read like a training one: the parent's
        training config and record, the fitted weights, and the fit's own record."""
        parent = self.parent_state
        return {**{k: parent[k] for k in parent if k not in ("model", "optimizer")},
                "model": self.model.state_dict(),
                "fit": {"config": self.config.to_dict(), "epoch": epoch, "history": self.history,
                        "exit_heads": list(self.variant.exit_heads),
                        "optimizer": self.optimizer.state_dict(),
                        "parent": {"path": str(self.parent), "sha256": self.parent_sha256},
                        "provenance": runinfo.provenance(self.device)}}

    def restore(self, state: dict) -> None:
        fit = state["fit"]
        if fit["parent"]["sha256"] != self.parent_sha256:
            raise TrainingError(f"--resume: {self.out} was fitted from a parent with sha256 "
                                f"{fit['parent']['sha256'][:12]}…, but {self.parent} has {self.parent_sha256[:12]}…")
        require_same_config(fit["config"], self.config.to_dict(), self.out)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(fit["optimizer"])
        self.history = list(fit["history"])
        self.start_epoch = int(fit["epoch"])
