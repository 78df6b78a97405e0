"""Augmentation as tensor ops on whole uint8 / normalised N x C x H x W batches (any device), the
batched twins of the reference path's per-image torchvision transforms (augment.py), each draw made
per image from a CPU generator `g`: the masks and offsets (a few numbers per image) are drawn on the
CPU and only their results sent to the device, so deciding which images an op applies to never
makes the host wait for a GPU, and the random stream is the same on every device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from .constants import CUTOUT_SIZE

PAD = 4
_AUTOAUGMENT = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)
POLICIES = _AUTOAUGMENT.policies
OP_SPACE = _AUTOAUGMENT._augmentation_space(10, (32, 32))


def random_crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x: uint8 N x C x H x W -> the same, each image cropped from its zero-padded self and
    flipped with probability 1/2. g: a CPU generator."""
    n, _, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    top = torch.randint(0, 2 * PAD + 1, (n,), generator=g).to(x.device, non_blocking=True)
    left = torch.randint(0, 2 * PAD + 1, (n,), generator=g).to(x.device, non_blocking=True)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # N x H x 1
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # N x 1 x W
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # N x H x W x C
    out = out.permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device, non_blocking=True)
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


def equalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's equalize, bit for bit, for a uint8 N x C x H x W batch in one pass (torchvision
    loops over every image and channel, with two host syncs each on a GPU)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    highest = torch.where(hist > 0, torch.arange(256, device=x.device), -1).amax(1, keepdim=True)
    step = (h * w - hist.gather(1, highest)) // 255  # all used bins but the highest, over 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = torch.where(step == 0, flat, lut.gather(1, flat))  # step 0: torchvision leaves it as is
    return out.to(torch.uint8).reshape(n, c, h, w)


def apply_op(x: torch.Tensor, op_name: str, magnitude: float) -> torch.Tensor:
    if op_name == "Equalize":
        return equalize(x)
    return _apply_op(x, op_name, magnitude, InterpolationMode.NEAREST, None)


def autoaugment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """AutoAugment (CIFAR10 policy) with an independent draw per image, as torchvision's
    per-image transform makes: sub-policy, then for each of its two ops apply-probability and sign.
    g: a CPU generator; the masks stay on the CPU, only the chosen images' indices go to the device."""
    n = len(x)
    policy = torch.randint(0, len(POLICIES), (n,), generator=g)
    probs = torch.rand(n, 2, generator=g)
    signs = torch.randint(0, 2, (n, 2), generator=g)
    x = x.clone()
    for position in range(2):
        for pid, ops in enumerate(POLICIES):
            op_name, p, magnitude_id = ops[position]
            chosen = (policy == pid) & (probs[:, position] <= p)
            magnitudes, signed = OP_SPACE[op_name]
            magnitude = float(magnitudes[magnitude_id]) if magnitude_id is not None else 0.0
            for sign in (0, 1) if signed else (None,):
                mask = chosen if sign is None else chosen & (signs[:, position] == sign)
                if mask.any():
                    m = -magnitude if sign == 0 else magnitude
                    idx = mask.nonzero().squeeze(1).to(x.device, non_blocking=True)
                    x[idx] = apply_op(x[idx], op_name, m)
    return x


def cutout(x: torch.Tensor, g: torch.Generator, size: int = CUTOUT_SIZE) -> torch.Tensor:
    """augment.Cutout on a normalised batch: each image's square (centre drawn per image, clipped at
    the borders) set to 0, the mean colour."""
    n, _, h, w = x.shape
    cy = torch.randint(h, (n, 1, 1), generator=g).to(x.device)
    cx = torch.randint(w, (n, 1, 1), generator=g).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy - size // 2) & (rows < cy + size // 2) & (cols >= cx - size // 2) & (cols < cx + size // 2)
    return x.masked_fill(inside.unsqueeze(1), 0.0)
