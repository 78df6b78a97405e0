import dataclasses

import pytest
import torch

from training.macs import exit_costs
from training.network import BasicBlock, EarlyExitResNet, build_model
from training.variants import all_variants, get_variant


@pytest.mark.parametrize("variant", all_variants(), ids=lambda v: v.name)
def test_every_variant_builds_with_its_exits(variant):
    model = build_model(variant).eval()
    outputs = model(torch.randn(4, 3, 32, 32))
    assert len(outputs) == variant.num_exits
    for out, kind in zip(outputs, variant.exit_heads):
        assert out.logits.shape == (4, 10)
        if kind == "reslt":
            assert out.branches.shape == (3, 4, 10)
            torch.testing.assert_close(out.branches.sum(0), out.logits)


@pytest.mark.parametrize("widths", [(16, 32, 64), (15, 30, 63), (16, 32, 48)])
def test_shortcut_pads_exactly_the_missing_channels(widths):
    block = BasicBlock(widths[0], widths[1], stride=2)
    x = torch.randn(2, widths[0], 32, 32)
    assert block(x).shape == (2, widths[1], 16, 16)
    short = block.shortcut(x)
    assert short.shape == (2, widths[1], 16, 16)
    # the input channels survive unchanged between the zero pads
    lo = (widths[1] - widths[0]) // 2
    torch.testing.assert_close(short[:, lo : lo + widths[0]], x[:, :, ::2, ::2])


@pytest.mark.parametrize("name", ["model14", "hybrid-lt-mid"])
def test_segments_compose_to_forward(name):
    model = build_model(get_variant(name)).eval()
    x = torch.randn(2, 3, 32, 32)
    full = model(x)
    for segment, head, out in zip(model.segments(), model.exits, full):
        x = segment(x)
        torch.testing.assert_close(head(x).logits, out.logits)


def test_resnet32_macs_and_stage_shares():
    """ResNet-32 (16/32/64) is about 69M MACs; its stage ends sit near 35% / 67% / 100%."""
    model = EarlyExitResNet((16, 32, 64), ("linear", "linear", "linear"))
    costs = exit_costs(model)
    full = costs[-1]["cumulative_macs"]
    assert 68e6 < full < 70e6
    backbone = [c["backbone_macs"] for c in costs]
    shares = [sum(backbone[: k + 1]) / sum(backbone) for k in range(3)]
    assert shares == pytest.approx([0.35, 0.67, 1.0], abs=0.01)


def test_light_heads_are_cheap():
    model = build_model(next(v for v in all_variants() if v.name == "model8"))
    costs = exit_costs(model)
    assert all(c["head_macs"] < 0.03 * costs[-1]["cumulative_macs"] for c in costs)


def test_reslt_head_needs_channels_divisible_by_three():
    with pytest.raises(ValueError, match="divisible by 3"):
        EarlyExitResNet((16, 32, 64), ("light", "light", "reslt"))


def test_an_exit_inside_stage_2_sits_between_the_stage_exits():
    """hybrid-lt-mid's exit after block 8 of 15 reads stage 2's 32 channels at 16x16 and costs
    between the stage-end exits; every other variant keeps its exits at the stage ends."""
    model = build_model(get_variant("hybrid-lt-mid"))
    assert model.exit_blocks == (4, 7, 9, 14) and model.exit_channels == (16, 32, 32, 48)
    shares = [c["share_of_full"] for c in exit_costs(model)]
    assert shares[0] < 0.45 < shares[1] < 0.7 < shares[2] < 0.85 and shares[3] == 1.0
    plain = exit_costs(build_model(get_variant("hybrid-lt")))
    assert all(
        build_model(v).exit_blocks == (4, 9, 14)[3 - v.num_exits :] for v in all_variants() if v.exit_blocks is None
    )
    # the backbone is the same network: only the extra head's MACs differ
    assert exit_costs(model)[-1]["cumulative_macs"] - plain[-1]["cumulative_macs"] == exit_costs(model)[1]["head_macs"]


@pytest.mark.parametrize(
    "blocks, problem",
    [
        ((4, 9), "one block each"),
        ((9, 4, 14), "must increase"),
        ((4, 9, 13), "end at block 14"),
        ((4, 4, 14), "must increase"),
    ],
)
def test_bad_exit_blocks_are_refused_naming_the_variant(blocks, problem):
    with pytest.raises(ValueError, match=f"variant 'bad'.*{problem}"):
        dataclasses.replace(get_variant("model8"), name="bad", exit_blocks=blocks)
