"""The CLI end to end on real CIFAR-10: every variant trains a few batches and evaluates."""

import json
import shutil

import pytest

from training import rundir
from training.cli import main
from training.variants import all_variants

from ..conftest import cli_args, run_training
from .smoke import SMOKE, smoke_flags


def cli(*args, cwd=None):
    return run_training(args, cwd=cwd)


@pytest.mark.parametrize("variant", all_variants(), ids=lambda v: v.name)
def test_every_variant_trains_and_evaluates(variant, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--variant", variant.name, "--out", str(out), "--data-dir", str(data_dir), *SMOKE]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 1
    final = metrics["final"]
    assert len(final["exit_distribution"]) == variant.num_exits
    assert sum(final["exit_distribution"]) == pytest.approx(1.0)
    assert len(final["predictions"]) == len(final["exits"]) == 100
    log = (out / "train.log").read_text()
    assert log.startswith("Epoch 1\tTime: ") and "(Many: " in log
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["variant"] == variant.name and config["provenance"]["torch"]
    assert (out / "checkpoint.pt").is_file()

    capsys.readouterr()
    assert (
        main(cli_args("evaluate", checkpoint=out / "checkpoint.pt", data_dir=data_dir, json=tmp_path / "eval.json"))
        == 0
    )
    printed = capsys.readouterr().out
    assert "on 10000 test images" in printed and "each exit alone" in printed
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert len(ev["predictions"]) == 10000
    assert ev["threshold"] == variant.infer_threshold
    assert ev["full_macs"] == metrics["exit_costs"][-1]["cumulative_macs"]


def test_evaluate_exit_distribution_follows_threshold(data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--variant", "model1", "--out", str(out), "--data-dir", str(data_dir), *SMOKE]) == 0
    results = {}
    for t in ("0", "1"):
        assert (
            main(
                cli_args(
                    "evaluate",
                    checkpoint=out / "checkpoint.pt",
                    data_dir=data_dir,
                    threshold=t,
                    json=tmp_path / f"{t}.json",
                )
            )
            == 0
        )
        results[t] = json.loads((tmp_path / f"{t}.json").read_text())
    assert results["0"]["exit_distribution"] == [1.0, 0.0, 0.0]  # everything leaves at exit 1
    assert results["1"]["exit_distribution"][-1] == pytest.approx(1.0, abs=1e-3)
    assert results["0"]["mean_macs"] < results["1"]["mean_macs"]
    assert results["0"]["overall"] == pytest.approx(results["0"]["per_exit"][0]["overall"])


def test_existing_run_needs_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--variant", "model7", "--out", str(out), "--data-dir", str(data_dir), *SMOKE]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--batch-size", "16"]) == 2  # the later flag wins
    assert "batch_size" in capsys.readouterr().err


def test_status_says_where_run_directories_stand(data_dir, tmp_path):
    """`status` (what study/scripts/cpu_study.sh and ship_default.sh read with `cut -f1`): one line per
    directory, in the order given, the status first."""
    done = tmp_path / "done"
    assert (
        main(["train", "--variant", "model1", "--out", str(done), "--data-dir", str(data_dir), *smoke_flags(epochs=2)])
        == 0
    )
    cut = tmp_path / "cut"  # as a 200-epoch run cut after 3 epochs, resumed on another machine after 1
    shutil.copytree(done, cut)
    config = json.loads((cut / "config.json").read_text())
    config["config"]["epochs"] = 200
    (cut / "config.json").write_text(json.dumps(config))
    metrics = json.loads((cut / "metrics.json").read_text())
    metrics["status"] = "running"
    metrics["epochs"] = [{"epoch": e, "seconds": s} for e, s in ((1, 7.0), (2, 30.0), (3, 300.0), (4, 29.0))]
    metrics["resumes"] = [{"epoch": 1, "device": "CPU (x86_64, 2 threads)"}]
    (cut / "metrics.json").write_text(json.dumps(metrics))
    result = cli("status", tmp_path / "not-yet", done, cut)
    assert result.returncode == 0, result.stderr
    # paced by the median of epochs 2-4 (after the resume; the slowed epoch 3 does not move it): 196 x 30 s;
    # "stopped": metrics.json says running, but no process holds the directory
    left = "\t~1 h 38 min left at 30.0 s an epoch (CPU (x86_64, 2 threads))"
    assert result.stdout.splitlines() == [
        f"new\t0/?\t{tmp_path / 'not-yet'}",
        f"completed\t2/2\t{done}",
        f"stopped\t4/200\t{cut}{left}",
    ]
    with rundir.claim(cut):  # as `train --resume` holds it while it trains
        assert cli("status", cut).stdout == f"running\t4/200\t{cut}{left}\n"
    assert cli("status", cut).stdout.startswith("stopped\t")


