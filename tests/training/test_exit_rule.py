"""The exit rule: modelrepo's numpy implementation (server, calibration, scripts) and training's
tensor form agree, and threshold 1 means full depth even at confidence exactly 1.0."""

import numpy as np
import pytest
import torch

from modelrepo.exit_rule import first_confident_exit, leaves
from training.routing import first_confident_exit as tensor_first_confident_exit


def test_threshold_one_keeps_even_a_confidence_of_exactly_one():
    conf = np.array([1.0, 0.999, 0.5], np.float32)
    assert leaves(conf, 1.0).tolist() == [False, False, False]
    assert leaves(conf, 0.5).tolist() == [True, True, True]  # reaching the threshold is enough
    assert leaves(conf, np.array([1.0, 0.9, 0.6], np.float32)).tolist() == [False, True, False]


def test_thresholds_compare_in_the_confidences_precision():
    # float32(0.58) < 0.58 in float64: an image at exactly the float32 threshold still leaves.
    conf = np.array([np.float32(0.58)])
    assert leaves(conf, 0.58).tolist() == [True]


def test_first_confident_exit_forms_of_threshold():
    conf = np.array(
        [
            [0.6, 0.5, 0.3, 1.0],  # exit 1
            [0.9, 0.8, 0.9, 0.6],  # exit 2
            [0.5, 0.5, 0.5, 0.5],
        ]
    )  # exit 3
    assert first_confident_exit(conf, 0.6).tolist() == [0, 1, 1, 0]
    assert first_confident_exit(conf, 1.0).tolist() == [2, 2, 2, 2]
    assert first_confident_exit(conf, [1.0, 0.0]).tolist() == [1, 1, 1, 1]
    per_image = np.array([[0.7, 0.4, 0.2, 1.0], [0.95, 0.95, 0.9, 0.9]])  # (K - 1) x N
    assert first_confident_exit(conf, per_image).tolist() == [2, 0, 0, 2]
    with pytest.raises(ValueError, match="3 thresholds for 2 early exits"):
        first_confident_exit(conf, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0, [0.75, 0.66], [1.0, 0.2], [0.0, 1.0]])
def test_training_tensor_form_agrees_with_modelrepo(threshold):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4000, 10, generator=g) * torch.tensor([1.0, 3.0, 30.0])[:, None, None]
    logits[:, :50] *= 1e3  # confidences of exactly 1.0 in float32
    probs = logits.softmax(dim=2)
    conf = probs.max(dim=2).values.numpy()
    assert (conf[:2] == 1.0).any()
    expected = first_confident_exit(conf, threshold)
    assert tensor_first_confident_exit(probs, threshold).numpy().tolist() == expected.tolist()
