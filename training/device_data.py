"""Fast data path: the training set resident on the device as uint8, augmented in batches.

The variant's augmentation parts (augment.AUGMENTATIONS) as their batched tensor ops (batch_ops.py),
so a GPU never waits for DataLoader workers: random crop 32 with zero padding 4 and horizontal flip,
then each part's op on the uint8 batch (AutoAugment: each image its own sub-policy, probabilities and
signs; images that share a draw transformed together with torchvision's own op), normalisation, then
each part's op on the normalised batch (Cutout: a square per image, one mask for the batch). Every
draw comes from a generator seeded by (seed, epoch), so a resumed epoch repeats. Runs on the CPU too.
"""

from __future__ import annotations

import torch

from .augment import augmentation_steps, normalize_uint8
from .batch_ops import random_crop_flip
from .data import Split


class DeviceBatches:
    """One epoch of augmented, normalised batches from a device-resident uint8 training set."""

    def __init__(self, split: Split, device: torch.device, batch_size: int, augmentation: str, balanced: bool = False):
        """balanced: each epoch draws as many images as the set holds, with replacement, every class
        equally likely (class-balanced sampling, rebalance.py); otherwise a permutation."""
        self.images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.device, self.batch_size = device, batch_size
        self.pixel_ops = [part.batched for part in augmentation_steps(augmentation, "pixels")]
        self.tensor_ops = [part.batched for part in augmentation_steps(augmentation, "tensor")]
        self.sample_weights = None
        if balanced:
            labels = torch.from_numpy(split.labels)
            self.sample_weights = (1.0 / torch.bincount(labels).double())[labels]

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def epoch(self, seed: int):
        g = torch.Generator().manual_seed(seed)  # CPU: see the module docstring
        if self.sample_weights is None:
            order = torch.randperm(len(self.labels), generator=g)
        else:
            order = torch.multinomial(self.sample_weights, len(self.labels), replacement=True, generator=g)
        order = order.to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = random_crop_flip(self.images[idx], g)
            for op in self.pixel_ops:
                x = op(x, g)
            x = normalize_uint8(x)
            for op in self.tensor_ops:
                x = op(x, g)
            yield x, self.labels[idx]
