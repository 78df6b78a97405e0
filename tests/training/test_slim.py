"""`slim`: a completed run's checkpoint down to its weights; what reads weights reads it unchanged,
and nothing resumes it."""

import json

import torch

from training.cli import main

from ..conftest import cli_args
from .smoke import SMOKE, smoke_flags

TINY = ["--max-batches", "2", "--max-test-samples", "100", "--max-train-samples", "200"]


def test_a_slimmed_run_evaluates_and_rebalances_as_before_and_is_not_resumed(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--variant", "hybrid-lt-mid", "--out", str(run), "--data-dir", str(data_dir), *SMOKE]) == 0
    fit = tmp_path / "run-rebalance"
    assert (
        main(cli_args("rebalance", *TINY, checkpoint=run / "checkpoint.pt", out=fit, epochs="1", data_dir=data_dir))
        == 0
    )
    before = {}
    for name, d in (("run", run), ("fit", fit)):
        assert (
            main(
                cli_args(
                    "evaluate", checkpoint=d / "checkpoint.pt", data_dir=data_dir, json=tmp_path / f"{name}-before.json"
                )
            )
            == 0
        )
        before[name] = (d / "checkpoint.pt").stat().st_size

    assert main(["slim", str(run), str(fit)]) == 0
    for name, d in (("run", run), ("fit", fit)):
        state = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=False)
        assert "optimizer" not in state and not any(
            {"optimizer", "network"} & set(v) for v in state.values() if isinstance(v, dict)
        )
        assert (d / "checkpoint.pt").stat().st_size < 0.6 * before[name]
        assert (
            main(
                cli_args(
                    "evaluate", checkpoint=d / "checkpoint.pt", data_dir=data_dir, json=tmp_path / f"{name}-after.json"
                )
            )
            == 0
        )
        assert json.loads((tmp_path / f"{name}-after.json").read_text()) == json.loads(
            (tmp_path / f"{name}-before.json").read_text()
        )
    again = tmp_path / "again"  # a second stage of a slimmed run is a run of its own: resumable
    assert (
        main(cli_args("rebalance", *TINY, checkpoint=run / "checkpoint.pt", out=again, epochs="1", data_dir=data_dir))
        == 0
    )
    state = torch.load(again / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert "weights_only" not in state and "optimizer" in state["rebalance"]

    capsys.readouterr()
    assert (
        main(
            ["train", "--variant", "hybrid-lt-mid", "--out", str(run), "--data-dir", str(data_dir), *SMOKE, "--resume"]
        )
        == 2
    )
    assert "weights only" in capsys.readouterr().err
    assert main(["slim", str(run)]) == 0  # again: nothing left to take


def test_only_completed_runs_are_slimmed(data_dir, tmp_path, capsys):
    cut = tmp_path / "cut"
    assert (
        main(["train", "--variant", "model1", "--out", str(cut), "--data-dir", str(data_dir), *smoke_flags(epochs=2)])
        == 0
    )
    doc = json.loads((cut / "metrics.json").read_text())
    doc["status"] = "running"  # as a run cut off (no process holds it: stopped)
    (cut / "metrics.json").write_text(json.dumps(doc))
    size = (cut / "checkpoint.pt").stat().st_size
    capsys.readouterr()
    assert main(["slim", str(cut)]) == 2
    assert "not completed: its checkpoint still resumes it" in capsys.readouterr().err
    assert (cut / "checkpoint.pt").stat().st_size == size
