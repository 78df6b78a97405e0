"""What `fit-exits` and `rebalance` share as loop jobs (loop.py): both start from a trained
checkpoint, write a checkpoint that reads like a training one (the parent's records, the new
weights as `model`, the stage's own record under its kind's key), and resume only from a run of
the same parent (sha256) and the same config."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from modelrepo.manifest import sha256_file

from . import runinfo
from .batch_loop import run_batches, seed_epoch
from .checkpoint import WEIGHTS_ONLY
from .config import RunLimits, epoch_seed
from .errors import TrainingError
from .evaluation import EarlyExitMetrics, evaluate_model
from .loop import require_same_config
from .rundir import checkpoint_model


@dataclass(frozen=True)
class StageConfig(RunLimits):
    """The fields every second stage's config has (its own recipe's follow in the subclass)."""

    checkpoint_every: int = 1
    eval_every = 1  # not a field: a second stage is short and evaluated after every epoch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SecondStage:
    kind: str  # metrics.json "kind", and the checkpoint key of the stage's own record
    label: str  # first word of an epoch's log line

    # Set by the subclass's __init__ (through load_parent and its own setup):
    parent: Path
    parent_sha256: str
    parent_state: dict
    config: StageConfig
    device: torch.device
    history: list[dict]
    start_epoch: int
    # ... and batches (DeviceBatches), optimizer, base_lrs (one per parameter group), set_train_mode(),
    # batch_loss(x, y, rng) -> the batch's scalar loss.

    def load_parent(self, parent: Path) -> torch.nn.Module:
        """The parent's network (eval mode); sets variant, train_config, parent_state and the sha256."""
        self.parent = Path(parent)
        model, self.variant, self.train_config, self.parent_state = checkpoint_model(self.parent, self.device)
        self.parent_sha256 = sha256_file(self.parent)
        return model

    @property
    def parent_record(self) -> dict:
        return {"path": str(self.parent), "sha256": self.parent_sha256}

    def run_epoch(self, epoch: int) -> dict:
        """One pass over the batches (batch_loop.run_batches), every group's lr cosine-annealed from
        its base to 0 over the run."""
        cfg = self.config
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        rng = seed_epoch(cfg.seed, epoch)
        self.set_train_mode()
        total = len(self.batches) if cfg.max_batches is None else min(cfg.max_batches, len(self.batches))
        totals = run_batches(
            self.batches.epoch(epoch_seed(cfg.seed, epoch)),
            total,
            partial(self.train_step, rng),
            epoch=epoch,
            desc=f"{self.record_key} {epoch + 1}/{cfg.epochs}",
            device=self.device,
        )
        # The last group's: the backbone's in a mixed fit, the logit scales' in a rebalance.
        return {"lr": self.optimizer.param_groups[-1]["lr"], "loss": totals["loss"]}

    def train_step(self, rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor):
        loss = self.batch_loss(x, y, rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, None

    def evaluate_network(self, network) -> EarlyExitMetrics:
        _, metrics = evaluate_model(
            network, self.test_set, self.variant.infer_threshold, self.config.eval_batch_size, self.device, self.costs
        )
        return metrics

    def check(self, epoch: int, test: EarlyExitMetrics) -> None:
        """Nothing beyond the loss: the parent's network anchors a second stage."""

    def notes(self) -> list[str]:
        return []

    def epoch_line(self, record: dict) -> str:
        alone = "/".join(f"{row['overall']:.2f}" for row in record["per_exit"])
        exits = "/".join(f"{100 * d:.1f}" for d in record["exit_distribution"])
        return (
            f"{self.label} {record['epoch']}\tTime: {record['seconds']:.1f}s\tLR: {record['lr']:.5f}\t"
            f"Loss: {record['loss']:.4f}\tEach exit alone: {alone}%\tTest Acc: {record['overall']:.2f}% "
            f"at threshold {record['threshold']:g}\tExits: {exits}%"
        )

    def config_record(self) -> dict:
        return {
            "kind": self.kind,
            f"{self.record_key}_config": self.config.to_dict(),
            "parent": self.parent_record,
            "config": self.train_config.to_dict(),
            "variant": self.parent_state.get("variant"),
            "provenance": runinfo.provenance(self.device),
        }

    def metrics_header(self) -> dict:
        run = {"variant": self.variant.name, "imbalance": self.train_config.imbalance, "seed": self.config.seed}
        return {**run, "parent": self.parent_record, "exit_costs": self.costs}

    def stage_state(self, epoch: int, model_state: dict, **record) -> dict:
        """The checkpoint: the parent's records but its weights (and whether they were slimmed),
        `model_state`, and the stage's record."""
        parent = self.parent_state
        return {
            **{k: parent[k] for k in parent if k not in ("model", "optimizer", WEIGHTS_ONLY)},
            "model": model_state,
            self.record_key: {
                "config": self.config.to_dict(),
                "epoch": epoch,
                "history": self.history,
                **record,
                "parent": self.parent_record,
                "provenance": runinfo.provenance(self.device),
            },
        }

    @property
    def record_key(self) -> str:
        return self.kind.split("-")[0]  # "fit" for fit-exits

    def restore_record(self, state: dict) -> dict:
        """The stage's record of a checkpoint being resumed, after checking it is this run's."""
        record = state[self.record_key]
        if record["parent"]["sha256"] != self.parent_sha256:
            raise TrainingError(
                f"--resume: {self.out} was made from a parent with sha256 "
                f"{record['parent']['sha256'][:12]}…, but {self.parent} has {self.parent_sha256[:12]}…"
            )
        require_same_config(record["config"], self.config.to_dict(), self.out)
        self.history = list(record["history"])
        self.start_epoch = int(record["epoch"])
        return record
