"""`--checkpoint PATH` -> trained weights loaded into the model, safely.

Checkpoints load with `torch.load(..., weights_only=True)`, which unpickles tensors and plain
containers only. Accepted: a state_dict, or a dict wrapping one under `state_dict`,
`model_state_dict`, `model`, `net` or `module` (training scripts add epochs, optimisers and the
like beside it), with DDP's `module.` or torch.compile's `_orig_mod.` prefix on every key; a
TorchScript archive gives its state_dict. A pickled whole model is refused unless the caller
passes `trust_pickle` (unpickling runs arbitrary code). Keys and shapes are compared before
anything is copied, so a mismatch leaves the model as it was.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..records import DropcheckError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 3  # keys named per kind of mismatch
_SAVE_HINT = "save it with torch.save(model.state_dict(), PATH)"


def load_checkpoint(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Load the weights in `path` into `model` (strict: every key and shape must match)."""
    path = Path(path)
    if not path.exists():
        raise DropcheckError("checkpoint", f"{path}: no such file", "check the path given to --checkpoint")
    if not path.is_file():
        raise DropcheckError("checkpoint", f"{path} is not a file", "give the checkpoint file, e.g. best.pt")
    state = _state_dict_of(_read(path, trust_pickle, model), path)
    _load_into(model, _strip_prefixes(state), path)


# --- reading -------------------------------------------------------------------------------------

def _read(path: Path, trust_pickle: bool, model: nn.Module) -> Any:
    try:
        return _torch_load(path, weights_only=True)
    except Exception as exc:  # torch reports bad files as many types; sort them by message
        text = str(exc)
        if "TorchScript" in text:
            return _read_torchscript(path)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused is None:
            raise _unreadable(path, exc) from exc
        if not trust_pickle:
            raise DropcheckError("checkpoint", f"{path} is a pickled model or holds other pickled objects "
                                 f"({refused.group(1)}), which safe loading refuses",
                                 f"pass --trust-pickle if you trust its source, or {_SAVE_HINT}") from exc
    try:
        with _pickled_classes_importable(model):
            return _torch_load(path, weights_only=False)
    except Exception as exc:
        raise DropcheckError("checkpoint", f"cannot unpickle {path}: {_first_line(exc)}",
                             "the classes it was pickled with must be importable under the same names; "
                             f"or {_SAVE_HINT}") from exc


def _unreadable(path: Path, exc: BaseException) -> DropcheckError:
    """Why torch could not read the file, in a few words (torch's own text runs to a paragraph)."""
    if isinstance(exc, OSError) and exc.strerror:
        return DropcheckError("checkpoint", f"{path}: cannot read ({exc.strerror})", "check the file's permissions")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        head = b"?"
    if not head:
        why = "the file is empty"
    elif head == b"PK\x03\x04" and not str(exc).startswith("Weights only load failed"):
        why = str(exc).strip().split(". ")[0][:160]  # "PytorchStreamReader failed reading zip archive: ..."
    elif head == b"PK\x03\x04":
        why = "its pickled data is damaged"
    else:
        why = "it was not written by torch.save, or it is damaged"
    return DropcheckError("checkpoint", f"{path} is not a readable PyTorch checkpoint: {why}",
                          f"the file may be truncated or not a checkpoint; {_SAVE_HINT}")


@contextlib.contextmanager
def _pickled_classes_importable(model: nn.Module) -> Iterator[None]:
    """Unpickling imports classes by the names the training script used: `net.Net` from the model
    file's folder, `pkg.net.Net` from the working directory. Put both on sys.path meanwhile."""
    from ..analysis.load import USER_MODULE_PREFIX

    folders = [os.getcwd()]
    source = getattr(sys.modules.get(type(model).__module__), "__file__", None)
    if source and type(model).__module__.startswith(USER_MODULE_PREFIX):
        folders.insert(0, os.path.dirname(os.path.abspath(source)))
    added = [folder for folder in dict.fromkeys(folders) if folder not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _torch_load(path: Path, weights_only: bool) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TorchScript archives and legacy formats
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated, but its archives are still about
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise DropcheckError("checkpoint", f"{path} is a TorchScript archive that cannot be read "
                             f"({_first_line(exc)})", _SAVE_HINT) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# --- finding the state_dict ----------------------------------------------------------------------

def _state_dict_of(obj: Any, path: Path, depth: int = 0) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        if depth < 2:
            for key in _WRAPPER_KEYS:
                if isinstance(obj.get(key), (Mapping, nn.Module)):
                    return _state_dict_of(obj[key], path, depth + 1)
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise DropcheckError("checkpoint", f"{path} holds a dict without a state_dict (keys: {keys})",
                             f"{_SAVE_HINT}, or a dict with it under 'state_dict' or 'model'")
    raise DropcheckError("checkpoint", f"{path} holds a {type(obj).__name__}, not a state_dict", _SAVE_HINT)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


# --- loading -------------------------------------------------------------------------------------

def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    for key in own.keys() - state.keys():  # checkpoints from before BN counted its batches
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long) if own[key].is_meta else own[key].clone()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    problems = [f"{what} {', '.join(keys[:_SHOWN])}{f' (and {len(keys) - _SHOWN} more)' if len(keys) > _SHOWN else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("wrong shapes", wrong)) if keys]
    if problems:
        raise DropcheckError("checkpoint", f"{path} does not fit the model: {'; '.join(problems)}",
                             "was it saved from this model, built with the same --model-arg values?")
    on_meta = any(t.is_meta for t in own.values())
    try:
        model.load_state_dict(state, strict=True, assign=on_meta)
    except RuntimeError as exc:
        raise DropcheckError("checkpoint", f"cannot load {path}: {_first_line(exc)}",
                             "was it saved from this model, built with the same --model-arg values?") from None
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise DropcheckError("checkpoint", f"{', '.join(left[:_SHOWN])} still on the meta device after loading "
                             f"{path}", "build the model with real weights: load_target(..., weights=True)")
