"""Atomic writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import TrainingError


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates private files; these are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, path: Path) -> None:
    _atomic(path, lambda f: torch.save(state, f))


WEIGHTS_ONLY = "weights_only"
# What only resumes training: the optimizer's state (the run's, and each second stage's record), and
# rebalance's unfolded network (its `model` is the folded one that everything else reads).
RESUME_ONLY = ("optimizer", "network")


def weights_only(state: dict) -> dict:
    """A finished run's checkpoint without what only resumes it. Evaluating, fitting, rebalancing,
    calibrating and exporting read the rest, unchanged."""
    slim = {k: v for k, v in state.items() if k not in RESUME_ONLY}
    for key, record in state.items():
        if isinstance(record, dict) and any(k in record for k in RESUME_ONLY):
            slim[key] = {k: v for k, v in record.items() if k not in RESUME_ONLY}
    slim[WEIGHTS_ONLY] = True
    return slim


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch.load's many ways to fail on a damaged or foreign file
        raise TrainingError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def write_json(data, path: Path, compact: bool = False) -> None:
    """Indented for files people read; `compact` for those tools read (a run's metrics, with every
    epoch's record and the test set's per-image predictions, are less than half the size)."""
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2)
    _atomic(path, lambda f: f.write((text + "\n").encode()))
