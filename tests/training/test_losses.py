import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    CrossEntropyLS,
    LDAMLoss,
    PlainExitLoss,
    ResLTExitLoss,
    SimulatedExitLoss,
    Targets,
    branch_masks,
    split_weights,
)
from training.network import ExitOutput
from training.routing import exit_weights, first_confident_exit, routed_loss, training_exits


def ce(logits, y):
    """Plain cross-entropy of one sample, by hand."""
    return -logits[y] + math.log(sum(math.exp(v) for v in logits))


def test_ce_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    got = CrossEntropyLS(0.1)(logits, torch.tensor([0])).item()
    logp = [v - math.log(sum(math.exp(u) for u in [2.0, 0.0, -1.0])) for v in [2.0, 0.0, -1.0]]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert got == pytest.approx(expected, rel=1e-6)


def test_ldam_margins_by_hand():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    loss = LDAMLoss(counts)
    raw = [n**-0.25 for n in counts]
    expected = [0.5 * r / max(raw) for r in raw]
    assert loss.margins.tolist() == pytest.approx(expected, rel=1e-6)
    assert loss.margins[-1].item() == pytest.approx(0.5)
    # 50 ** -0.25 / 5000 ** -0.25 = 100 ** 0.25 = 3.1623: the head margin is 0.5 / 3.1623
    assert loss.margins[0].item() == pytest.approx(0.5 / 100**0.25, rel=1e-6)


def test_ldam_subtracts_scaled_margin_from_true_logit():
    loss = LDAMLoss([100, 100, 100, 1600], scale=30.0)  # margins 0.5, 0.5, 0.5, 0.25
    logits = torch.tensor([[3.0, 1.0, 0.0, 2.0]])
    got = loss(logits, torch.tensor([3])).item()
    assert got == pytest.approx(ce([3.0, 1.0, 0.0, 2.0 - 30 * 0.25], 3), rel=1e-5)


def test_simulated_weights_one_two_three_by_split():
    assert split_weights().tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    logits = torch.randn(3, 10)
    y = torch.tensor([0, 4, 9])  # many, medium, few
    base = CrossEntropyLS()
    got = SimulatedExitLoss(base)(ExitOutput(logits), Targets.plain(y))
    torch.testing.assert_close(got, base(logits, y) * torch.tensor([1.0, 2.0, 3.0]))


def test_reslt_branch_masks():
    masks = branch_masks()
    assert masks[0].tolist() == [1] * 10  # H: every class
    assert masks[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # M: medium + few
    assert masks[2].tolist() == [0] * 6 + [1] * 4  # T: few


def test_full_reslt_loss_by_hand():
    """Branch term = sum(mask * CE_b) / sum(mask); fusion = CE(H + M + T); 0.95 / 0.05."""
    torch.manual_seed(0)
    branches = torch.randn(3, 2, 10)
    y = torch.tensor([1, 7])  # a many sample (mask count 1), a few sample (mask count 3)

    def base(z, t):
        return F.cross_entropy(z, t, reduction="none")

    per_sample = ResLTExitLoss(base, alpha=0.95)(ExitOutput(branches.sum(0), branches), Targets.plain(y))
    b = [[ce(branches[k, i].tolist(), y[i].item()) for k in range(3)] for i in range(2)]
    branch_term = (b[0][0] + b[1][0] + b[1][1] + b[1][2]) / 4
    fusion_term = (ce(branches[:, 0].sum(0).tolist(), 1) + ce(branches[:, 1].sum(0).tolist(), 7)) / 2
    assert per_sample.mean().item() == pytest.approx(0.95 * branch_term + 0.05 * fusion_term, rel=1e-5)


def test_mixup_targets_weight_each_label():
    logits = torch.randn(4, 10)
    y_a, y_b = torch.tensor([0, 3, 6, 9]), torch.tensor([9, 6, 3, 0])
    base = CrossEntropyLS()
    got = SimulatedExitLoss(base)(ExitOutput(logits), Targets(y_a, y_b, 0.7))
    w = split_weights()
    expected = 0.7 * w[y_a] * base(logits, y_a) + 0.3 * w[y_b] * base(logits, y_b)
    torch.testing.assert_close(got, expected)
    assert Targets(y_a, y_b, 0.7).dominant is y_a and Targets(y_a, y_b, 0.3).dominant is y_b


def test_exit_rule_first_confident_exit():
    probs = torch.tensor(
        [
            [[0.6, 0.4], [0.5, 0.5], [0.3, 0.7], [0.45, 0.55]],  # exit 1
            [[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.4, 0.6]],  # exit 2
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.52, 0.48]],  # exit 3
        ]
    )
    assert first_confident_exit(probs, 0.6).tolist() == [0, 1, 0, 1]
    assert first_confident_exit(probs, 0.95).tolist() == [2, 2, 2, 2]
    # exactly at the threshold exits (>=)
    assert first_confident_exit(probs, 0.5).tolist() == [0, 0, 0, 0]
    # training: the prediction must also be right
    assert first_confident_exit(probs, 0.6, torch.tensor([1, 1, 0, 1])).tolist() == [2, 1, 2, 1]


