"""scripts/ship_default.sh end to end, on the committed corrected model8 run with tiny fits: the
model it ships carries its final folder's name, replaces the one there, and leaves nothing behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

from modelrepo.manifest import load_manifest

from ..conftest import REPO

RUN = REPO / "results" / "runs" / "model8-if100-seed0"
# Tiny second stages: 2 epochs of 2 batches each (FIT_FLAGS come after the script's own flags and win).
FIT_FLAGS = "--epochs 2 --max-batches 2 --max-test-samples 200"


def ship(run: Path, fits: Path, model_out: Path, tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """scripts/ship_default.sh on `run`, with tiny second stages, this interpreter's environment on PATH."""
    env = {
        **os.environ,
        "CIFAR10_DIR": str(data_dir),
        "FITS": str(fits),
        "MODEL_OUT": str(model_out),
        "CURVE_OUT": str(tmp_path / "curve.png"),
        "FIT_FLAGS": FIT_FLAGS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    command = ["bash", "scripts/ship_default.sh", str(run)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_ship_default_replaces_the_model_and_names_it_after_its_folder(tmp_path, data_dir):
    models = tmp_path / "models"
    (models / "default").mkdir(parents=True)
    (models / "default" / "manifest.json").write_text("{}")  # the model being replaced
    done = ship(RUN, tmp_path / "fits", models / "default", tmp_path, data_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    assert sorted(p.name for p in models.iterdir()) == ["default"]  # no default.new / default.old left
    manifest = load_manifest(models / "default")  # verifies every stage file's sha256
    assert manifest.name == "default" and manifest.num_exits == 3
    assert manifest.provenance.loss_rule == "per_exit"
    for fit, mode in (("fit-frozen-light2", "frozen"), ("fit-light2-mixed30", "mixed")):
        metrics = json.loads((tmp_path / "fits" / f"{RUN.name}-{fit}" / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["mode"] == mode
    rebalanced = json.loads(
        (tmp_path / "fits" / f"{RUN.name}-fit-light2-mixed30-rebalance" / "metrics.json").read_text()
    )
    assert rebalanced["kind"] == "rebalance" and rebalanced["status"] == "completed"
    assert manifest.provenance.rebalance.epochs == 2 and manifest.provenance.fit.mode == "mixed"
    assert (tmp_path / "curve.png").stat().st_size > 10_000

    # Run again: the completed steps are kept as they are (not resumed, re-evaluated or re-logged).
    fits = sorted((tmp_path / "fits").glob("*/metrics.json"))
    before = {p: p.read_bytes() for p in fits}
    again = ship(RUN, tmp_path / "fits", models / "default", tmp_path, data_dir)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("completed, kept") == 3
    assert {p: p.read_bytes() for p in fits} == before


def test_ship_default_skips_the_fits_for_exits_trained_jointly(tmp_path, data_dir):
    """A run of the product candidates (joint routing): no fit-exits, only rebalance, then export."""
    run = REPO / "results" / "runs" / "hybrid-lt-mid-if100-seed0"  # the shipped model's parent
    fits, model = tmp_path / "fits", tmp_path / "models" / "default"
    done = ship(run, fits, model, tmp_path, data_dir)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in fits.iterdir()) == [f"{run.name}-rebalance"]
    manifest = load_manifest(model)
    assert manifest.variant == "hybrid-lt-mid" and manifest.num_exits == 4
    assert manifest.provenance.rebalance.epochs == 2
