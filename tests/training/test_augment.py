import numpy as np
import pytest
import torch
from torchvision import transforms as T

from training.augment import Cutout, ImageDataset, mixup, normalize_batch, train_transform
from training.data import Split


def test_train_transforms_by_augmentation():
    auto = train_transform("autoaugment")
    assert any(isinstance(t, T.AutoAugment) and t.policy == T.AutoAugmentPolicy.CIFAR10 for t in auto.transforms)
    assert not any(isinstance(t, T.AutoAugment) for t in train_transform("mixup").transforms)
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_transform("cutmix")
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_transform("basic+mixup")
    full = [type(t) for t in train_transform("autoaugment+cutout+mixup").transforms]
    assert full.index(T.AutoAugment) < full.index(T.Compose) < full.index(Cutout)  # Cutout after normalising


def test_cutout_sets_one_clipped_square_to_the_mean_colour():
    torch.manual_seed(0)
    x = torch.randn(3, 32, 32).abs() + 1  # nothing is 0 before
    sizes = set()
    for _ in range(200):
        out = Cutout()(x)
        cut = (out == 0).all(0)
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        assert cut.sum() == len(rows) * len(cols) and 1 <= len(rows) <= 16 and 1 <= len(cols) <= 16  # one rectangle
        assert torch.equal(out[:, ~cut], x[:, ~cut])
        sizes.add((len(rows), len(cols)))
    assert (16, 16) in sizes and len(sizes) > 20  # whole squares, and clipped ones at the borders


def test_dataset_yields_normalised_augmented_images(cifar):
    split = Split(cifar[1].images[:8], cifar[1].labels[:8])
    ds = ImageDataset(split, train_transform("autoaugment"))
    torch.manual_seed(0)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == int(split.labels[3])
    # crop + flip + AutoAugment change the image, but not its scale
    plain = normalize_batch(split.images[3:4])[0]
    assert not torch.equal(x, plain)
    assert -3 < float(x.mean()) < 3


def test_mixup_is_a_reproducible_convex_combination():
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16)  # unique labels: y_b[i] names the partner image of image i
    mixed, y_a, y_b, lam = mixup(x, y, np.random.default_rng(5))
    again = mixup(x, y, np.random.default_rng(5))
    assert torch.equal(mixed, again[0]) and lam == again[3] and 0 <= lam <= 1
    assert torch.equal(y_a, y) and sorted(y_b.tolist()) == y.tolist()
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[y_b])


def test_every_augmentation_part_has_both_data_paths_and_applies_in_registry_order():
    from training.augment import AUGMENTATIONS, AugmentationPart, augmentation_steps

    for name in AUGMENTATIONS:
        part = AUGMENTATIONS.get(name)
        assert part.stage in ("pixels", "tensor", "batch"), name
        assert (part.per_image is None) == (part.batched is None), name
    assert [p.batched.__name__ for p in augmentation_steps("cutout+autoaugment+mixup", "pixels")] == ["autoaugment"]
    assert [p.batched.__name__ for p in augmentation_steps("cutout+autoaugment+mixup", "tensor")] == ["cutout"]
    assert augmentation_steps("basic", "pixels") == augmentation_steps("mixup", "tensor") == []
    with pytest.raises(ValueError, match="both a per-image and a batched"):
        AugmentationPart("pixels", per_image=Cutout)
