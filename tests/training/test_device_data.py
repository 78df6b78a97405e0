"""The fast (device-resident, batched) data path against the reference per-image transforms."""

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from training.augment import Cutout, normalize_batch, normalize_uint8
from training.batch_ops import autoaugment, cutout, random_crop_flip
from training.data import Split
from training.device_data import DeviceBatches

from ..conftest import cli_args
from .smoke import SMOKE

N = 2000


def repeated(image: np.ndarray, n: int = N) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).repeat(n, 1, 1, 1).contiguous()


def test_crop_flip_outputs_are_crops_of_the_padded_image(cifar):
    x = repeated(cifar[1].images[0], 300)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[0], (4, 4, 4, 4))
    candidates = {}
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + 32, j : j + 32]
            candidates[crop.numpy().tobytes()] = (i, j, False)
            candidates[crop.flip(2).numpy().tobytes()] = (i, j, True)
    found = [candidates.get(o.numpy().tobytes()) for o in out]
    assert None not in found
    offsets = {(i, j) for i, j, _ in found}
    assert len(offsets) > 60  # of 81 possible, in 300 draws
    assert 0.4 < np.mean([f for _, _, f in found]) < 0.6


def test_crop_flip_matches_reference_in_distribution(cifar):
    image = cifar[1].images[5]
    torch.manual_seed(0)
    reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    ref = torch.stack([reference(repeated(image, 1)[0]) for _ in range(N)])
    fast = random_crop_flip(repeated(image), torch.Generator().manual_seed(1))
    for stat in (
        lambda t: (t == 0).all(1).float().mean((1, 2)),  # zero-padded share
        lambda t: t.float().mean((1, 2, 3)),
    ):  # brightness
        a, b = stat(ref), stat(fast)
        assert abs(float(a.mean() - b.mean())) < 4 * float(a.std()) / np.sqrt(N) + 1e-3


def test_autoaugment_matches_reference_in_distribution(cifar):
    image = cifar[1].images[7]
    base = repeated(image)
    torch.manual_seed(0)
    policy = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)
    ref = torch.stack([policy(base[0]) for _ in range(N)])
    fast = autoaugment(base, torch.Generator().manual_seed(2))
    unchanged_ref = (ref == base).flatten(1).all(1).float().mean()
    unchanged_fast = (fast == base).flatten(1).all(1).float().mean()
    assert abs(float(unchanged_ref - unchanged_fast)) < 0.05  # binomial sd ~0.011 at N=2000
    change_ref = (ref.float() - base.float()).abs().mean((1, 2, 3))
    change_fast = (fast.float() - base.float()).abs().mean((1, 2, 3))
    assert abs(float(change_ref.mean() - change_fast.mean())) < 5 * float(change_ref.std()) / np.sqrt(N)
    assert len({o.numpy().tobytes() for o in fast[:200]}) > 50  # draws are per image


def test_cutout_matches_reference_in_distribution(cifar):
    """The batched Cutout against the per-image one its authors wrote (augment.Cutout): the share of
    each image cut, and where the cuts fall (borders are cut less: squares are clipped there)."""
    x = normalize_uint8(repeated(cifar[1].images[3]))
    torch.manual_seed(0)
    ref = torch.stack([Cutout()(image) for image in x])
    fast = cutout(x, torch.Generator().manual_seed(3))
    cut_ref, cut_fast = (ref == 0).all(1), (fast == 0).all(1)
    share_ref, share_fast = cut_ref.float().mean((1, 2)), cut_fast.float().mean((1, 2))
    assert abs(float(share_ref.mean() - share_fast.mean())) < 4 * float(share_ref.std()) / np.sqrt(N)
    hist_ref = torch.histc(share_ref, 8, 0, 0.25) / N
    hist_fast = torch.histc(share_fast, 8, 0, 0.25) / N
    assert float((hist_ref - hist_fast).abs().sum()) / 2 < 0.06  # total variation; ~0.03 between two reference draws
    where_ref, where_fast = cut_ref.float().mean(0), cut_fast.float().mean(0)
    assert float(where_fast[12:20, 12:20].mean()) > 2 * float(where_fast[:2, :2].mean())
    assert float((where_ref - where_fast).abs().mean()) < 0.02
    kept = ~cut_fast.unsqueeze(1).expand_as(fast)
    assert torch.equal(fast[kept], x[kept])


