"""Convert a checkpoint for a source patch that renames state_dict keys (`fix --checkpoint OLD
--checkpoint-out NEW`, issue 12): moving a dropout within an nn.Sequential past a layer with state
shifts that layer's index, and so its keys (`features.4.weight` -> `features.3.weight`).

The checkpoint is a bare state_dict, or a dict holding one under a usual key ("state_dict",
"model", "model_state_dict"); the rest of that dict (optimizer, epoch, ...) is kept as it is. Its
keys must be the model's before anything is converted. NEW is written atomically, never over OLD.
"""
from __future__ import annotations

import copy
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_with
from ..records import DropcheckError

STATE_KEYS = ("state_dict", "model", "model_state_dict")


@dataclass
class Checkpoint:
    path: Path
    content: Any  # what torch.load gave
    key: str | None  # where the state_dict is in it; None when it is the state_dict

    @property
    def state_dict(self) -> Mapping[str, Any]:
        return self.content if self.key is None else self.content[self.key]


def read_checkpoint(path: Path, model_keys: Iterable[str]) -> Checkpoint:
    """The checkpoint at `path`, checked to hold a state_dict with exactly the model's keys."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DropcheckError("checkpoint", f"cannot load {path} with torch.load(weights_only=True): {first}",
                             "give a checkpoint saved with torch.save (a state_dict, or a dict holding one); "
                             "convert other objects to that first") from exc
    key = None if _is_state_dict(content) else next(
        (k for k in STATE_KEYS if isinstance(content, Mapping) and _is_state_dict(content.get(k))), "")
    if key == "":
        raise DropcheckError("checkpoint", f"{path} holds no state_dict",
                             "save model.state_dict(), alone or under 'state_dict', 'model' or 'model_state_dict'")
    checkpoint = Checkpoint(path, content, key)
    keys, expected = set(checkpoint.state_dict), set(model_keys)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        parts = ([f"{len(missing)} missing ({', '.join(missing[:3])})"] if missing else []) + \
            ([f"{len(extra)} not in the model ({', '.join(extra[:3])})"] if extra else [])
        raise DropcheckError("checkpoint", f"{path}: its keys do not match the model's: {'; '.join(parts)}",
                             "give a checkpoint of this model, built with the same -a arguments")
    return checkpoint


def converted(checkpoint: Checkpoint, key_map: Mapping[str, str]) -> Any:
    """The checkpoint's content with its state_dict's keys renamed (order and metadata kept)."""
    old = checkpoint.state_dict
    state: OrderedDict[str, Any] = OrderedDict((key_map.get(k, k), v) for k, v in old.items())
    metadata = getattr(old, "_metadata", None)
    if metadata is not None:  # per-module versions (BatchNorm's), keyed by module prefix: renamed alike
        renamed = {k: new for k in metadata if (new := _renamed_prefix(k, key_map)) != k}
        taken = set(renamed.values())  # a parameter-free module's old entry there would shadow the new one's
        state._metadata = OrderedDict((renamed.get(k, k), v) for k, v in metadata.items()  # type: ignore[attr-defined]
                                      if k in renamed or k not in taken)
    if checkpoint.key is None:
        return state
    content = copy.copy(checkpoint.content)  # the rest of the dict (optimizer, epoch, ...) as it was
    content[checkpoint.key] = state
    return content


def write_checkpoint(checkpoint: Checkpoint, key_map: Mapping[str, str], out: Path) -> Path:
    """Write the converted checkpoint to `out` atomically; never over the checkpoint it came from."""
    if out.resolve() == checkpoint.path.resolve() or (out.exists() and os.path.samefile(out, checkpoint.path)):
        raise DropcheckError("usage", f"{out} is the checkpoint being converted; dropcheck never writes over it",
                             "name a new file with --checkpoint-out")
    content = converted(checkpoint, key_map)

    def save(temp: str) -> None:
        with open(temp, "wb") as handle:
            torch.save(content, handle)
            handle.flush()
            os.fsync(handle.fileno())

    write_with(out, save)
    return out


def _renamed_prefix(prefix: str, key_map: Mapping[str, str]) -> str:
    """A module's name after the renames: the renamed index is the first part where a key changes."""
    for old, new in key_map.items():
        old_parts, new_parts = old.split("."), new.split(".")
        at = next(i for i, (a, b) in enumerate(zip(old_parts, new_parts)) if a != b)
        head = ".".join(old_parts[:at + 1])
        if prefix == head or prefix.startswith(head + "."):
            return ".".join(new_parts[:at + 1]) + prefix[len(head):]
    return prefix


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
