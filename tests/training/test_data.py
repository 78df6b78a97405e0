import pickle

import numpy as np
import pytest

from training.data import DatasetError, build_datasets, load_cifar10, longtail_counts, longtail_indices, stratified_cap

SPEC_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def ldam_drw_reference(targets, imb_factor):
    """LDAM-DRW's IMBALANCECIFAR10 construction, written as its repository does."""
    cls_num, img_max = 10, len(targets) / 10
    img_num_per_cls = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    np.random.seed(0)
    targets_np = np.array(targets, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), img_num_per_cls):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.append(idx[:the_img_num])
    return np.concatenate(selected)


def test_real_cifar_layout(cifar):
    train, test = cifar
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.labels[:4].tolist() == [6, 9, 9, 4]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.bincount(train.labels).tolist() == [5000] * 10


@pytest.mark.parametrize("imbalance,total", [(100, 12406), (50, 13996), (10, 20431)])
def test_longtail_counts_match_spec(cifar, imbalance, total):
    counts = longtail_counts(imbalance)
    assert sum(counts) == total
    if imbalance == 100:
        assert counts == SPEC_IF100
    idx = longtail_indices(cifar[0].labels, imbalance)
    assert np.bincount(cifar[0].labels[idx]).tolist() == counts
    assert len(set(idx.tolist())) == total


@pytest.mark.parametrize("imbalance", [100, 50, 10])
def test_same_indices_as_ldam_drw(cifar, imbalance):
    labels = cifar[0].labels
    np.testing.assert_array_equal(
        longtail_indices(labels, imbalance), ldam_drw_reference(labels.tolist(), 1.0 / imbalance)
    )


def test_longtail_sets_are_nested(cifar):
    labels = cifar[0].labels
    sets = {f: set(longtail_indices(labels, f).tolist()) for f in (100, 50, 10)}
    assert sets[100] < sets[50] < sets[10]


def test_global_numpy_rng_is_left_alone(cifar):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    longtail_indices(cifar[0].labels, 100)
    assert np.random.rand() == expected


def test_stratified_cap_keeps_every_class(cifar):
    labels = cifar[0].labels[longtail_indices(cifar[0].labels, 100)]
    keep = stratified_cap(labels, 500)
    assert 490 <= len(keep) <= 520
    assert set(labels[keep].tolist()) == set(range(10))


def test_build_datasets_caps(data_dir):
    train, test = build_datasets(data_dir, 100, max_train=300, max_test=100)
    assert abs(len(train) - 300) <= 10 and abs(len(test) - 100) <= 10


def test_missing_dataset_names_layout(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_malformed_batch_is_named(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar10(tmp_path)
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DatasetError, match="data shape"):
        load_cifar10(tmp_path)
