"""`train`: one variant, one imbalance factor, one seed -> a run directory.

The run directory holds config.json (resolved config + provenance), train.log (one line per
epoch, the report's format), metrics.json (every epoch and the final evaluation) and
checkpoint.pt (written atomically every --checkpoint-every epochs and at the end).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import rundir
from ..compilation import COMPILE_MODES
from ..config import REFERENCE_EPOCHS, TrainConfig, default_path, scaled_milestones
from ..engine import Run
from ..errors import TrainingError
from ..variants import Variant, get_variant
from .common import add_data_args, from_flags, positive_int, resolve_device, run_job, unit_interval


def variant_arg(text: str) -> Variant:
    try:
        return get_variant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser) -> None:
    parser.add_argument(
        "--variant", required=True, type=variant_arg, help="variant name (see `python -m training variants`)"
    )
    parser.add_argument(
        "--imbalance",
        type=int,
        choices=(100, 50, 10, 1),
        default=None,
        help="imbalance factor (default: the variant's)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=REFERENCE_EPOCHS,
        help="epochs; the lr milestones 160/180 of 200 scale with it",
    )
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="base learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<variant>-if<IF>-seed<S>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (same flags; --eval-every "
        "and the data path and speed options default to the run's own)",
    )
    parser.add_argument("--checkpoint-every", type=positive_int, default=5, help="epochs")
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="evaluate every N epochs (the curve, the collapse check; the last epoch always); "
        "default 1, with --resume the run's own",
    )
    parser.add_argument(
        "--threshold",
        type=unit_interval,
        default=None,
        help="inference threshold for evaluation (default: the variant's)",
    )
    parser.add_argument(
        "--max-train-samples",
        type=positive_int,
        default=None,
        help="cap the long-tailed training set (class shares kept), for smoke runs",
    )
    parser.add_argument(
        "--max-test-samples",
        type=positive_int,
        default=None,
        help="cap the test set (class shares kept), for smoke runs",
    )
    parser.add_argument(
        "--max-batches", type=positive_int, default=None, help="stop each epoch after this many batches, for smoke runs"
    )
    parser.add_argument(
        "--eval-split",
        choices=("test", "heldout"),
        default="test",
        help="evaluate each epoch on the test set, or on held-out training images (pilot runs "
        "that choose a recipe; their runs stay out of the report)",
    )
    path = parser.add_argument_group(
        "data path and speed options",
        "default on a CPU: the CPU fast path (--data-path device --amp "
        "--channels-last --compile off; --no-channels-last for networks whose widths are not multiples of "
        "16); elsewhere the reference path (--data-path reference --no-amp --no-channels-last --compile "
        "off); with --resume: the run's own path, whatever the machine's default. Each flag given "
        "overrides its part",
    )
    path.add_argument(
        "--data-path",
        choices=("reference", "device"),
        default=None,
        help="reference: DataLoader workers + PIL transforms; device: the training set "
        "on the device as uint8, augmented in batches",
    )
    path.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for forward and loss (fp32 weights); per-epoch evaluation in "
        "bf16 too, the final one in fp32",
    )
    path.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last memory format"
    )
    path.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="torch.compile the network; reduce-overhead adds CUDA graphs on a GPU. "
        "A failed compilation falls back to eager and is noted in metrics.json",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="data-loading worker processes (0: load in the main process)",
    )
    add_data_args(parser)


def path_from_args(args, device_type: str, saved: dict | None = None) -> dict:
    """The path of the run being resumed (`saved`: its config), else the device's default path for
    the variant, with each path flag given replacing its part. A resumed run must keep its path, and
    the machine's default may differ from the one it started on (bf16 only where the CPU has it)."""
    given = {"data_path": args.data_path, "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile}
    base = {**default_path(device_type, args.variant.widths), **{k: v for k, v in (saved or {}).items() if k in given}}
    return {**base, **{k: v for k, v in given.items() if v is not None}}


def saved_config(out: Path) -> dict | None:
    """The resolved config of the run in `out`, if there is one."""
    try:
        return json.loads((out / rundir.CONFIG).read_text())["config"]
    except (OSError, ValueError, KeyError):
        return None


def config_from_args(args, imbalance: int, device_type: str, saved: dict | None = None) -> TrainConfig:
    epochs = args.epochs
    return from_flags(
        TrainConfig,
        args,
        variant=args.variant.name,
        imbalance=imbalance,
        weight_decay=args.variant.weight_decay,
        warmup_epochs=min(5, epochs),
        milestones=scaled_milestones(epochs),
        eval_every=args.eval_every or (saved or {}).get("eval_every", 1),
        **path_from_args(args, device_type, saved),
    )


def run(args) -> int:
    device = resolve_device(args.device)
    imbalance = args.imbalance or args.variant.imbalance
    out = args.out or Path("runs") / rundir.run_name(args.variant.name, imbalance, args.seed)
    config = config_from_args(args, imbalance, device.type, saved_config(out) if args.resume else None)
    if args.workers < 0:
        raise TrainingError(f"--workers must be >= 0, got {args.workers}")
    return run_job(
        out,
        lambda: Run(config, out, device, args.data_dir, workers=args.workers, variant=args.variant),
        args.resume,
        lambda run_: (
            f"{config.variant} IF {config.imbalance}: {len(run_.train_set)} training images "
            f"{run_.class_counts}, {len(run_.test_set)} "
            f"{'held-out' if config.eval_split == 'heldout' else 'test'} images to evaluate on, "
            f"device {device}, path {config.path_name()}"
        ),
    )
