import json

import torch

from study.cli import main as study
from training.cli import main

from ..conftest import cli_args
from ..training.smoke import SMOKE, smoke_flags


def test_grid_runs_concurrently_then_skips_what_is_done(data_dir, tmp_path, capsys):
    grid = cli_args("grid", variants=["model7", "elf"], imbalance=100, device="cpu", parallel=2, out=tmp_path)
    args = [*grid, "--data-dir", str(data_dir), "--", *SMOKE]
    assert study(args) == 0
    for name in ("model7-if100-seed0", "elf-if100-seed0"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["status"] == "completed"
    capsys.readouterr()
    assert study([*args[:1], "--dry-run", *args[1:]]) == 0
    assert "0 runs to do" in capsys.readouterr().out


def test_grid_plans_the_whole_study(capsys):
    assert study(["grid", "--dry-run", "--out", "/nonexistent-results"]) == 0
    out = capsys.readouterr().out
    assert "19 runs to do" in out and "--variant reslt --imbalance 10" in out


def test_grid_resumes_a_run_on_the_path_it_started_with(data_dir, tmp_path, capsys):
    # A reference-path run cut off after epoch 1 of 2; the grid now asks for another path.
    run_dir = tmp_path / "elf-if100-seed0"
    assert (
        main(
            cli_args(
                "train",
                *smoke_flags(epochs=2),
                variant="elf",
                out=run_dir,
                data_dir=data_dir,
                checkpoint_every="1",
                data_path="reference",
            )
        )
        == 0
    )
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    state["epoch"], state["history"] = 1, state["history"][:1]
    torch.save(state, run_dir / "checkpoint.pt")
    doc = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**doc, "status": "running", "epochs": doc["epochs"][:1]}))

    grid = cli_args("grid", variants="elf", imbalance=100, device="cpu", out=tmp_path, data_dir=data_dir)
    own = cli_args(checkpoint_every=1, data_path="device")
    args = [*grid, "--", *smoke_flags(epochs=2), *own, "--compile=default"]
    capsys.readouterr()
    assert study([*args[:1], "--dry-run", *args[1:]]) == 0
    planned = capsys.readouterr().out
    # Resumed on its own path, spelled out: the CPU default (amp where the CPU has bf16, channels-last)
    # and the other flags dropped.
    from training.config import cpu_has_bf16

    amp = "--amp" if cpu_has_bf16() else "--no-amp"
    assert "--resume" in planned and f"--data-path reference {amp} --channels-last --compile off" in planned
    assert "--data-path device" not in planned and "--compile=default" not in planned
    assert study(args) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 2
    assert "resuming" in (tmp_path / "elf-if100-seed0.stdout").read_text()


def test_shards_cover_the_study_exactly_once():
    from study.cli import COMMANDS
    from study.commands.grid import planned_runs
    from training.cli import get_args_parser

    parser = get_args_parser("python -m study", "", COMMANDS)
    whole = planned_runs(parser.parse_args(["grid", "--seeds", "0", "1"]))
    for count in (1, 4, 19, 38, 50):
        shards = [
            planned_runs(parser.parse_args(["grid", "--seeds", "0", "1", "--shard", f"{i}/{count}"]))
            for i in range(count)
        ]
        assert sorted(r for s in shards for r in s) == sorted(whole)
        assert sum(len(s) for s in shards) == len(whole) == 38


def test_bad_shard_is_a_usage_error(capsys):
    import pytest

    for bad in ("3/3", "x/2", "-1/4", "2"):
        with pytest.raises(SystemExit):
            study(["grid", "--dry-run", "--shard", bad])
        assert "INDEX" in capsys.readouterr().err
