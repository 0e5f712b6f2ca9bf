"""The example input's shape when neither the user nor the model gives one.

Channels or features come from the first layer that takes the input (a Conv's in_channels, a
Linear's in_features); the spatial size is the first of the usual ones at which a forward runs.
On the meta device a try costs microseconds of compute; on the CPU (a model built with its
weights) the tries run without gradients, in eval mode, at batch 1.
"""
from __future__ import annotations

import torch
from torch import nn

from .modes import eval_mode

USUAL_SIZES = (224, 32, 28, 64, 96, 128, 256, 299, 512)
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3, nn.LazyConv1d: 1, nn.LazyConv2d: 2, nn.LazyConv3d: 3}


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv or Linear the model registers: in models people write, the one that takes the input."""
    for name, m in model.named_modules():
        if type(m) in _CONVS or isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return name, m
    return None


def candidates(layer: nn.Module) -> list[tuple[int, ...]]:
    """Input shapes to try, in order, for a model whose first layer is `layer` (batch 1)."""
    if isinstance(layer, nn.Linear):
        return [(1, layer.in_features)]
    dims = next((d for cls, d in _CONVS.items() if isinstance(layer, cls)), 2)
    channels = layer.in_channels
    sizes = USUAL_SIZES if dims < 3 else (16, 32, 64, 112)
    return [(1, channels, *([size] * dims)) for size in sizes]


def infer_input_shape(model: nn.Module, device: str) -> tuple[tuple[int, ...] | None, str]:
    """(the first shape a forward accepts, a note saying how it was found), or (None, why not)."""
    found = first_layer(model)
    if found is None:
        return None, "no Conv or Linear layer to read the input's channels from"
    name, layer = found
    tried = []
    with eval_mode(model):
        for shape in candidates(layer):
            tried.append("x".join(str(d) for d in shape))
            if _runs(model, shape, device):
                what = "features" if isinstance(layer, nn.Linear) else "channels"
                skipped = f"; {', '.join(tried[:-1])} did not fit" if len(tried) > 1 else ""
                what = what if shape[1] != 1 else what[:-1]
                return shape, (f"input shape {tried[-1]} inferred ({name} takes {shape[1]} {what}{skipped}); "
                               "pass --input-shape to choose another")
    return None, f"no usual input size fits ({name} takes {shape[1]}; tried {', '.join(tried)})"


def _runs(model: nn.Module, shape: tuple[int, ...], device: str) -> bool:
    x = torch.empty(shape, device=device) if device == "meta" else torch.randn(shape)
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - any failure means: not this shape
        return False
    return True

