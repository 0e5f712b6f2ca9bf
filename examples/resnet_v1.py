"""ResNetV1 (post-activation) with one dropout per residual block at a chosen position.

The original ResNet block is conv-BN-ReLU-conv-BN, add the shortcut, then ReLU. Its branch
ends in a BN, so the paper's Guideline 1 puts the dropout at the end of the branch, after
the last BN and before the add (section 3.1, "Other Models"). Each block holds one
`nn.Dropout` named `drop` (ids `stages.<stage>.<block>.drop`); the head has none.

    after_conv1  after conv1, before bn1                  DC001 (reaches bn1)
    after_relu1  after the first ReLU, before conv2       DC001 (reaches bn2 through conv2)
    end          after bn2, before the add (default)      clean (the guideline for ResNetV1)
    after_add    after add+ReLU, on the trunk             DC001 for every block that another
                 block follows (reaches the next block's bn1, and its shortcut BN where it
                 projects); the last block's dropout (`stages.2.0.drop` by default) reaches
                 no BN: it sits where the head's H4 would, before the global pool (clean)
    none         no dropout

No parameter value triggers DC002-DC007 here.

Audit it:

    dropcheck audit examples/resnet_v1.py                          # end: clean
    dropcheck audit examples/resnet_v1.py -a position=after_conv1  # DC001 x3
    dropcheck audit examples/resnet_v1.py -a position=after_relu1  # DC001 x3
    dropcheck audit examples/resnet_v1.py -a position=after_add    # DC001 on stages.0.0.drop
                                                                   # and stages.1.0.drop
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

POSITIONS = ("none", "after_conv1", "after_relu1", "end", "after_add")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return float(p)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    # ResNetV1 projection: 1x1 conv + BN on the raw block input.
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
        bn=nn.BatchNorm2d(out_ch),
    ))


class _BasicV1(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU; one dropout slot chosen at build time."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, position: str, p: float) -> None:
        super().__init__()
        self.position = _check_choice("position", position, POSITIONS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.drop = nn.Dropout(_check_p(p)) if position != "none" else nn.Identity()

    def _at(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        # Python-level choice, so fx traces one plain graph per position.
        return self.drop(x) if slot == self.position else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self._at("after_conv1", out)
        out = self.relu(self.bn1(out))
        out = self._at("after_relu1", out)
        out = self.bn2(self.conv2(out))
        out = self._at("end", out)
        out = self.relu(out + self.shortcut(x))
        return self._at("after_add", out)


class ResNetV1(nn.Module):
    """Small CIFAR-style ResNetV1 with GAP-flatten-Linear head (no head dropout)."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, position: str = "end", p: float = 0.2,
                 blocks: Sequence[int] = (1, 1, 1), widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10) -> None:
        super().__init__()
        _check_choice("position", position, POSITIONS)
        blocks, widths = tuple(blocks), tuple(widths)
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"blocks and widths must be equal-length positive sequences, "
                             f"got blocks={blocks}, widths={widths}")
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(widths[0]),
            relu=nn.ReLU(),
        ))
        stages, in_ch = [], widths[0]
        for i, (n, out_ch) in enumerate(zip(blocks, widths)):
            first_stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[
                _BasicV1(in_ch if j == 0 else out_ch, out_ch, first_stride if j == 0 else 1,
                         position, p)
                for j in range(n)
            ]))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.flatten(self.pool(x)))
