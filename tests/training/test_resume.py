"""Checkpoints, resume after a real kill, and divergence detection."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from training import rundir
from training.config import TrainConfig
from training.engine import check_collapse
from training.errors import Diverged
from training.evaluation import early_exit_metrics

from ..conftest import cli_args, run_training
from .smoke import kill_at_first_checkpoint, processes_of, smoke_flags

RUN = [
    *smoke_flags(train=400, test=200, batches=6, epochs=3, workers=1),
    *cli_args(variant="model8", checkpoint_every=1),
]


def train_cmd(out, data_dir, *extra):
    return [sys.executable, "-m", "training", "train", *RUN, "--out", str(out), "--data-dir", str(data_dir), *extra]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("data_path", ["reference", "device"])
def test_resume_after_kill_matches_uninterrupted_run(data_dir, tmp_path, data_path):
    flags = ["--data-path", data_path]
    straight = tmp_path / "straight"
    subprocess.run(train_cmd(straight, data_dir, *flags), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    kill_at_first_checkpoint(train_cmd(killed, data_dir, *flags), killed)
    assert not processes_of(killed), "a DataLoader worker outlived its killed run"
    interrupted_at = load(killed / "checkpoint.pt")["epoch"]
    assert interrupted_at < 3, "the run finished before it could be killed"

    done = subprocess.run(train_cmd(killed, data_dir, *flags, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming {killed} from epoch {interrupted_at}" in done.stdout

    a, b = load(straight / "checkpoint.pt"), load(killed / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    assert [e["loss"] for e in ma["epochs"]] == [e["loss"] for e in mb["epochs"]]
    assert ma["resumes"] == [] and [r["epoch"] for r in mb["resumes"]] == [interrupted_at]
    assert mb["resumes"][0]["device"].startswith("CPU") and b["resumes"] == mb["resumes"]
    assert ma["final"]["predictions"] == mb["final"]["predictions"]
    log = (killed / "train.log").read_text().splitlines()
    assert [line.split("\t")[0] for line in log if line.startswith("Epoch")] == ["Epoch 1", "Epoch 2", "Epoch 3"]


def test_eval_every_skips_evaluations_without_changing_training(data_dir, tmp_path):
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    subprocess.run(train_cmd(every, data_dir, "--data-path", "device"), check=True, capture_output=True, timeout=600)
    subprocess.run(
        train_cmd(sparse, data_dir, "--data-path", "device", "--eval-every", "2"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    a = json.loads((every / "metrics.json").read_text())
    b = json.loads((sparse / "metrics.json").read_text())
    assert [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]  # evaluation draws nothing
    assert ["overall" in e for e in b["epochs"]] == [False, True, True]  # epoch 2, and the last always
    assert [e["overall"] for e in a["epochs"][1:]] == [e["overall"] for e in b["epochs"][1:]]
    assert b["final"]["predictions"] == a["final"]["predictions"]
    log = (sparse / "train.log").read_text().splitlines()
    assert log[0].startswith("Epoch 1\t") and log[0].endswith("Test Acc: not evaluated")
    assert (
        "Test Acc: not evaluated" not in log[1]
        and json.loads((sparse / "config.json").read_text())["config"]["eval_every"] == 2
    )


def test_sigterm_stops_after_the_epoch_under_way_with_its_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    # Checkpoints only at the end (every 10 of 3 epochs): the one a stopped run has is the stop's own.
    cmd = train_cmd(out, data_dir, "--data-path", "device", "--checkpoint-every", "10")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "train.log").is_file() or "Epoch 1\t" not in (out / "train.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.02)
    assert rundir.held(out)  # the training process holds its directory
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    stopped_at = load(out / "checkpoint.pt")["epoch"]
    assert stopped_at in (1, 2), "the run should stop at the end of the epoch under way"
    assert f"stopped by SIGTERM after epoch {stopped_at}, checkpointed: continue with --resume" in stderr
    assert "Traceback" not in stderr
    epochs = [line.split("\t")[0] for line in (out / "train.log").read_text().splitlines() if line.startswith("Epoch")]
    assert epochs[-1] == f"Epoch {stopped_at}"
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    assert rundir.state(out).status == "stopped"  # no process holds it: `--resume` continues it

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} from epoch {stopped_at}" in done.stdout
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"


def test_nan_loss_is_reported_as_divergence_with_epoch(data_dir, tmp_path):
    out = tmp_path / "run"
    train = cli_args("train", *smoke_flags(train=300, batches=4, epochs=2), variant="model7", lr="1e30", out=out)
    result = run_training([*train, "--data-dir", data_dir])
    assert result.returncode == 3
    assert "training diverged at epoch 1: loss is nan" in result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_at"] == 1
    assert "DIVERGED at epoch 1" in (out / "train.log").read_text()


def test_collapsed_predictions_are_divergence():
    cfg = TrainConfig(variant="model4", imbalance=100)
    labels = np.arange(10).repeat(10)

    def metrics(predicted: np.ndarray):
        probs = torch.nn.functional.one_hot(torch.from_numpy(predicted), 10).float()[None]  # one exit
        return early_exit_metrics(probs, labels, 0.5, [{"cumulative_macs": 1}])

    varied = metrics(np.where(labels < 6, 0, labels))  # 60% of the predictions are class 0
    collapsed = metrics(np.zeros(100, dtype=np.int64))
    assert varied.predicted_class_share_max == 0.6 and collapsed.predicted_class_share_max == 1.0
    check_collapse(cfg, 110, varied)
    check_collapse(cfg, 2, collapsed)  # warm-up: not judged yet
    with pytest.raises(Diverged, match="epoch 111: predictions collapsed: 100.0%"):
        check_collapse(cfg, 110, collapsed)


def test_old_rule_run_is_not_resumed_under_the_corrected_rule(data_dir, tmp_path, capsys):
    """A checkpoint whose variant record predates the per-exit losses (simulated loss at every exit)."""
    from training.cli import main

    old = tmp_path / "model8-if100-seed0"
    assert (
        main(["train", "--variant", "model8", "--out", str(old), "--data-dir", str(data_dir), *smoke_flags(epochs=2)])
        == 0
    )
    state = torch.load(old / "checkpoint.pt", map_location="cpu", weights_only=False)
    state["variant"].pop("exit_losses")
    state["variant"]["exit_loss"] = "simulated"
    torch.save(state, old / "checkpoint.pt")
    capsys.readouterr()
    assert (
        main(cli_args("train", *smoke_flags(epochs=2), variant="model8", out=old, data_dir=data_dir, resume=True)) == 2
    )
    assert "old loss rule" in capsys.readouterr().err


def test_resume_keeps_the_runs_own_path_unless_a_flag_says_otherwise(data_dir, tmp_path, capsys):
    """A run started on a path other than this machine's default (as an fp32 run started before
    the bf16 fast path became the default), and evaluating every 2nd epoch, resumes on its own path
    and interval with no flags for them; a path flag that contradicts it is refused."""
    from training.cli import main

    out = tmp_path / "run"
    own = ["--data-path", "reference", "--no-amp", "--no-channels-last", "--compile", "off", "--eval-every", "2"]
    assert main(["train", *RUN, "--epochs", "1", "--out", str(out), "--data-dir", str(data_dir), *own]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["data_path"], config["amp"], config["channels_last"], config["eval_every"]) == (
        "reference",
        False,
        False,
        2,
    )
    # marked as cut after its last epoch (--epochs 2 would be another config): it resumes to its final evaluation
    doc = json.loads((out / "metrics.json").read_text())
    doc["status"] = "running"
    (out / "metrics.json").write_text(json.dumps(doc))
    assert main(["train", *RUN, "--epochs", "1", "--out", str(out), "--data-dir", str(data_dir), "--resume"]) == 0
    assert f"resuming {out} from epoch 1" in capsys.readouterr().out
    assert main(cli_args("train", *RUN, epochs="1", out=out, data_dir=data_dir, resume=True, data_path="device")) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "data_path: run has 'reference', flags give 'device'" in err
