"""An audio-tagging CNN on log-mel spectrograms: conv-BN-ReLU blocks, a channel dropout, global
average pooling, a linear classifier.

Read before running: `self.drop` is an nn.Dropout2d right before the global pool, with no weight
layer in between: it masks whole channels that the pool then averages, so its variance is H5's
(Proposition 5). With `head_drop=True` a second Dropout2d, `self.post_drop`, sits after the pool
on the (N, C, 1, 1) map (H5, DC002): fix moves it before the pool, where it becomes element-wise.
"""
import torch
from torch import nn


class AudioCNN(nn.Module):
    input_shape = (2, 1, 32, 32)

    def __init__(self, n_classes=6, head_drop=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.drop = nn.Dropout2d(0.2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = head_drop
        self.post_drop = nn.Dropout2d(0.3)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        x = self.block2(self.block1(x))
        x = self.pool(self.drop(x))
        if self.head_drop:
            x = self.post_drop(x)
        return self.fc(x.flatten(1))
