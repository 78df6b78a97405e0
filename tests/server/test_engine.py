"""Staged ONNX Runtime inference against the PyTorch model of the same checkpoint."""
import numpy as np
import pytest

from server.engine import StagedModel, choose_providers, load_repository

from .conftest import MODELS


@pytest.fixture(scope="module")
def model():
    return StagedModel(MODELS / "default", "cpu")


@pytest.fixture(scope="module")
def x(model, cifar):
    return model.preprocess(cifar[1].images[:256])


def test_stages_after_the_exit_are_never_run(model, x):
    n = len(x)
    everyone_early = model.run(x, np.zeros(n, np.float32))
    assert (everyone_early.exit == 1).all() and len(everyone_early.stages) == 1
    nobody_early = model.run(x, np.ones(n, np.float32) * 1.01)
    assert (nobody_early.exit == 3).all()
    assert [s.batch_size for s in nobody_early.stages] == [n, n, n]


def test_mixed_thresholds_route_each_image(model, x):
    n = len(x)
    thresholds = np.where(np.arange(n) % 2 == 0, 0.0, 1.01).astype(np.float32)
    result = model.run(x, thresholds)
    assert (result.exit[::2] == 1).all() and (result.exit[1::2] == 3).all()
    assert [s.batch_size for s in result.stages] == [n, n // 2, n // 2]


def test_staged_answers_equal_full_run(model, x):
    """Whatever the exit, an image's answer is that exit's own prediction."""
    full = [model.run(x, np.full(len(x), t, np.float32)) for t in (0.0, 1.01)]
    mid = model.run(x, np.full(len(x), 0.3, np.float32))
    for e in (1, 3):
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


def test_per_exit_thresholds(model, x):
    """A threshold per early exit: 0 at exit 2 alone sends everyone not leaving at exit 1 out there."""
    n = len(x)
    only_exit2 = model.run(x, np.tile(np.array([1.01, 0.0], np.float32), (n, 1)))
    assert set(only_exit2.exit.tolist()) == {2} and [s.batch_size for s in only_exit2.stages] == [n, n]
    same = model.run(x, np.full((n, 2), 0.3, np.float32))
    broadcast = model.run(x, np.full(n, 0.3, np.float32))
    assert same.exit.tolist() == broadcast.exit.tolist() and same.class_id.tolist() == broadcast.class_id.tolist()


def test_cgroup_cpu_limit(tmp_path):
    from server.engine import cgroup_cpu_limit

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
    for thresholds in (np.zeros(n, np.float32), np.full(n, 1.01, np.float32), np.full(n, 0.6, np.float32),
                       np.tile(np.array([1.01, 0.0], np.float32), (n, 1))):
        shadow = np.arange(n) % 3 == 0
        a, b = model.run(x, thresholds, shadow), bound.run(x, thresholds, shadow)
        assert a.exit.tolist() == b.exit.tolist() and a.class_id.tolist() == b.class_id.tolist()
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6)
        assert [(j.exit, j.class_id.tolist()) for j in a.shadows] == [(j.exit, j.class_id.tolist()) for j in b.shadows]
        for ja, jb in zip(a.shadows, b.shadows):
            np.testing.assert_array_equal(bound.finish(jb.features, jb.exit), model.finish(ja.features, ja.exit))
