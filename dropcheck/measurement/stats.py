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
        """Fold in one batch: every position of every sample is an observation of its channel.

        The batch's own moments come from torch.var_mean (numerically stable, no copies of the
        activation; half precision is widened to float32 first); batches merge in float64.
        """
        x = x.detach()
        if x.dim() == 1:
            x = x.unsqueeze(1)
        n = x.numel() // x.shape[1] if x.shape[1] else 0
        if n == 0:
            return
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        batch_mean = mean.to(torch.float64)
        batch_m2 = var.to(torch.float64) * n
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
