import subprocess
import sys
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


def cli_args(*words, **options) -> list[str]:
    """Command-line words: `words` as strings, then `--name value` for each option (underscores as
    dashes; a list or tuple value gives several words, True a bare flag)."""
    argv = [str(w) for w in words]
    for name, value in options.items():
        argv.append("--" + name.replace("_", "-"))
        if isinstance(value, list | tuple):
            argv += [str(v) for v in value]
        elif value is not True:
            argv.append(str(value))
    return argv


def run_training(argv: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`python -m training ARGV` in a process of its own, run to its end (output captured as text)."""
    command = [sys.executable, "-m", "training", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
