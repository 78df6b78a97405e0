"""`models/<name>/manifest.json`: one pydantic model, written by export, validated by the server.

A model directory holds manifest.json and stage_1.onnx .. stage_K.onnx. Stage k takes the
previous stage's feature map (stage 1: the normalised N x 3 x 32 x 32 image) and returns the next
feature map (all stages but the last) and the exit's probabilities, max probability and argmax.
The batch axis is dynamic. Bump FORMAT_VERSION's major part on any incompatible change.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION = "1.4"  # 1.1: logit adjustment, per-exit thresholds, report threshold, sweep; 1.2: tau per stage;
# 1.3: calibration with a confidence margin on the drop; 1.4: the recipe's other seeds
MANIFEST = "manifest.json"


class ManifestError(RuntimeError):
    """A model directory that cannot be served; the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    shape: list[int | str]  # "N" for the dynamic batch axis
    dtype: Literal["float32", "int64"]


class StageSpec(_Strict):
    index: int = Field(ge=1)
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: TensorSpec
    features: TensorSpec | None  # None for the last stage
    probabilities: TensorSpec
    confidence: TensorSpec
    class_id: TensorSpec
    backbone_macs: int = Field(ge=0)
    head_macs: int = Field(ge=0)
    cumulative_macs: int = Field(gt=0)
    share_of_full: float = Field(gt=0, le=1)


class InputSpec(_Strict):
    height: int = 32
    width: int = 32
    channels: int = 3
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"
    resize: Literal["bilinear"] = "bilinear"
    scale: float = 1 / 255  # uint8 pixel -> [0, 1] before normalisation
    mean: list[float]
    std: list[float]


Probability = Annotated[float, Field(ge=0, le=1)]


class Thresholds(_Strict):
    train: Probability
    # The server's default: one for every exit, or one per early exit (K - 1 numbers).
    inference: Probability | list[Probability]
    report: Probability | None = None  # the research report's inference threshold, for comparison


class LogitAdjustment(_Strict):
    """Baked into the stages: stage k's probabilities = softmax(logits - tau_k * log prior)."""

    tau: float = Field(ge=0)  # the last stage's (every stage's when stage_taus is absent, as in 1.1)
    class_counts: list[int]
    subtracted: list[float]  # the last stage's tau * log prior
    stage_taus: list[Annotated[float, Field(ge=0)]] | None = None  # 1.2: one per stage

    def taus(self, num_stages: int) -> list[float]:
        return list(self.stage_taus) if self.stage_taus is not None else [self.tau] * num_stages


class SplitAccuracy(_Strict):
    overall: float
    many: float | None
    medium: float | None
    few: float | None


class ExitMetrics(SplitAccuracy):
    exit: int
    cumulative_macs: int


class OperatingPoint(SplitAccuracy):
    threshold: float | list[float]
    exit_distribution: list[float]
    mean_macs_share: float
    # Per early exit: share of the images leaving there whose class equals the final exit's (None:
    # no image left there). The offline reference for the server's elf_exit_agreement_total.
    agreement: list[float | None] = []


class TestMetrics(SplitAccuracy):
    threshold: float | list[float]
    images: int
    exit_distribution: list[float]
    mean_macs: float
    mean_macs_share: float
    agreement: list[float | None] = []
    per_exit: list[ExitMetrics]  # each exit alone
    at_report_threshold: OperatingPoint | None = None
    # The accuracy-vs-MACs curve, thresholds 0, 0.05, ..., 1 (1: full depth, see exit_rule.py).
    sweep: list[OperatingPoint] = []


class FitRecord(_Strict):
    mode: Literal["frozen", "mixed"]
    epochs: int
    parent_sha256: str


class RebalanceRecord(_Strict):
    epochs: int
    smooth_head: float
    smooth_tail: float
    parent_sha256: str


class Provenance(_Strict):
    seed: int
    epochs: int
    trained_epochs: int
    trained_on: str
    training_date: str | None
    exported_at: str
    code_version: str
    torch: str
    onnx_opset: int
    parity_max_abs_diff: float
    loss_rule: str | None = None  # SPEC §4: "per_exit" (corrected rule) or "simulated_everywhere"
    fit: FitRecord | None = None  # set when the early exits were fitted afterwards (fit-exits)
    rebalance: RebalanceRecord | None = None  # 1.2: set when the classifiers were re-balanced afterwards


