"""The variant table of SPEC §6: one registry of frozen dataclasses, the only place variants differ."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .augment import augmentation_parts
from .losses import BASE_LOSSES, BRANCH_LOSSES, EXIT_LOSSES
from .network import HEADS, check_exit_blocks, stage_end_blocks
from .registry import Registry, UnknownNameError
from .routing import ROUTINGS

# Families of the report, and the variants that are not of its table: the dataset-copy controls
# (erm), the ablations that explain a row, and the product's own recipes, run apart.
FAMILIES = ("simulated", "full_power", "elf", "reslt", "control", "ablation", "product")
# The loss rule a run was trained under (SPEC §4). "per_exit" is the corrected rule of 2026-11-28;
# runs written before it (no exit_losses in their variant record) are "simulated_everywhere".
LOSS_RULE = "per_exit"
OLD_LOSS_RULE = "simulated_everywhere"

SIMULATED_WIDTHS = (16, 32, 48)
FULL_POWER_WIDTHS = (15, 30, 63)
RESNET32_WIDTHS = (16, 32, 64)


@dataclass(frozen=True)
class Reported:
    """The research report's last-epoch test accuracy (percent)."""

    overall: float | None
    many: float | None = None
    medium: float | None = None
    few: float | None = None
    note: str = ""
    diverged_at: int | None = None  # the epoch the report's run diverged at (no accuracy then)

    def summary(self, sep: str = " / ") -> str:
        if self.diverged_at is not None:
            return f"diverged at epoch {self.diverged_at}"
        splits = (
            f" ({sep.join(f'{x:.2f}' for x in (self.many, self.medium, self.few))})" if self.many is not None else ""
        )
        return f"{self.overall:.2f}{splits}"


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # one of FAMILIES
    loss: str  # base loss L (losses.BASE_LOSSES)
    exit_losses: tuple[str, ...]  # per-exit loss (losses.EXIT_LOSSES), one per exit
    routing: str  # routing.ROUTINGS
    augmentation: str  # parts joined by "+" (augment.augmentation_parts)
    exit_heads: tuple[str, ...]  # head kind per exit (network.HEADS)
    widths: tuple[int, int, int]
    train_threshold: float
    infer_threshold: float
    imbalance: int
    reported: dict[int, Reported] = field(default_factory=dict)
    description: str = ""
    # Blocks (0-based, 0..14) the exits follow; None: the ends of the last num_exits stages (SPEC §3).
    exit_blocks: tuple[int, ...] | None = None
    # SAM's neighbourhood radius (optim.py); 0: plain SGD, as every variant of the report.
    sam_rho: float = 0.0
    # SGD's weight decay (SPEC §5: 2e-4); `train` records the variant's in the run's config.
    weight_decay: float = 2e-4

    @property
    def study_eval_every(self) -> int:
        """Epochs between test-set passes in the study's runs: every 5th (in fp32 on a CPU a pass is ~20%
        of an epoch), but every epoch for a variant the report saw diverge, so a collapse is dated."""
        return 1 if any(r.diverged_at is not None for r in self.reported.values()) else 5

    def with_early_heads(self, heads: tuple[str, ...], exit_blocks: tuple[int, ...] | None = None) -> Variant:
        """This variant with other early exit heads (the final one kept), after `exit_blocks` (None: the
        variant's own places); each early exit keeps the first early exit's loss, for the record."""
        return dataclasses.replace(
            self,
            exit_heads=(*heads, self.exit_heads[-1]),
            exit_losses=self.exit_losses[:1] * len(heads) + self.exit_losses[-1:],
            exit_blocks=self.exit_blocks if exit_blocks is None else tuple(exit_blocks),
        )

    def __post_init__(self):
        # Validated against the registries of the modules that implement each name.
        for name, allowed in (("family", FAMILIES), ("loss", BASE_LOSSES.names()), ("routing", ROUTINGS.names())):
            if getattr(self, name) not in allowed:
                raise UnknownNameError(f"variant {self.name!r}: {name} {getattr(self, name)!r} is not one of {allowed}")
        try:
            augmentation_parts(self.augmentation)
        except ValueError as exc:
            raise UnknownNameError(f"variant {self.name!r}: {exc}") from None
        for name, allowed in (("exit_heads", HEADS.names()), ("exit_losses", EXIT_LOSSES.names())):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise UnknownNameError(f"variant {self.name!r}: {name} {bad} not in {allowed}")
        if len(self.exit_losses) != len(self.exit_heads):
            raise ValueError(
                f"variant {self.name!r}: one loss each expected, got heads "
                f"{self.exit_heads} and losses {self.exit_losses}"
            )
        try:
            check_exit_blocks(
                self.exit_blocks if self.exit_blocks is not None else stage_end_blocks(min(len(self.exit_heads), 3)),
                len(self.exit_heads),
            )
        except ValueError as exc:
            raise ValueError(f"variant {self.name!r}: {exc}") from None
        for head, loss in zip(self.exit_heads, self.exit_losses):
            if loss in BRANCH_LOSSES and head != "reslt":
                raise ValueError(f"variant {self.name!r}: the full ResLT loss needs a ResLT head, got {head!r}")
        if len(self.widths) != 3:
            raise ValueError(f"variant {self.name!r}: ResNet-32 has 3 stages, got widths {self.widths}")
        if not 0 <= self.infer_threshold <= 1 or not 0 <= self.train_threshold <= 1:
            raise ValueError(f"variant {self.name!r}: thresholds must lie in [0, 1]")
        if not 0 <= self.weight_decay < 0.1:
            raise ValueError(f"variant {self.name!r}: weight_decay must lie in [0, 0.1), got {self.weight_decay}")
        if self.sam_rho < 0:
            raise ValueError(f"variant {self.name!r}: sam_rho must be >= 0 (0: plain SGD), got {self.sam_rho}")

    @property
    def num_exits(self) -> int:
        return len(self.exit_heads)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["reported"] = {str(k): dataclasses.asdict(v) for k, v in self.reported.items()}
        return d


