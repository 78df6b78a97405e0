"""Staged ONNX export (SPEC §7): one graph per exit stage plus manifest.json.

Export refuses to write a model whose ONNX Runtime outputs differ from PyTorch on real test
images by more than PARITY_TOLERANCE (max abs probability). Files are written into a temporary
directory beside the target and renamed into place only once everything checked out.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelrepo import model_card
from modelrepo.manifest import MANIFEST, Manifest, SeedResult, TestMetrics, sha256_file

from . import logit_adjust, runinfo
from .augment import normalize_batch
from .checkpoint import write_json
from .constants import CLASS_NAMES, MEAN, SPLITS, STD
from .data import Split
from .errors import TrainingError
from .evaluation import early_exit_metrics, exit_probabilities
from .macs import exit_costs
from .variants import loss_rule

OPSET = 17
PARITY_TOLERANCE = 1e-4
BATCH = "N"
SWEEP = np.round(np.linspace(0, 1, 21), 2)  # the manifest's accuracy-vs-MACs curve


class ExportError(TrainingError):
    """The model cannot be exported (target in the way, ONNX Runtime disagreeing with PyTorch)."""


class Stage(nn.Module):
    """Backbone segment k + exit k, with its logit adjustment, softmax, max and argmax in the graph."""

    def __init__(self, segment: nn.Module, head: nn.Module, last: bool, adjustment: torch.Tensor):
        super().__init__()
        self.segment, self.head, self.last = segment, head, last
        self.register_buffer("adjustment", adjustment.float().view(1, -1))

    def forward(self, x):
        features = self.segment(x)
        probs = (self.head(features).logits - self.adjustment).softmax(dim=1)
        confidence, class_id = probs.max(dim=1)
        if self.last:
            return probs, confidence, class_id
        return features, probs, confidence, class_id


def stage_modules(model, adjustments: torch.Tensor) -> list[Stage]:
    """adjustments: K x C, row k subtracted from exit k's logits."""
    segments = model.segments()
    # In eval mode from the start: the exporter restores a module's mode afterwards, and a Stage
    # left in train mode would switch the model's BN layers to training (and update their stats).
    return [
        Stage(seg, head, k == len(segments) - 1, adjustments[k]).eval()
        for k, (seg, head) in enumerate(zip(segments, model.exits))
    ]


def _output_names(last: bool) -> list[str]:
    return (
        ["probabilities", "confidence", "class_id"] if last else ["features", "probabilities", "confidence", "class_id"]
    )


