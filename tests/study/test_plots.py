"""The report's figures: which runs share a panel, and that every figure renders."""

from pathlib import Path

import numpy as np

from study.plots import FAMILY_GROUPS, plot_all, plot_groups, rows_against_report
from study.report import RunResult
from training.rundir import RunState
from training.variants import get_variant


def _run(
    variant: str, imbalance: int, status: str = "completed", name: str | None = None, old_rule: bool = False
) -> RunResult:
    record = {"exit_losses": ["plain"]} if not old_rule else {"exit_loss": "simulated"}
    k = len(get_variant(variant).exit_heads)
    epochs = [{"epoch": e, "overall": 10.0 + e, "mean_macs": 1.5e6} for e in range(1, 6)]
    final = {
        "overall": 15.0,
        "per_class": [float(c) for c in range(10)],
        "exit_distribution": [1 / k] * k,
        "exits": [1 + i % k for i in range(100)],
        "per_exit": [{"exit": i + 1, "cumulative_macs": 1e6 * (i + 1), "overall": 10.0 + i} for i in range(k)],
    }
    metrics = {
        "status": status,
        "epochs": epochs,
        **({"final": final} if status == "completed" else {}),
        **({"diverged_at": 5} if status == "diverged" else {}),
    }
    name = name or f"{variant}-if{imbalance}-seed0"
    run = RunState(status, len(epochs), 200, {"variant": record, "config": {"epochs": 200}}, metrics)
    return RunResult(name, variant, imbalance, 0, Path(name), run)


def test_runs_are_grouped_like_the_results_page():
    runs = [
        _run("hybrid-lt", 100),
        _run("erm", 100),
        _run("model12", 50),
        _run("model8", 100),
        _run("model8-linear", 100),
        _run("model1", 100, "running"),
        _run("model4", 100, "diverged"),
        _run("model1", 100, name="model1-old", old_rule=True),
    ]
    groups = plot_groups(runs)
    assert list(groups) == [
        "the report's table, IF 100",
        "the report's table, IF 50",
        FAMILY_GROUPS["control"],
        FAMILY_GROUPS["ablation"],
        FAMILY_GROUPS["product"],
    ]
    assert [r.name for r in groups["the report's table, IF 100"]] == [
        "model8-if100-seed0",
        "model1-if100-seed0",
        "model4-if100-seed0",
    ]  # the old rule's run is left out
    assert [r.name for r in groups[FAMILY_GROUPS["ablation"]]] == ["model8-if100-seed0", "model8-linear-if100-seed0"]


def test_rows_against_the_report_are_completed_table_rows_with_a_reported_number_in_table_order():
    runs = [
        _run("model12", 50),
        _run("hybrid-lt", 100),
        _run("model8", 100, name="model8-if100-seed0-cpufast"),
        _run("model1", 100, "running"),
        _run("model4", 100, "diverged"),
        _run("erm", 100),
        _run("model8", 100),
        _run("model8-linear", 100),
        _run("model7", 100, name="model7-old", old_rule=True),
        _run("model3", 100, "diverged"),
    ]
    # model4's reported row diverged (no accuracy), model3 diverged here, model1 is unfinished,
    # hybrid-lt and model8-linear are not rows of the report's table, model7-old is of the old loss rule.
    assert [r.name for r in rows_against_report(runs)] == [
        "erm-if100-seed0",
        "model8-if100-seed0",
        "model8-if100-seed0-cpufast",
        "model12-if50-seed0",
    ]


def test_every_figure_renders_with_cut_diverged_and_one_exit_runs(tmp_path):
    runs = [
        _run("model8", 100),
        _run("model1", 100, "running"),
        _run("model4", 100, "diverged"),
        _run("erm", 100),
        _run("hybrid-lt-mid", 100),
    ]
    sweeps = {
        r.name: {
            "sweep": [{"threshold": t, "overall": 10 + 50 * t, "mean_macs": 1e6 * (1 + t)} for t in (0.0, 0.5, 1.0)],
            "per_exit": r.metrics["final"]["per_exit"],
        }
        for r in runs
        if r.status == "completed"
    }
    labels = np.arange(100) % 10
    written = plot_all(runs, labels, tmp_path, sweeps, {100: 5.0})
    assert [p.name for p in written] == [
        "training_curves.png",
        "against_the_report.png",
        "per_class_accuracy.png",
        "exit_distribution_by_split.png",
        "accuracy_vs_macs.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in written)
    # Nothing completed: the curves alone.
    assert [p.name for p in plot_all([_run("model1", 100, "running")], labels, tmp_path / "cut", {}, {})] == [
        "training_curves.png"
    ]
