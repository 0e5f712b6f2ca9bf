"""A small pre-activation ResNet that returns (logits, features), as people do for metric
learning or distillation.

Read before running: `self.drop` after the pool (DC002, H5) affects only the logits. Before the
pool it would also drop the returned features, so there is no H4 place for it: unfixable.
`layer1.drop` before bn2 in the block (DC001, P3) moves to P6 before conv2 (both outputs,
as before).
"""
import torch
from torch import nn


class PreActBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.drop = nn.Dropout(0.2)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.drop(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + x


class ResNetWithFeatures(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = PreActBlock(16)
        self.bn = nn.BatchNorm2d(16)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer1(self.conv1(x))
        x = torch.relu(self.bn(x))
        features = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(self.drop(features))
        return logits, features