def crafted_batch():
    """Three exits, four samples whose training exits are known: 0, 1, 2, 2."""
    big = 10.0
    logits = torch.zeros(3, 4, 10)
    y = torch.tensor([0, 1, 2, 3])
    logits[0, 0, 0] = big  # sample 0 confident and right at exit 1
    logits[0, 1, 5] = big  # sample 1 confident but wrong at exit 1 ...
    logits[1, 1, 1] = big  # ... right at exit 2
    logits[1, 2, 2] = 1.0  # sample 2 right but not confident anywhere before the end
    return [ExitOutput(logit) for logit in logits], Targets.plain(y)


def test_training_exits_on_crafted_batch():
    outputs, targets = crafted_batch()
    assert training_exits(outputs, targets, 0.9).tolist() == [0, 1, 2, 2]


def test_accumulative_vs_routed_sums():
    outputs, targets = crafted_batch()
    exits = training_exits(outputs, targets, 0.9)
    per_exit = [torch.tensor([1.0, 2.0, 3.0, 4.0]) * (k + 1) for k in range(3)]  # L_k,i = (k+1)*(i+1)
    assert exit_weights(exits, 3, "routed").T.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    # routed: 1*1 + 2*2 + 3*3 + 3*4 = 26, over 4 samples
    assert routed_loss(per_exit, exits, "routed").item() == pytest.approx(26 / 4)
    # accumulative: 1 + (2 + 4) + (3 + 6 + 9) + (4 + 8 + 12) = 49, over 4 samples
    assert routed_loss(per_exit, exits, "accumulative").item() == pytest.approx(49 / 4)
    with pytest.raises(ValueError, match="routing"):
        exit_weights(exits, 3, "sideways")


def test_plain_exit_loss_needs_no_split():
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    torch.testing.assert_close(
        PlainExitLoss(CrossEntropyLS())(ExitOutput(logits), Targets.plain(y)), CrossEntropyLS()(logits, y)
    )


def test_reslt_loss_refuses_single_head():
    with pytest.raises(ValueError, match="ResLT head"):
        ResLTExitLoss(CrossEntropyLS())(ExitOutput(torch.randn(2, 10)), Targets.plain(torch.tensor([0, 1])))


# -- the corrected rule (SPEC §4, 2026-11-28): which loss at which exit --------------------------


def _ce_ls(z, y):
    return F.cross_entropy(z, y, reduction="none", label_smoothing=0.1)


