"""`calibrate`: post-hoc logit adjustment (tau) and the lowest-compute inference threshold(s)
within a given accuracy drop, on held-out training images (never the test set).
`export --calibrate-drop` writes the same choice into a manifest."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation import format_threshold
from ..rundir import checkpoint_model
from .common import add_calibration_args, add_data_dir, calibrate_from_flags, non_negative


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--max-drop",
        type=non_negative,
        default=1.0,
        help="accuracy points below the final exit's that the threshold may cost",
    )
    add_calibration_args(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the whole sweep here")
    add_data_dir(parser, "the held-out training images")


def run(args) -> int:
    model, variant, config, state = checkpoint_model(args.checkpoint)
    result = calibrate_from_flags(model, config.imbalance, state["class_counts"], args.max_drop, args)
    print(f"{variant.name}: {result['heldout_images']} held-out training images, classes {result['heldout_classes']}")
    print(
        f"tau {'/'.join(f'{t:g}' for t in result['taus'])} (exit by exit): final exit {result['final_exit_accuracy']:.2f}% (balanced; "
        f"{result['final_exit_accuracy_unadjusted']:.2f}% at tau 0)"
    )
    print(
        f"threshold {format_threshold(result['threshold'])}: {result['heldout_accuracy']:.2f}% at "
        f"{result['mean_macs'] / 1e6:.2f}M MACs ({100 * result['mean_macs_share']:.1f}% of the full network), "
        "exits " + "/".join(f"{100 * d:.1f}" for d in result["exit_distribution"]) + "%; "
        f"drop {result['final_exit_accuracy'] - result['heldout_accuracy']:.2f} points, "
        f"{100 * result['drop_confidence']:g}% upper bound {result['drop_upper_bound']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0
