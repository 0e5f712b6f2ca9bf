"""--device, for every command that runs a model: "auto", "cpu", "cuda" or "cuda:N".

`check_device` is the spelling check (no torch: the CLI calls it before anything loads);
`resolve_device` turns the string into the torch.device to run on.
"""
from __future__ import annotations

import re
from typing import Any

from ..records import DropcheckError

DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str) -> None:
    """Refuse anything but auto, cpu, cuda and cuda:N, before torch loads."""
    if not _DEVICE.fullmatch(device):
        raise DropcheckError("usage", f"unknown --device '{device}'", f"choose {DEVICES}")


def resolve_device(device: str) -> Any:
    """The torch.device to run on; "auto" is CUDA when present. A CUDA device that is not there is a usage error."""
    check_device(device)
    import torch

    run_on = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    if run_on.type == "cuda" and not torch.cuda.is_available():
        raise DropcheckError("usage", f"--device {device} but no CUDA device is available", "use --device auto or cpu")
    if run_on.index is not None and run_on.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DropcheckError("usage", f"--device {device} but this machine has {count} CUDA device(s)",
                             f"use --device cuda (the first), or an index below {count}")
    return run_on
