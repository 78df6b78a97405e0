"""Staged ONNX Runtime inference: which stages run for which images, each exit against the PyTorch
model of the checkpoint it was exported from, thresholds per image and per exit, IO binding."""

import numpy as np
import pytest

from server.engine import StagedModel, choose_providers, load_repository

from .conftest import DEFAULT_CHECKPOINT, MODELS


@pytest.fixture(scope="module")
def model():
    return StagedModel(MODELS / "default", "cpu")


@pytest.fixture(scope="module")
def x(model, cifar):
    return model.preprocess(cifar[1].images[:256])


def test_stages_after_the_exit_are_never_run(model, x):
    n = len(x)
    everyone_early = model.run(x, 0.0)
    assert (everyone_early.exit == 1).all() and len(everyone_early.stages) == 1
    nobody_early = model.run(x, 1.0)
    assert (nobody_early.exit == model.manifest.num_exits).all()
    assert [s.batch_size for s in nobody_early.stages] == [n] * model.manifest.num_exits


def test_threshold_one_runs_every_stage_even_at_confidence_one(model, x):
    """Inputs scaled up until exit 1 is certain (confidence exactly 1.0 in float32): at threshold
    1 they still run every stage; just below 1 they leave at exit 1."""
    loud = x[:64] * 1000
    _, confidence, _ = model._run_stage(0, loud)
    certain = confidence == 1.0
    assert certain.sum() > 32
    assert (model.run(loud, 1.0).exit == model.manifest.num_exits).all()
    below = model.run(loud, np.nextafter(np.float32(1), np.float32(0)))
    assert (below.exit[certain] == 1).all()


def test_every_exit_matches_the_pytorch_model_of_its_checkpoint(model, x, cifar):
    """Each exit answering alone (threshold 1 before it, 0 at it): confidences within export's
    1e-4 of PyTorch's (logit adjustment included), the same class wherever the top two PyTorch
    probabilities are further apart than that."""
    pytest.importorskip("torch")
    from training.data import Split
    from training.evaluation import exit_probabilities
    from training.logit_adjust import stage_adjustments
    from training.rundir import checkpoint_model

    net, *_ = checkpoint_model(DEFAULT_CHECKPOINT)
    shift = model.manifest.logit_adjustment
    probs = exit_probabilities(
        net,
        Split(cifar[1].images[: len(x)], cifar[1].labels[: len(x)]),
        adjustment=stage_adjustments(shift.class_counts, shift.taus(model.manifest.num_exits)),
    )
    top2 = probs.topk(2, dim=2).values.numpy()
    k_exits = probs.size(0)
    for k in range(k_exits):
        thresholds = np.ones(k_exits - 1, np.float32)  # one per early exit
        if k < k_exits - 1:
            thresholds[k] = 0.0
        result = model.run(x, thresholds)
        assert (result.exit == k + 1).all()
        np.testing.assert_allclose(result.confidence, top2[k, :, 0], atol=1e-4)
        clear = top2[k, :, 0] - top2[k, :, 1] > 1e-4
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(result.class_id[clear], probs[k].argmax(1).numpy()[clear])


def test_mixed_thresholds_route_each_image(model, x):
    n = len(x)
    last = model.manifest.num_exits
    per_image = np.where(np.arange(n) % 2 == 0, 0.0, 1.0).astype(np.float32)
    result = model.run(x, np.tile(per_image, (last - 1, 1)))  # (K - 1) x N: one per early exit and image
    assert (result.exit[::2] == 1).all() and (result.exit[1::2] == last).all()
    assert [s.batch_size for s in result.stages] == [n] + [n // 2] * (last - 1)


def test_staged_answers_equal_full_run(model, x):
    """Whatever the exit, an image's answer is that exit's own prediction."""
    full = [model.run(x, t) for t in (0.0, 1.0)]
    mid = model.run(x, 0.3)
    for e in (1, model.manifest.num_exits):
        sel = mid.exit == e
        np.testing.assert_array_equal(mid.class_id[sel], full[0 if e == 1 else 1].class_id[sel])


def test_cpu_machine_asks_for_cpu_only():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        assert choose_providers("cuda") == ["CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]


def test_repository_loads_default(tmp_path):
    models = load_repository(MODELS, "default", "cpu")
    assert "default" in models and models["default"].provider == "CPUExecutionProvider"


@pytest.mark.parametrize("repository", [MODELS, MODELS.parent / "results" / "models"], ids=["models", "results-models"])
def test_committed_models_score_what_their_manifests_say(repository, cifar):
    """Every committed model loads (schema, stage hashes) and, run by ONNX Runtime on the whole test
    set at its default thresholds, scores the accuracy and exit split its manifest (and the docs
    quoting it) claim: the numbers were measured by PyTorch at export."""
    test = cifar[1]
    names = sorted(p.name for p in repository.iterdir() if (p / "manifest.json").exists())
    assert names, f"{repository}: no model"
    for name, model in load_repository(repository, names[0], "cpu").items():
        default = model.manifest.thresholds.inference  # one, or one per early exit
        runs = [model.run(model.preprocess(images), default) for images in np.array_split(test.images, 10)]
        classes, exits = (np.concatenate([getattr(r, f) for r in runs]) for f in ("class_id", "exit"))
        claimed = model.manifest.metrics
        assert 100 * np.mean(classes == test.labels) == pytest.approx(claimed.overall, abs=0.05), name
        split = [np.mean(exits == k + 1) for k in range(model.manifest.num_exits)]  # fractions
        assert split == pytest.approx(claimed.exit_distribution, abs=5e-4), name


def test_per_exit_thresholds(model, x):
    """A threshold per early exit: 0 at exit 2 alone sends everyone not leaving at exit 1 out there."""
    n, early = len(x), model.manifest.num_exits - 1
    only_exit2 = model.run(x, [1.0, 0.0] + [1.0] * (early - 2))
    assert set(only_exit2.exit.tolist()) == {2} and [s.batch_size for s in only_exit2.stages] == [n, n]
    same = model.run(x, np.full((early, n), 0.3, np.float32))
    broadcast = model.run(x, 0.3)
    assert same.exit.tolist() == broadcast.exit.tolist() and same.class_id.tolist() == broadcast.class_id.tolist()


def test_cgroup_cpu_limit(tmp_path):
    from server.config import cgroup_cpu_limit

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two threads
    assert cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_io_binding_path_gives_the_same_answers(model, x):
    """The CUDA provider's IO-binding path, forced on the CPU provider: same classes, exits and
    confidences as plain runs, also when nobody or everybody leaves at an exit, and in shadow runs."""
    bound = StagedModel(MODELS / "default", "cpu", io_binding=True)
    n = len(x)
    for thresholds in (0.0, 1.0, 0.6, np.tile(np.array([[1.0], [0.0], [1.0]], np.float32), (1, n))):
        shadow = np.arange(n) % 3 == 0
        a, b = model.run(x, thresholds, shadow), bound.run(x, thresholds, shadow)
        assert a.exit.tolist() == b.exit.tolist() and a.class_id.tolist() == b.class_id.tolist()
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6)
        assert [(j.exit, j.class_id.tolist()) for j in a.shadows] == [(j.exit, j.class_id.tolist()) for j in b.shadows]
        for ja, jb in zip(a.shadows, b.shadows):
            np.testing.assert_array_equal(bound.finish(jb.features, jb.exit), model.finish(ja.features, ja.exit))
