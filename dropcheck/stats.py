"""Streaming per-channel mean and variance in float64, mergeable (Chan et al.), on any device.

Memory stays flat however many batches run: each tap keeps three vectors of length C.
"""
from __future__ import annotations

import torch


class ChannelStats:
    """Count, mean and sum of squared deviations per channel (dim 1 of the observed tensors)."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Fold in one batch: every position of every sample is an observation of its channel."""
        x = x.detach()
        if x.dim() == 1:
            x = x.unsqueeze(1)
        channels = x.shape[1]
        flat = x.transpose(0, 1).reshape(channels, -1).to(torch.float64)
        n = flat.shape[1]
        if n == 0:
            return
        batch_mean = flat.mean(dim=1)
        batch_m2 = ((flat - batch_mean.unsqueeze(1)) ** 2).sum(dim=1)
        if self.count is None:
            self.count = torch.full_like(batch_mean, float(n))
            self.mean, self.m2 = batch_mean, batch_m2
            return
        self.merge_moments(torch.full_like(batch_mean, float(n)), batch_mean, batch_m2)

    def merge_moments(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        assert self.count is not None and self.mean is not None and self.m2 is not None
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * count / total)
        self.count = total

    def merge(self, other: ChannelStats) -> None:
        if other.count is None:
            return
        if self.count is None:
            self.count, self.mean, self.m2 = other.count.clone(), other.mean.clone(), other.m2.clone()
            return
        self.merge_moments(other.count, other.mean, other.m2)

    @property
    def variance(self) -> torch.Tensor:
        """Population variance per channel (the paper's Var over the mini-batch)."""
        assert self.count is not None and self.m2 is not None
        return self.m2 / self.count
