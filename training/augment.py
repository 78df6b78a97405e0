"""Reference (CPU-friendly) augmentation: per-image torchvision transforms and batch Mixup."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from .constants import MEAN, STD
from .data import Split

MIXUP_ALPHA = 1.0
# On top of crop 32 (padding 4) + flip: nothing ("basic", the erm control), torchvision's CIFAR10
# AutoAugment policy per image, or Mixup per batch (losses.batch_targets). Both data paths
# (this module's per-image transforms, device_data's batched ones) implement each.
AUGMENTATIONS = ("autoaugment", "mixup", "basic")


def normalize_tensor() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def train_transform(augmentation: str) -> T.Compose:
    """Crop 32 (padding 4) + flip; AutoAugment's CIFAR10 policy on top where the variant asks."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}; expected one of {AUGMENTATIONS}")
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if augmentation == "autoaugment":
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
    return T.Compose([*steps, normalize_tensor()])


class ImageDataset(Dataset):
    """uint8 HWC images with a per-image transform (PIL in, normalised tensor out)."""

    def __init__(self, split: Split, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.split.images[i])
        return self.transform(image), int(self.split.labels[i])


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W (any device) -> float, scaled to [0, 1] and normalised."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float().div_(255) - mean) / std


def normalize_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 array -> normalised float N x 3 x H x W (the evaluation input)."""
    return normalize_uint8(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def mixup(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha: float = MIXUP_ALPHA):
    """Batch Mixup: returns (mixed x, y_a, y_b, lam) with lam ~ Beta(alpha, alpha).

    Draws come from an explicit generator so that a resumed epoch sees the same lambdas.
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.size(0))).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam
