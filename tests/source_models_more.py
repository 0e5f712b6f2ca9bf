"""More models written the way people write them, as source text, for tests/test_source_fix_models.py:
a CIFAR DenseNet-BC with `drop_rate`, a CIFAR MobileNetV2, and a model that returns its features."""

# DenseNet-BC for CIFAR (Huang et al.; the dense layer as torchvision writes it): the dropout is the
# last op of each bottleneck, before the concatenation, so the next layer's bn1 normalises it.
DENSENET_BC = '''"""DenseNet-BC for CIFAR-10."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, in_planes, growth_rate, drop_rate=0.0):
        super(Bottleneck, self).__init__()
        inter_planes = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter_planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_planes)
        self.conv2 = nn.Conv2d(inter_planes, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_planes, out_planes):
        super(Transition, self).__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x):
        out = self.conv(F.relu(self.bn(x)))
        out = F.avg_pool2d(out, 2)
        return out


class DenseNet(nn.Module):
    def __init__(self, depth=100, growth_rate=12, reduction=0.5, num_classes=10, drop_rate=0.0):
        super(DenseNet, self).__init__()
        n = (depth - 4) // 6  # bottleneck layers per dense block
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, planes, kernel_size=3, padding=1, bias=False)

        self.dense1 = self._make_dense(planes, growth_rate, n, drop_rate)
        planes += n * growth_rate
        out_planes = int(math.floor(planes * reduction))
        self.trans1 = Transition(planes, out_planes)
        planes = out_planes

        self.dense2 = self._make_dense(planes, growth_rate, n, drop_rate)
        planes += n * growth_rate
        out_planes = int(math.floor(planes * reduction))
        self.trans2 = Transition(planes, out_planes)
        planes = out_planes

        self.dense3 = self._make_dense(planes, growth_rate, n, drop_rate)
        planes += n * growth_rate

        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def _make_dense(self, in_planes, growth_rate, n, drop_rate):
        layers = []
        for i in range(n):
            layers.append(Bottleneck(in_planes + i * growth_rate, growth_rate, drop_rate))
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.dense3(out)
        out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 8)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def densenet_bc(drop_rate=0.2):
    """A small DenseNet-BC (depth 16: two bottlenecks per block), as in a quick CIFAR experiment."""
    return DenseNet(depth=16, growth_rate=6, drop_rate=drop_rate)


INPUT_SHAPE = (2, 3, 32, 32)
'''

# MobileNetV2 for CIFAR (stride 1 in the stem and the second stage, as the CIFAR versions do):
# inverted residual blocks with a linear bottleneck, ReLU6, a 1x1 conv-bn-relu6 head, and dropout
# after the global pool, before the classifier (H5).
MOBILENET_V2 = '''"""MobileNetV2 for CIFAR-10."""
import torch.nn as nn
import torch.nn.functional as F


class InvertedResidual(nn.Module):
    """expand + depthwise + pointwise (linear bottleneck)"""

    def __init__(self, in_planes, out_planes, expansion, stride):
        super(InvertedResidual, self).__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.use_res_connect = stride == 1 and in_planes == out_planes

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.use_res_connect:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    # (expansion, out_planes, num_blocks, stride)
    cfg = [(1, 16, 1, 1),
           (6, 24, 2, 1),  # stride 2 -> 1 for CIFAR10
           (6, 32, 3, 2),
           (6, 64, 4, 2),
           (6, 96, 3, 1),
           (6, 160, 3, 2),
           (6, 320, 1, 1)]

    def __init__(self, num_classes=10, width_mult=1.0, dropout=0.2):
        super(MobileNetV2, self).__init__()
        self.cfg = [(t, int(c * width_mult), n, s) for t, c, n, s in self.cfg]
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layers = self._make_layers(in_planes=32)
        last = self.cfg[-1][1]
        self.conv2 = nn.Conv2d(last, 1280, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(1280, num_classes)

    def _make_layers(self, in_planes):
        layers = []
        for expansion, out_planes, num_blocks, stride in self.cfg:
            strides = [stride] + [1] * (num_blocks - 1)
            for stride in strides:
                layers.append(InvertedResidual(in_planes, out_planes, expansion, stride))
                in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu6(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu6(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        out = self.dropout(out)  # regularise the classifier
        out = self.linear(out)
        return out


def mobilenet_v2(num_classes=10):
    return MobileNetV2(num_classes=num_classes, width_mult=0.25)


INPUT_SHAPE = (2, 3, 32, 32)
'''

# a classifier that also returns its pooled features (for a metric-learning loss, t-SNE plots, ...):
# the dropout after the pool drops only what goes into the classifier, never the features returned
WITH_FEATURES = '''import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class EmbeddingNet(nn.Module):
    def __init__(self, width=16, num_classes=10, drop_rate=0.3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.stem(x)))
        out = self.block2(self.block1(out))
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.fc(self.drop(features))
        return logits, features


INPUT_SHAPE = (2, 3, 16, 16)
'''

# EfficientNet-B0 for CIFAR, as the re-implementations that follow the TensorFlow code write it:
# MBConv with squeeze-and-excitation, swish written out as `x * torch.sigmoid(x)`, drop connect
# (per-sample stochastic depth) on the residual path, a conv-bn-swish head, dropout after the pool (H5).
EFFICIENTNET_B0 = '''"""EfficientNet-B0 for CIFAR-10."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def round_filters(filters, width_mult):
    return int(max(8, int(filters * width_mult + 4) // 8 * 8))


def round_repeats(repeats, depth_mult):
    return int(math.ceil(depth_mult * repeats))


def drop_connect(inputs, p, training):
    """Drop whole samples of the residual branch (stochastic depth)."""
    if not training:
        return inputs
    keep_prob = 1 - p
    random_tensor = keep_prob + torch.rand([inputs.shape[0], 1, 1, 1], dtype=inputs.dtype, device=inputs.device)
    binary_tensor = torch.floor(random_tensor)
    return inputs / keep_prob * binary_tensor


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeeze_channels):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.expand = nn.Conv2d(squeeze_channels, channels, kernel_size=1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.reduce(s)
        s = s * torch.sigmoid(s)
        s = self.expand(s)
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    def __init__(self, in_channels, out_channels, expand_ratio, kernel_size, stride, se_ratio=0.25,
                 drop_connect_rate=0.0):
        super().__init__()
        channels = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self.expand_conv = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
            self.bn0 = nn.BatchNorm2d(channels)
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size=kernel_size, stride=stride,
                                        padding=kernel_size // 2, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels, max(1, int(in_channels * se_ratio)))
        self.project_conv = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.swish = Swish()
        self.id_skip = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, inputs):
        x = inputs
        if self.has_expansion:
            x = self.swish(self.bn0(self.expand_conv(x)))
        x = self.swish(self.bn1(self.depthwise_conv(x)))
        x = self.se(x)
        x = self.bn2(self.project_conv(x))
        if self.id_skip:
            if self.drop_connect_rate:
                x = drop_connect(x, p=self.drop_connect_rate, training=self.training)
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    # expand_ratio, channels, repeats, stride, kernel_size (stride 1 in the first stages for 32x32 images)
    blocks_args = [
        (1, 16, 1, 1, 3),
        (6, 24, 2, 1, 3),
        (6, 40, 2, 2, 5),
        (6, 80, 3, 2, 3),
        (6, 112, 3, 1, 5),
        (6, 192, 4, 2, 5),
        (6, 320, 1, 1, 3),
    ]

    def __init__(self, width_mult=1.0, depth_mult=1.0, dropout_rate=0.2, drop_connect_rate=0.2, num_classes=10):
        super().__init__()
        stem = round_filters(32, width_mult)
        self.conv_stem = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(stem)
        total = sum(round_repeats(n, depth_mult) for _, _, n, _, _ in self.blocks_args)
        blocks = []
        in_channels = stem
        for expand_ratio, channels, repeats, stride, kernel_size in self.blocks_args:
            out_channels = round_filters(channels, width_mult)
            for i in range(round_repeats(repeats, depth_mult)):
                blocks.append(MBConv(in_channels, out_channels, expand_ratio, kernel_size, stride if i == 0 else 1,
                                     drop_connect_rate=drop_connect_rate * len(blocks) / total))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        head = round_filters(1280, width_mult)
        self.conv_head = nn.Conv2d(in_channels, head, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(head)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.bn0(self.conv_stem(x))
        x = x * torch.sigmoid(x)
        x = self.blocks(x)
        x = self.bn1(self.conv_head(x))
        x = x * torch.sigmoid(x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        x = self.dropout(x)
        return self.fc(x)


INPUT_SHAPE = (2, 3, 32, 32)
'''
