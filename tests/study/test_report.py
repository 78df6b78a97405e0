import json
import shutil

from study.cli import main as study
from study.runs import study_runs
from training.cli import main

from ..conftest import cli_args
from ..training.smoke import SMOKE, smoke_flags


def test_study_is_the_reports_19_runs():
    runs = study_runs()
    assert len(runs) == 19 and len(set(runs)) == 19
    assert ("elf", 50) in runs and ("reslt", 10) in runs and ("model16", 10) in runs


def test_report_lists_measured_and_missing_runs_with_plots(data_dir, tmp_path):
    runs = tmp_path / "runs"
    assert main(cli_args("train", *SMOKE, variant="model1", out=runs / "model1-if100-seed0", data_dir=data_dir)) == 0
    assert (
        main(["train", "--variant", "erm", "--out", str(runs / "erm-if100-seed0"), "--data-dir", str(data_dir), *SMOKE])
        == 0
    )
    stopped = runs / "model8-if100-seed0"
    assert (
        main(
            cli_args(
                "train",
                *smoke_flags(epochs=3),
                variant="model8",
                out=stopped,
                data_dir=data_dir,
                checkpoint_every="1",
                eval_every="2",
            )
        )
        == 0
    )
    doc = json.loads((stopped / "metrics.json").read_text())
    doc["status"], doc["epochs"] = "running", doc["epochs"][:1]  # as a run cut off after epoch 1 (not evaluated)
    doc["resumes"] = [{"epoch": 1, "device": "NVIDIA H200"}]  # and resumed on another machine
    (stopped / "metrics.json").write_text(json.dumps(doc))
    assert (
        main(
            cli_args(
                "train",
                *SMOKE,
                variant="hybrid-ce",
                imbalance="50",
                out=runs / "hybrid-ce-if50-seed0",
                data_dir=data_dir,
            )
        )
        == 0
    )  # a product candidate at another IF than its own
    old = runs / "model1-if100-seed0-old-rule"  # as written before the SPEC §4 correction
    shutil.copytree(runs / "model1-if100-seed0", old)
    config = json.loads((old / "config.json").read_text())
    config["variant"].pop("exit_losses")
    config["variant"]["exit_loss"] = "simulated"
    (old / "config.json").write_text(json.dumps(config))

    assert study(["report", "--runs", str(runs), "--out", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    model1 = next(line for line in text.splitlines() if line.startswith("| model1 |"))
    overall = json.loads((runs / "model1-if100-seed0" / "metrics.json").read_text())["final"]["overall"]
    assert f"| {overall:.2f} |" in model1 and "completed" in model1
    erm = json.loads((runs / "erm-if100-seed0" / "metrics.json").read_text())["final"]["overall"]
    final_exit = json.loads((runs / "model1-if100-seed0" / "metrics.json").read_text())["final"]["per_exit"][-1][
        "overall"
    ]
    assert (
        f"| {overall - 56.90:+.2f} | {overall + (70.36 - erm) - 56.90:+.2f} (erm IF 100) "
        f"| {final_exit:.2f} ({final_exit + (70.36 - erm) - 56.90:+.2f}) |"
    ) in model1
    assert f"IF 100: {70.36 - erm:.2f} points" in text
    assert "not yet measured: stopped at epoch 1 of 3" in text
    model8 = next(line for line in text.splitlines() if "stopped at epoch 1 of 3" in line)
    assert "| CPU (" in model8 and "; from epoch 2: NVIDIA H200 |" in model8 and "| resumable |" in model8
    from study.report import collect_runs, results_table
    from training import rundir

    with rundir.claim(stopped):  # as while a process trains it
        table, _ = results_table(collect_runs(runs))
    model8 = next(line for line in table.splitlines() if line.startswith("| model8 |"))
    assert "not yet measured: running, epoch 1 of 3 done |" in model8 and "| running |" in model8
    from training.config import cpu_has_bf16

    amp = "--amp" if cpu_has_bf16() else "--no-amp"  # the CPU default's
    assert (
        f"--variant model8 --imbalance 100 --seed 0 --data-path device {amp} --channels-last --compile off "
        "--eval-every 2 --out results/runs/model8-if100-seed0 --resume"
    ) in text
    # the table's, the erm IF 1 control, the ablations, the product candidates
    assert text.count("| not yet measured |") == 17 + 1 + 2 + 8
    products = text.split("## Product candidates")[1].split("\n## ")[0]
    assert "| hybrid-lt-sam | 100 | – | not yet measured |" in products and "held-out" in products
    assert "| hybrid-ce | 100 | – | not yet measured |" in products and "\n| hybrid-ce | 50 | – | " in products
    assert products.count("- `hybrid-ce`:") == 1
    assert "python -m training train --variant hybrid-lt-sam --imbalance 100" in text
    assert len([line for line in text.splitlines() if line.startswith("| model1 |")]) == 1
    retired = text.split("## Retired: runs of the old loss rule")[1]
    assert "| model1-if100-seed0-old-rule | model1 | 100 |" in retired
    assert "python -m training train --variant erm --imbalance 1 " in text
    assert "python -m training train --variant reslt --imbalance 50" in text
    assert "python -m study grid --device cuda --parallel 6 -- --data-path device --amp" in text
    assert "## bf16 fast path vs fp32" in text and "--out results/runs/model8-if100-seed0-cpufast" in text
    assert "study/scripts/cpu_study.sh" in text
    made = text.split("## How each measured run was made")[1]
    assert (
        f"python -m training train --variant model1 --imbalance 100 --seed 0 --data-path device {amp} "
        "--channels-last --compile off --out results/runs/model1-if100-seed0\n"
    ) in made
    for plot in ("training_curves", "per_class_accuracy", "exit_distribution_by_split", "accuracy_vs_macs"):
        assert (tmp_path / "plots" / f"{plot}.png").stat().st_size > 1000

    # A finished run's checkpoint gone (slimmed out of the repository): its sweep comes from the cache.
    from study.commands.report import threshold_sweeps
    from training.data import load_cifar10

    cache = tmp_path / "plots" / "sweeps.json"
    swept = json.loads(cache.read_text())
    assert {"model1-if100-seed0", "erm-if100-seed0"} <= set(swept)
    assert [row["threshold"] for row in swept["model1-if100-seed0"]][-1] == 1.0
    (runs / "model1-if100-seed0" / "checkpoint.pt").unlink()
    again = threshold_sweeps(collect_runs(runs), load_cifar10(data_dir)[1], cache)
    assert again["model1-if100-seed0"]["sweep"] == swept["model1-if100-seed0"]
    assert "model8-if100-seed0" not in again  # not completed


def test_report_sets_fast_path_runs_beside_reference_runs(data_dir, tmp_path):
    runs = tmp_path / "runs"
    reference = ["--data-path", "reference", "--no-amp", "--no-channels-last"]
    fast = ["--data-path", "device", "--amp", "--channels-last"]  # the CPU fast path on any CPU
    for name, flags in (("model1-if100-seed0", reference), ("model1-if100-seed0-fast", fast)):
        assert (
            main(
                ["train", "--variant", "model1", "--out", str(runs / name), "--data-dir", str(data_dir), *SMOKE, *flags]
            )
            == 0
        )
    assert (
        study(["report", "--runs", str(runs), "--out", str(tmp_path), "--data-dir", str(data_dir), "--no-sweep"]) == 0
    )
    text = (tmp_path / "RESULTS.md").read_text()
    acc = {
        name: json.loads((runs / name / "metrics.json").read_text())["final"]["overall"]
        for name in ("model1-if100-seed0", "model1-if100-seed0-fast")
    }
    row = next(line for line in text.splitlines() if line.startswith("| model1 | 100 | 0 |"))
    reference, fast = acc["model1-if100-seed0"], acc["model1-if100-seed0-fast"]
    assert f"| {reference:.2f} | {fast:.2f} | {fast - reference:+.2f} |" in row
    assert ("| yes |" in row) == (abs(fast - reference) <= 1.5) and "| `reference` | `cpu-fast` |" in row
    table_rows = [line for line in text.splitlines() if line.startswith("| model1 | 100 | 56.90")]
    assert [line.rsplit("|", 2)[1].strip() for line in table_rows] == ["reference", "cpu-fast"]
    # and the page says which flags each path name stands for
    assert "`cpu-fast` is `--data-path device --amp --channels-last --compile off`" in text
    assert "`reference` is `--data-path reference --no-amp --no-channels-last --compile off`" in text


def _completed(variant: str, overall: float, path_flags: dict, tmp_path):
    from study.report import RunResult
    from training.rundir import RunState
    from training.variants import get_variant

    last = {"overall": overall, "many": overall + 10, "medium": overall, "few": overall - 10}
    config = {"config": {"variant": variant, "imbalance": 100, **path_flags}, "variant": get_variant(variant).to_dict()}
    run = RunState("completed", 1, 200, config, {"status": "completed", "epochs": [last]})
    return RunResult(f"{variant}-if100-seed0", variant, 100, 0, tmp_path, run)


def test_ablation_contrasts_need_both_runs_completed_and_name_differing_paths(tmp_path):
    from study.report import contrasts
    from training.config import CPU_FAST_PATH, REFERENCE_PATH

    model8 = _completed("model8", 72.5, REFERENCE_PATH, tmp_path)
    linear = _completed("model8-linear", 65.25, CPU_FAST_PATH, tmp_path)
    assert contrasts([model8]) == []
    [line] = contrasts([model8, linear])
    assert "**+7.25** points (model8 72.50 − model8-linear 65.25; many +7.25" in line
    assert "paths: reference vs cpu-fast; one seed each" in line


def test_heldout_choices_list_every_calibrated_second_stage(tmp_path):
    from study.report import heldout_choices

    assert heldout_choices(tmp_path) == ""
    fit = tmp_path / "hybrid-la-if100-seed0-rebalance"
    fit.mkdir()
    (fit / "calibration-heldout.json").write_text(
        json.dumps(
            {
                "threshold": [0.6, 0.55],
                "taus": [0.0, 0.25, 0.5],
                "final_exit_accuracy": 78.4,
                "heldout_accuracy": 77.5,
                "mean_macs_share": 0.5812,
                "heldout_images": 4500,
            }
        )
    )
    newer = tmp_path / "model13-if10-seed0-rebalance"
    newer.mkdir()
    (newer / "calibration-heldout.json").write_text(
        json.dumps(
            {
                "threshold": 0.7,
                "taus": [0.0, 0.5],
                "final_exit_accuracy": 85.4,
                "heldout_accuracy": 84.9,
                "mean_macs_share": 0.638,
                "heldout_images": 4500,
                "drop_confidence": 0.95,
                "drop_upper_bound": 0.981,
            }
        )
    )
    table = heldout_choices(tmp_path)
    assert (
        "| hybrid-la-if100-seed0-rebalance | 78.40 | 77.50 | 0.581 | 0.60 / 0.55 | 0 / 0.25 / 0.5 | 4500 "
        "| point estimate |"
    ) in table  # written before the margin existed
    assert (
        "| model13-if10-seed0-rebalance | 85.40 | 84.90 | 0.638 | 0.70 | 0 / 0.5 | 4500 | 95% bound (0.98) |" in table
    )


def test_seeds_of_a_run_get_their_mean_and_spread_and_the_mean_meets_the_report(data_dir, tmp_path):
    from study.report import collect_runs, jpeg_penalties, results_table

    runs = tmp_path / "runs"
    for variant, seed in (("model1", 0), ("model1", 1), ("erm", 0), ("erm", 1)):
        out = runs / f"{variant}-if100-seed{seed}"
        assert main(cli_args("train", *SMOKE, variant=variant, seed=seed, out=out, data_dir=data_dir)) == 0
    collected = collect_runs(runs)
    last = {(r.variant, r.seed): r.last["overall"] for r in collected}
    erm = (last["erm", 0] + last["erm", 1]) / 2
    assert jpeg_penalties(collected) == {100: 70.36 - erm}
    table, _ = results_table(collected, [("model1", 100)], jpeg_penalties(collected))
    rows = [line for line in table.splitlines() if line.startswith("| model1 |")]
    assert len(rows) == 3  # each seed, then their mean
    a, b = last["model1", 0], last["model1", 1]
    mean, std = (a + b) / 2, abs(a - b) / 2**0.5
    assert f"| **{mean:.2f} ± {std:.2f}** |" in rows[2] and "mean ± std, n = 2 (seeds 0, 1)" in rows[2]
    assert f"| {mean - 56.90:+.2f} | {mean + (70.36 - erm) - 56.90:+.2f} (erm IF 100) |" in rows[2]
    assert all("| – | – |" in row for row in rows[:2])  # a seed's own gap is not the comparison
