"""CIFAR-10 reading (standard python layout) and the LDAM-DRW long-tailed training set."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import NUM_CLASSES
from .errors import TrainingError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
EXPECTED_LAYOUT = (
    f"expected {BATCH_DIR}/ with {', '.join(TRAIN_FILES)}, {TEST_FILE} and batches.meta "
    "(the standard CIFAR-10 python layout), either in the data directory or as the directory itself"
)


class DatasetError(TrainingError):
    """The dataset is missing or malformed; the message names the file and the expected layout."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x 32 x 32 x 3 (HWC)
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Split:
        return Split(self.images[indices], self.labels[indices])


def default_data_dir() -> Path:
    """$CIFAR10_DIR; else ../shared/datasets beside the checkout where it exists (this project's
    developers and CI); else data/ in the checkout (where --download puts it)."""
    if "CIFAR10_DIR" in os.environ:
        return Path(os.environ["CIFAR10_DIR"])
    repo = Path(__file__).resolve().parents[1]
    shared = repo.parent / "shared" / "datasets"
    return shared if shared.is_dir() else repo / "data"


def resolve_batch_dir(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    for candidate in (data_dir / BATCH_DIR, data_dir):
        if (candidate / TEST_FILE).is_file():
            return candidate
    raise DatasetError(
        f"CIFAR-10 not found under {data_dir}: {EXPECTED_LAYOUT}; `python -m training download` fetches it "
        "there (or add --download), --data-dir or $CIFAR10_DIR names another folder"
    )


def _read_batch(path: Path) -> Split:
    if not path.is_file():
        raise DatasetError(f"missing {path}: {EXPECTED_LAYOUT}")
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as exc:  # any unpickling/shape problem means a malformed file
        raise DatasetError(f"malformed CIFAR-10 batch {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(
            f"malformed CIFAR-10 batch {path}: data shape {data.shape}, {len(labels)} labels "
            "(expected N x 3072 uint8 and N labels)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"malformed CIFAR-10 batch {path}: labels outside 0..{NUM_CLASSES - 1}")
    # Rows are CHW planes; keep images as HWC for PIL-based augmentation.
    return Split(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels)


def load_cifar10(data_dir: str | Path) -> tuple[Split, Split]:
    """Return (train, test) from the standard python layout."""
    root = resolve_batch_dir(data_dir)
    parts = [_read_batch(root / name) for name in TRAIN_FILES]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    return train, _read_batch(root / TEST_FILE)


def longtail_counts(imbalance: float, max_per_class: int = 5000, num_classes: int = NUM_CLASSES) -> list[int]:
    """Images kept per class: int(max * (1/IF) ** (i / (C - 1))), as LDAM-DRW."""
    if imbalance < 1:
        raise TrainingError(f"imbalance factor must be >= 1, got {imbalance}")
    factor = 1.0 / imbalance
    return [int(max_per_class * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def longtail_indices(labels: np.ndarray, imbalance: float) -> np.ndarray:
    """Indices of LDAM-DRW's IMBALANCECIFAR10: np.random.seed(0), per class shuffle, first n."""
    counts = longtail_counts(imbalance)
    state = np.random.get_state()  # the recipe uses the global RNG; leave the caller's untouched
    try:
        np.random.seed(0)
        chosen = []
        for cls, n in enumerate(counts):
            idx = np.where(labels == cls)[0]
            np.random.shuffle(idx)
            chosen.append(idx[:n])
    finally:
        np.random.set_state(state)
    return np.concatenate(chosen)


def stratified_cap(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """Positions of about `limit` samples, every class kept with its share (for smoke runs)."""
    positions = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return positions
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        members = positions[labels == cls]
        n = max(1, round(limit * len(members) / len(labels)))
        keep.append(rng.permutation(members)[:n])
    return np.sort(np.concatenate(keep))


def build_datasets(
    data_dir, imbalance: float, max_train: int | None = None, max_test: int | None = None
) -> tuple[Split, Split]:
    train, test = load_cifar10(data_dir)
    lt = train.subset(longtail_indices(train.labels, imbalance))
    lt = lt.subset(stratified_cap(lt.labels, max_train))
    test = test.subset(stratified_cap(test.labels, max_test))
    return lt, test