def test_an_epoch_with_cutout_cuts_every_image(cifar):
    batches = DeviceBatches(cifar[0].subset(np.arange(256)), torch.device("cpu"), 64, "mixup+cutout")
    x, _ = next(iter(batches.epoch(0)))
    assert ((x == 0).all(1).flatten(1).sum(1) >= 1).all()


def test_uint8_normalisation_matches_the_evaluation_input(cifar):
    images = cifar[1].images[:8]
    torch.testing.assert_close(normalize_uint8(torch.from_numpy(images).permute(0, 3, 1, 2)), normalize_batch(images))


def test_epoch_covers_every_image_once_and_is_seeded(cifar):
    split = Split(cifar[1].images[:300], np.arange(300) % 10)
    batches = DeviceBatches(split, torch.device("cpu"), 64, "autoaugment")
    assert len(batches) == 5
    xs, ys = zip(*batches.epoch(7))
    assert [len(y) for y in ys] == [64, 64, 64, 64, 44]
    assert xs[0].shape == (64, 3, 32, 32) and xs[0].dtype == torch.float32
    again = list(batches.epoch(7))
    assert all(torch.equal(a, b) for a, (b, _) in zip(xs, again))
    labels = torch.cat(ys)
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())


@pytest.mark.parametrize(
    "variant, flags, path",
    [
        ("model7", [], {"data_path": "device", "amp": True, "channels_last": True, "compile": "off"}),  # CPU default
        # 15/30/63 widths: bf16 in NCHW (channels-last made their BatchNorm several times slower)
        ("reslt", [], {"data_path": "device", "amp": True, "channels_last": False, "compile": "off"}),
        (
            "model7",
            ["--no-amp", "--data-path", "reference"],  # each flag replaces its part
            {"data_path": "reference", "amp": False, "channels_last": True, "compile": "off"},
        ),
    ],
)
def test_the_cpu_fast_path_is_trains_default_on_a_cpu(data_dir, tmp_path, capsys, variant, flags, path):
    """bf16 is part of the default only on a CPU with bf16 instructions (this test runs on both kinds)."""
    import json

    from training.cli import main
    from training.config import cpu_has_bf16

    bf16 = cpu_has_bf16()
    if not flags:
        path = {**path, "amp": bf16}
    out = tmp_path / "run"
    assert (
        main(
            cli_args(
                "train",
                *flags,
                *SMOKE,
                variant=variant,
                device="cpu",
                out=out,
                data_dir=data_dir,
            )
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())["config"]
    assert {k: config[k] for k in path} == path
    said = capsys.readouterr().out
    fp32 = "" if bf16 else "fp32"
    assert (f"path cpu-fast{f' ({fp32})' if fp32 else ''}," in said) == (flags == [] and variant == "model7")
    assert (f"path cpu-fast ({fp32 + ', ' if fp32 else ''}NCHW)," in said) == (variant == "reslt")


def test_batched_equalize_is_torchvisions(cifar):
    from torchvision.transforms import functional as TF

    from training.batch_ops import equalize

    images = torch.from_numpy(cifar[0].images[:64]).permute(0, 3, 1, 2).contiguous()
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)  # one grey level: left as is
    flat[1, :, :16] = 200  # two grey levels
    batch = torch.cat([images, flat, images[:4] // 64 * 64])  # few levels: small steps
    assert torch.equal(equalize(batch), TF.equalize(batch))


def test_bf16_is_the_cpu_default_only_where_the_cpu_has_it():
    from training.config import TrainConfig, default_path

    for bf16, name in ((True, "cpu-fast"), (False, "cpu-fast (fp32)")):
        path = default_path("cpu", (16, 32, 48), bf16=bf16)
        assert path["amp"] is bf16 and path["channels_last"]
        assert TrainConfig(variant="model8", imbalance=100, **path).path_name() == name
    assert default_path("cpu", (15, 30, 63), bf16=False)["channels_last"] is False
    assert default_path("cuda", (16, 32, 48), bf16=True)["amp"] is False  # the GPU's default: the reference path
