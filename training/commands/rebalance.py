"""`rebalance`: re-train every exit's classifier of a checkpoint on class-balanced batches, with
label-aware smoothing and learnable logit scales (MiSLAS's stage 2; rebalance.py) -> a run directory.

The new checkpoint reads like a training one (evaluate, calibrate, export take it) and records
its parent checkpoint and the parent's sha256.
"""

from __future__ import annotations

from ..rebalance import ClassifierRebalancer, RebalanceConfig
from .common import add_second_stage_args, from_flags, non_negative, positive_int, run_second_stage, unit_interval

DEFAULTS = RebalanceConfig()


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    parser.add_argument(
        "--lr", type=non_negative, default=DEFAULTS.lr, help="the logit scales' initial learning rate, cosine to 0"
    )
    parser.add_argument(
        "--classifier-lr-factor",
        type=non_negative,
        default=DEFAULTS.classifier_lr_factor,
        help="the classifier weights train at lr times this",
    )
    parser.add_argument(
        "--smooth-head",
        type=unit_interval,
        default=DEFAULTS.smooth_head,
        help="label smoothing of the most frequent class",
    )
    parser.add_argument(
        "--smooth-tail", type=unit_interval, default=DEFAULTS.smooth_tail, help="label smoothing of the rarest class"
    )
    parser.add_argument(
        "--shift-bn",
        action="store_true",
        help="let BN re-estimate its statistics on the balanced batches (weights stay frozen)",
    )
    add_second_stage_args(parser, "rebalance")


def run(args) -> int:
    config = from_flags(RebalanceConfig, args)
    return run_second_stage(
        ClassifierRebalancer,
        config,
        args,
        "rebalance",
        lambda job: (
            f"rebalance of {args.checkpoint} ({job.variant.name}, sha256 {job.parent_sha256[:12]}…): "
            f"{len(job.train_set)} training images drawn class-balanced, smoothing "
            f"{args.smooth_head:g} -> {args.smooth_tail:g}"
        ),
    )
