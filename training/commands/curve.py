"""`curve`: a model directory's accuracy-vs-MACs curve (its manifest's threshold sweep on the test
set, each exit alone marked, the default and the report's thresholds pointed out) as a PNG plot
and a markdown table. Reads only the manifest: no checkpoint needed."""

from __future__ import annotations

from pathlib import Path

from modelrepo.manifest import load_manifest

from ..errors import TrainingError
from ..evaluation import format_threshold


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model directory, e.g. models/default")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: print the table only)")


def table(manifest) -> str:
    m = manifest.metrics
    exits = range(1, manifest.num_exits + 1)
    rows = [
        f"| operating point | threshold | accuracy | many | medium | few | exits ({'/'.join(map(str, exits))} %) "
        f"| MACs (share of full) | agreement with final exit (exits {'/'.join(map(str, exits[:-1]))} %) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label, p):
        exits = "/".join(f"{100 * d:.1f}" for d in p.exit_distribution)
        agree = "/".join("–" if a is None else f"{100 * a:.1f}" for a in p.agreement) or "–"
        rows.append(
            f"| {label} | {format_threshold(p.threshold)} | {p.overall:.2f} | {p.many:.2f} | {p.medium:.2f} "
            f"| {p.few:.2f} | {exits} | {p.mean_macs_share:.3f} | {agree} |"
        )

    row("**default** (manifest)", m)
    if m.at_report_threshold is not None:
        row("report's threshold", m.at_report_threshold)
    for p in m.sweep:
        row("sweep", p)
    for e in m.per_exit:
        rows.append(
            f"| exit {e.exit} alone | – | {e.overall:.2f} | {e.many:.2f} | {e.medium:.2f} | {e.few:.2f} "
            f"| – | {e.cumulative_macs / manifest.full_macs:.3f} | – |"
        )
    return "\n".join(rows)


def plot(manifest, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = manifest.metrics
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(
        [p.mean_macs_share for p in m.sweep],
        [p.overall for p in m.sweep],
        "o-",
        ms=3,
        label="threshold sweep 0 → 1 (one threshold for every exit)",
    )
    for e in m.per_exit:
        share = e.cumulative_macs / manifest.full_macs
        ax.scatter(share, e.overall, marker="s", color="black")
        ax.annotate(f"exit {e.exit} alone", (share, e.overall), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.scatter(
        m.mean_macs_share,
        m.overall,
        marker="*",
        s=200,
        color="red",
        zorder=3,
        label=f"default: threshold {format_threshold(m.threshold)}",
    )
    if m.at_report_threshold is not None:
        r = m.at_report_threshold
        ax.scatter(
            r.mean_macs_share,
            r.overall,
            marker="D",
            color="orange",
            zorder=3,
            label=f"report's threshold {format_threshold(r.threshold)}",
        )
    ax.set(
        xlabel="mean MACs per image (share of the full network)",
        ylabel="test accuracy (%)",
        title=f"{manifest.name}: accuracy vs compute ({m.images:,} CIFAR-10 test images)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run(args) -> int:
    manifest = load_manifest(args.model)
    if not manifest.metrics.sweep:
        raise TrainingError(f"{args.model}: the manifest holds no threshold sweep (exported before format 1.1)")
    print(table(manifest))
    if args.out:
        plot(manifest, args.out)
        print(f"wrote {args.out}")
    return 0