def _simulated(name, loss, routing, augmentation, thresholds, imbalance, reported, description):
    return Variant(
        name=name,
        family="simulated",
        loss=loss,
        exit_losses=("simulated", "simulated", "reslt"),
        routing=routing,
        augmentation=augmentation,
        exit_heads=("light", "light", "reslt"),
        widths=SIMULATED_WIDTHS,
        train_threshold=thresholds[0],
        infer_threshold=thresholds[1],
        imbalance=imbalance,
        reported=reported,
        description=description,
    )


def _full_power(name, loss, routing, imbalance, reported, description):
    """The simulated variant's recipe with a ResLT head at every exit, on the wider network."""
    thresholds = (0.9, 0.5) if loss == "ce" else (0.5, 0.5)
    simulated = _simulated(name, loss, routing, "autoaugment", thresholds, imbalance, reported, description)
    full = {"exit_losses": ("reslt",) * 3, "exit_heads": ("reslt",) * 3, "widths": FULL_POWER_WIDTHS}
    return dataclasses.replace(simulated, family="full_power", **full)


R = Reported
VARIANTS = Registry("variant")


def register(variant: Variant) -> Variant:
    return VARIANTS.register(variant.name)(variant)


# The registrations below are kept as written, a variant to a few lines: the formatter would put
# each of a variant's fields on a line of its own, and a table of them is easier to compare.
# fmt: off
for _v in (
    _simulated("model1", "ce", "accumulative", "autoaugment", (0.9, 0.5), 100, {100: R(56.90)},
               "accumulative hybrid, CE"),
    _simulated("model2", "ldam", "accumulative", "autoaugment", (0.2, 0.25), 100, {100: R(64.94)},
               "accumulative hybrid, LDAM, low training threshold"),
    _simulated("model3", "ldam", "accumulative", "autoaugment", (0.8, 0.25), 100, {100: R(68.09)},
               "accumulative hybrid, LDAM, high training threshold"),
    _simulated("model4", "ldam", "routed", "autoaugment", (0.5, 0.5), 100,
               {100: R(None, diverged_at=111)}, "routed hybrid, LDAM"),
    _full_power("model5", "ldam", "accumulative", 100, {100: R(60.26, 29.33, 57.10, 85.83)},
                "full power (ResLT head at every exit), LDAM, accumulative"),
    _full_power("model6", "ce", "accumulative", 100, {100: R(62.71, 79.80, 56.00, 54.80)},
                "full power, CE, accumulative"),
    _simulated("model7", "ce", "routed", "autoaugment", (0.9, 0.5), 100,
               {100: R(78.99, 92.63, 72.43, 73.67)}, "routed hybrid, CE"),
    _simulated("model8", "ce", "routed", "mixup", (0.9, 0.5), 100,
               {100: R(79.59, 90.40, 69.93, 78.72), 50: R(82.89, 89.90, 75.97, 82.83),
                10: R(85.77, 83.63, 76.43, 94.38)}, "routed hybrid, CE, Mixup"),
    _full_power("model14", "ce", "routed", 100,
                {100: R(78.94, 93.00, 72.30, 73.38), 50: R(83.36, 92.30, 75.83, 82.30),
                 10: R(89.32, 90.27, 81.93, 93.62)}, "full power, CE, routed"),
    Variant(name="elf", family="elf", loss="ce", exit_losses=("plain",) * 3, routing="accumulative",
            augmentation="autoaugment", exit_heads=("light", "light", "linear"), widths=RESNET32_WIDTHS,
            train_threshold=0.9, infer_threshold=0.5, imbalance=100,
            reported={100: R(72.29), 50: R(76.74), 10: R(82.67)},
            description="ELF baseline: ResNet-32 with light early exits, accumulative CE"),
    Variant(name="reslt", family="reslt", loss="ce", exit_losses=("reslt",), routing="routed",
            augmentation="autoaugment", exit_heads=("reslt",), widths=FULL_POWER_WIDTHS,
            train_threshold=1.0, infer_threshold=1.0, imbalance=100,
            reported={100: R(75.33), 50: R(80.14), 10: R(86.78)},
            description="ResLT baseline: ResNet-32 + ResLT head, no early exit"),
    # Control, not of the report: measures this dataset copy against He et al. (IF 1: 92.49) and
    # LDAM-DRW's ERM (IF 100: 70.36).
    Variant(name="erm", family="control", loss="ce_plain", exit_losses=("plain",), routing="routed",
            augmentation="basic", exit_heads=("linear",), widths=RESNET32_WIDTHS,
            train_threshold=1.0, infer_threshold=1.0, imbalance=100,
            reported={1: R(92.49, note="He et al. 2016"), 100: R(70.36, note="LDAM-DRW's ERM")},
            description="control: plain ResNet-32, CE without label smoothing, crop + flip"),
):
    register(_v)

