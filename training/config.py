"""A run's resolved configuration: the SPEC §5 recipe plus the run's own choices."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

REFERENCE_EPOCHS = 200
REFERENCE_MILESTONES = (160, 180)
# Data path and speed options (TrainConfig fields). The reference path is the plain fp32 one.
REFERENCE_PATH = {"data_path": "reference", "amp": False, "channels_last": False, "compile": "off"}
# The CPU fast path, `train`'s default on a CPU: batched augmentation in the training process, bf16
# autocast, channels-last; eager, since torch.compile made the bf16 step slower on this project's
# CPU (benchmarks/train_epoch_throughput.py). Channels-last only where every stage width is a
# multiple of CHANNELS_LAST_MULTIPLE: on the 15/30/63 networks it made BatchNorm 2-4x slower and
# the step 1.4-1.85x slower than bf16 in NCHW (results/BENCHMARKS.md). bf16 only on a CPU with bf16
# instructions (AVX512-BF16 or AMX): without them PyTorch emulates it, and a model8 step took 10x
# its fp32 time (AMD EPYC with AVX2 only); there the fast path keeps fp32.
CPU_FAST_PATH = {"data_path": "device", "amp": True, "channels_last": True, "compile": "off"}
CHANNELS_LAST_MULTIPLE = 16
# The GPU fast path's `train` flags: data on the device, bf16, channels-last, CUDA graphs.
FAST_PATH_FLAGS = ("--data-path", "device", "--amp", "--channels-last", "--compile", "reduce-overhead")
# The paths the report names (any other combination is spelled out as flags). The names are the
# flags' and mean the same on any device: `cpu-fast` is the CPU default, also where a GPU ran it.
NAMED_PATHS = {
    "reference": REFERENCE_PATH,
    "cpu-fast": CPU_FAST_PATH,
    "cpu-fast (NCHW)": {**CPU_FAST_PATH, "channels_last": False},
    "cpu-fast (fp32)": {**CPU_FAST_PATH, "amp": False},
    "cpu-fast (fp32, NCHW)": {**CPU_FAST_PATH, "amp": False, "channels_last": False},
}


def path_flags(path: dict) -> list[str]:
    """The `train` flags that select a data path and speed options, spelled out in full so that they
    mean the same on any device."""
    return [
        "--data-path",
        path["data_path"],
        "--amp" if path["amp"] else "--no-amp",
        "--channels-last" if path["channels_last"] else "--no-channels-last",
        "--compile",
        path["compile"],
    ]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (what makes bf16 autocast pay on a CPU)."""
    import torch  # noqa: PLC0415 (config is read without torch elsewhere)

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def default_path(device_type: str, widths, bf16: bool | None = None) -> dict:
    """The path `train` takes when no path flag is given: the CPU fast path on a CPU (bf16 where
    the CPU has it, channels-last for networks whose widths suit it), the reference path elsewhere."""
    if device_type != "cpu":
        return REFERENCE_PATH
    return {
        **CPU_FAST_PATH,
        "amp": cpu_has_bf16() if bf16 is None else bf16,
        "channels_last": all(w % CHANNELS_LAST_MULTIPLE == 0 for w in widths),
    }


@dataclass(frozen=True, kw_only=True)
class RunLimits:
    """What every run's config has, a first stage's and a second stage's: its seed, and the caps
    that make a smoke run of it (None: the whole set; every epoch's batches)."""

    seed: int = 0
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    max_batches: int | None = None
    eval_batch_size: int = 500


@dataclass(frozen=True)
class TrainConfig(RunLimits):
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
    checkpoint_every: int = 5
    # Epochs between per-epoch evaluations (the curve and the collapse check); the last epoch is
    # always evaluated. On a CPU in fp32 one test-set pass is ~20% of an epoch.
    eval_every: int = 1
    collapse_share: float = 0.99  # predictions this concentrated on one class = collapsed
    threshold: float | None = None  # inference threshold override (None: the variant's)
    data_path: str = "reference"  # "reference": DataLoader + PIL; "device": uint8 batches on the device
    amp: bool = False  # bf16 autocast for forward and loss
    channels_last: bool = False
    compile: str = "off"  # torch.compile mode of the network (compilation.COMPILE_MODES)
    # What each epoch is evaluated on: "test", or "heldout" (training images the long-tailed set
    # left out, calibration.heldout_split) for pilot runs that choose a recipe without the test set.
    eval_split: str = "test"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def path(self) -> dict:
        return {k: getattr(self, k) for k in REFERENCE_PATH}

    def path_name(self) -> str:
        """A name of NAMED_PATHS, or the flags of any other combination."""
        return next((n for n, p in NAMED_PATHS.items() if p == self.path()), " ".join(self.path_flags()))

    def path_flags(self) -> list[str]:
        return path_flags(self.path())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
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
    return config.lr * config.lr_decay**steps
