"""PreResNet (ResNetV2) with one dropout per residual block at a chosen position P0-P7.

Shows every block-level verdict of the paper's Figure 2 (Kim et al., section 2.3), plus the
head positions H3-H6 of section 2.4. Exactly one `nn.Dropout` per block, named `drop`
(ids `stages.<stage>.<block>.drop`), and optionally one in the head (`head_drop`).

Basic block (`block="basic"`), BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut:

    P0  block input, before the split (both branch and shortcut see it)  DC001 (trunk: reaches bn1,
                                                                        and later blocks' BNs)
    P1  branch, before bn1                                              DC001 (reaches bn1)
    P2  after bn1, before relu                                          DC001 (reaches bn2)
    P3  after relu, before conv1                                        DC001 (reaches bn2)
    P4  after conv1, before bn2                                         DC001 (reaches bn2)
    P5  after bn2, before relu        (Guideline 1)                     clean
    P6  after relu, before conv2      (Guideline 1, the default)        clean
    P7  after conv2, end of branch    (PostDropout, Proposition 2)      DC005 (info)
    none                                                               no dropout in blocks

Bottleneck block (`block="bottleneck"`), three BN-ReLU-conv pipelines (1x1, 3x3, 1x1):
P0 block input (DC001), P1 before bn1 (DC001), P2 after bn1 (DC001), P3 after relu1 before
conv1 (DC001), P4 after conv2 before bn3, i.e. the weight before the last BN (DC001),
P5 after bn3 (clean), P6 after relu3 before conv3, the paper's bottleneck guideline (clean),
P7 after conv3 (DC005 info).

Head (`head_position`), BN-ReLU-GAP-flatten-Linear, dropout `head_drop`:

    H3  after the head BN, before ReLU       (Guideline 2)   clean
    H4  after ReLU, before global pool       (Guideline 2)   clean
    H5  after pool/flatten, before the fc                    DC002 (warning)
    H6  after the fc, on the logits                          DC003 (error)
    none                                                     no head dropout (default)

No parameter value triggers DC004, DC006 or DC007 here (one dropout per branch, all of
them modules that `forward` calls).

Audit it:

    dropcheck audit examples/preresnet.py                      # P6: clean
    dropcheck audit examples/preresnet.py -a position=P3       # DC001 x3
    dropcheck audit examples/preresnet.py -a position=P0       # DC001 x3 (trunk)
    dropcheck audit examples/preresnet.py -a position=P7       # DC005 x3 (info)
    dropcheck audit examples/preresnet.py -a block=bottleneck -a position=P4   # DC001 x3
    dropcheck audit examples/preresnet.py -a head_position=H5  # DC002 on head_drop
    dropcheck audit examples/preresnet.py -a head_position=H6  # DC003 on head_drop
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BLOCK_POSITIONS = ("none", "P0", "P1", "P2", "P3", "P4", "P5", "P6", "P7")
HEAD_POSITIONS = ("none", "H3", "H4", "H5", "H6")
BLOCK_TYPES = ("basic", "bottleneck")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return float(p)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    # Projection only where shapes change; it sees the raw block input x.
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class _SlotBlock(nn.Module):
    """A block whose single dropout `drop` is applied at one named slot chosen at build time."""

    def __init__(self, position: str, p: float) -> None:
        super().__init__()
        self.position = _check_choice("position", position, BLOCK_POSITIONS)
        # Only the chosen slot is an nn.Dropout; "none" keeps an Identity that is never called.
        self.drop = nn.Dropout(_check_p(p)) if position != "none" else nn.Identity()

    def _at(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        # A Python-level choice fixed at construction, so fx traces one plain graph.
        return self.drop(x) if slot == self.position else x


class _PreActBasic(_SlotBlock):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a shortcut on the raw input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, position: str, p: float) -> None:
        super().__init__(position, p)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._at("P0", x)
        out = self._at("P1", x)
        out = self.bn1(out)
        out = self._at("P2", out)
        out = self.relu(out)
        out = self._at("P3", out)
        out = self.conv1(out)
        out = self._at("P4", out)
        out = self.bn2(out)
        out = self._at("P5", out)
        out = self.relu(out)
        out = self._at("P6", out)
        out = self.conv2(out)
        out = self._at("P7", out)
        return out + self.shortcut(x)


class _PreActBottleneck(_SlotBlock):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 with a shortcut on the raw input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, position: str, p: float) -> None:
        super().__init__(position, p)
        if out_ch % 4:
            raise ValueError(f"bottleneck width must be divisible by 4, got {out_ch}")
        mid = out_ch // 4
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._at("P0", x)
        out = self._at("P1", x)
        out = self.bn1(out)
        out = self._at("P2", out)
        out = self.relu(out)
        out = self._at("P3", out)
        out = self.conv1(out)
        out = self.relu(self.bn2(out))
        out = self.conv2(out)
        out = self._at("P4", out)
        out = self.bn3(out)
        out = self._at("P5", out)
        out = self.relu(out)
        out = self._at("P6", out)
        out = self.conv3(out)
        out = self._at("P7", out)
        return out + self.shortcut(x)


def _stage(block_cls: type[_SlotBlock], in_ch: int, out_ch: int, n: int, stride: int,
           position: str, p: float) -> nn.Sequential:
    # Only the first block of a stage changes width/resolution.
    layers = [block_cls(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, position, p)
              for i in range(n)]
    return nn.Sequential(*layers)


class PreResNet(nn.Module):
    """Small CIFAR-style PreResNet; dropout position fixed at construction."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, position: str = "P6", p: float = 0.2, block: str = "basic",
                 blocks: Sequence[int] = (1, 1, 1), widths: Sequence[int] = (16, 32, 64),
                 head_position: str = "none", head_p: float = 0.2,
                 num_classes: int = 10) -> None:
        super().__init__()
        _check_choice("position", position, BLOCK_POSITIONS)
        _check_choice("block", block, BLOCK_TYPES)
        self.head_position = _check_choice("head_position", head_position, HEAD_POSITIONS)
        blocks, widths = tuple(blocks), tuple(widths)
        if len(blocks) != len(widths) or not blocks or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"blocks and widths must be equal-length positive sequences, "
                             f"got blocks={blocks}, widths={widths}")
        block_cls = _PreActBasic if block == "basic" else _PreActBottleneck

        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        stages, in_ch = [], widths[0]
        for i, (n, out_ch) in enumerate(zip(blocks, widths)):
            stages.append(_stage(block_cls, in_ch, out_ch, n, 1 if i == 0 else 2, position, p))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)

        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        self.head_drop = nn.Dropout(_check_p(head_p)) if head_position != "none" else nn.Identity()

    def _head_at(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        return self.head_drop(x) if slot == self.head_position else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.bn(x)
        x = self._head_at("H3", x)
        x = self.relu(x)
        x = self._head_at("H4", x)
        x = self.flatten(self.pool(x))
        x = self._head_at("H5", x)
        x = self.fc(x)
        return self._head_at("H6", x)