def export_stage(stage: Stage, example: torch.Tensor, path: Path) -> torch.Tensor | None:
    names = _output_names(stage.last)
    dynamic = {"input": {0: BATCH}, **{n: {0: BATCH} for n in names}}
    with warnings.catch_warnings():  # the TorchScript exporter's notes on strided slices
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            stage,
            (example,),
            str(path),
            input_names=["input"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    with torch.no_grad():
        return None if stage.last else stage(example)[0]


def onnx_exit_probabilities(paths: list[Path], x: np.ndarray, batch: int = 500) -> list[np.ndarray]:
    """Every stage's probabilities for every image through ONNX Runtime on the CPU, `batch` images
    at a time (a first stage's feature maps are 64 KiB an image)."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in paths]
    chunks = [[] for _ in sessions]
    for i in range(0, len(x), batch):
        features = x[i : i + batch]
        for session, chunk in zip(sessions, chunks):
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": features})))
            chunk.append(outputs["probabilities"])
            features = outputs.get("features")
    return [np.concatenate(chunk) for chunk in chunks]


def _tensor(name, shape, dtype="float32") -> dict:
    return {"name": name, "shape": [BATCH, *shape], "dtype": dtype}


def export_model(
    model,
    variant,
    config,
    state: dict,
    test: Split,
    out: Path,
    name: str,
    parity_images: int = 1000,
    threshold: float | None = None,
    calibration: dict | None = None,
    seed_models: dict[Path, Manifest] | None = None,
) -> Manifest:
    """Write out/ (stage_k.onnx + manifest.json + MODEL_CARD.md) for a trained model; returns the
    manifest. The manifest's test metrics are those of the graphs written, run by ONNX Runtime,
    once they agree with PyTorch on `parity_images` test images. `seed_models`: exported models of
    the same recipe at other seeds (folder -> manifest), recorded beside this one in `seeds`."""
    model = model.cpu().eval()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; remove it or choose another --out")
    if calibration is not None:
        threshold = calibration["threshold"]
    threshold = variant.infer_threshold if threshold is None else threshold
    taus = calibration.get("taus", [calibration["tau"]] * model.num_exits) if calibration else [0.0] * model.num_exits
    counts = calibration["class_counts"] if calibration is not None else state.get("class_counts")
    adjustments = (
        logit_adjust.stage_adjustments(counts, taus) if any(taus) else torch.zeros(model.num_exits, len(CLASS_NAMES))
    )
    costs = exit_costs(model)
    if seed_models:  # before the graphs are written and measured: another recipe is refused at once
        record = {
            "variant": variant.name,
            "imbalance": config.imbalance,
            "training_config": config.to_dict(),
            "provenance": provenance(config, state, 0.0),
            "calibration": calibration,
        }
        check_recipe(record, config.seed, seed_models)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stages = write_stages(model, adjustments, costs, tmp)
        probs = onnx_exit_probabilities(
            [tmp / stage["file"] for stage in stages], normalize_batch(test.images).numpy(), config.eval_batch_size
        )
        diff = parity(model, adjustments, test.subset(np.arange(min(parity_images, len(test)))), probs)
        probs = torch.from_numpy(np.stack(probs))
        metrics = early_exit_metrics(probs, test.labels, threshold, costs)
        # The same model's curve: the report's threshold, and each threshold of a sweep (1.0 = full depth).
        at_report = early_exit_metrics(probs, test.labels, variant.infer_threshold, costs)
        sweep = [early_exit_metrics(probs, test.labels, float(t), costs) for t in SWEEP]
        manifest = Manifest.model_validate(
            {
                "name": name,
                "variant": variant.name,
                "variant_config": variant.to_dict(),
                "training_config": config.to_dict(),
                "imbalance": config.imbalance,
                "class_names": list(CLASS_NAMES),
                "splits": {k: list(v) for k, v in SPLITS.items()},
                "input": {"mean": list(MEAN), "std": list(STD)},
                "thresholds": {
                    "train": variant.train_threshold,
                    "inference": threshold,
                    "report": variant.infer_threshold,
                },
                "logit_adjustment": None
                if not any(taus)
                else {
                    "tau": taus[-1],
                    "class_counts": list(counts),
                    "subtracted": adjustments[-1].tolist(),
                    "stage_taus": taus,
                },
                "stages": stages,
                "full_macs": costs[-1]["cumulative_macs"],
                "metrics": TestMetrics(
                    **metrics.operating_point().model_dump(),
                    images=metrics.images,
                    mean_macs=metrics.mean_macs,
                    per_exit=metrics.per_exit,
                    at_report_threshold=at_report.operating_point(),
                    sweep=[m.operating_point() for m in sweep],
                ),
                "provenance": provenance(config, state, diff),
                "calibration": None if calibration is None else {k: calibration[k] for k in CALIBRATION_RECORD},
            }
        )
        if seed_models:
            manifest = manifest.model_copy(update={"seeds": seed_results(manifest, seed_models)})
        write_json(manifest.model_dump(mode="json"), tmp / MANIFEST)
        model_card.write(tmp, manifest)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def write_stages(model, adjustments: torch.Tensor, costs: list[dict], folder: Path) -> list[dict]:
    """stage_k.onnx into `folder` for every exit; the manifest's record of each."""
    stages, x = [], normalize_batch(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    for k, stage in enumerate(stage_modules(model, adjustments), start=1):
        path = folder / f"stage_{k}.onnx"
        features = export_stage(stage, x, path)
        stages.append(
            {
                "index": k,
                "file": path.name,
                "sha256": sha256_file(path),
                "input": _tensor("input", list(x.shape[1:])),
                "features": None if features is None else _tensor("features", list(features.shape[1:])),
                "probabilities": _tensor("probabilities", [len(CLASS_NAMES)]),
                "confidence": _tensor("confidence", []),
                "class_id": _tensor("class_id", [], "int64"),
                **costs[k - 1],
            }
        )
        x = features
    return stages


def parity(model, adjustments: torch.Tensor, split: Split, onnx_probs: list[np.ndarray]) -> float:
    """The largest difference between PyTorch's and ONNX Runtime's probabilities on `split` (the
    first images of those `onnx_probs` holds); ExportError beyond PARITY_TOLERANCE."""
    torch_probs = exit_probabilities(model, split, adjustment=adjustments).numpy()
    diff = max(float(np.abs(o[: len(split)] - t).max()) for o, t in zip(onnx_probs, torch_probs))
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree on {len(split)} test images: max abs "
            f"probability difference {diff:.2e} > {PARITY_TOLERANCE:.0e}; nothing written"
        )
    return diff


CALIBRATION_RECORD = (
    "max_drop",
    "drop_confidence",
    "threshold_mode",
    "tau",
    "tau_mode",
    "heldout_images",
    "heldout_classes",
    "heldout_accuracy",
    "final_exit_accuracy",
    "final_exit_accuracy_unadjusted",
    "mean_macs_share",
)
# How the thresholds were chosen, as opposed to what the choice found
CALIBRATION_RULE = {"max_drop", "drop_confidence", "threshold_mode", "tau_mode", "heldout_images", "heldout_classes"}


def check_recipe(record: dict, seed: int, others: dict[Path, Manifest]) -> None:
    """ExportError unless every other model is this export's recipe (`record`: its manifest's
    variant, imbalance, training_config, provenance and calibration, in JSON form) at a seed of its own."""
    seen = {seed}
    ours = recipe(record)
    for folder, other in others.items():
        theirs = recipe(other.model_dump(mode="json"))
        differences = [
            f"{k} {ours.get(k)!r} / {theirs.get(k)!r}" for k in ours | theirs if ours.get(k) != theirs.get(k)
        ]
        if differences:
            raise ExportError(f"{folder}: not this model's recipe at another seed ({'; '.join(differences)})")
        if other.provenance.seed in seen:
            raise ExportError(f"{folder}: seed {other.provenance.seed} is there twice")
        seen.add(other.provenance.seed)


def recipe(record: dict) -> dict:
    """What two seeds of one recipe share, from a manifest in JSON form: all but the seed and what the
    run and its calibration found."""
    record = json.loads(json.dumps(record))  # tuples as lists, as a manifest read back has them
    prov, calibration = record["provenance"], record.get("calibration")
    return {
        "variant": record["variant"],
        "imbalance": record["imbalance"],
        **{f"training {k}": v for k, v in record["training_config"].items() if k != "seed"},
        **{
            stage: None if prov.get(stage) is None else {k: v for k, v in prov[stage].items() if k != "parent_sha256"}
            for stage in ("fit", "rebalance")
        },
        "calibration": None if calibration is None else {k: calibration.get(k) for k in sorted(CALIBRATION_RULE)},
    }


def seed_results(manifest: Manifest, others: dict[Path, Manifest]) -> list[SeedResult]:
    """`manifest`'s recipe at each seed, its own included, in seed order (others: checked by check_recipe)."""
    seeds = {m.provenance.seed: m for m in (manifest, *others.values())}
    return [
        SeedResult(
            seed=seed,
            accuracy=m.metrics.overall,
            mean_macs_share=m.metrics.mean_macs_share,
            final_exit_accuracy=m.metrics.per_exit[-1].overall,
        )
        for seed, m in sorted(seeds.items())
    ]


def provenance(config, state: dict, parity_diff: float) -> dict:
    """Where the exported weights come from: the run, its second stages, the code and tools."""
    return {
        "seed": config.seed,
        "epochs": config.epochs,
        "trained_epochs": int(state.get("epoch", 0)),
        "trained_on": state.get("provenance", {}).get("device", "unknown"),
        "training_date": state.get("provenance", {}).get("date"),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "code_version": runinfo.git_revision(),
        "torch": torch.__version__,
        "onnx_opset": OPSET,
        "parity_max_abs_diff": parity_diff,
        "loss_rule": loss_rule(state.get("variant", {})),
        "fit": None
        if "fit" not in state
        else {
            "mode": state["fit"]["config"]["mode"],
            "epochs": state["fit"]["epoch"],
            "parent_sha256": state["fit"]["parent"]["sha256"],
        },
        "rebalance": None
        if "rebalance" not in state
        else {
            "epochs": state["rebalance"]["epoch"],
            "smooth_head": state["rebalance"]["config"]["smooth_head"],
            "smooth_tail": state["rebalance"]["config"]["smooth_tail"],
            "parent_sha256": state["rebalance"]["parent"]["sha256"],
        },
    }
