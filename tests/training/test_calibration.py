import json

import numpy as np
import pytest

from modelrepo.manifest import load_manifest
from training.calibration import balanced_accuracy, heldout_split
from training.cli import main
from training.data import load_cifar10, longtail_indices

from ..conftest import cli_args
from .smoke import smoke_flags

SMOKE = smoke_flags(train=300, batches=3)


def test_heldout_images_were_never_in_the_training_set(data_dir):
    train, _ = load_cifar10(data_dir)
    heldout = heldout_split(data_dir, 100, per_class=50)
    used = {train.images[i].tobytes() for i in longtail_indices(train.labels, 100)}
    assert not any(im.tobytes() in used for im in heldout.images)
    assert 0 not in heldout.labels  # IF 100 keeps every class-0 image
    assert np.bincount(heldout.labels, minlength=10).tolist() == [0] + [50] * 9


def test_stratified_half_takes_half_of_every_class():
    from training.calibration import stratified_half

    labels = np.repeat([1, 2, 3], [10, 7, 4])
    half = stratified_half(labels, 0)
    assert np.bincount(labels[half], minlength=4).tolist() == [0, 5, 3, 2]
    assert np.array_equal(half, stratified_half(labels, 0)) and not np.array_equal(half, stratified_half(labels, 1))


def test_balanced_accuracy_weights_classes_equally():
    labels = np.array([1, 1, 1, 1, 2])
    assert balanced_accuracy(np.array([1, 1, 1, 1, 0]), labels) == pytest.approx(50.0)


def test_calibrate_then_export_writes_threshold_and_provenance(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--variant", "model1", "--out", str(run), "--data-dir", str(data_dir), *SMOKE]) == 0
    capsys.readouterr()
    assert (
        main(
            cli_args(
                "calibrate",
                checkpoint=run / "checkpoint.pt",
                max_drop="2",
                json=tmp_path / "cal.json",
                data_dir=data_dir,
            )
        )
        == 0
    )
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["drop_confidence"] == 0.95  # the default
    assert (
        cal["heldout_accuracy"]
        >= cal["final_exit_accuracy"] - cal["drop_upper_bound"]
        >= cal["final_exit_accuracy"] - 2
    )
    cheaper = [r for r in cal["sweep"] if r["mean_macs"] < cal["mean_macs"]]
    assert all(r["drop_upper_bound"] > 2 for r in cheaper)
    assert (
        main(
            cli_args(
                "export",
                checkpoint=run / "checkpoint.pt",
                out=tmp_path / "m",
                calibrate_drop="2",
                parity_images="100",
                data_dir=data_dir,
            )
        )
        == 0
    )
    manifest = load_manifest(tmp_path / "m")
    assert manifest.thresholds.inference == cal["threshold"] == manifest.metrics.threshold
    assert manifest.calibration.max_drop == 2 and manifest.calibration.heldout_images == 4500
    assert manifest.calibration.drop_confidence == 0.95
    assert manifest.calibration.tau_mode == "per-exit" and len(cal["taus"]) == 3
    shift = manifest.logit_adjustment
    assert (shift.taus(3) if shift else [0.0] * 3) == cal["taus"]


def test_drop_bound_is_the_paired_balanced_drop_plus_z_standard_errors():
    """Class 1: 100 images, the final exit right on all, the early answer wrong on 10 (drop 10
    points, each image's difference 1 or 0); class 2: 100 images, both right on all (drop 0)."""
    from statistics import NormalDist

    from training.calibration import DropBound

    labels = np.repeat([1, 2], 100)
    early = labels.copy()
    early[:10] = 2
    drop, upper = DropBound(labels, labels, 0.5)(early)
    assert drop == pytest.approx(5.0) and upper == pytest.approx(5.0)  # 0.5: the point estimate
    se_class1 = np.std(np.r_[np.ones(10), np.zeros(90)], ddof=1) / np.sqrt(100)
    drop, upper = DropBound(labels, labels, 0.95)(early)
    assert upper == pytest.approx(5.0 + NormalDist().inv_cdf(0.95) * 100 * se_class1 / 2)
    # An answer right where the final exit is wrong counts for it: the drop can be negative.
    final = labels.copy()
    final[:10] = 2
    assert DropBound(labels, final, 0.5)(labels)[0] == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="confidence"):
        DropBound(labels, labels, 1.0)


