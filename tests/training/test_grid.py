import json

from training.cli import main

from .smoke import SMOKE


def test_grid_runs_concurrently_then_skips_what_is_done(data_dir, tmp_path, capsys):
    args = ["grid", "--variants", "model7", "elf", "--imbalance", "100", "--device", "cpu", "--parallel", "2",
            "--out", str(tmp_path), "--data-dir", str(data_dir), "--", *SMOKE]
    assert main(args) == 0
    for name in ("model7-if100-seed0", "elf-if100-seed0"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["status"] == "completed"
    capsys.readouterr()
    assert main([*args[:1], "--dry-run", *args[1:]]) == 0
    assert "0 runs to do" in capsys.readouterr().out


def test_grid_plans_the_whole_study(capsys):
    assert main(["grid", "--dry-run", "--out", "/nonexistent-results"]) == 0
    out = capsys.readouterr().out
    assert "19 runs to do" in out and "--variant reslt --imbalance 10" in out
