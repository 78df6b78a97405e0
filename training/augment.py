"""The augmentation parts a variant names (AUGMENTATIONS), and the reference (CPU-friendly) data
path: per-image torchvision transforms, and batch Mixup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import batch_ops
from .constants import CUTOUT_SIZE, MEAN, STD
from .data import Split
from .registry import Registry

MIXUP_ALPHA = 1.0


@dataclass(frozen=True)
class AugmentationPart:
    """One part of a variant's augmentation, on top of crop 32 (padding 4) + flip, with its
    implementation on both data paths (this module's per-image transforms, device_data's batches).

    stage: where it applies: "pixels" (uint8, before normalising), "tensor" (normalised) or "batch"
    (mixes images and labels of a batch: losses.batch_targets)."""

    stage: str
    per_image: Callable[[], Callable] | None = None  # makes the reference path's transform
    batched: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # batch_ops' twin

    def __post_init__(self):
        if self.stage in ("pixels", "tensor") and (self.per_image is None) != (self.batched is None):
            raise ValueError("a part that transforms images needs both a per-image and a batched implementation")


class Cutout:
    """Cutout as its authors wrote it, on a normalised C x H x W tensor: one square of side `size`
    centred on a uniformly drawn pixel (clipped at the borders, so it may be smaller) set to 0,
    which after normalisation is the training set's mean colour."""

    def __init__(self, size: int = CUTOUT_SIZE):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # torch's generator, not numpy's: the reference path seeds it per epoch (and DataLoader workers
        # from it), so a resumed epoch cuts the same squares
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, y2 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x1, x2 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        x = x.clone()
        x[..., y1:y2, x1:x2] = 0.0
        return x


# A variant names its augmentation as parts joined by "+", applied in this registry's order.
AUGMENTATIONS = Registry("augmentation part")
AUGMENTATIONS.register("basic")(AugmentationPart("pixels"))  # nothing more (the erm control)
AUGMENTATIONS.register("autoaugment")(
    AugmentationPart(  # torchvision's CIFAR10 policy per image
        "pixels", per_image=lambda: T.AutoAugment(T.AutoAugmentPolicy.CIFAR10), batched=batch_ops.autoaugment
    )
)
AUGMENTATIONS.register("cutout")(
    AugmentationPart(  # one square per image set to the mean colour
        "tensor", per_image=Cutout, batched=batch_ops.cutout
    )
)
AUGMENTATIONS.register("mixup")(AugmentationPart("batch"))  # per batch: losses.batch_targets


def augmentation_parts(augmentation: str) -> frozenset[str]:
    """The parts of an augmentation name ("autoaugment+cutout+mixup" -> three), checked."""
    parts = augmentation.split("+")
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown or len(set(parts)) != len(parts) or ("basic" in parts and len(parts) > 1):
        raise ValueError(
            f"unknown augmentation {augmentation!r}: parts joined by '+' of "
            f"{AUGMENTATIONS.names()}, each once ('basic' alone)"
        )
    return frozenset(parts)


def augmentation_steps(augmentation: str, stage: str) -> list[AugmentationPart]:
    """The parts of `augmentation` that transform images at `stage`, in the order they apply."""
    parts = augmentation_parts(augmentation)
    return [
        part
        for name, part in zip(AUGMENTATIONS, AUGMENTATIONS.values())
        if name in parts and part.stage == stage and part.batched is not None
    ]


def normalize_tensor() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def train_transform(augmentation: str) -> T.Compose:
    """Crop 32 (padding 4) + flip; AutoAugment's CIFAR10 policy and Cutout on top where the
    variant asks (Mixup is per batch: losses.batch_targets)."""
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [part.per_image() for part in augmentation_steps(augmentation, "pixels")]
    steps.append(normalize_tensor())
    steps += [part.per_image() for part in augmentation_steps(augmentation, "tensor")]
    return T.Compose(steps)


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
