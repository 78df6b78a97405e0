"""study/scripts/training_exits.py: where the exit criterion in training sends images (the README's
explanation of model4's collapse rests on it)."""

import subprocess
import sys

import numpy as np
import torch

from study.scripts import training_exits

from ..conftest import REPO


def test_an_exit_is_the_training_exit_only_of_images_it_gets_right_with_confidence():
    # exit 1 says class 1 with 0.9 on every image, exit 2 (final) says the label with 0.6
    labels = np.array([0, 1, 1, 2])
    exit1 = torch.full((4, 3), 0.05).index_fill_(1, torch.tensor([1]), 0.9)
    final = torch.full((4, 3), 0.2)
    final[torch.arange(4), torch.from_numpy(labels)] = 0.6
    lines = training_exits.report(torch.stack([exit1, final]), labels, threshold=0.5)
    assert lines[1].split()[:4] == ["1", "100.0%", "1", "100.0%"] and lines[1].endswith("50.0%  1: 2")
    assert lines[2].endswith("50.0%  0: 1, 2: 1")


def test_ldam_cosine_exits_are_confident_at_initialisation_and_linear_ones_are_not(data_dir):
    out = subprocess.run(
        [sys.executable, "-m", "study.scripts.training_exits", "model4", "model7", "--data-dir", str(data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    model4, model7 = out[2].split(), out[7].split()  # each variant's exit 1
    assert model4[0] == "1" and float(model4[1].rstrip("%")) > 90  # LDAM, scale 30: confident from the start
    assert float(model4[4].rstrip("%")) < 5  # ... so exit 1 trains on a few percent of the images
    assert model7[0] == "1" and model7[1] == "0.0%" and model7[4] == "0.0%"  # CE at 0.9: never
