from pathlib import Path

import pytest

from training.data import default_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = default_data_dir()  # the training CLI's own default (no torch needed)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.fail(f"CIFAR-10 not found at {DATA_DIR}; set CIFAR10_DIR or run `python -m training download`")
    return DATA_DIR


@pytest.fixture(scope="session")
def cifar(data_dir):
    from training.data import load_cifar10
    return load_cifar10(data_dir)
