"""Flags shared by several subcommands, and their validation."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from .. import loop, rundir
from ..data import default_data_dir
from ..errors import TrainingError
from ..evaluation import format_report

DEFAULT_DATA_DIR = default_data_dir()


def _number(convert, accept, expected: str):
    """An argparse type: `convert(text)`, refused with one message naming `expected` unless `accept`s it."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
unit_interval = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
non_negative = _number(float, lambda v: v >= 0, "a number >= 0")  # NaN is refused too
confidence_level = _number(float, lambda v: 0.5 <= v < 1.0, "a number in [0.5, 1)")


def add_calibration_args(parser: argparse.ArgumentParser) -> None:
    from ..calibration import THRESHOLD_MODES

    parser.add_argument(
        "--thresholds",
        choices=THRESHOLD_MODES,
        default="auto",
        help="one threshold for every exit, one per early exit, or whichever spends fewer MACs",
    )
    parser.add_argument(
        "--no-logit-adjustment", action="store_true", help="keep tau = 0 (no post-hoc logit adjustment)"
    )
    parser.add_argument(
        "--shared-tau",
        action="store_true",
        help="one tau for every exit (the final exit's best) instead of each exit's own",
    )
    parser.add_argument(
        "--drop-confidence",
        type=confidence_level,
        default=0.95,
        help="the held-out drop's one-sided upper confidence bound at this level must be within "
        "the allowed drop (0.5: its point estimate)",
    )


def calibrate_from_flags(model, imbalance: int, class_counts: list[int], max_drop: float, args) -> dict:
    """calibration.calibrate on the run's held-out training images, as add_calibration_args' flags ask."""
    from ..calibration import calibrate, heldout_split

    heldout = heldout_split(args.data_dir, imbalance)
    tau_mode = "shared" if args.shared_tau else "per-exit"
    return calibrate(
        model,
        heldout,
        max_drop,
        class_counts,
        args.thresholds,
        not args.no_logit_adjustment,
        tau_mode=tau_mode,
        confidence=args.drop_confidence,
    )


def add_second_stage_args(parser: argparse.ArgumentParser, what: str) -> None:
    """Flags of a command that starts from a trained checkpoint and writes a run directory."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of a trained run")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help=f"run directory (default: runs/<parent run>-{what})")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (same flags)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=1, help="epochs")
    parser.add_argument("--max-train-samples", type=positive_int, default=None, help="smoke runs")
    parser.add_argument("--max-test-samples", type=positive_int, default=None, help="smoke runs")
    parser.add_argument("--max-batches", type=positive_int, default=None, help="smoke runs")
    add_data_args(parser)


def from_flags(config_class, args, **given):
    """A run's config (train's, a second stage's): each field from the flag of its name where there
    is one, then `given` (what the flags do not give as they are) over them."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    return config_class(**{**flags, **given})


def run_job(out: Path, build, resume: bool, describe) -> int:
    """The one way a command trains into a run directory (`train`, `fit-exits`, `rebalance`): hold
    `out` (rundir.claim), build the loop job, start it or resume it (with `resume`), run it to the
    end; `describe(job)` opens the run's first line."""
    with rundir.claim(out):
        job = build()
        loop.prepare(job, resume)
        if job.start_epoch:
            print(f"resuming {out} from epoch {job.start_epoch}")
        print(f"{describe(job)}, run dir {out}")
        print(format_report(loop.run(job)))
    return 0


def run_second_stage(job_class, config, args, what: str, describe) -> int:
    """A second-stage job (`fit-exits`, `rebalance`) of args.checkpoint into args.out."""
    out = args.out or Path("runs") / f"{args.checkpoint.resolve().parent.name}-{what}"
    return run_job(
        out,
        lambda: job_class(args.checkpoint, config, out, args.data_dir, resolve_device(args.device)),
        args.resume,
        describe,
    )


def add_data_dir(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--data-dir, the folder holding cifar-10-batches-py/ (or that folder itself); `what`: its use here."""
    help_text = "folder holding cifar-10-batches-py/ (or that folder itself)" + (f": {what}" if what else "")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=help_text)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10 (official archive, MD5-checked) into --data-dir if it is not there",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to compute")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but torch sees no usable CUDA GPU")
    return torch.device(name)