def _simulated_by_hand(logits, y_a, y_b, lam):
    weight = torch.tensor([1.0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    return lam * weight[y_a] * _ce_ls(logits, y_a) + (1 - lam) * weight[y_b] * _ce_ls(logits, y_b)


def _reslt_by_hand(branches, y_a, y_b, lam):
    """ResLT's batch formula: alpha * sum(mask * CE_b) / sum(mask) + (1 - alpha) * mean CE(fused),
    with each Mixup term weighting its own label's masks."""

    def masks(y):
        return torch.stack(
            [
                torch.ones_like(y, dtype=torch.float32),
                (y >= 3).float(),
                (y >= 6).float(),
            ]
        )

    branch_sum, mask_sum, fusion = 0.0, 0.0, 0.0
    for y, w in ((y_a, lam), (y_b, 1 - lam)):
        m = masks(y)
        branch_sum = branch_sum + w * sum((m[b] * _ce_ls(branches[b], y)).sum() for b in range(3))
        mask_sum = mask_sum + w * m.sum()
        fusion = fusion + w * _ce_ls(branches.sum(0), y).mean()
    return 0.95 * branch_sum / mask_sum + 0.05 * fusion


@pytest.mark.parametrize("lam", [1.0, 0.7])
@pytest.mark.parametrize("variant_name", ["model8", "model1"])  # routed, accumulative
def test_simulated_family_losses_per_exit(variant_name, lam):
    """Simulated family: light exits get the simulated loss, the final ResLT head the full ResLT
    loss; checked on a real network's outputs for a batch where every sample reaches the end."""
    from training.losses import make_exit_losses
    from training.network import build_model
    from training.variants import get_variant

    variant = get_variant(variant_name)
    assert variant.exit_losses == ("simulated", "simulated", "reslt")
    torch.manual_seed(0)
    model = build_model(variant)
    x = torch.randn(12, 3, 32, 32)
    y_a = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 5])
    y_b = y_a.flip(0) if lam < 1 else y_a
    targets = Targets(y_a, y_b, lam)
    outputs = model(x)
    losses = make_exit_losses(variant, [100] * 10)
    per_exit = [f(o, targets) for f, o in zip(losses, outputs)]
    for k in (0, 1):
        torch.testing.assert_close(per_exit[k], _simulated_by_hand(outputs[k].logits, y_a, y_b, lam))
    assert per_exit[2].mean().item() == pytest.approx(
        _reslt_by_hand(outputs[2].branches, y_a, y_b, lam).item(), rel=1e-5
    )
    # A fresh network is nowhere near the 0.9 criterion: every sample's exit is the final one.
    exits = training_exits(outputs, targets, variant.train_threshold)
    assert exits.tolist() == [2] * 12
    total = routed_loss(per_exit, exits, variant.routing).item()
    final = _reslt_by_hand(outputs[2].branches, y_a, y_b, lam).item()
    if variant.routing == "routed":
        assert total == pytest.approx(final, rel=1e-5)
    else:
        early = sum(_simulated_by_hand(outputs[k].logits, y_a, y_b, lam).mean().item() for k in (0, 1))
        assert total == pytest.approx(early + final, rel=1e-5)


@pytest.mark.parametrize("routing", ["routed", "accumulative"])
def test_routing_picks_the_right_exit_loss(routing):
    """Samples leaving at an early exit are charged that exit's simulated loss; the others the
    final exit's ResLT loss (routed) or every loss on the way (accumulative)."""
    from training.losses import make_exit_losses
    from training.variants import get_variant

    variant = get_variant("model8" if routing == "routed" else "model1")
    torch.manual_seed(1)
    y = torch.tensor([0, 4, 7, 9])
    early = [torch.randn(4, 10), torch.randn(4, 10)]
    early[0][0, 0] = 20.0  # sample 0 right and confident at exit 1
    early[1][1, 4] = 20.0  # sample 1 right and confident at exit 2
    branches = torch.randn(3, 4, 10)
    outputs = [ExitOutput(early[0]), ExitOutput(early[1]), ExitOutput(branches.sum(0), branches)]
    targets = Targets.plain(y)
    per_exit = [f(o, targets) for f, o in zip(make_exit_losses(variant, [100] * 10), outputs)]
    exits = training_exits(outputs, targets, 0.9)
    assert exits.tolist() == [0, 1, 2, 2]
    sim = [_simulated_by_hand(early[k], y, y, 1.0) for k in (0, 1)]
    assert per_exit[0].tolist() == pytest.approx(sim[0].tolist(), rel=1e-6)
    assert per_exit[1].tolist() == pytest.approx(sim[1].tolist(), rel=1e-6)
    got = routed_loss(per_exit, exits, routing).item() * 4
    if routing == "routed":
        expected = sim[0][0] + sim[1][1] + per_exit[2][2] + per_exit[2][3]
    else:
        expected = (
            sim[0][0]
            + (sim[0][1] + sim[1][1])
            + sum(sim[k][i] for k in (0, 1) for i in (2, 3))
            + per_exit[2][2]
            + per_exit[2][3]
        )
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_every_variant_has_one_loss_per_exit_and_full_power_uses_reslt():
    from training.variants import all_variants

    for v in all_variants():
        assert len(v.exit_losses) == v.num_exits
        if v.family == "full_power":
            assert v.exit_losses == ("reslt",) * 3
        if v.family == "simulated":
            assert v.exit_losses[-1] == "reslt" and set(v.exit_losses[:-1]) == {"simulated"}


