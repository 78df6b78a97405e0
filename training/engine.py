"""`train`'s job for the epoch loop (loop.py): one training epoch, its evaluation, collapse
detection, and what a checkpoint holds."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import runinfo
from .augment import ImageDataset, train_transform
from .batch_loop import run_batches, seed_epoch
from .calibration import heldout_split
from .compilation import COMPILE_ERRORS, compile_network, mark_step
from .config import TrainConfig, epoch_seed, lr_at
from .data import build_datasets, stratified_cap
from .device_data import DeviceBatches
from .errors import Diverged, TrainingError
from .evaluation import EarlyExitMetrics, evaluate_model
from .loop import require_same_config
from .losses import Targets, batch_targets, make_exit_losses
from .macs import exit_costs
from .network import build_model
from .optim import build_optimizer, optimizer_step
from .routing import first_confident_exit, routed_loss, training_exits
from .variants import LOSS_RULE, Variant, get_variant, loss_rule

log = logging.getLogger(__name__)


def die_with(parent: int, worker_id: int) -> None:
    """DataLoader worker init: the worker ends with the training process, even one killed by
    SIGKILL (the OOM killer, `kill -9`). PyTorch's own check for a dead parent runs only between
    batches, and a worker blocked on a full result pipe was seen to outlive its run by 15 minutes."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


