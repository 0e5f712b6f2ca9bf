"""A small U-Net: double convs with BatchNorm, max-pool down, transposed-conv up, concatenation skips.

Read before running: the dropout in the bottleneck (`self.dropout`, after bottleneck's double
conv) reaches up2's BatchNorms through the decoder (DC001; the skips are concatenations, not
merges). The only place after which no BatchNorm follows is the input of the final 1x1 conv.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class SmallUNet(nn.Module):
    input_shape = (1, 3, 32, 32)

    def __init__(self, in_ch=3, n_classes=2, base=8):
        super().__init__()
        self.down1 = DoubleConv(in_ch, base)
        self.down2 = DoubleConv(base, base * 2)
        self.bottleneck = DoubleConv(base * 2, base * 4)
        self.dropout = nn.Dropout2d(0.5)
        self.up1 = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)
        self.dec1 = DoubleConv(base * 4, base * 2)
        self.up2 = nn.ConvTranspose2d(base * 2, base, 2, stride=2)
        self.dec2 = DoubleConv(base * 2, base)
        self.final = nn.Conv2d(base, n_classes, 1)

    def forward(self, x):
        x1 = self.down1(x)
        x2 = self.down2(F.max_pool2d(x1, 2))
        x3 = self.bottleneck(F.max_pool2d(x2, 2))
        x3 = self.dropout(x3)
        y = self.dec1(torch.cat([self.up1(x3), x2], dim=1))
        y = self.dec2(torch.cat([self.up2(y), x1], dim=1))
        return self.final(y)
