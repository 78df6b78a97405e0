"""The report's figures (results/plots/*.png) from run directories' metrics.

A study of some 30 runs does not fit one axes: each figure draws one panel per group of runs (the
report's table by IF, the controls, the ablations beside model8, the product candidates), so a
panel holds a dozen lines at most and every run keeps a colour of its own within it. Runs of the
old loss rule are left out (RESULTS.md lists them apart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import rundir
from training.constants import SPLIT_OF_CLASS, SPLITS
from training.variants import LOSS_RULE, get_variant

from .report import ABLATIONS_BESIDE, RunResult, penalty_at
from .runs import control_runs, study_runs

# Groups of runs by variant family; any other family is a row of the report's table, grouped by IF.
FAMILY_GROUPS = {"control": "controls (erm)", "ablation": "ablations (beside model8)", "product": "product candidates"}
TABLE_IFS = (100, 50, 10)
IF_COLOURS = {100: "tab:blue", 50: "tab:orange", 10: "tab:green", 1: "tab:purple"}


def group_of(r: RunResult) -> str:
    return FAMILY_GROUPS.get(get_variant(r.variant).family, f"the report's table, IF {r.imbalance}")


def plot_groups(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Current-rule runs by group, in the report's order; the run the ablations are read against
    (model8 at IF 100) also sits beside them."""
    order = [f"the report's table, IF {f}" for f in TABLE_IFS] + list(FAMILY_GROUPS.values())
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        if r.rule != LOSS_RULE:
            continue
        groups.setdefault(group_of(r), []).append(r)
        if (r.variant, r.imbalance) in ABLATIONS_BESIDE:
            groups.setdefault(FAMILY_GROUPS["ablation"], []).append(r)
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(groups.items(), key=lambda kv: (rank.get(kv[0], len(order)), kv[0])))


def exit_share_by_split(final: dict, labels: np.ndarray, num_exits: int) -> dict[str, list[float]]:
    exits = np.asarray(final["exits"])
    split = np.array([SPLIT_OF_CLASS[c] for c in labels[: len(exits)]])
    return {
        name: (np.bincount(exits[split == name], minlength=num_exits + 1)[1:] / max((split == name).sum(), 1)).tolist()
        for name in SPLITS
    }


def rows_against_report(runs: list[RunResult]) -> list[RunResult]:
    """Completed current-rule runs of the controls and the report's table that have a reported
    accuracy to set them beside (the report's model4 diverged: none), in the table's order; like
    RESULTS.md, a run of ours that diverged gets no difference."""
    order = {key: i for i, key in enumerate(control_runs() + study_runs())}
    rows = [
        r
        for r in runs
        if r.rule == LOSS_RULE
        and r.status == rundir.COMPLETED
        and (r.variant, r.imbalance) in order
        and _reported_overall(r) is not None
    ]
    return sorted(rows, key=lambda r: (order[(r.variant, r.imbalance)], r.name))


