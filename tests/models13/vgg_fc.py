"""A LeNet/VGG-style CNN: conv-BN-ReLU-pool stages, flatten, then Linear-Dropout-BatchNorm1d-ReLU-Linear.

Read before running: the F.dropout after the second conv stage (p=0.25, before the flatten) reaches
fc_bn through fc1, and `self.drop` (p=0.5) between fc1 and fc_bn reaches it directly: DC001 for
both, no residual merge anywhere. The place after which no BatchNorm follows is after fc_bn and
its ReLU, before fc2: both go there, as one dropout (self.drop) with the larger p, 0.5.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallVGG(nn.Module):
    input_shape = (2, 1, 28, 28)

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc_bn = nn.BatchNorm1d(128)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.dropout(x, 0.25, training=self.training)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc_bn(self.drop(self.fc1(x))))
        return self.fc2(x)
