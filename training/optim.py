"""A run's optimizer and its step: SGD with momentum (SPEC §5), or SAM around that SGD where the
variant's recipe asks for it (`Variant.sam_rho`).

SAM (Foret et al. 2021) takes each step with the gradient at the worst point of a rho-ball around
the weights; on long-tailed CIFAR it lifts the tail classes out of the saddle points that
re-weighted losses leave them in (Rangwani et al. 2022: CE + DRW + SAM 80.6 on CIFAR-10-LT IF 100
with rho 0.5, LDAM-DRW + SAM 81.9 with rho 0.8). Each step costs two forward-backward passes.
The implementation is pytorch-optimizer's; its state is the SGD's own (momentum
buffers), so checkpoints and resume work as for plain SGD.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch


def build_optimizer(
    params, lr: float, momentum: float, weight_decay: float, sam_rho: float = 0.0
) -> torch.optim.Optimizer:
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    if sam_rho > 0:
        # Imported here: only SAM recipes need it (the GPU machines' image has torch, not this).
        from pytorch_optimizer import SAM  # noqa: PLC0415

        return SAM(params, torch.optim.SGD, rho=sam_rho, **sgd)
    return torch.optim.SGD(params, **sgd)


@contextmanager
def frozen_bn_statistics(model: torch.nn.Module):
    """BatchNorm normalises with the batch's statistics but leaves its running statistics alone.
    SAM's second pass runs at perturbed weights, whose statistics are not the model's (as SAM's
    common PyTorch implementations do); with momentum 0 the running update keeps the old values."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def optimizer_step(optimizer: torch.optim.Optimizer, model: torch.nn.Module, forward_backward: Callable):
    """One training step: forward_backward() computes the loss and the gradients (zeroing them
    first) and returns (loss, outputs); those of the first pass, at the unperturbed weights, are
    returned. SAM calls it a second time at the perturbed weights and steps with that gradient."""
    loss, outputs = forward_backward()
    if hasattr(optimizer, "first_step"):  # SAM's two-pass protocol
        optimizer.first_step(zero_grad=True)
        with frozen_bn_statistics(model):
            forward_backward()
        optimizer.second_step(zero_grad=True)
    else:
        optimizer.step()
    return loss, outputs
