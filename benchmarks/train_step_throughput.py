"""Training-step throughput: one hybrid (early-exit) step against a plain ResNet-32 step.

Both run in the same process on the same real CIFAR-10 batches, interleaved round by round so
that machine noise hits both alike. Goal: hybrid step time <= 1.3x the plain step.

    python benchmarks/train_step_throughput.py [--variant model8] [--batch-size 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from training.augment import normalize_batch
from training.commands.common import DEFAULT_DATA_DIR
from training.data import build_datasets
from training.losses import CrossEntropyLS, batch_targets, make_exit_losses
from training.network import EarlyExitResNet, build_model
from training.routing import routed_loss, training_exits
from training.variants import get_variant


def plain_step(model, optimizer, loss_fn):
    def step(x, y):
        loss = loss_fn(model(x)[0].logits, y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def hybrid_step(variant, model, optimizer, exit_losses, rng):
    def step(x, y):
        x, targets = batch_targets(x, y, variant.augmentation, rng)
        outputs = model(x)
        exits = training_exits(outputs, targets, variant.train_threshold)
        loss = routed_loss([f(o, targets) for f, o in zip(exit_losses, outputs)], exits, variant.routing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step, batches) -> float:
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="model8")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per round and model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args()

    torch.manual_seed(0)
    variant = get_variant(args.variant)
    train, _ = build_datasets(args.data_dir, variant.imbalance)
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(train), args.batch_size, replace=False) for _ in range(args.steps)]
    batches = [(normalize_batch(train.images[p]), torch.from_numpy(train.labels[p])) for p in picks]
    counts = np.bincount(train.labels, minlength=10).tolist()

    plain = EarlyExitResNet((16, 32, 64), ("linear",))
    hybrid = build_model(variant)
    steps = {
        "plain ResNet-32": plain_step(
            plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), CrossEntropyLS()
        ),
        f"hybrid {variant.name}": hybrid_step(
            variant,
            hybrid,
            torch.optim.SGD(hybrid.parameters(), lr=0.1, momentum=0.9),
            make_exit_losses(variant, counts),
            np.random.default_rng(1),
        ),
    }
    for step in steps.values():  # warm-up: allocator, oneDNN kernels
        time_steps(step, batches[:2])
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds[name].append(time_steps(step, batches))

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"{args.rounds} rounds x {args.steps} steps (median round)"
    )
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, s in medians.items():
        print(f"  {name:<20} {args.batch_size * args.steps / s:8.1f} images/s   {1000 * s / args.steps:7.1f} ms/step")
    names = list(medians)
    ratio = medians[names[1]] / medians[names[0]]
    print(f"hybrid / plain step time: {ratio:.2f}x (goal <= 1.30x)")


if __name__ == "__main__":
    main()
