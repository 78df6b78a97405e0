"""CIFAR ResNet-32 backbone with one exit per stage (SPEC §3), or exits after chosen blocks.

Stage k = (stem +) 5 basic blocks, then exit k. Exits are:
  light  - 3x3 conv stride 2 (C -> 2C) + BN + ReLU, global average pool, classifier.
           ELF-style early exit: about 1.2M MACs, under 2% of ResNet-32.
  light2 - two such convs (C -> 2C -> 4C, each stride 2): a deeper early exit for fit-exits,
           about 2.4M MACs; more receptive field and capacity on early feature maps.
  linear - global average pool + classifier (the plain ResNet head).
  reslt  - ResLT head: grouped 1x1 conv (groups=3) + BN + ReLU, three C/3-channel branches,
           each pooled and classified; prediction = logits_H + logits_M + logits_T.
Classifier: Linear for CE, NormedLinear (cosine, scaled by s) for LDAM. The model outputs the
scaled logits, so softmax, the exit rule and the exported probabilities all see what the loss sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .constants import NUM_CLASSES
from .registry import Registry

HEADS = Registry("exit head")

BLOCKS_PER_STAGE = 5
LDAM_SCALE = 30.0


@dataclass
class ExitOutput:
    logits: torch.Tensor  # N x C, what softmax and the loss see
    branches: torch.Tensor | None = None  # 3 x N x C for a ResLT head (H, M, T)


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW, multiplied by a fixed scale."""

    def __init__(self, in_features: int, out_features: int, scale: float = LDAM_SCALE):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1))
        self.weight.data.renorm_(2, 1, 1e-5).mul_(1e5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


def make_classifier(in_features: int, classifier: str, num_classes: int) -> nn.Module:
    if classifier == "linear":
        return nn.Linear(in_features, num_classes)
    if classifier == "normed":
        return NormedLinear(in_features, num_classes)
    raise ValueError(f"unknown classifier {classifier!r}; expected 'linear' or 'normed'")


class BasicBlock(nn.Module):
    """Basic block with LDAM's parameter-free shortcut, padding exactly out - in channels."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad != (0, 0):
            x = F.pad(x, (0, 0, 0, 0, *self.pad))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@HEADS.register("light")
class LightHead(nn.Module):
    def __init__(self, channels: int, classifier: str, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)
        self.fc = make_classifier(2 * channels, classifier, num_classes)

    def forward(self, x: torch.Tensor) -> ExitOutput:
        x = F.relu(self.bn(self.conv(x)))
        return ExitOutput(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@HEADS.register("light2")
class DeepLightHead(nn.Module):
    def __init__(self, channels: int, classifier: str, num_classes: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * channels, 4 * channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(4 * channels),
            nn.ReLU(inplace=True),
        )
        self.fc = make_classifier(4 * channels, classifier, num_classes)

    def forward(self, x: torch.Tensor) -> ExitOutput:
        return ExitOutput(self.fc(torch.flatten(F.adaptive_avg_pool2d(self.convs(x), 1), 1)))


@HEADS.register("linear")
class LinearHead(nn.Module):
    def __init__(self, channels: int, classifier: str, num_classes: int):
        super().__init__()
        self.fc = make_classifier(channels, classifier, num_classes)

    def forward(self, x: torch.Tensor) -> ExitOutput:
        return ExitOutput(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


@HEADS.register("reslt")
class ResLTHead(nn.Module):
    def __init__(self, channels: int, classifier: str, num_classes: int):
        super().__init__()
        if channels % 3:
            raise ValueError(f"a ResLT head needs channels divisible by 3, got {channels}")
        self.conv = nn.Conv2d(channels, channels, 1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.fcs = nn.ModuleList(make_classifier(channels // 3, classifier, num_classes) for _ in range(3))

    def forward(self, x: torch.Tensor) -> ExitOutput:
        x = F.relu(self.bn(self.conv(x)))
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        groups = pooled.chunk(3, dim=1)
        branches = torch.stack([fc(g) for fc, g in zip(self.fcs, groups)])
        return ExitOutput(branches.sum(0), branches)


def make_head(kind: str, channels: int, classifier: str, num_classes: int) -> nn.Module:
    return HEADS.get(kind)(channels, classifier, num_classes)


def stage_end_blocks(num_exits: int) -> tuple[int, ...]:
    """The blocks (0-based, 0..14) that exits follow by default: the ends of the last stages."""
    return tuple(BLOCKS_PER_STAGE * (s + 1) - 1 for s in range(3 - num_exits, 3))


class EarlyExitResNet(nn.Module):
    """ResNet-32 whose exits each follow a block: by default the ends of the last len(exit_heads)
    stages (one head = the final exit only); `exit_blocks` may place one inside a stage, e.g.
    (4, 7, 9, 14) adds an exit after stage 2's third block."""

    def __init__(
        self,
        widths=(16, 32, 48),
        exit_heads=("light", "light", "reslt"),
        classifier: str = "linear",
        num_classes: int = NUM_CLASSES,
        exit_blocks=None,
    ):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"ResNet-32 has 3 stages; got widths {widths}")
        self.exit_blocks = tuple(exit_blocks) if exit_blocks is not None else stage_end_blocks(len(exit_heads))
        check_exit_blocks(self.exit_blocks, len(exit_heads))
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.exit_channels = tuple(widths[b // BLOCKS_PER_STAGE] for b in self.exit_blocks)
        self.exits = nn.ModuleList(
            make_head(kind, channels, classifier, num_classes) for kind, channels in zip(exit_heads, self.exit_channels)
        )
        for m in self.modules():
            init_weights(m)

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def blocks(self):
        """(global block index, block) in order."""
        for i, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                yield i * BLOCKS_PER_STAGE + b, block

    def segments(self) -> list[nn.Module]:
        """Backbone pieces between exits: segment k maps exit k-1's feature map to exit k's."""
        pieces, current = [], [self.stem]
        for index, block in self.blocks():
            current.append(block)
            if index in self.exit_blocks:
                pieces.append(nn.Sequential(*current))
                current = []
        return pieces

    def forward(self, x: torch.Tensor) -> list[ExitOutput]:
        x = self.stem(x)
        outputs = []
        for index, block in self.blocks():
            x = block(x)
            if index in self.exit_blocks:
                outputs.append(self.exits[len(outputs)](x))
        return outputs


def check_exit_blocks(exit_blocks: tuple[int, ...], num_exits: int) -> None:
    """1 to 4 exits, after increasing blocks, the last one after the network's last block."""
    last = 3 * BLOCKS_PER_STAGE - 1
    if not 1 <= num_exits <= 4 or len(exit_blocks) != num_exits:
        raise ValueError(f"1 to 4 exits with one block each expected; got {num_exits} heads after blocks {exit_blocks}")
    if list(exit_blocks) != sorted(set(exit_blocks)) or exit_blocks[-1] != last or exit_blocks[0] < 0:
        raise ValueError(f"exit blocks must increase and end at block {last}; got {exit_blocks}")


def init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def build_model(variant) -> EarlyExitResNet:
    return EarlyExitResNet(
        widths=variant.widths,
        exit_heads=variant.exit_heads,
        classifier="normed" if variant.loss == "ldam" else "linear",
        exit_blocks=variant.exit_blocks,
    )
