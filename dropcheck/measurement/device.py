"""--device for measure, recalibrate and train-compare: "auto", "cpu", "cuda" or "cuda:N"."""
from __future__ import annotations

from typing import Any

from ..records import DropcheckError


def resolve_device(device: str) -> Any:
    """The torch.device to run on; "auto" is CUDA when present. No CUDA for "cuda" is a usage error."""
    import torch

    run_on = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    if run_on.type == "cuda" and not torch.cuda.is_available():
        raise DropcheckError("usage", "--device cuda but no CUDA device is available", "use --device auto or cpu")
    return run_on
