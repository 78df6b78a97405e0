"""`evaluate`: early-exit inference of a checkpoint on the full CIFAR-10 test set."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import write_json
from ..data import load_cifar10
from ..errors import TrainingError
from ..evaluation import evaluate_model, format_report
from ..logit_adjust import stage_adjustments
from ..rundir import checkpoint_model
from .common import add_data_args, non_negative, resolve_device, unit_interval


def thresholds(text: str) -> float | list[float]:
    """'0.5' (every exit) or '0.6,0.7' (one per early exit)."""
    values = [unit_interval(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def taus(text: str) -> list[float]:
    """'0.5' (every exit) or '0,0.375,0.625' (one per exit)."""
    return [non_negative(part) for part in text.split(",")]


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of a run")
    parser.add_argument(
        "--threshold",
        type=thresholds,
        default=None,
        help="inference threshold, or one per early exit comma-separated (default: the variant's)",
    )
    parser.add_argument(
        "--tau",
        type=taus,
        default=[0.0],
        help="post-hoc logit adjustment: tau * log prior of the training set subtracted "
        "from every exit's logits, or one tau per exit comma-separated (a manifest's "
        "logit_adjustment.stage_taus)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the metrics (with per-image class and exit) to this file"
    )
    add_data_args(parser)


def run(args) -> int:
    device = resolve_device(args.device)
    model, variant, config, state = checkpoint_model(args.checkpoint, device)
    _, test = load_cifar10(args.data_dir)
    threshold = args.threshold if args.threshold is not None else variant.infer_threshold
    if isinstance(threshold, list) and len(threshold) != variant.num_exits - 1:
        raise TrainingError(
            f"--threshold: {variant.name} has {variant.num_exits - 1} early exits, got {len(threshold)} thresholds"
        )
    tau = args.tau * variant.num_exits if len(args.tau) == 1 else args.tau
    if len(tau) != variant.num_exits:
        raise TrainingError(f"--tau: {variant.name} has {variant.num_exits} exits, got {len(tau)} taus")
    # Logits come back on the CPU, where the adjustment is applied.
    shift = stage_adjustments(state["class_counts"], tau) if any(tau) else None
    _, metrics = evaluate_model(model, test, threshold, config.eval_batch_size, device, adjustment=shift)
    print(
        f"{variant.name} (IF {config.imbalance}, seed {config.seed}) on {len(test)} test images"
        + (f", logit adjustment tau {'/'.join(f'{t:g}' for t in tau)}" if any(tau) else "")
    )
    print(format_report(metrics))
    if args.json:
        write_json({"variant": variant.name, "imbalance": config.imbalance, "tau": tau, **metrics.to_dict()}, args.json)
    return 0
