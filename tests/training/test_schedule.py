import pytest

from training.config import TrainConfig, lr_at, scaled_milestones


def test_reference_schedule():
    cfg = TrainConfig(variant="model8", imbalance=100)
    assert [lr_at(cfg, e) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert lr_at(cfg, 159) == pytest.approx(0.1)
    assert lr_at(cfg, 160) == pytest.approx(0.01)  # epoch 161 in 1-based logs
    assert lr_at(cfg, 180) == pytest.approx(0.001)
    assert lr_at(cfg, 199) == pytest.approx(0.001)  # the report's logs end at 0.00100


def test_milestones_scale_with_epochs():
    assert scaled_milestones(200) == (160, 180)
    assert scaled_milestones(20) == (16, 18)