def test_a_directory_in_training_is_not_trained_twice(data_dir, tmp_path):
    """Two trainers of one directory would write one checkpoint: the second is refused, and
    touches nothing, while another process holds the directory."""
    out = tmp_path / "run"
    args = ["train", "--variant", "model1", "--out", out, "--data-dir", data_dir, *SMOKE]
    with rundir.claim(out):
        refused = cli(*args)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"error: {out} is being trained by another process (see `python -m "
            "training status`); wait for it, or stop it (SIGTERM checkpoints it) "
            "and --resume"
        )
        assert list(out.iterdir()) == []
    assert cli(*args).returncode == 0  # held no longer: the kernel let go with the holder


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--variant", "model99"], "unknown variant 'model99'; known variants: model1"),
        (["train", "--variant", "model8", "--imbalance", "7"], "invalid choice"),
        (["train", "--variant", "model8", "--epochs", "0"], "expected a positive integer"),
        (["train", "--variant", "model8", "--threshold", "1.5"], "expected a number in [0, 1]"),
        (["evaluate", "--checkpoint", "/nonexistent/checkpoint.pt"], "no checkpoint at /nonexistent"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_is_one_clear_message(args, message):
    result = cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = cli("train", "--variant", "model8", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "CIFAR-10 not found" in result.stderr and "cifar-10-batches-py" in result.stderr
    assert "`python -m training download`" in result.stderr and "$CIFAR10_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()  # no empty run directory left behind


def test_malformed_dataset_is_a_clear_error(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(b"garbage")
    result = cli("train", "--variant", "model8", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert result.returncode == 2
    assert "malformed CIFAR-10 batch" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"\x00" * 100)
    result = cli("evaluate", "--checkpoint", bad)
    assert result.returncode == 2
    assert "cannot read checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_cuda_requested_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = cli("train", "--variant", "model8", "--device", "cuda", "--out", tmp_path / "r")
    assert result.returncode == 2 and "no usable CUDA GPU" in result.stderr


def test_variants_lists_the_table():
    result = cli("variants")
    assert result.returncode == 0
    for name in ["model1", "model8", "model12", "model16", "elf", "reslt", "erm"]:
        assert f"\n{name} " in result.stdout
    table = json.loads(cli("variants", "--json").stdout)
    # The report's 13 models and 2 baselines, the erm control, two model8 ablations, eight product candidates.
    assert len(table) == 15 + 1 + 2 + 8
    assert {v["name"] for v in table if v["family"] == "ablation"} == {"model8-linear", "model8-reslt-official"}
    assert {v["name"] for v in table if v["family"] == "product"} == {
        "hybrid-lt",
        "hybrid-la",
        "hybrid-lt-mid",
        "hybrid-lt-sam",
        "hybrid-ce",
        "hybrid-lt-mid-cutout",
        "hybrid-lt-mid-aa",
        "hybrid-lt-mid-wd",
    }


def test_unexpected_errors_keep_their_traceback_known_ones_are_one_line(monkeypatch, tmp_path, capsys):
    from training.cli import main
    from training.commands import variants

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(variants, "run", broken)
    with pytest.raises(ZeroDivisionError):  # not turned into "error: a bug"
        main(["variants"])
    missing = ["evaluate", "--checkpoint", str(tmp_path / "none.pt")]
    assert main(missing) == 2 and capsys.readouterr().err == f"error: no checkpoint at {tmp_path / 'none.pt'}\n"
    from training.errors import TrainingError

    with pytest.raises(TrainingError, match="no checkpoint at"):
        main(["--debug", *missing])


def test_pilot_runs_evaluate_on_held_out_images_and_stay_out_of_the_report(data_dir, tmp_path, capsys):
    from training.calibration import heldout_split

    runs = tmp_path / "runs"
    assert (
        main(
            cli_args(
                "train",
                *smoke_flags(test=180),
                variant="hybrid-lt",
                eval_split="heldout",
                out=runs / "pilot",
                data_dir=data_dir,
            )
        )
        == 0
    )
    assert "180 held-out images to evaluate on" in capsys.readouterr().out
    final = json.loads((runs / "pilot" / "metrics.json").read_text())["final"]
    heldout = heldout_split(data_dir, 100)
    assert sum(final["exit_counts"]) == 180 and final["per_class"][0] is None  # class 0 has no held-out images
    assert set(heldout.labels.tolist()) == set(range(1, 10))
    from study.cli import main as study

    assert (
        study(["report", "--runs", str(runs), "--out", str(tmp_path), "--data-dir", str(data_dir), "--no-sweep"]) == 0
    )
    assert "(0 runs," in capsys.readouterr().out
