"""`variants`: the SPEC §6 table, as text or JSON."""

from __future__ import annotations

import json

from ..variants import all_variants


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print every variant's full config as JSON")


def _reported(v) -> str:
    r = v.reported.get(v.imbalance)
    return "-" if r is None else r.summary(sep="/")


def run(args) -> int:
    variants = all_variants()
    if args.json:
        print(json.dumps([v.to_dict() for v in variants], indent=2))
        return 0
    header = (
        "name",
        "family",
        "loss",
        "exit losses",
        "routing",
        "augment",
        "exits",
        "widths",
        "thr train/infer",
        "optimizer",
        "IF",
        "report: overall (many/medium/few)",
    )
    rows = [
        (
            v.name,
            v.family,
            v.loss,
            "/".join(v.exit_losses),
            v.routing,
            v.augmentation,
            "+".join(v.exit_heads),
            "/".join(map(str, v.widths)),
            f"{v.train_threshold:g} / {v.infer_threshold:g}",
            f"SAM rho {v.sam_rho:g}" if v.sam_rho else "SGD",
            str(v.imbalance),
            _reported(v),
        )
        for v in variants
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
