"""torch.compile of the network: same training as eager, and eager when compilation fails."""

import json
import os
import shutil

import pytest
import torch

from training.compilation import compile_network
from training.config import TrainConfig
from training.engine import Run
from training.losses import Targets

from ..conftest import cli_args, run_training
from .smoke import smoke_flags


def gradient(run, x, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, all parameter gradients as one float64 vector) of one training step's backward."""
    run.model.train()
    loss, _ = run.forward_backward(x, targets)
    return loss.detach(), torch.cat([p.grad.flatten().double() for p in run.model.parameters() if p.grad is not None])


# Inductor builds its CPU kernels with the C++ compiler (CXX, else g++).
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler for torch.compile's CPU kernels"
)


@needs_cxx
def test_compiled_network_computes_the_eager_loss_and_gradients(data_dir, tmp_path):
    base = dict(variant="model8", imbalance=100, batch_size=32, max_train_samples=200, data_path="device")
    eager = Run(TrainConfig(**base), tmp_path, torch.device("cpu"), data_dir)
    compiled = Run(TrainConfig(**base, compile="default"), tmp_path, torch.device("cpu"), data_dir)
    assert compiled.net is not compiled.model
    x, y = next(iter(eager.batches(0)[0]))
    targets = Targets.plain(y)
    # The float64 gradient is the truth: a ResNet at initialisation is badly conditioned enough
    # that any float32 summation order (eager's included) is ~1e-3 off, so compare errors.
    truth = Run(TrainConfig(**base), tmp_path, torch.device("cpu"), data_dir)
    truth.model.double()
    truth_loss, truth_grad = gradient(truth, x.double(), targets)
    eager_loss, eager_grad = gradient(eager, x, targets)
    compiled_loss, compiled_grad = gradient(compiled, x, targets)
    assert compiled.compile_fallback is None
    assert compiled_loss.item() == pytest.approx(truth_loss.item(), rel=1e-5)
    assert eager_loss.item() == pytest.approx(truth_loss.item(), rel=1e-5)

    def error(g):
        return ((g - truth_grad).norm() / truth_grad.norm()).item()

    assert error(compiled_grad) < max(3 * error(eager_grad), 1e-4), (error(compiled_grad), error(eager_grad))


def test_off_is_the_module_itself_and_unknown_modes_are_refused():
    model = torch.nn.Linear(2, 2)
    assert compile_network(model, "off") is model
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_network(model, "fast")


def test_failed_compilation_falls_back_to_eager_and_says_so(data_dir, tmp_path):
    # A machine without a C++ compiler: Inductor cannot build its CPU kernels (a fresh cache, so
    # nothing compiled earlier is reused).
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache"),
    }
    out = tmp_path / "run"
    train = cli_args("train", *smoke_flags(), variant="model8", compile="default", out=out, data_dir=data_dir)
    result = run_training(train, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "torch.compile failed" in result.stderr and "continuing with the eager network" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["compile"]["mode"] == "default"
    assert "no-such-compiler" in metrics["compile"]["fallback"]
    assert "# torch.compile failed in epoch 1" in (out / "train.log").read_text()