def test_exit_rule_with_one_threshold_per_early_exit():
    probs = torch.tensor(
        [
            [[0.6, 0.4], [0.8, 0.2], [0.3, 0.7]],  # exit 1
            [[0.9, 0.1], [0.2, 0.8], [0.35, 0.65]],  # exit 2
            [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]],  # exit 3
        ]
    )
    assert first_confident_exit(probs, [0.75, 0.66]).tolist() == [1, 0, 2]
    assert first_confident_exit(probs, [0.5, 1.0]).tolist() == [0, 0, 0]
    assert first_confident_exit(probs, [1.0, 0.5]).tolist() == [1, 1, 1]  # threshold 1: nobody leaves there


def test_official_reslt_masks_are_by_class_index():
    from training.losses import EXIT_LOSSES, official_branch_masks

    masks = official_branch_masks()
    assert masks[0].tolist() == [1] * 10
    assert masks[1].tolist() == [0, 0] + [1] * 8  # classes 2-9
    assert masks[2].tolist() == [0] * 4 + [1] * 6  # classes 4-9
    assert torch.equal(EXIT_LOSSES.get("reslt_official")(CrossEntropyLS()).masks, masks)


def test_logit_adjusted_loss_is_ce_on_logits_plus_log_prior():
    from training.losses import make_base_loss

    counts = [400, 100, 50, 25, 10, 5, 4, 3, 2, 1]
    logits, y = torch.randn(6, 10), torch.tensor([0, 1, 5, 9, 9, 3])
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    expected = F.cross_entropy(logits + prior.log().float(), y, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(make_base_loss("logit_adjusted", counts)(logits, y), expected)


def test_joint_routing_counts_every_exit_for_every_sample():
    exits = torch.tensor([0, 2, 1, 2])
    assert exit_weights(exits, 3, "joint").tolist() == [[1.0] * 4] * 3


def test_distilled_exit_loss_learns_from_the_final_exit_without_moving_it():
    from training.losses import DistilledExitLoss, distillation

    logits = torch.randn(4, 10, requires_grad=True)
    final = torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([0, 4, 7, 9])
    base = CrossEntropyLS()
    got = DistilledExitLoss(base)(ExitOutput(logits), Targets.plain(y), teacher=ExitOutput(final))
    w = split_weights()[y]
    expected = 0.5 * w * base(logits, y) + 0.5 * w * distillation(logits, final.detach(), 2.0)
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert final.grad is None and logits.grad.abs().sum() > 0
    same = DistilledExitLoss(base)(ExitOutput(final.detach()), Targets.plain(y), teacher=ExitOutput(final))
    torch.testing.assert_close(same, 0.5 * w * base(final.detach(), y))  # no KL to itself


def test_distilled_plain_exit_loss_drops_the_split_weights_under_a_balanced_loss():
    from training.losses import EXIT_LOSSES, LogitAdjustedLoss, distillation

    logits, final = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.tensor([0, 1, 4, 6, 8, 9])
    base = LogitAdjustedLoss([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    plain = EXIT_LOSSES.get("distilled_plain")(base)
    got = plain(ExitOutput(logits), Targets.plain(y), teacher=ExitOutput(final))
    torch.testing.assert_close(got, 0.5 * base(logits, y) + 0.5 * distillation(logits, final, 2.0))
    # The weighted form counts a few-class sample three times, a many-class one once.
    weighted = EXIT_LOSSES.get("distilled")(base)(ExitOutput(logits), Targets.plain(y), teacher=ExitOutput(final))
    torch.testing.assert_close(weighted, split_weights()[y] * got)
