"""DenseNet with torchvision-style dropout on each dense layer's new features.

Each dense layer is BN-ReLU-conv1x1-BN-ReLU-conv3x3, then `drop` (an `nn.Dropout`) on the
new feature maps, then `torch.cat([x, new], 1)`. Concatenation is not a residual merge: the
dropped channels go on, unmixed, into the BN of every later layer of the block, the
transition's BN, and for the last block the head's `norm`. So with p > 0 every dropout
(`blocks.<b>.layers.<l>.drop`, six with the defaults) triggers DC001 (error); the last
layer's `blocks.1.layers.2.drop` reaches the head `norm`. With `p=0.0` the layers hold no
dropout and the model is clean. No parameter value triggers DC002-DC007 here.

Audit it:

    dropcheck audit examples/densenet.py              # DC001 x6
    dropcheck audit examples/densenet.py -a p=0.0     # clean (no dropout)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    return float(p)


class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3, dropout on the new features, concatenated to x."""

    def __init__(self, in_ch: int, growth: int, p: float) -> None:
        super().__init__()
        mid = 4 * growth  # DenseNet-B bottleneck width
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        # p == 0 means "no dropout", as in torchvision's DenseNet.
        self.drop = nn.Dropout(_check_p(p)) if p > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu(self.norm1(x)))
        new = self.conv2(self.relu(self.norm2(new)))
        new = self.drop(new)
        return torch.cat([x, new], 1)


class _DenseBlock(nn.Module):
    def __init__(self, in_ch: int, growth: int, n_layers: int, p: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _DenseLayer(in_ch + i * growth, growth, p) for i in range(n_layers)
        )
        self.out_ch = in_ch + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool between dense blocks (halves channels and resolution)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    """Tiny DenseNet-BC: stem, dense blocks with transitions, BN-ReLU-GAP-Linear head."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, p: float = 0.2, growth: int = 8,
                 layers_per_block: Sequence[int] = (3, 3), num_classes: int = 10) -> None:
        super().__init__()
        _check_p(p)
        layers_per_block = tuple(layers_per_block)
        if not layers_per_block or min(layers_per_block) < 1 or growth < 1:
            raise ValueError(f"need positive growth and layers_per_block, got growth={growth}, "
                             f"layers_per_block={layers_per_block}")
        ch = 2 * growth
        self.stem = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        blocks, transitions = [], []
        for i, n in enumerate(layers_per_block):
            block = _DenseBlock(ch, growth, n, p)
            blocks.append(block)
            ch = block.out_ch
            if i < len(layers_per_block) - 1:
                transitions.append(_Transition(ch, ch // 2))
                ch //= 2
        self.blocks = nn.ModuleList(blocks)
        self.transitions = nn.ModuleList(transitions)
        self.norm = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        # Blocks and transitions interleave; the last block has no transition.
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        x = self.relu(self.norm(x))
        return self.fc(self.flatten(self.pool(x)))
