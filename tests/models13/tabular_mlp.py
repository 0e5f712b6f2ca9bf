"""A tabular MLP: Linear-BatchNorm1d-ReLU-Dropout blocks, then the output layer.

Read before running: drop1 and drop2 reach bn2 and bn3 (DC001, no residual merge anywhere);
drop3 feeds the output layer with no BatchNorm after it (clean). Fix: drop1 and drop2 go to
drop3's place, before `out`, where drop3 already is.
"""
import torch
from torch import nn


class TabularMLP(nn.Module):
    input_shape = (4, 20)

    def __init__(self, n_features=20, hidden=64, n_classes=3, p=0.3):
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.drop2 = nn.Dropout(p)
        self.fc3 = nn.Linear(hidden, hidden)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.drop3 = nn.Dropout(0.2)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x):
        x = self.drop1(torch.relu(self.bn1(self.fc1(x))))
        x = self.drop2(torch.relu(self.bn2(self.fc2(x))))
        x = self.drop3(torch.relu(self.bn3(self.fc3(x))))
        return self.out(x)
