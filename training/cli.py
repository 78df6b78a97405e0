"""`python -m training`: one subcommand per module in training/commands (add_arguments / run).
(`python -m study` reproduces the report's table with the same machinery.)"""

from __future__ import annotations

import argparse
import logging
import sys

from modelrepo import ManifestError

from .commands import (
    calibrate,
    curve,
    download,
    evaluate,
    export,
    fit_exits,
    rebalance,
    slim,
    status,
    train,
    variants,
)
from .errors import TrainingError

COMMANDS = {
    "download": (download, "download CIFAR-10 (official archive, MD5-checked) into --data-dir"),
    "variants": (variants, "list the variant table of SPEC §6 with each variant's config"),
    "train": (train, "train one variant on long-tailed CIFAR-10"),
    "fit-exits": (fit_exits, "train a checkpoint's early exits from its final exit (frozen or mixed)"),
    "rebalance": (rebalance, "re-train every exit's classifier on class-balanced batches (MiSLAS's stage 2)"),
    "evaluate": (evaluate, "early-exit evaluation of a checkpoint on the CIFAR-10 test set"),
    "status": (
        status,
        "where run directories stand (new / running / stopped / completed / diverged) and their epochs done",
    ),
    "calibrate": (calibrate, "pick the lowest-compute threshold within an accuracy drop on held-out training images"),
    "curve": (curve, "a model directory's accuracy-vs-MACs curve (plot and table) from its manifest"),
    "slim": (slim, "completed runs' checkpoints down to their weights (nothing left to resume)"),
    "export": (export, "export a checkpoint as staged ONNX graphs + manifest.json into a model directory"),
}
# Known failures, reported as one line: the project's own, a model directory that cannot be read,
# and the operating system's (a file that is not there, a disk that is full).
KNOWN_ERRORS = (TrainingError, ManifestError, OSError)


def get_args_parser(
    prog: str = "python -m training", description: str = __doc__, commands: dict = COMMANDS
) -> argparse.ArgumentParser:
    """The parser of a command-line of subcommands: {name: (module with add_arguments / run, help)}."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of known failures too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or get_args_parser()).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "download", False):
            from .download import ensure_cifar10

            ensure_cifar10(args.data_dir)
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except KNOWN_ERRORS as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", TrainingError.exit_code)
