import dataclasses

import pytest

from study.runs import ablation_runs, control_runs, study_runs
from training.variants import all_variants, get_variant, loss_rule


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("routing", "sideways", "routing"),
        ("augmentation", "cutmix", "augmentation"),
        ("loss", "focal", "loss"),
        ("exit_heads", ("light", "light", "conv"), "exit_heads"),
        ("exit_losses", ("simulated", "reslt"), "one loss each"),
        ("exit_losses", ("reslt", "simulated", "reslt"), "needs a ResLT head"),
        ("infer_threshold", 1.5, "thresholds"),
        ("sam_rho", -0.1, "sam_rho"),
        ("weight_decay", 0.5, "weight_decay"),
        ("augmentation", "mixup+mixup", "augmentation"),
    ],
)
def test_variant_fields_are_validated_at_construction(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_variant("model8"), **{field: value})


def test_loss_rule_of_saved_records():
    assert loss_rule(get_variant("model8").to_dict()) == "per_exit"
    old = get_variant("model8").to_dict()
    old.pop("exit_losses")
    old["exit_loss"] = "simulated"
    assert loss_rule(old) == "simulated_everywhere"


def test_controls_stay_out_of_the_report_table():
    assert len(study_runs()) == 19 and all(name != "erm" for name, _ in study_runs())
    assert control_runs() == [("erm", 1), ("erm", 100)]
    erm = get_variant("erm")
    assert (erm.loss, erm.augmentation, erm.exit_heads, erm.widths) == ("ce_plain", "basic", ("linear",), (16, 32, 64))


def test_ablations_and_product_recipes_stay_out_of_the_report_table():
    names = {name for name, _ in study_runs()}
    assert ablation_runs() == [("model8-linear", 100), ("model8-reslt-official", 100)]
    assert not names & {v.name for v in all_variants() if v.family in ("ablation", "product")}
    linear, official = get_variant("model8-linear"), get_variant("model8-reslt-official")
    model8 = get_variant("model8")
    assert linear.exit_heads[-1] == "linear" and official.exit_losses[-1] == "reslt_official"
    for v in (linear, official):  # the rest of model8's recipe unchanged
        assert (v.loss, v.routing, v.augmentation, v.widths) == (
            model8.loss,
            model8.routing,
            model8.augmentation,
            model8.widths,
        )


def test_hybrid_ce_is_model8_with_hybrid_lt_exits():
    """The fifth product candidate changes exactly one thing on each side: model8's loss, head and
    data with hybrid-lt's jointly trained, distilled exits."""
    ce, lt, model8 = get_variant("hybrid-ce"), get_variant("hybrid-lt"), get_variant("model8")
    assert (ce.loss, ce.augmentation, ce.widths, ce.exit_heads[-1], ce.exit_losses[-1]) == (
        model8.loss,
        model8.augmentation,
        model8.widths,
        model8.exit_heads[-1],
        model8.exit_losses[-1],
    )
    assert (ce.routing, ce.exit_heads, ce.exit_losses, ce.exit_blocks) == (
        lt.routing,
        lt.exit_heads,
        lt.exit_losses,
        lt.exit_blocks,
    )
    assert ce.loss != lt.loss and ce.family == "product" and ce.sam_rho == 0


def test_study_evaluates_every_epoch_only_where_the_report_saw_a_divergence():
    diverged = [v for v, _imbalance in study_runs() if get_variant(v).study_eval_every == 1]
    assert diverged == ["model4"]
    assert get_variant("model4").reported[100].summary() == "diverged at epoch 111"
    assert get_variant("model8").reported[100].summary(sep="/") == "79.59 (90.40/69.93/78.72)"


def test_the_leaders_ingredients_change_only_what_they_name(data_dir, tmp_path):
    """hybrid-lt-mid-cutout / -aa / -wd are the shipped recipe but for their augmentation or weight
    decay, and a run records the variant's weight decay in its config."""
    import json

    from training.cli import main

    from .smoke import smoke_flags

    shipped = get_variant("hybrid-lt-mid").to_dict()
    for name, changed in (
        ("hybrid-lt-mid-cutout", {"augmentation": "mixup+cutout"}),
        ("hybrid-lt-mid-aa", {"augmentation": "autoaugment+cutout+mixup"}),
        ("hybrid-lt-mid-wd", {"weight_decay": 5e-4}),
    ):
        record = get_variant(name).to_dict()
        assert {k for k in record if record[k] != shipped[k]} == {"name", "description", *changed}, name
        assert {k: record[k] for k in changed} == changed
    out = tmp_path / "wd"
    assert (
        main(["train", "--variant", "hybrid-lt-mid-wd", "--out", str(out), "--data-dir", str(data_dir), *smoke_flags()])
        == 0
    )
    assert json.loads((out / "config.json").read_text())["config"]["weight_decay"] == 5e-4
