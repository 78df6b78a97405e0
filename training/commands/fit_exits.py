"""`fit-exits`: train a checkpoint's early exits from its final exit (SPEC §4a) -> a run directory.

The new checkpoint reads like a training one (evaluate, calibrate, export take it) and records
its parent checkpoint and the parent's sha256.
"""

from __future__ import annotations

from ..fit_exits import MODES, ExitFitter, FitConfig
from ..network import HEADS
from .common import add_second_stage_args, from_flags, non_negative, positive_int, run_second_stage, unit_interval


def add_arguments(parser) -> None:
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="frozen",
        help="frozen: only the early heads train, backbone and final exit bit-identical; "
        "mixed: backbone and heads fine-tune together, distilled from the parent's final exit",
    )
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument(
        "--lr",
        type=non_negative,
        default=None,
        help="initial learning rate, cosine to 0 (default: 0.1 frozen, 0.01 mixed)",
    )
    parser.add_argument(
        "--head-lr",
        type=non_negative,
        default=None,
        help="the early heads' initial learning rate (default: --lr frozen, 0.1 mixed)",
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T")
    parser.add_argument(
        "--distill-weight",
        type=unit_interval,
        default=0.5,
        help="share of the distillation term; the label loss gets the rest",
    )
    parser.add_argument(
        "--early-heads",
        choices=HEADS.names(),
        default=None,
        help="replace the early heads with fresh ones of this kind (light2: two convs, "
        "about 2.4M MACs); default: fit the parent's own",
    )
    parser.add_argument(
        "--early-exits-after",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="BLOCK",
        help="with --early-heads: put the fresh early heads after these blocks (1-based, of "
        "15; e.g. 5 8 10 adds one inside stage 2); default: where the parent's are",
    )
    add_second_stage_args(parser, "fit-<mode>")


def run(args) -> int:
    frozen = args.mode == "frozen"
    config = from_flags(
        FitConfig,
        args,
        lr=args.lr if args.lr is not None else (0.1 if frozen else 0.01),
        head_lr=args.head_lr if args.head_lr is not None else (None if frozen else 0.1),
        early_exit_blocks=None if args.early_exits_after is None else tuple(b - 1 for b in args.early_exits_after),
    )
    return run_second_stage(
        ExitFitter,
        config,
        args,
        f"fit-{args.mode}",
        lambda job: (
            f"fit-exits ({config.mode}) of {args.checkpoint} ({job.variant.name}, sha256 "
            f"{job.parent_sha256[:12]}…): {len(job.train_set)} training images"
        ),
    )
