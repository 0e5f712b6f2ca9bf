"""Command-line and configuration values -> plain Python values. Never imports torch.

(`[tool.dropcheck]` in pyproject.toml will be read here too.)
"""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from .records import DropcheckError


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """`-a KEY=VALUE` pairs -> constructor keywords; values are Python literals, else strings."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DropcheckError("usage", f"bad --model-arg '{pair}'", "write KEY=VALUE, e.g. -a drop_rate=0.2")
        try:
            kwargs[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = raw
    return kwargs


def parse_input_shape(text: str) -> tuple[int, ...]:
    parts = re.split(r"[,x]", text.replace(" ", ""))
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:  # includes empty parts: "1,,3" or "1,x,3"
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise DropcheckError("usage", f"bad --input-shape '{text}'", "give positive sizes, e.g. 1,3,224,224")
    return shape


def check_output(out: Path, force: bool) -> None:
    """Cheap checks before any model loads."""
    if out.exists() and not force:
        raise DropcheckError("output", f"{out} exists", "pass --force to replace it, or choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise DropcheckError("output", f"{out}: directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise DropcheckError("output", f"{out}: {parent} is not writable", "choose a writable -o")
