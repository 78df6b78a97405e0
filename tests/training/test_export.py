"""Staged ONNX export: files, manifest contract, parity refusal."""

import json

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest

from modelrepo import model_card
from modelrepo.manifest import MANIFEST, ManifestError, json_schema, load_manifest
from training import export as export_mod
from training.cli import main
from training.data import load_cifar10
from training.export import ExportError, export_model
from training.rundir import checkpoint_model

from ..conftest import REPO, cli_args
from .smoke import smoke_flags

SMOKE = smoke_flags(test=200)


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model14"
    assert main(["train", "--variant", "model14", "--out", str(out), "--data-dir", str(data_dir), *SMOKE]) == 0
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def exported(checkpoint, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "m14"
    assert main(cli_args("export", checkpoint=checkpoint, out=out, data_dir=data_dir, parity_images="300")) == 0
    return out


def test_export_writes_stages_and_valid_manifest(exported):
    manifest = load_manifest(exported)
    assert [s.file for s in manifest.stages] == ["stage_1.onnx", "stage_2.onnx", "stage_3.onnx"]
    assert manifest.stages[0].input.shape == ["N", 3, 32, 32]
    assert manifest.stages[0].features.shape == ["N", 15, 32, 32]
    assert manifest.stages[1].features.shape == ["N", 30, 16, 16]
    assert manifest.stages[2].features is None
    assert manifest.provenance.parity_max_abs_diff <= 1e-4
    assert manifest.metrics.images == 10000
    assert manifest.thresholds.inference == 0.5
    jsonschema.validate(json.loads((exported / MANIFEST).read_text()), json_schema())


def test_export_writes_the_model_card_from_the_manifest(exported):
    card = (exported / model_card.CARD).read_text()
    manifest = load_manifest(exported)
    assert card == model_card.render(manifest)
    assert f"| **default thresholds 0.5** | {manifest.metrics.overall:.2f} |" in card
    assert "## Intended use" in card and "## Limitations" in card
    assert "not calibrated" in card  # exported without --calibrate-drop: nothing bounds the early answers' cost


def test_shipped_model_card_is_current():
    """models/default/MODEL_CARD.md is what its manifest renders (regenerate: python -m modelrepo.model_card DIR)."""
    for model_dir in (REPO / "models" / "default", *sorted((REPO / "results" / "models").iterdir())):
        assert (model_dir / model_card.CARD).read_text() == model_card.render(load_manifest(model_dir)), model_dir


def test_committed_schema_is_current():
    committed = json.loads((REPO / "modelrepo" / "manifest.schema.json").read_text())
    assert committed == json_schema(), "regenerate modelrepo/manifest.schema.json (see docs/TRAINING.md)"


def test_stage_graphs_have_dynamic_batch_and_in_graph_argmax(exported, cifar):
    session = ort.InferenceSession(str(exported / "stage_1.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "N"
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32), dtype=np.float32)
    features, probs, conf, cls = session.run(None, {"input": x})
    assert features.shape[0] == probs.shape[0] == 7
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(cls, probs.argmax(1))
    np.testing.assert_allclose(conf, probs.max(1))


def test_export_refuses_on_parity_failure(checkpoint, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "PARITY_TOLERANCE", 0.0)  # real diffs are ~1e-6: now too large
    model, variant, config, state = checkpoint_model(checkpoint)
    _, test = load_cifar10(data_dir)
    with pytest.raises(ExportError, match="disagree"):
        export_model(model, variant, config, state, test.subset(np.arange(200)), tmp_path / "m", "m", parity_images=200)
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_export_refuses_non_empty_target(checkpoint, data_dir, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m"), "--data-dir", str(data_dir)])
        == 2
    )
    assert "not empty" in capsys.readouterr().err


def test_manifest_errors_name_the_file(exported, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (bad / "stage_2.onnx").write_bytes(b"corrupt")
    with pytest.raises(ManifestError, match="stage_2.onnx: sha256 differs"):
        load_manifest(bad)
    (bad / "stage_2.onnx").unlink()
    with pytest.raises(ManifestError, match="stage_2.onnx: missing"):
        load_manifest(bad)
    (bad / MANIFEST).write_text("{ not json")
    with pytest.raises(ManifestError, match="manifest.json: not valid JSON"):
        load_manifest(bad)
    doc = json.loads((exported / MANIFEST).read_text())
    doc["format_version"] = "2.0"
    (bad / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="format_version 2.0 is not supported"):
        load_manifest(bad)


def test_each_stages_logit_adjustment_is_baked_into_its_graph(checkpoint, data_dir, tmp_path, cifar):
    """tau_k * log prior subtracted in stage k's graph: ORT equals softmax(logits - tau_k * log prior)
    of PyTorch, exit by exit (tau 0 at exit 2 leaves it as trained)."""
    import torch

    from training.evaluation import exit_logits
    from training.logit_adjust import log_prior

    model, variant, config, state = checkpoint_model(checkpoint)
    test = cifar[1].subset(np.arange(300))
    counts = state["class_counts"]
    taus = [0.5, 0.0, 1.0]
    calibration = {
        "threshold": [0.6, 0.7],
        "threshold_mode": "per-exit",
        "tau": 1.0,
        "taus": taus,
        "tau_mode": "per-exit",
        "class_counts": counts,
        "max_drop": 1.0,
        "drop_confidence": 0.95,
        "heldout_images": 0,
        "heldout_classes": [],
        "heldout_accuracy": 0.0,
        "final_exit_accuracy": 0.0,
        "final_exit_accuracy_unadjusted": 0.0,
        "mean_macs_share": 1.0,
    }
    before = exit_logits(model, test)
    manifest = export_model(
        model, variant, config, state, test, tmp_path / "m", "m", parity_images=300, calibration=calibration
    )
    assert manifest.logit_adjustment.tau == 1.0 and manifest.thresholds.inference == [0.6, 0.7]
    assert manifest.logit_adjustment.stage_taus == taus and manifest.calibration.tau_mode == "per-exit"
    assert manifest.thresholds.report == variant.infer_threshold
    assert [p.threshold for p in manifest.metrics.sweep][::10] == [0.0, 0.5, 1.0]
    logits = exit_logits(model, test)
    assert torch.equal(logits, before), "export changed the model it exported"
    expected = (logits - torch.tensor(taus)[:, None, None] * log_prior(counts)).softmax(dim=2).numpy()
    unadjusted = logits.softmax(dim=2).numpy()
    got = export_mod.onnx_exit_probabilities(
        [tmp_path / "m" / s.file for s in manifest.stages], export_mod.normalize_batch(test.images).numpy()
    )
    for k, probs in enumerate(got):
        np.testing.assert_allclose(probs, expected[k], atol=1e-4)
        changed = np.abs(probs - unadjusted[k]).max() > 1e-3
        assert changed == (taus[k] > 0), k
    assert torch.isfinite(torch.tensor(manifest.logit_adjustment.subtracted)).all()


def test_a_four_exit_network_exports_and_serves_every_exit(data_dir, tmp_path, cifar):
    """hybrid-lt-mid (an exit inside stage 2): four stage graphs, and the server's staged model
    answers from each exit as the thresholds say, with the checkpoint's classes at the last."""
    from server.engine import StagedModel

    run = tmp_path / "run"
    assert main(["train", "--variant", "hybrid-lt-mid", "--out", str(run), "--data-dir", str(data_dir), *SMOKE]) == 0
    out = tmp_path / "mid"
    assert (
        main(cli_args("export", checkpoint=run / "checkpoint.pt", out=out, data_dir=data_dir, parity_images="100")) == 0
    )
    manifest = load_manifest(out)
    assert manifest.num_exits == 4 and [s.file for s in manifest.stages] == [f"stage_{k}.onnx" for k in (1, 2, 3, 4)]
    shares = [s.share_of_full for s in manifest.stages]
    assert shares == sorted(shares) and shares[-1] == 1.0
    staged = StagedModel(out, "cpu")
    x = staged.preprocess(cifar[1].images[:8])
    assert (staged.run(x, 0.0).exit == 1).all()
    final = staged.run(x, 1.0)
    assert (final.exit == 4).all()
    for k in (2, 3):  # an image leaves at exit k when only exit k's threshold lets it
        thresholds = np.ones(3, np.float32)  # one per early exit
        thresholds[k - 1] = 0.0
        assert (staged.run(x, thresholds).exit == k).all()
    from training.commands.curve import table

    header = table(manifest).splitlines()[0]  # `curve` names the exits the manifest has
    assert "exits (1/2/3/4 %)" in header and "(exits 1/2/3 %)" in header


@pytest.fixture(scope="module")
def exported_seed1(data_dir, tmp_path_factory):
    """The `exported` model's recipe at seed 1, exported the same way."""
    run = tmp_path_factory.mktemp("run") / "model14-seed1"
    assert (
        main(["train", "--variant", "model14", "--seed", "1", "--out", str(run), "--data-dir", str(data_dir), *SMOKE])
        == 0
    )
    out = tmp_path_factory.mktemp("models") / "m14-seed1"
    assert (
        main(cli_args("export", checkpoint=run / "checkpoint.pt", out=out, data_dir=data_dir, parity_images="300")) == 0
    )
    return out


def test_export_records_the_recipe_at_other_seeds(checkpoint, exported, exported_seed1, data_dir, tmp_path):
    out = tmp_path / "m14"
    argv = cli_args("export", checkpoint=checkpoint, out=out, data_dir=data_dir, parity_images="300")
    assert main([*argv, "--seed-models", str(exported_seed1)]) == 0
    manifest, other = load_manifest(out), load_manifest(exported_seed1)
    assert [s.seed for s in manifest.seeds] == [0, 1]
    assert [s.accuracy for s in manifest.seeds] == [manifest.metrics.overall, other.metrics.overall]
    assert manifest.seeds[1].final_exit_accuracy == other.metrics.per_exit[-1].overall
    assert manifest.metrics == load_manifest(exported).metrics  # the seeds change the record, not the model
    card = (out / model_card.CARD).read_text()
    mean = (manifest.metrics.overall + other.metrics.overall) / 2
    assert "### The recipe across seeds" in card and f"**{mean:.2f} ± " in card and "(n = 2)" in card
    assert "One training seed" not in card and "One training seed" in (exported / model_card.CARD).read_text()
    jsonschema.validate(json.loads((out / MANIFEST).read_text()), json_schema())


def test_export_refuses_a_seed_model_of_another_recipe_or_the_same_seed(
    checkpoint, exported, exported_seed1, data_dir, tmp_path, capsys
):
    import shutil

    other_if = tmp_path / "other-if"
    shutil.copytree(exported_seed1, other_if)
    doc = json.loads((other_if / MANIFEST).read_text())
    doc["imbalance"] = 50
    (other_if / MANIFEST).write_text(json.dumps(doc))
    argv = cli_args("export", checkpoint=checkpoint, out=tmp_path / "m", data_dir=data_dir, parity_images="300")
    assert main([*argv, "--seed-models", str(other_if)]) == 2
    assert f"{other_if}: not this model's recipe at another seed (imbalance 100 / 50)" in capsys.readouterr().err
    assert main([*argv, "--seed-models", str(exported)]) == 2  # seed 0, as this checkpoint
    assert f"{exported}: seed 0 is there twice" in capsys.readouterr().err
    assert main([*argv, "--seed-models", str(tmp_path / "nowhere")]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_manifest_refuses_seeds_that_are_not_other_seeds_of_the_model(exported, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    doc = json.loads((exported / MANIFEST).read_text())
    own = {"seed": 0, "accuracy": 50.0, "mean_macs_share": 0.5, "final_exit_accuracy": 50.0}
    for seeds in ([own], [own, own], [{**own, "seed": 1}, {**own, "seed": 2}]):
        (bad / MANIFEST).write_text(json.dumps({**doc, "seeds": seeds}))
        with pytest.raises(ManifestError, match="seeds needs two or more different seeds, this model's among them"):
            load_manifest(bad)
    (bad / MANIFEST).write_text(json.dumps({**doc, "seeds": [own, {**own, "seed": 1}]}))
    assert [s.seed for s in load_manifest(bad).seeds] == [0, 1]
