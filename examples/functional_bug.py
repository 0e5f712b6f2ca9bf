"""Two recurring PyTorch dropout bugs: always-on functional dropout and a dead module.

`forward` calls `F.dropout(x, self.p)` without `training=self.training`. `F.dropout`
defaults to `training=True`, so this dropout stays on after `model.eval()` and evaluation
outputs are random. Its place is otherwise the good one (after the last BN-ReLU, before
the global pool: the paper's H4, Guideline 2), so the only problem is the bug:

    /dropout   the functional dropout in the root module's forward   DC006 (error)
    dropout    `self.dropout = nn.Dropout(0.5)`, declared in         DC007 (warning)
               __init__ but never called in forward: the author
               believes dropout is on at p=0.5, yet it never runs

No other rule fires, for any parameter value (`p` only sets the functional dropout's rate).

Audit it:

    dropcheck audit examples/functional_bug.py        # DC006 on /dropout, DC007 on dropout
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FunctionalDropoutNet(nn.Module):
    """conv-BN-ReLU x2, always-on F.dropout, GAP, Linear; plus an unused nn.Dropout."""

    input_shape = (2, 3, 32, 32)

    def __init__(self, p: float = 0.3, num_classes: int = 10) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)  # BUG (DC007): declared, never called in forward
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = F.dropout(x, self.p)  # BUG (DC006): no training=self.training, on in eval too
        return self.fc(self.flatten(self.pool(x)))
