"""Multiply-accumulate counts per exit, measured with forward hooks on one 32x32 image."""

from __future__ import annotations

import torch
from torch import nn

from .network import EarlyExitResNet, NormedLinear


def count_macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """MACs of conv and linear layers for one forward of x (batch 1); returns (macs, output)."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += output.numel() // output.size(0) * k
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, NormedLinear):
            total += m.weight.numel()

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear, NormedLinear))
    ]
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    return total, out


def exit_costs(model: EarlyExitResNet) -> list[dict]:
    """Per exit: backbone MACs since the previous exit, head MACs, cumulative MACs and share.

    Cumulative MACs at exit k is what an image that leaves there costs: backbone up to stage k
    plus every exit head evaluated on the way.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device)
    rows, cumulative = [], 0
    for segment, head in zip(model.segments(), model.exits):
        backbone, x = count_macs(segment, x)
        head_macs, _ = count_macs(head, x)
        cumulative += backbone + head_macs
        rows.append({"backbone_macs": backbone, "head_macs": head_macs, "cumulative_macs": cumulative})
    for row in rows:
        row["share_of_full"] = row["cumulative_macs"] / cumulative
    model.train(was_training)
    return rows
