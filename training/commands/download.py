"""`download`: CIFAR-10 (the official archive, MD5-checked) into --data-dir, unless it is there.
Every data-reading subcommand also takes --download."""
from __future__ import annotations

from pathlib import Path

from ..download import ensure_cifar10
from .common import DEFAULT_DATA_DIR


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="where cifar-10-batches-py/ goes ($CIFAR10_URL / $CIFAR10_MD5 name a mirror)")


def run(args) -> int:
    print(f"CIFAR-10 at {ensure_cifar10(args.data_dir)}")
    return 0
