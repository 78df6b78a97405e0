"""A run's resolved configuration: the SPEC §5 recipe plus the run's own choices."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

REFERENCE_EPOCHS = 200
REFERENCE_MILESTONES = (160, 180)
# The GPU fast path's `train` flags: data on the device, bf16, channels-last, CUDA graphs.
FAST_PATH_FLAGS = ("--data-path", "device", "--amp", "--channels-last", "--compile", "reduce-overhead")


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    imbalance: int
    epochs: int = REFERENCE_EPOCHS
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = REFERENCE_MILESTONES  # epochs (0-based) where lr is x0.1
    lr_decay: float = 0.1
    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    max_batches: int | None = None
    checkpoint_every: int = 5
    eval_batch_size: int = 500
    collapse_share: float = 0.99  # predictions this concentrated on one class = collapsed
    threshold: float | None = None  # inference threshold override (None: the variant's)
    data_path: str = "reference"  # "reference": DataLoader + PIL; "device": uint8 batches on the device
    amp: bool = False  # bf16 autocast for forward and loss
    channels_last: bool = False
    compile: str = "off"  # torch.compile mode of the network (compilation.COMPILE_MODES)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def path_flags(self) -> list[str]:
        """The `train` flags that select this run's data path and speed options (empty: reference)."""
        flags = [] if self.data_path == "reference" else ["--data-path", self.data_path]
        flags += ["--amp"] * self.amp + ["--channels-last"] * self.channels_last
        return flags + ([] if self.compile == "off" else ["--compile", self.compile])

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["milestones"] = tuple(d.get("milestones", REFERENCE_MILESTONES))
        return cls(**d)


def epoch_seed(seed: int, epoch: int) -> int:
    """Every random draw of an epoch derives from (seed, epoch), so a resumed epoch repeats."""
    return seed * 100_003 + epoch


def scaled_milestones(epochs: int) -> tuple[int, ...]:
    """The recipe's 160/180 of 200 epochs, kept at the same fractions for shorter runs."""
    return tuple(round(m * epochs / REFERENCE_EPOCHS) for m in REFERENCE_MILESTONES)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based `epoch`: linear warm-up, then step decay at the milestones."""
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    steps = sum(epoch >= m for m in config.milestones)
    return config.lr * config.lr_decay ** steps