# Models 12/13 and 15/16 are models 8 and 14 at other imbalance factors.
for _base, _alias, _if in (("model8", "model12", 50), ("model8", "model13", 10),
                           ("model14", "model15", 50), ("model14", "model16", 10)):
    _b = VARIANTS.get(_base)
    register(dataclasses.replace(_b, name=_alias, imbalance=_if, description=f"{_base} at IF {_if}"))

# Ablations of model8: run at IF 100 beside it to explain its row, not rows of the table.
register(dataclasses.replace(
    VARIANTS.get("model8"), name="model8-linear", family="ablation", exit_heads=("light", "light", "linear"),
    exit_losses=("simulated", "simulated", "plain"), reported={},
    description="ablation: model8 with a plain linear final head and plain CE (label smoothing) instead "
                "of the ResLT head and loss: what the ResLT head adds on our copy"))
register(dataclasses.replace(
    VARIANTS.get("model8"), name="model8-reslt-official", family="ablation",
    exit_losses=("simulated", "simulated", "reslt_official"), reported={},
    description="ablation: model8 with the ResLT loss as the official ResLT code writes it (branch masks "
                "classes 2-9 and 4-9, alpha 0.95)"))

# The product's first candidate recipe (measured: results/DEFAULT_MODEL.md): model8's network and Mixup with
# the anchors' long-tail tools. Logit-adjusted CE (Balanced Softmax at tau 1) instead of CE; every
# exit trained from the first epoch (joint routing: routed training never trains the early
# exits), the early ones self-distilled from the final exit; the deeper light2 early heads, which
# made fitted exits leave earlier on models/default.
register(dataclasses.replace(
    VARIANTS.get("model8"), name="hybrid-lt", family="product", loss="logit_adjusted",
    exit_heads=("light2", "light2", "reslt"), exit_losses=("distilled", "distilled", "reslt"),
    routing="joint", reported={},
    description="product candidate: model8's network + logit-adjusted loss, exits trained jointly from "
                "the start and distilled from the final exit, light2 early heads"))