def plot_all(
    runs: list[RunResult], labels: np.ndarray, out: Path, sweeps: dict[str, dict], penalties: dict[int, float]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")

    out.mkdir(parents=True, exist_ok=True)
    groups = plot_groups(runs)
    written = [training_curves(groups, out / "training_curves.png")]
    if rows := rows_against_report(runs):
        written.append(against_the_report(rows, penalties, out / "against_the_report.png"))
    done = {
        name: [r for r in rs if r.status == rundir.COMPLETED and r.metrics.get("final")] for name, rs in groups.items()
    }
    done = {name: rs for name, rs in done.items() if rs}
    if done:
        written.append(per_class_heatmap(done, out / "per_class_accuracy.png"))
        unique = {r.name: r for rs in done.values() for r in rs}.values()
        early = [r for r in unique if len(r.metrics["final"]["exit_distribution"]) > 1]
        if early:
            written.append(exit_distribution(early, labels, out / "exit_distribution_by_split.png"))
    # A one-exit network's sweep is one point: its group gets a panel only beside early-exit runs.
    swept = {name: [r for r in rs if r.name in sweeps] for name, rs in groups.items()}
    swept = {name: rs for name, rs in swept.items() if any(len(sweeps[r.name]["per_exit"]) > 1 for r in rs)}
    if swept:
        written.append(accuracy_vs_macs(swept, sweeps, out / "accuracy_vs_macs.png"))
    return written


def _colours(n: int) -> list:
    """n distinct colours: tab10 up to 10, else tab20 with its dark shades first."""
    import matplotlib.pyplot as plt

    if n <= 10:
        return list(plt.get_cmap("tab10").colors)
    tab20 = plt.get_cmap("tab20").colors
    return list(tab20[0::2] + tab20[1::2])


def _panels(n: int, ncols: int, size: tuple[float, float], **kw):
    import matplotlib.pyplot as plt

    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="constrained", **kw
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _label(r: RunResult) -> str:
    if r.status == rundir.COMPLETED:
        return r.name
    if r.status == rundir.DIVERGED:
        return f"{r.name} (diverged at {r.metrics.get('diverged_at')})"
    return f"{r.name} (stopped at {r.run.done}/{r.run.planned or '?'})"


def _panel_per_group(
    groups: dict[str, list[RunResult]], draw, markers, path: Path, *, title: str, xlabel: str, ylabel: str
) -> Path:
    """One panel per group, its legend beside it: `draw(ax, run, colour)` each run; `markers(runs)`
    lists (marker, what it marks) for the legend, empty when the panel has no such marks."""
    from matplotlib.lines import Line2D

    fig, axes = _panels(max(len(groups), 1), 2, (8.5, 3.8), sharey=True)
    for ax, (name, rs) in zip(axes, groups.items()):
        for r, colour in zip(rs, _colours(len(rs))):
            draw(ax, r, colour)
        handles, names = ax.get_legend_handles_labels()
        for mark, text in markers(rs):
            handles.append(Line2D([], [], marker=mark, color="grey", ls="", ms=7))
            names.append(text)
        ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set(title=name, xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)


def _reported_overall(r: RunResult) -> float | None:
    return None if r.reported is None else r.reported.overall


def training_curves(groups: dict[str, list[RunResult]], path: Path) -> Path:
    """Test accuracy by evaluated epoch, the report's number marked at the right edge."""

    def draw(ax, r, colour):
        epochs = [e for e in r.metrics["epochs"] if "overall" in e]
        ax.plot([e["epoch"] for e in epochs], [e["overall"] for e in epochs], color=colour, lw=1.2, label=_label(r))
        if _reported_overall(r) is not None:
            ax.plot(
                (r.run.planned or epochs[-1]["epoch"]) + 6,
                _reported_overall(r),
                marker="<",
                color=colour,
                ms=7,
                clip_on=False,
            )

    return _panel_per_group(
        groups,
        draw,
        lambda rs: [("<", "the report's number")] if any(_reported_overall(r) is not None for r in rs) else [],
        path,
        title="Training curves (evaluated epochs)",
        xlabel="epoch",
        ylabel="test accuracy (%), early-exit inference",
    )


def against_the_report(rows: list[RunResult], penalties: dict[int, float], path: Path) -> Path:
    """One line per row: the report's number, ours, ours with the copy's measured penalty added back,
    and the final exit alone (+ penalty) where early exits answer part of the images: the gap the
    table explains, at a glance."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.3 * len(rows)), layout="constrained")
    for y, r in enumerate(rows):
        colour, reported = IF_COLOURS.get(r.imbalance, "0.3"), _reported_overall(r)
        ours = r.last["overall"]
        penalty = (penalty_at(penalties, r.imbalance) or (0.0, None))[0]
        final = r.final_exit_alone if r.final_exit_alone is not None else ours
        ax.plot([ours, reported], [y, y], color="0.75", lw=1, zorder=1)
        ax.scatter(reported, y, marker="|", color="black", s=150, zorder=3)
        ax.scatter(ours, y, color=colour, s=30, zorder=3)
        if penalty:
            ax.scatter(ours + penalty, y, facecolors="none", edgecolors=colour, s=30, zorder=3)
        if abs(final - ours) >= 0.05:
            ax.scatter(final + penalty, y, marker="s", color="0.5", s=16, zorder=2)
        ax.annotate(
            f"{r.gap(ours, penalty):+.1f}",
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("last-epoch test accuracy (%); right: ours + penalty − report (points)")
    seen_ifs = sorted({r.imbalance for r in rows}, reverse=True)
    handles = [
        Line2D([], [], marker="|", color="black", ls="", ms=10, label="the report"),
        *(Line2D([], [], marker="o", color=IF_COLOURS.get(f, "0.3"), ls="", label=f"ours, IF {f}") for f in seen_ifs),
        Line2D([], [], marker="o", mfc="none", color="0.3", ls="", label="ours + the copy's penalty"),
        Line2D([], [], marker="s", color="0.5", ls="", ms=5, label="final exit alone (+ penalty)"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.06, 1.0))
    where = ", ".join(f"IF {f}: {p:.2f}" for f, p in sorted(penalties.items())) or "not yet measured"
    ax.set_title(
        f"Each measured row against the report (the copy's penalty, from the erm controls: {where})", fontsize=9
    )
    return _save(fig, path)


def per_class_heatmap(groups: dict[str, list[RunResult]], path: Path) -> Path:
    """One row per completed run (grouped), one column per class and the overall accuracy."""
    import matplotlib.pyplot as plt

    rows, names, bounds, seen = [], [], [], set()
    for rs in groups.values():
        for r in rs:
            if r.name in seen:  # model8 beside its ablations: one row is enough
                continue
            seen.add(r.name)
            final = r.metrics["final"]
            rows.append([*final["per_class"], final["overall"]])
            names.append(r.name)
        bounds.append(len(rows))
    data = np.array(rows)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.32 * len(rows)), layout="constrained")
    ax.imshow(data, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, fontweight="bold" if j == 10 else None)
    for b in bounds[:-1]:
        ax.axhline(b - 0.5, color="black", lw=1.5)
    for x in (2.5, 5.5, 9.5):
        ax.axvline(x, color="white", lw=2)
    ax.set_xticks(range(11), [*(f"{c}" for c in range(10)), "overall"])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.xaxis.set_ticks_position("top")
    ax.set_xlabel("class: 0-2 many, 3-5 medium, 6-9 few (last epoch, test set, %)")
    ax.set_title("Per-class accuracy at each run's inference threshold")
    return _save(fig, path)


def exit_distribution(runs: list[RunResult], labels: np.ndarray, path: Path) -> Path:
    """Where the test images of each split leave, for every completed run with early exits."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    early_colours = plt.get_cmap("tab10").colors
    final_colour = "0.6"
    fig, axes = _panels(len(runs), 6, (2.6, 2.6), sharey=True)
    most = 0
    for ax, r in zip(axes, runs):
        k = len(r.metrics["final"]["exit_distribution"])
        most = max(most, k - 1)
        shares = exit_share_by_split(r.metrics["final"], labels, k)
        bottom = np.zeros(len(shares))
        for e in range(k):
            vals = np.array([100 * shares[s][e] for s in shares])
            ax.bar(list(shares), vals, bottom=bottom, color=final_colour if e == k - 1 else early_colours[e])
            bottom += vals
        ax.set_title(r.name, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("% of test images")
    handles = [Patch(color=early_colours[e], label=f"exit {e + 1}") for e in range(most)]
    handles.append(Patch(color=final_colour, label="final exit"))
    fig.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles))
    fig.suptitle(
        "Exit distribution per class split (runs with early exits, their inference threshold)", x=0.02, ha="left"
    )
    return _save(fig, path)


def accuracy_vs_macs(groups: dict[str, list[RunResult]], sweeps: dict[str, dict], path: Path) -> Path:
    def draw(ax, r, colour):
        s = sweeps[r.name]
        ax.plot(
            [p["mean_macs"] / 1e6 for p in s["sweep"]], [p["overall"] for p in s["sweep"]], color=colour, label=r.name
        )
        ax.scatter(
            [p["cumulative_macs"] / 1e6 for p in s["per_exit"]],
            [p["overall"] for p in s["per_exit"]],
            color=colour,
            marker="s",
            s=18,
        )
        # where the table's row (its last evaluation) sits on its curve: the run's own inference threshold
        row = r.last
        ax.scatter(
            [row["mean_macs"] / 1e6],
            [row["overall"]],
            color=colour,
            marker="o",
            s=40,
            edgecolors="black",
            linewidths=0.6,
            zorder=3,
        )

    return _panel_per_group(
        groups,
        draw,
        lambda rs: [
            ("s", "one exit alone (every image there)"),
            ("o", "the run's inference threshold (its table row)"),
        ],
        path,
        title="Accuracy vs compute as the inference threshold sweeps 0 → 1",
        xlabel="mean MACs per image (M)",
        ylabel="test accuracy (%)",
    )


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
