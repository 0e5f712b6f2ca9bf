"""MobileNetV2/EfficientNet-style head with one dropout at a chosen head position H1-H7.

The head follows the paper's Figure 4 (Kim et al., section 2.4): 1x1 conv, BN, ReLU6,
global average pool, flatten, Linear classifier, and (optionally) softmax. The body is a
stem and two small inverted-residual blocks (the second with a residual add) and holds no
dropout. The single dropout module is `drop`.

    H1  before head_conv                       DC001 (reaches head_bn through head_conv)
    H2  after head_conv, before head_bn        DC001 (reaches head_bn)
    H3  after head_bn, before head_act         clean (Guideline 2)
    H4  after head_act, before the pool        clean (Guideline 2, the default)
    H5  after pool/flatten, before classifier  DC002 (warning; the usual MobileNetV2 place)
    H6  after classifier, on the logits        DC003 (error)
    H7  after the softmax (forces softmax)     DC003 (error)
    none                                       no dropout

`softmax_output=True` makes `forward` return probabilities; it does not change the verdicts
above. No parameter value triggers DC004-DC007 here.

Audit it:

    dropcheck audit examples/mobilenet_head.py                       # H4: clean
    dropcheck audit examples/mobilenet_head.py -a head_position=H1   # DC001 on drop
    dropcheck audit examples/mobilenet_head.py -a head_position=H5   # DC002 on drop
    dropcheck audit examples/mobilenet_head.py -a head_position=H7   # DC003 on drop
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEAD_POSITIONS = ("none", "H1", "H2", "H3", "H4", "H5", "H6", "H7")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return float(p)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2,
                       groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_ch),
    )
    if act:
        layers["act"] = nn.ReLU6()
    return nn.Sequential(layers)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, linear project 1x1 (+ residual)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = _conv_bn(in_ch, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = _conv_bn(hidden, out_ch, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        # A constructor-time flag, not a tensor test: fx sees one fixed graph.
        return x + out if self.use_residual else out


class MobileNetHead(nn.Module):
    """Tiny MobileNetV2-like network whose head dropout position is chosen at construction."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, head_position: str = "H4", p: float = 0.2,
                 softmax_output: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.head_position = _check_choice("head_position", head_position, HEAD_POSITIONS)
        # Dropout after the softmax only exists if there is a softmax.
        self.softmax_output = bool(softmax_output) or head_position == "H7"
        self.stem = _conv_bn(3, 16, 3, stride=2)
        self.blocks = nn.Sequential(
            _InvertedResidual(16, 24, stride=2, expand=4),
            _InvertedResidual(24, 24, stride=1, expand=2),
        )
        self.head_conv = nn.Conv2d(24, 64, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(64)
        self.head_act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)
        self.drop = nn.Dropout(_check_p(p)) if head_position != "none" else nn.Identity()

    def _at(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x) if slot == self.head_position else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self._at("H1", x)
        x = self.head_conv(x)
        x = self._at("H2", x)
        x = self.head_bn(x)
        x = self._at("H3", x)
        x = self.head_act(x)
        x = self._at("H4", x)
        x = self.flatten(self.pool(x))
        x = self._at("H5", x)
        x = self.classifier(x)
        x = self._at("H6", x)
        if self.softmax_output:
            x = F.softmax(x, dim=1)
        return self._at("H7", x)
