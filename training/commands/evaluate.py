"""`evaluate`: early-exit inference of a checkpoint on the full CIFAR-10 test set."""
from __future__ import annotations

from pathlib import Path

from ..data import load_cifar10
from ..evaluation import evaluate_model, format_report
from ..rundir import checkpoint_model
from ..checkpoint import write_json
from .common import add_data_args, resolve_device, unit_interval


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of a run")
    parser.add_argument("--threshold", type=unit_interval, default=None,
                        help="inference threshold (default: the variant's)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the metrics (with per-image class and exit) to this file")
    add_data_args(parser)


def run(args) -> int:
    device = resolve_device(args.device)
    model, variant, config, _ = checkpoint_model(args.checkpoint, device)
    _, test = load_cifar10(args.data_dir)
    threshold = args.threshold if args.threshold is not None else variant.infer_threshold
    _, metrics = evaluate_model(model, test, threshold, config.eval_batch_size, device)
    print(f"{variant.name} (IF {config.imbalance}, seed {config.seed}) on {len(test)} test images")
    print(format_report(metrics))
    if args.json:
        write_json({"variant": variant.name, "imbalance": config.imbalance, **metrics}, args.json)
    return 0
