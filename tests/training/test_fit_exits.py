"""fit-exits on the committed model8 checkpoint (real CIFAR-10 images)."""

import json
import sys

import pytest
import torch

from training.cli import main
from training.rundir import checkpoint_model

from ..conftest import REPO, cli_args, run_training
from .smoke import check_second_stage_resumes_bit_for_bit

# The first model8 run (old loss rule): its early exits were never trained.
PARENT = REPO / "results" / "retired-runs" / "model8-if100-seed0" / "checkpoint.pt"
TINY = ["--max-batches", "3", "--max-test-samples", "200", "--max-train-samples", "2000"]


def early_head_keys(state: dict) -> set[str]:
    return {k for k in state if k.startswith(("exits.0.", "exits.1."))}


@pytest.fixture(scope="module")
def frozen_fit(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "frozen"
    assert (
        main(
            cli_args(
                "fit-exits",
                checkpoint=PARENT,
                out=out,
                epochs="2",
                early_heads="light2",
                max_batches="50",
                max_test_samples="1000",
                data_dir=data_dir,
            )
        )
        == 0
    )
    return out


@pytest.mark.slow
def test_frozen_fit_leaves_backbone_and_final_exit_bit_identical(frozen_fit):
    parent = torch.load(PARENT, map_location="cpu", weights_only=False)["model"]
    fitted = torch.load(frozen_fit / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    rest = parent.keys() - early_head_keys(parent)
    assert rest == fitted.keys() - early_head_keys(fitted) and len(rest) > 100
    for k in rest:
        assert torch.equal(parent[k], fitted[k]), k  # BN running statistics included
    assert early_head_keys(fitted) != early_head_keys(parent)  # fresh light2 heads


@pytest.mark.slow
def test_short_frozen_fit_lifts_early_exits_above_chance(frozen_fit):
    metrics = json.loads((frozen_fit / "metrics.json").read_text())
    assert metrics["kind"] == "fit-exits" and metrics["status"] == "completed"
    per_exit = metrics["final"]["per_exit"]
    parent = json.loads((PARENT.parent / "metrics.json").read_text())["final"]["per_exit"]
    assert all(p["overall"] < 11 for p in parent[:2])  # routed training left them at chance (10%)
    assert per_exit[0]["overall"] > 20 and per_exit[1]["overall"] > 25, per_exit
    assert metrics["parent"]["sha256"] == json.loads((frozen_fit / "config.json").read_text())["parent"]["sha256"]


@pytest.mark.slow
def test_fitted_checkpoint_reads_like_a_training_one(frozen_fit):
    model, variant, config, state = checkpoint_model(frozen_fit / "checkpoint.pt")
    assert variant.name == "model8" and config.epochs == 200
    assert state["fit"]["config"]["mode"] == "frozen" and state["fit"]["epoch"] == 2


def fit_cmd(out, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "training",
        *cli_args("fit-exits", *TINY, *extra, checkpoint=PARENT, mode="mixed", epochs="3", out=out, data_dir=data_dir),
    ]


def test_fit_resumes_after_kill_bit_for_bit(data_dir, tmp_path):
    check_second_stage_resumes_bit_for_bit(lambda out, *extra: fit_cmd(out, data_dir, *extra), tmp_path, "fit")


def test_fit_refuses_an_existing_run_and_a_changed_config(data_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    assert main(cli_args("fit-exits", *TINY, checkpoint=PARENT, epochs="1", out=out, data_dir=data_dir)) == 0
    capsys.readouterr()
    again = ["fit-exits", "--checkpoint", str(PARENT), "--out", str(out), "--data-dir", str(data_dir), *TINY]
    assert main([*again, "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*again, "--epochs", "2", "--resume"]) == 2
    assert "different config" in capsys.readouterr().err
    assert main(cli_args("fit-exits", checkpoint=tmp_path / "none.pt", out=tmp_path / "x", data_dir=data_dir)) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_fit_with_deeper_early_heads_reads_back_with_them(data_dir, tmp_path):
    from training.macs import exit_costs
    from training.network import DeepLightHead

    out = tmp_path / "light2"
    assert (
        main(
            cli_args(
                "fit-exits", *TINY, checkpoint=PARENT, epochs="1", early_heads="light2", out=out, data_dir=data_dir
            )
        )
        == 0
    )
    model, variant, _, state = checkpoint_model(out / "checkpoint.pt")
    assert variant.exit_heads == ("light2", "light2", "reslt") and state["fit"]["exit_heads"] == list(
        variant.exit_heads
    )
    assert all(isinstance(h, DeepLightHead) for h in model.exits[:2])
    parent_model, *_ = checkpoint_model(PARENT)
    deeper, light = exit_costs(model), exit_costs(parent_model)
    assert deeper[0]["head_macs"] > light[0]["head_macs"]  # the bigger head's MACs are counted
    assert deeper[0]["backbone_macs"] == light[0]["backbone_macs"]


def test_a_fit_whose_loss_is_not_finite_ends_as_diverged(data_dir, tmp_path):
    # A temperature of 1e-40 sends logits / T to infinity: the distillation term is NaN at once.
    out = tmp_path / "fit"
    fit = cli_args("fit-exits", *TINY, checkpoint=PARENT, out=out, epochs=2, temperature="1e-40", data_dir=data_dir)
    result = run_training(fit)
    assert result.returncode == 3, result.stderr
    assert "training diverged at epoch 1: loss is nan at batch 1" in result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "fit-exits" and metrics["status"] == "diverged" and metrics["diverged_at"] == 1
    assert "DIVERGED at epoch 1" in (out / "train.log").read_text()


@pytest.mark.slow
def test_early_exits_moved_inside_a_stage_keep_the_parents_backbone_and_final_exit(data_dir, tmp_path):
    """A fourth exit after block 8 (inside stage 2): the backbone and the final exit come over bit for
    bit, the checkpoint reads back with the new layout, and the export's stages follow it."""
    import onnxruntime as ort

    from modelrepo.manifest import load_manifest

    out = tmp_path / "moved"
    assert (
        main(
            cli_args(
                "fit-exits",
                *TINY,
                checkpoint=PARENT,
                epochs="1",
                early_heads="light2",
                early_exits_after=["5", "8", "10"],
                out=out,
                data_dir=data_dir,
            )
        )
        == 0
    )
    model, variant, _, state = checkpoint_model(out / "checkpoint.pt")
    assert model.exit_blocks == variant.exit_blocks == (4, 7, 9, 14) and state["fit"]["exit_blocks"] == [4, 7, 9, 14]
    assert variant.exit_heads == ("light2",) * 3 + ("reslt",)
    parent = torch.load(PARENT, map_location="cpu", weights_only=False)["model"]
    fitted = state["model"]
    backbone = [k for k in parent if not k.startswith("exits.")]
    assert len(backbone) > 100 and all(torch.equal(parent[k], fitted[k]) for k in backbone)
    final = [k for k in parent if k.startswith("exits.2.")]
    assert final and all(torch.equal(parent[k], fitted[k.replace("exits.2.", "exits.3.", 1)]) for k in final)

    mixed = tmp_path / "mixed"  # a fit of the moved exits' own heads keeps their layout
    assert (
        main(
            cli_args(
                "fit-exits",
                *TINY,
                checkpoint=out / "checkpoint.pt",
                mode="mixed",
                epochs="1",
                out=mixed,
                data_dir=data_dir,
            )
        )
        == 0
    )
    assert checkpoint_model(mixed / "checkpoint.pt")[0].exit_blocks == (4, 7, 9, 14)

    repo = tmp_path / "repo"
    assert (
        main(cli_args("export", checkpoint=mixed / "checkpoint.pt", out=repo, data_dir=data_dir, parity_images="200"))
        == 0
    )
    manifest = load_manifest(repo)
    assert len(manifest.stages) == 4 and manifest.variant_config["exit_blocks"] == [4, 7, 9, 14]
    inputs = [
        ort.InferenceSession(str(repo / stage.file), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        for stage in manifest.stages
    ]
    assert [shape[1:] for shape in inputs] == [[3, 32, 32], [16, 32, 32], [32, 16, 16], [32, 16, 16]]


def test_moving_early_exits_is_refused_without_fresh_heads_or_past_the_last_block(data_dir, tmp_path, capsys):
    assert (
        main(
            cli_args(
                "fit-exits",
                *TINY,
                checkpoint=PARENT,
                early_exits_after=["5", "8"],
                out=tmp_path / "a",
                data_dir=data_dir,
            )
        )
        == 2
    )
    assert "--early-heads" in capsys.readouterr().err
    assert (
        main(
            cli_args(
                "fit-exits",
                *TINY,
                checkpoint=PARENT,
                early_heads="light2",
                early_exits_after=["8", "5"],
                out=tmp_path / "b",
                data_dir=data_dir,
            )
        )
        == 2
    )
    assert "early exits after blocks [8, 5]" in capsys.readouterr().err
