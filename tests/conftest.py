import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# $CIFAR10_DIR, else ../shared/datasets beside the checkout, else data/ (python -m training download).
DATA_DIR = Path(os.environ.get("CIFAR10_DIR", REPO.parent / "shared" / "datasets"))
if "CIFAR10_DIR" not in os.environ and not DATA_DIR.is_dir():
    DATA_DIR = REPO / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.fail(f"CIFAR-10 not found at {DATA_DIR}; set CIFAR10_DIR or run `python -m training download`")
    return DATA_DIR


@pytest.fixture(scope="session")
def cifar(data_dir):
    from training.data import load_cifar10
    return load_cifar10(data_dir)
