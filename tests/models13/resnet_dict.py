"""A ResNet returning a dict of logits and pre-pool feature maps (as detection/segmentation
backbones do), with the classifier's dropout on the logits (DC003, H6).

Read before running: `self.dropout` drops the logits (DC003). It moves before the pool (H4): on the
edge into the mean only, so the returned feature map `"features"` (the mean's input) stays as it
was. `layer1/dropout` (F.dropout before the block's bn2, DC001) moves to P6 before conv2.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.conv2(F.relu(self.bn2(out)))
        return x + out


class DictResNet(nn.Module):
    input_shape = (2, 3, 16, 16)

    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layer1 = BasicBlock(8)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        feats = F.relu(self.bn(self.layer1(self.stem(x))))
        logits = self.dropout(self.fc(feats.mean((2, 3))))
        return {"logits": logits, "features": feats}
