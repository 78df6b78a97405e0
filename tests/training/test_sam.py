"""SAM (training/optim.py) inside a real training step on real CIFAR-10 images: the step is SGD's
with the gradient at the perturbed weights, BatchNorm's running statistics move once per step, and
a checkpointed SAM run goes on with its momentum."""

import io
from functools import partial

import torch

from training.config import TrainConfig
from training.engine import Run
from training.losses import Targets
from training.optim import frozen_bn_statistics, optimizer_step

BASE = dict(variant="hybrid-lt-sam", imbalance=100, batch_size=32, max_train_samples=200, data_path="device")


def make_run(tmp_path, data_dir, variant: str = "hybrid-lt-sam") -> Run:
    run = Run(TrainConfig(**{**BASE, "variant": variant}), tmp_path, torch.device("cpu"), data_dir)  # same weights
    run.model.train()
    return run


def batch(run):
    x, y = next(iter(run.batches(0)[0]))
    return x, Targets.plain(y)


def bn_buffers(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_sam_steps_with_the_gradient_at_the_perturbed_weights(data_dir, tmp_path):
    run, by_hand = make_run(tmp_path, data_dir), make_run(tmp_path, data_dir)
    sgd = make_run(tmp_path, data_dir, "hybrid-lt")  # the same recipe and weights, without SAM
    assert type(run.optimizer).__name__ == "SAM" and run.variant.sam_rho == 0.5
    x, targets = batch(run)

    optimizer_step(run.optimizer, run.model, partial(run.forward_backward, x, targets))

    # By hand: the gradient at w, a step of rho along it, the gradient there, SGD from w with it.
    params = list(by_hand.model.parameters())
    initial = bn_buffers(by_hand.model)
    by_hand.forward_backward(x, targets)
    once = bn_buffers(by_hand.model)  # one training forward's statistics
    grads = [p.grad.clone() if p.grad is not None else None for p in params]
    norm = torch.sqrt(sum((g**2).sum() for g in grads if g is not None))
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.add_(g * (run.variant.sam_rho / norm))
    with frozen_bn_statistics(by_hand.model):
        by_hand.forward_backward(x, targets)
    with torch.no_grad():
        for p, w in zip(params, start):
            p.copy_(w)
    torch.optim.SGD(params, lr=run.config.lr, momentum=run.config.momentum, weight_decay=run.config.weight_decay).step()
    # And plain SGD, the gradient at w: what a SAM that did nothing would give.
    assert type(sgd.optimizer) is torch.optim.SGD
    optimizer_step(sgd.optimizer, sgd.model, partial(sgd.forward_backward, x, targets))

    def distance(a, b):
        return max((p - q).abs().max().item() for p, q in zip(a.model.parameters(), b.model.parameters()))

    # float32 summation order alone (the norm, the gradients) moves a ResNet's step by ~1e-5 here;
    # the perturbation moves it by ~100x that.
    assert distance(run, by_hand) < 0.02 * distance(run, sgd)
    # The perturbed pass left BatchNorm's running statistics as the first pass made them.
    assert once and all(not torch.equal(once[k], initial[k]) for k in once if k.endswith("running_mean"))
    for key, value in bn_buffers(run.model).items():
        assert torch.equal(value, once[key]), key


def test_sam_run_resumes_with_its_momentum(data_dir, tmp_path):
    straight, resumed = make_run(tmp_path, data_dir), make_run(tmp_path, data_dir)
    x, targets = batch(straight)
    step = partial(optimizer_step, straight.optimizer, straight.model, partial(straight.forward_backward, x, targets))
    step()
    saved = io.BytesIO()  # through bytes, as a checkpoint: state() holds the live tensors
    torch.save(straight.state(epoch=1), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    assert state["optimizer"]["state"], "SAM's checkpoint has no momentum buffers"
    resumed.restore(state)
    step()
    optimizer_step(resumed.optimizer, resumed.model, partial(resumed.forward_backward, x, targets))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
