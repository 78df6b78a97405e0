"""Augmented-batch throughput of the two data paths on one device, side by side.

    python benchmarks/data_path_throughput.py [--device cpu] [--images 4096] [--rounds 3]

reference: DataLoader (main process, --workers) + per-image PIL transforms; device: the uint8
training set on the device, batched tensor ops (training/device_data.py, training/batch_ops.py). The goal: on
the CPU the device path is not slower than the reference path.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader

from training.augment import ImageDataset, train_transform
from training.commands.common import DEFAULT_DATA_DIR
from training.data import Split, build_datasets
from training.device_data import DeviceBatches


def timed(batches, device) -> float:
    t0 = time.perf_counter()
    for x, _ in batches:
        x = x.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    device = torch.device(args.device)
    train, _ = build_datasets(args.data_dir, 100)
    split = Split(train.images[: args.images], train.labels[: args.images])
    print(
        f"machine: {platform.processor() or platform.machine()}, device {device}, torch {torch.__version__}, "
        f"{args.images} images, batch {args.batch_size}, reference workers {args.workers}, "
        f"{args.rounds} rounds (median)"
    )
    for augmentation in ("autoaugment", "mixup"):
        fast = DeviceBatches(split, device, args.batch_size, augmentation)
        seconds = {"reference": [], "device": []}
        for r in range(args.rounds):
            loader = DataLoader(
                ImageDataset(split, train_transform(augmentation)),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
            )
            seconds["reference"].append(timed(loader, device))
            seconds["device"].append(timed(fast.epoch(r), device))
        rates = {k: args.images / statistics.median(v) for k, v in seconds.items()}
        label = "crop+flip+AutoAugment" if augmentation == "autoaugment" else "crop+flip (Mixup variants)"
        print(
            f"  {label:<28} reference {rates['reference']:9.0f} img/s   device path {rates['device']:9.0f} img/s"
            f"   device/reference {rates['device'] / rates['reference']:.2f}x"
        )


if __name__ == "__main__":
    main()