def test_a_higher_confidence_never_picks_a_cheaper_threshold():
    """Real numbers of a noisy exit: the margin can only move the choice towards the final exit."""
    import torch

    from training.calibration import DropBound, _per_exit_search

    rng = np.random.default_rng(2)
    n = 900
    labels = np.arange(n) % 9 + 1
    logits = torch.tensor(rng.standard_normal((3, n, 10)), dtype=torch.float32)
    logits[:, np.arange(n), labels] += torch.tensor([[1.5], [2.0], [3.0]])
    probs = logits.softmax(dim=2)
    final = probs[-1].argmax(1).numpy()
    choices = [
        _per_exit_search(probs, np.array([1.0, 2.0, 3.0]), DropBound(labels, final, c), 1.0)
        for c in (0.5, 0.8, 0.95, 0.99)
    ]
    macs = [c["mean_macs"] for c in choices]
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert all(c["drop_upper_bound"] <= 1.0 + 1e-9 for c in choices)


def test_tau_undoes_a_skewed_prior():
    """Logits carrying log(prior) of a long-tailed set: tau = 1 removes the skew exactly."""
    import torch

    from training.calibration import choose_taus
    from training.logit_adjust import log_prior

    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 100)
    clean = torch.tensor(rng.standard_normal((1000, 10)), dtype=torch.float32)
    clean[np.arange(1000), labels] += 2.0
    logits = (clean + log_prior(counts)).unsqueeze(0)
    taus, rows = choose_taus(logits, labels, log_prior(counts))
    assert rows[0]["tau"] == 0 and taus == [1.0]
    assert max(r["exit_accuracy"][0] for r in rows) > rows[0]["exit_accuracy"][0] + 10


def test_each_exit_gets_the_tau_that_undoes_its_own_skew():
    """An exit already balanced (a re-balanced classifier) wants tau 0 while the final exit still
    carries the whole log prior: per exit, each gets its own; shared, both get the final one."""
    import torch

    from training.calibration import choose_taus
    from training.logit_adjust import log_prior

    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 100)
    clean = torch.tensor(rng.standard_normal((2, 1000, 10)), dtype=torch.float32)
    clean[:, np.arange(1000), labels] += 2.0
    logits = torch.stack([clean[0], clean[1] + log_prior(counts)])
    assert choose_taus(logits, labels, log_prior(counts))[0] == [0.0, 1.0]
    assert choose_taus(logits, labels, log_prior(counts), per_exit=False)[0] == [1.0, 1.0]


def test_per_exit_thresholds_spend_fewer_macs_when_exits_differ():
    """Exit 1 is right only when very confident, exit 2 whenever it is fairly confident: one
    threshold must serve both, a threshold per exit need not."""
    import torch

    from training.calibration import DropBound, _per_exit_search

    n = 400
    labels = np.arange(n) % 4 + 1
    probs = torch.full((3, n, 10), 0.0)
    conf1 = np.where(np.arange(n) % 2 == 0, 0.95, 0.65)  # right at 0.95, wrong at 0.65
    probs[0, np.arange(n), labels] = torch.tensor(np.where(conf1 > 0.9, conf1, 0.0), dtype=torch.float32)
    probs[0, np.arange(n), 0] = torch.tensor(np.where(conf1 > 0.9, 0.05, conf1), dtype=torch.float32)
    probs[1, np.arange(n), labels] = 0.6  # always right, fairly confident
    probs[2, np.arange(n), labels] = 0.5
    cumulative = np.array([1.0, 2.0, 3.0])
    best = _per_exit_search(probs, cumulative, DropBound(labels, labels, 0.95), max_drop=0.0)
    assert best["accuracy"] == 100.0 and best["drop_upper_bound"] == 0.0
    assert best["threshold"][0] > 0.65 and best["threshold"][1] <= 0.6
    assert best["exit_distribution"] == [0.5, 0.5, 0.0]


def test_calibrate_reads_the_logits_it_is_given(data_dir):
    """Precomputed exit logits (scripts calibrating many subsets) give the same choice as the
    model's own, and are what the choice is made on."""
    import torch

    from training.calibration import calibrate
    from training.evaluation import exit_logits
    from training.network import build_model
    from training.variants import get_variant

    torch.manual_seed(0)
    model = build_model(get_variant("model1")).eval()
    heldout = heldout_split(data_dir, 100, per_class=20)
    counts = [int(5000 * 0.01 ** (i / 9)) for i in range(10)]
    logits = exit_logits(model, heldout)
    own = calibrate(model, heldout, 1.0, counts)
    given = calibrate(model, heldout, 1.0, counts, logits=logits)
    assert given["threshold"] == own["threshold"] and given["taus"] == own["taus"]
    assert given["final_exit_accuracy"] == pytest.approx(own["final_exit_accuracy"])
    # Exits that are all right and sure: every image may leave at the first.
    perfect = torch.full_like(logits, -10.0)
    perfect[:, np.arange(len(heldout)), heldout.labels] = 10.0
    sure = calibrate(model, heldout, 1.0, counts, logits=perfect)
    assert sure["final_exit_accuracy"] == 100.0 and sure["exit_distribution"][0] == 1.0
    assert own["final_exit_accuracy"] < 50