class Calibration(_Strict):
    """How thresholds.inference was chosen, when export calibrated it (held-out training images)."""

    max_drop: float
    # 1.3: the drop's one-sided upper confidence bound at this level was held within max_drop
    # (None: older manifests, where the point estimate was)
    drop_confidence: float | None = None
    threshold_mode: Literal["single", "per-exit", "auto"] = "single"
    tau: float = 0.0  # the final exit's
    tau_mode: Literal["shared", "per-exit"] = "shared"  # per-exit: each exit's own tau (1.2)
    heldout_images: int
    heldout_classes: list[int]
    heldout_accuracy: float
    final_exit_accuracy: float  # after the logit adjustment
    final_exit_accuracy_unadjusted: float | None = None
    mean_macs_share: float


class SeedResult(_Strict):
    """One training seed of a model's recipe, exported and calibrated as the model was: the test set
    at that seed's own default thresholds, and its final exit alone."""

    seed: int
    accuracy: float
    mean_macs_share: float
    final_exit_accuracy: float


class Manifest(_Strict):
    format_version: str = FORMAT_VERSION
    name: str
    variant: str
    variant_config: dict
    training_config: dict
    imbalance: int
    class_names: list[str]
    splits: dict[str, list[int]]
    input: InputSpec
    thresholds: Thresholds
    logit_adjustment: LogitAdjustment | None = None
    stages: list[StageSpec]
    full_macs: int
    metrics: TestMetrics
    provenance: Provenance
    calibration: Calibration | None = None
    # 1.4: the same recipe at every seed measured, this model's included, in seed order (None: one seed)
    seeds: list[SeedResult] | None = None

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise ValueError(
                f"format_version {self.format_version} is not supported "
                f"(this code reads {FORMAT_VERSION.split('.')[0]}.x)"
            )
        if [s.index for s in self.stages] != list(range(1, len(self.stages) + 1)):
            raise ValueError("stages must be numbered 1..K in order")
        if not self.stages or self.stages[-1].features is not None:
            raise ValueError("the last stage must not return a feature map")
        if any(s.features is None for s in self.stages[:-1]):
            raise ValueError("every stage but the last must return a feature map")
        if len(self.metrics.exit_distribution) != len(self.stages):
            raise ValueError("metrics.exit_distribution needs one entry per stage")
        inference = self.thresholds.inference
        if isinstance(inference, list) and len(inference) != len(self.stages) - 1:
            raise ValueError("per-exit thresholds.inference needs one number per early exit")
        shift = self.logit_adjustment
        if (
            shift is not None
            and shift.stage_taus is not None
            and (len(shift.stage_taus) != len(self.stages) or shift.stage_taus[-1] != shift.tau)
        ):
            raise ValueError("logit_adjustment.stage_taus needs one tau per stage, the last equal to tau")
        if self.full_macs != self.stages[-1].cumulative_macs:
            raise ValueError("full_macs must equal the last stage's cumulative_macs")
        if self.seeds is not None:
            numbers = [s.seed for s in self.seeds]
            if len(set(numbers)) != len(numbers) or len(numbers) < 2 or self.provenance.seed not in numbers:
                raise ValueError("seeds needs two or more different seeds, this model's among them")
        return self


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(model_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Read and validate a model directory's manifest; check its stage files and their hashes."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: missing (a model directory needs {MANIFEST} and its stage files)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ManifestError(
            f"{path}: invalid manifest at {where}: {first['msg']} ({exc.error_count()} problem(s))"
        ) from None
    if verify_files:
        for stage in manifest.stages:
            file = model_dir / stage.file
            if not file.is_file():
                raise ManifestError(f"{file}: missing stage file named in {path}")
            if sha256_file(file) != stage.sha256:
                raise ManifestError(f"{file}: sha256 differs from {path} (corrupt or replaced file)")
    return manifest


def json_schema() -> dict:
    schema = Manifest.model_json_schema()
    schema["title"] = f"elf-reslt model manifest, format {FORMAT_VERSION}"
    return schema
