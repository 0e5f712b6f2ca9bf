"""Eval mode for a while: every module's training flag restored afterwards (train() would set them
all alike, and a model may hold modules frozen in eval mode on purpose)."""
from __future__ import annotations

from typing import Any

from torch import nn


class eval_mode:
    """Eval mode for the duration, every module's flag restored afterwards."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.flags = {m: m.training for m in self.module.modules()}
        self.module.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self.flags.items():
            m.training = flag
