"""A face-embedding net (ArcFace style): residual trunk, BN-ReLU, global pool, dropout,
embedding Linear, BatchNorm1d. The model returns the normalised embedding.

Read before running: `self.dropout` comes after global pooling (DC002, H5) and reaches
`self.features` (BatchNorm1d) through the embedding Linear (DC001). Before the pool (H4) it
still reaches `features`; after `features` no weight layer follows. Unfixable: every place
reaches the BatchNorm1d `features`.
"""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return x + out


class FaceEmbedding(nn.Module):
    input_shape = (2, 3, 32, 32)

    def __init__(self, embedding_size=16):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.layer1 = Block(16)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(16, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        x = torch.relu(self.bn(x))
        x = torch.flatten(self.pool(x), 1)
        x = self.fc(self.dropout(x))
        return self.features(x)