@dataclass
class Run:
    """Everything a training run holds; built once, then driven epoch by epoch by loop.run."""

    config: TrainConfig
    out: Path
    device: torch.device
    data_dir: Path
    workers: int = 0
    variant: Variant | None = None  # default: the registry's variant of config.variant

    kind = "train"

    def __post_init__(self):
        if self.variant is None:
            self.variant = get_variant(self.config.variant)
        self.train_set, self.test_set = build_datasets(
            self.data_dir, self.config.imbalance, self.config.max_train_samples, self.config.max_test_samples
        )
        if self.config.eval_split == "heldout":
            self.test_set = heldout_split(self.data_dir, self.config.imbalance)
            self.test_set = self.test_set.subset(stratified_cap(self.test_set.labels, self.config.max_test_samples))
        elif self.config.eval_split != "test":
            raise TrainingError(f"unknown evaluation split {self.config.eval_split!r}; expected 'test' or 'heldout'")
        self.class_counts = np.bincount(self.train_set.labels, minlength=10).tolist()
        torch.manual_seed(self.config.seed)  # model initialisation
        self.model = build_model(self.variant).to(self.device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = compile_network(self.model, self.config.compile)  # what forward passes call
        self.compile_fallback: str | None = None  # why compilation failed, when it did
        self._fallback_noted = False
        self.device_batches = (
            DeviceBatches(self.train_set, self.device, self.config.batch_size, self.variant.augmentation)
            if self.config.data_path == "device"
            else None
        )
        self.costs = exit_costs(self.model)
        self.exit_losses = make_exit_losses(self.variant, self.class_counts)
        self.optimizer = build_optimizer(
            self.model.parameters(),
            self.config.lr,
            self.config.momentum,
            self.config.weight_decay,
            self.variant.sam_rho,
        )
        self.threshold = self.config.threshold if self.config.threshold is not None else self.variant.infer_threshold
        self.history: list[dict] = []
        self.start_epoch = 0
        self.provenance = runinfo.provenance(self.device)
        # Where each resumption ran ({"epoch": epochs done before it, **provenance}): a run cut on
        # one machine may go on on another (study/scripts/device_study.py's runs go on on the CPU).
        self.resumes: list[dict] = []

    # -- data ---------------------------------------------------------------------------------
    def epoch_seed(self, epoch: int) -> int:
        return epoch_seed(self.config.seed, epoch)

    def batches(self, epoch: int):
        """(iterable of (x, y), number of batches) for one epoch, on the configured data path."""
        if self.device_batches is not None:
            return self.device_batches.epoch(self.epoch_seed(epoch)), len(self.device_batches)
        loader = self.loader(epoch)
        return loader, len(loader)

    def loader(self, epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.epoch_seed(epoch))
        dataset = ImageDataset(self.train_set, train_transform(self.variant.augmentation))
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=True,
            generator=g,
            num_workers=self.workers,
            drop_last=False,
            worker_init_fn=partial(die_with, os.getpid()),
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )

    # -- one epoch ----------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict:
        """One pass over the training set (batch_loop.run_batches), at the schedule's lr."""
        cfg = self.config
        lr = lr_at(cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rng = seed_epoch(cfg.seed, epoch)
        self.model.train()
        batches, total = self.batches(epoch)
        totals = run_batches(
            batches,
            total if cfg.max_batches is None else min(cfg.max_batches, total),
            partial(self.train_step, rng),
            epoch=epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            device=self.device,
        )
        return {"lr": lr, "loss": totals["loss"], "train_acc": totals["train_acc"]}

    def train_step(self, rng: np.random.Generator, x: torch.Tensor, y: torch.Tensor):
        """One optimizer step on a batch: (loss, how many of its images the exit rule gets right,
        counting a mixed image as its dominant label)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x, targets = batch_targets(x, y, self.variant.augmentation, rng)
        loss, outputs = optimizer_step(
            self.optimizer,
            self.model,
            partial(self._eager_on_compile_failure, partial(self.forward_backward, x, targets)),
        )
        with torch.no_grad():
            probs = torch.stack([o.logits.float().softmax(1) for o in outputs])
            chosen = first_confident_exit(probs, self.threshold)
            pred = probs.argmax(2).gather(0, chosen.unsqueeze(0)).squeeze(0)
            return loss, (pred == targets.dominant).sum()

    def forward_backward(self, x: torch.Tensor, targets: Targets):
        """(loss, exit outputs) of one batch, gradients computed; the optimizer step is the caller's
        (optim.optimizer_step, which calls this twice per step for SAM)."""
        mark_step(self.config.compile, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp):
            outputs = self.net(x)
            exits = training_exits(outputs, targets, self.variant.train_threshold)
            per_exit = [loss(o, targets, teacher=outputs[-1]) for loss, o in zip(self.exit_losses, outputs)]
            loss = routed_loss(per_exit, exits, self.variant.routing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss, outputs

    def _eager_on_compile_failure(self, fn):
        """fn(); when torch.compile fails on it (no C++ compiler, no Triton...), fall back to the
        eager network for this call and the rest of the run. Safe to repeat: fn never steps."""
        try:
            return fn()
        except COMPILE_ERRORS as exc:
            if self.net is self.model:
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("torch.compile failed (%s); continuing with the eager network", reason)
            self.net, self.compile_fallback = self.model, f"{type(exc).__name__}: {reason}"
            return fn()

    def evaluate(self, final: bool = False) -> EarlyExitMetrics:
        """Test-set metrics; in bf16 on the fast path (2.6x faster on the CPU) except the `final`
        evaluation, which is fp32 like `evaluate` and the exported graphs."""
        _, metrics = self._eager_on_compile_failure(
            lambda: evaluate_model(
                self.net,
                self.test_set,
                self.threshold,
                self.config.eval_batch_size,
                self.device,
                self.costs,
                amp=self.config.amp and not final,
            )
        )
        return metrics

    def check(self, epoch: int, test: EarlyExitMetrics) -> None:
        check_collapse(self.config, epoch, test)

    def notes(self) -> list[str]:
        if self.compile_fallback and not self._fallback_noted:
            self._fallback_noted = True
            return [f"# torch.compile failed in epoch {len(self.history)}, eager from there: {self.compile_fallback}"]
        return []

    @staticmethod
    def epoch_line(record: dict) -> str:
        """The report's log format, plus the exit distribution."""
        trained = (
            f"Epoch {record['epoch']}\tTime: {record['seconds']:.1f}s\tLR: {record['lr']:.5f}\t"
            f"Loss: {record['loss']:.4f}\tTrain Acc: {record['train_acc']:.2f}%\t"
        )
        if "overall" not in record:  # between evaluations (--eval-every)
            return trained + "Test Acc: not evaluated"
        exits = "/".join(f"{100 * d:.1f}" for d in record["exit_distribution"])
        return (
            trained + f"Test Acc: {record['overall']:.2f}%\t(Many: {record['many']:.2f}%, "
            f"Medium: {record['medium']:.2f}%, Few: {record['few']:.2f}%)\tExits: {exits}%"
        )

    # -- state --------------------------------------------------------------------------------
    def config_record(self) -> dict:
        return {"config": self.config.to_dict(), "variant": self.variant.to_dict(), "provenance": self.provenance}

    def metrics_header(self) -> dict:
        run = {"variant": self.variant.name, "imbalance": self.config.imbalance, "seed": self.config.seed}
        compiled = {"mode": self.config.compile, "fallback": self.compile_fallback}
        return {
            **run,
            "threshold": self.threshold,
            "exit_costs": self.costs,
            "compile": compiled,
            "resumes": self.resumes,
        }

    def state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "config": self.config.to_dict(),
            "variant": self.variant.to_dict(),
            "history": self.history,
            "class_counts": self.class_counts,
            "provenance": self.provenance,
            "resumes": self.resumes,
        }

    def restore(self, state: dict) -> None:
        if loss_rule(state.get("variant", {})) != LOSS_RULE:
            raise TrainingError(
                f"{self.out} was trained under the old loss rule (simulated loss at every "
                "exit, SPEC §4 before 2026-11-28); it cannot be resumed under the corrected "
                "one: start a new run in another --out"
            )
        require_same_config(TrainConfig.from_dict(state["config"]).to_dict(), self.config.to_dict(), self.out)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        self.resumes = [*state.get("resumes", []), {"epoch": self.start_epoch, **self.provenance}]


def check_collapse(config: TrainConfig, epoch: int, test: EarlyExitMetrics) -> None:
    """Raise Diverged when nearly every test prediction is one class (Model 4 at epoch 111).
    Early epochs may legitimately predict few classes, so only judge after the warm-up."""
    share = test.predicted_class_share_max
    if epoch >= config.warmup_epochs and share >= config.collapse_share:
        raise Diverged(epoch + 1, f"predictions collapsed: {100 * share:.1f}% of test images get one class")
