"""`download`: CIFAR-10 (the official archive, MD5-checked) into --data-dir, unless it is there.
Every data-reading subcommand also takes --download."""

from __future__ import annotations

from ..download import ensure_cifar10
from .common import add_data_dir


def add_arguments(parser) -> None:
    add_data_dir(parser, "where it goes ($CIFAR10_URL / $CIFAR10_MD5 name a mirror)")


def run(args) -> int:
    print(f"CIFAR-10 at {ensure_cifar10(args.data_dir)}")
    return 0
