"""User-style models whose forward branches on shapes (plain fx cannot trace them): benchmarks/capture_mechanisms.py."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class AudioCNN(nn.Module):
    """Takes (batch, time) or (batch, 1, time)."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 32, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(32)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv1d(32, 64, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.drop(x)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool1d(x, 1).view(x.size(0), -1)
        return self.fc(x)


class CRNN(nn.Module):
    def __init__(self, hidden=32, n_classes=5):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.2)
        self.cell = nn.GRUCell(16, hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x):
        b = x.size(0)
        x = self.drop(F.relu(self.bn(self.conv(x))))
        h = torch.zeros(b, self.hidden)
        for t in range(x.size(2)):
            h = self.cell(x[:, :, t], h)
        return self.out(h)


class PointNet(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 64, 1)
        self.bn1 = nn.BatchNorm1d(64)
        self.fc1 = nn.Linear(64, 32)
        self.dropout = nn.Dropout(p=0.4)
        self.bn2 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, k)

    def forward(self, x):
        batchsize = x.size()[0]
        iden = torch.eye(2).view(1, 4).repeat(batchsize, 1)
        if x.is_cuda:
            iden = iden.cuda()
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.max(x, 2, keepdim=True)[0].view(-1, 64)
        x = F.relu(self.bn2(self.dropout(self.fc1(x))))
        return self.fc2(x) + iden
