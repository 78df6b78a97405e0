"""`export`: a checkpoint -> models/NAME (one ONNX graph per exit stage + manifest.json)."""

from __future__ import annotations

import json
from pathlib import Path

from modelrepo import load_manifest

from ..data import load_cifar10
from ..errors import TrainingError
from ..evaluation import format_threshold
from ..export import export_model
from ..rundir import checkpoint_model
from .common import add_calibration_args, add_data_dir, calibrate_from_flags, non_negative, positive_int, unit_interval


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of a run")
    parser.add_argument("--out", type=Path, required=True, help="model directory to create, e.g. models/NAME")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: the --out folder name)")
    parser.add_argument(
        "--threshold",
        type=unit_interval,
        default=None,
        help="default inference threshold written to the manifest (default: the variant's)",
    )
    parser.add_argument(
        "--parity-images",
        type=positive_int,
        default=1000,
        help="real test images on which ONNX Runtime must match PyTorch within 1e-4",
    )
    parser.add_argument(
        "--calibrate-drop",
        type=non_negative,
        default=None,
        help="pick tau and the default threshold with `calibrate` (this many accuracy points "
        "of drop allowed, on held-out training images) instead of the variant's",
    )
    add_calibration_args(parser)
    parser.add_argument(
        "--trained-on",
        default=None,
        help="training machine for the manifest (default: from the checkpoint or its config.json)",
    )
    parser.add_argument(
        "--seed-models",
        type=Path,
        nargs="+",
        default=[],
        metavar="DIR",
        help="exported models of the same recipe at other seeds: the manifest and model card record "
        "each seed's test accuracy beside this one's, and their mean and spread",
    )
    add_data_dir(parser, "test metrics and parity check")


def run(args) -> int:
    model, variant, config, state = checkpoint_model(args.checkpoint, "cpu")
    _, test = load_cifar10(args.data_dir)
    config_json = args.checkpoint.parent / "config.json"
    if "provenance" not in state and config_json.is_file():  # checkpoints of older code
        state["provenance"] = json.loads(config_json.read_text()).get("provenance", {})
    if args.trained_on:
        state.setdefault("provenance", {})["device"] = args.trained_on
    if args.calibrate_drop is not None and args.threshold is not None:
        raise TrainingError("give --threshold or --calibrate-drop, not both")
    seed_models = {folder: load_manifest(folder) for folder in args.seed_models}  # a bad folder: refused at once
    calibration = None
    if args.calibrate_drop is not None:
        calibration = calibrate_from_flags(model, config.imbalance, state["class_counts"], args.calibrate_drop, args)
    manifest = export_model(
        model,
        variant,
        config,
        state,
        test,
        args.out,
        args.name or args.out.name,
        args.parity_images,
        args.threshold,
        calibration,
        seed_models,
    )
    m = manifest.metrics
    print(
        f"exported {variant.name} to {args.out}: {manifest.num_exits} stages, parity "
        f"{manifest.provenance.parity_max_abs_diff:.1e}; test accuracy {m.overall:.2f}% at threshold "
        f"{format_threshold(m.threshold)}, exits " + "/".join(f"{100 * d:.1f}" for d in m.exit_distribution) + "%"
    )
    return 0
