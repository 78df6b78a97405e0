import json

import numpy as np
import pytest

from modelrepo.manifest import load_manifest
from training.calibration import balanced_accuracy, heldout_split
from training.cli import main
from training.data import load_cifar10, longtail_indices

from .smoke import smoke_flags

SMOKE = smoke_flags(train=300, batches=3)


def test_heldout_images_were_never_in_the_training_set(data_dir):
    train, _ = load_cifar10(data_dir)
    heldout = heldout_split(data_dir, 100, per_class=50)
    used = {train.images[i].tobytes() for i in longtail_indices(train.labels, 100)}
    assert not any(im.tobytes() in used for im in heldout.images)
    assert 0 not in heldout.labels  # IF 100 keeps every class-0 image
    assert np.bincount(heldout.labels, minlength=10).tolist() == [0] + [50] * 9


def test_balanced_accuracy_weights_classes_equally():
    labels = np.array([1, 1, 1, 1, 2])
    assert balanced_accuracy(np.array([1, 1, 1, 1, 0]), labels) == pytest.approx(50.0)


def test_calibrate_then_export_writes_threshold_and_provenance(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--variant", "model1", "--out", str(run), "--data-dir", str(data_dir), *SMOKE]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--checkpoint", str(run / "checkpoint.pt"), "--max-drop", "2",
                 "--json", str(tmp_path / "cal.json"), "--data-dir", str(data_dir)]) == 0
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["heldout_accuracy"] >= cal["final_exit_accuracy"] - 2
    cheaper = [r for r in cal["sweep"] if r["mean_macs"] < cal["mean_macs"]]
    assert all(r["accuracy"] < cal["final_exit_accuracy"] - 2 for r in cheaper)
    assert main(["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "m"),
                 "--calibrate-drop", "2", "--parity-images", "100", "--data-dir", str(data_dir)]) == 0
    manifest = load_manifest(tmp_path / "m")
    assert manifest.thresholds.inference == cal["threshold"] == manifest.metrics.threshold
    assert manifest.calibration.max_drop == 2 and manifest.calibration.heldout_images == 4500
