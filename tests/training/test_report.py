import json

from training.cli import main
from training.variants import study_runs

from .smoke import SMOKE, smoke_flags


def test_study_is_the_reports_19_runs():
    runs = study_runs()
    assert len(runs) == 19 and len(set(runs)) == 19
    assert ("elf", 50) in runs and ("reslt", 10) in runs and ("model16", 10) in runs


def test_report_lists_measured_and_missing_runs_with_plots(data_dir, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", "--variant", "model1", "--out", str(runs / "model1-if100-seed0"),
                 "--data-dir", str(data_dir), *SMOKE]) == 0
    stopped = runs / "model8-if100-seed0"
    assert main(["train", "--variant", "model8", "--out", str(stopped), "--data-dir", str(data_dir),
                 *smoke_flags(epochs=3), "--checkpoint-every", "1"]) == 0
    doc = json.loads((stopped / "metrics.json").read_text())
    doc["status"], doc["epochs"] = "running", doc["epochs"][:1]  # as a run cut off after epoch 1
    (stopped / "metrics.json").write_text(json.dumps(doc))

    assert main(["report", "--runs", str(runs), "--out", str(tmp_path), "--data-dir", str(data_dir)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    model1 = next(line for line in text.splitlines() if line.startswith("| model1 |"))
    overall = json.loads((runs / "model1-if100-seed0" / "metrics.json").read_text())["final"]["overall"]
    assert f"| {overall:.2f} |" in model1 and "completed" in model1
    assert "not yet measured: stopped at epoch 1 of 3" in text
    assert "--variant model8 --imbalance 100 --seed 0 --device cuda --out results/runs/model8-if100-seed0 --resume" in text
    assert text.count("| not yet measured |") == 17
    assert "python -m training train --variant reslt --imbalance 50" in text
    for plot in ("training_curves", "per_class_accuracy", "exit_distribution_by_split", "accuracy_vs_macs"):
        assert (tmp_path / "plots" / f"{plot}.png").stat().st_size > 1000
