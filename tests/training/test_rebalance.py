"""rebalance (MiSLAS's stage 2 at every exit) on the committed model8 checkpoint, real CIFAR-10 images."""

import json
import sys

import numpy as np
import pytest
import torch

from training import rundir
from training.augment import normalize_batch
from training.cli import main
from training.data import build_datasets
from training.device_data import DeviceBatches
from training.errors import TrainingError
from training.network import make_head
from training.rebalance import ScaledExits, exit_classifiers, label_aware_smoothing, smoothed_cross_entropy
from training.rundir import checkpoint_model

from ..conftest import REPO, cli_args
from .smoke import check_second_stage_resumes_bit_for_bit

PARENT = REPO / "results" / "runs" / "model8-if100-seed0" / "checkpoint.pt"
TINY = ["--max-batches", "3", "--max-test-samples", "200", "--max-train-samples", "2000"]
IF100_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def is_classifier(key: str) -> bool:
    return ".fc." in key or ".fcs." in key


def test_smoothing_falls_from_head_to_tail_along_a_concave_curve():
    eps = label_aware_smoothing(IF100_COUNTS, 0.3, 0.0).numpy()
    assert eps[0] == pytest.approx(0.3) and eps[-1] == pytest.approx(0.0)
    assert np.all(np.diff(eps) < 0)
    linear = 0.3 * (np.array(IF100_COUNTS) - 50) / (5000 - 50)
    assert np.all(eps[1:-1] > linear[1:-1])  # concave: above the straight line


def test_smoothed_cross_entropy_uses_each_labels_own_factor():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 1])
    smoothing = torch.tensor([0.3, 0.0, 0.1])
    logp = logits.log_softmax(1)
    expected = torch.stack([-(0.7 * logp[0, 0] + 0.3 * logp[0].mean()), -logp[1, 1]])
    assert torch.allclose(smoothed_cross_entropy(logits, y, smoothing), expected)


def test_folded_scales_give_the_scaled_networks_logits(cifar):
    model, *_ = checkpoint_model(PARENT)
    net = ScaledExits(model, 10)
    with torch.no_grad():
        net.scales.uniform_(0.5, 2.0)
    x = normalize_batch(cifar[1].images[:64])
    with torch.no_grad():
        scaled = [o.logits for o in net.eval()(x)]
        folded = [o.logits for o in net.folded().eval()(x)]
    assert len(scaled) == 3
    for a, b in zip(scaled, folded):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(scaled[-1], model(x)[-1].logits)  # the scales did change the logits


def test_balanced_batches_draw_every_class_about_equally(data_dir):
    train, _ = build_datasets(data_dir, 100)

    def drawn(balanced):
        return np.bincount(
            np.concatenate(
                [y.numpy() for _, y in DeviceBatches(train, torch.device("cpu"), 512, "basic", balanced).epoch(0)]
            ),
            minlength=10,
        )

    balanced, plain = drawn(True), drawn(False)
    assert balanced.sum() == plain.sum() == len(train)
    assert np.all(np.abs(balanced / len(train) - 0.1) < 0.015), balanced
    assert plain.tolist() == IF100_COUNTS


def test_a_cosine_classifier_is_refused_with_its_reason():
    with pytest.raises(TrainingError, match="linear classifiers.*NormedLinear"):
        exit_classifiers(make_head("linear", 48, "normed", 10))


def rebalance_cmd(out, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "training",
        *cli_args("rebalance", *TINY, *extra, checkpoint=PARENT, epochs="3", out=out, data_dir=data_dir),
    ]


@pytest.mark.parametrize("shift_bn", [False, True], ids=["frozen-bn", "shift-bn"])
def test_only_the_classifiers_move_and_the_checkpoint_reads_like_a_training_one(data_dir, tmp_path, shift_bn):
    out = tmp_path / "rb"
    assert (
        main(
            cli_args(
                "rebalance",
                *TINY,
                *(["--shift-bn"] if shift_bn else []),
                checkpoint=PARENT,
                epochs="1",
                out=out,
                data_dir=data_dir,
            )
        )
        == 0
    )
    parent = torch.load(PARENT, map_location="cpu", weights_only=False)["model"]
    _, variant, config, state = checkpoint_model(out / "checkpoint.pt")
    assert state["model"].keys() == parent.keys()
    moved = {k for k in parent if not torch.equal(parent[k], state["model"][k])}
    classifiers = {k for k in parent if is_classifier(k)}
    bn_stats = {k for k in parent if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert len(classifiers) == 2 * 5  # two early heads, three ResLT branches: weight and bias each
    if shift_bn:
        assert classifiers <= moved and moved <= classifiers | bn_stats and moved & bn_stats
    else:
        assert moved == classifiers  # BN statistics included in what stays bit-identical
    assert variant.name == "model8" and config.imbalance == 100
    assert state["rebalance"]["epoch"] == 1 and len(state["rebalance"]["scales"]) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "rebalance" and metrics["status"] == "completed"
    run = rundir.state(out)
    assert (run.done, run.planned) == (1, 1)  # its own epochs, not those of the parent's training config (200)


def test_rebalance_resumes_after_kill_bit_for_bit(data_dir, tmp_path):
    check_second_stage_resumes_bit_for_bit(
        lambda out, *extra: rebalance_cmd(out, data_dir, *extra), tmp_path, "rebalance"
    )