# hybrid-lt measured (H200 to epoch 173, held-out training images, scripts in results/DEFAULT_MODEL.md):
# the logit-adjusted loss balances the ResLT head's H branch (73.6% alone), but the M and T branches,
# which see only medium / few classes, keep their low logits for the head classes, so their sum
# favours the tail (60.9%; the head classes get 0-5% of the predictions). With CE (model8) H's head
# bias cancels theirs. So with a balanced loss the final head is one linear classifier, and the early
# exits' label loss drops the simulated split weights too (distilled_plain).
register(dataclasses.replace(
    VARIANTS.get("hybrid-lt"), name="hybrid-la", exit_heads=("light2", "light2", "linear"),
    exit_losses=("distilled_plain", "distilled_plain", "plain"),
    description="product candidate: hybrid-lt with a linear final head and unweighted distillation "
                "(logit adjustment already balances; ResLT's branches and split weights would favour "
                "the tail twice)"))

# The same with a fourth exit inside stage 2, after its third block (whether an exit
# between exit 1 (0.42 of the full MACs) and exit 2 (0.80) buys MACs).
register(dataclasses.replace(
    VARIANTS.get("hybrid-lt"), name="hybrid-lt-mid", exit_heads=("light2",) * 3 + ("reslt",),
    exit_losses=("distilled",) * 3 + ("reslt",), exit_blocks=(4, 7, 9, 14),
    description="product candidate: hybrid-lt with a fourth exit inside stage 2 (after block 8 of 15)"))

# The same trained with SAM: the anchors' largest single gain on CIFAR-10-LT IF 100
# (CE + DRW + SAM 80.6, LDAM-DRW + SAM 81.9, ResNet-32, 200 epochs). rho 0.5 is their CE + DRW
# setting, the nearest to a logit-adjusted CE; not tuned here. Each step costs two passes.
register(dataclasses.replace(
    VARIANTS.get("hybrid-lt"), name="hybrid-lt-sam", sam_rho=0.5,
    description="product candidate: hybrid-lt trained with SAM (rho 0.5), two forward-backward passes a step"))


# hybrid-lt and hybrid-la measured (results/DEFAULT_MODEL.md): jointly trained, distilled exits were
# the best early exits so far (exit 1 +5 to +7 points over fitted ones), while model8's final exit,
# CE under ResLT's head, stayed the most accurate after re-balancing. So: model8's loss and final
# head as they are, with hybrid-lt's jointly trained, distilled light2 exits.
register(dataclasses.replace(
    VARIANTS.get("hybrid-lt"), name="hybrid-ce", loss=VARIANTS.get("model8").loss,
    description="product candidate: model8's loss and ResLT head (CE, Mixup) with hybrid-lt's exits, "
                "trained jointly from the start and distilled from the final exit"))

# The shipped recipe (hybrid-lt-mid) with what the strongest published ResNet-32 / 200-epoch
# CIFAR-10-LT results share and it lacks: Cutout (BCL, ProCo), AutoAugment + Cutout beside Mixup
# (BalPoE runs AutoAugment with Mixup), weight decay 5e-4 (MiSLAS's recommendation for CIFAR-LT).
# Chosen between on held-out training images, by the rule that chose the shipped model.
for name, change, why in (
        ("hybrid-lt-mid-cutout", {"augmentation": "mixup+cutout"}, "with Cutout (one 16x16 square per image)"),
        ("hybrid-lt-mid-aa", {"augmentation": "autoaugment+cutout+mixup"},
         "with AutoAugment (CIFAR-10 policy) and Cutout per image, Mixup per batch"),
        ("hybrid-lt-mid-wd", {"weight_decay": 5e-4}, "with weight decay 5e-4 instead of 2e-4")):
    register(dataclasses.replace(VARIANTS.get("hybrid-lt-mid"), name=name,
                                 description=f"product candidate: the shipped recipe {why}", **change))
# fmt: on


def get_variant(name: str) -> Variant:
    """The registered variant; UnknownNameError (a ValueError) naming the known ones."""
    return VARIANTS.get(name)


def all_variants() -> list[Variant]:
    return VARIANTS.values()


def loss_rule(variant_record: dict) -> str:
    """The SPEC §4 loss rule a saved variant record (config.json, checkpoint) was trained under."""
    return LOSS_RULE if "exit_losses" in variant_record else OLD_LOSS_RULE
