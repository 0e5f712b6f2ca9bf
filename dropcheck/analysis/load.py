"""Target spec -> Target: the model (built on the meta device where it can be) and its input.

Spec forms: `path/model.py`, `path/model.py:Name`, `package.module:Name`, `torchvision:NAME`,
`timm:NAME`. torchvision and timm are imported only for targets that name them.
"""
from __future__ import annotations

import inspect
import os
import sys
import types
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .declarations import element_lines
from ..records import DropcheckError, SourceLocation, Target
from .submodule import SEPARATOR, split_submodule, submodule_target
from .imports import (USER_MODULE_PREFIX, display_path, first_line, import_file, import_module, is_library_frame,
                      package_of, user_frame, user_location)

__all__ = ["DEFAULT_INPUT_SHAPE", "USER_MODULE_PREFIX", "display_path", "is_library_frame", "load_target",
           "target_location"]  # the path helpers live in .imports; fixer and measurement name them here

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def load_target(spec: str, model_args: dict[str, Any] | None = None,
                input_shape: tuple[int, ...] | None = None, weights: bool = False) -> Target:
    """Build the model a spec names, with its example input.

    On the meta device where possible (no weights materialised); with `weights`, on the CPU with
    its initial weights (fix and measure need real tensors).
    """
    base, submodule = split_submodule(spec)
    if submodule:
        return submodule_target(load_target(base, model_args, input_shape, weights), submodule, spec)
    kwargs = dict(model_args or {})
    kind, factory, default_shape, label = _resolve(spec, kwargs)
    model, device, declared = _build(factory, kwargs, label, ("cpu",) if weights else ("meta", "cpu"))
    shape = tuple(input_shape) if input_shape else (_declared_shape(model, kind) or default_shape)
    notes = []
    if shape is None and kind in ("file", "module"):
        from .input_shape import infer_input_shape
        from .shapes import REAL_RUN_MAX_PARAMS, materialise_on_cpu

        if device == "meta" and sum(p.numel() for p in model.parameters()) <= REAL_RUN_MAX_PARAMS:
            # the capture would materialise it for its shape run anyway; real kernels beat meta ones
            # (whose first use imports torch._dynamo, about 1.5 s)
            materialise_on_cpu(model)
            device = "cpu"
        shape, note = infer_input_shape(model, device)
        # when nothing fits, the usual default goes on and the capture says where it does not fit
        notes.append(note if shape is not None else
                     f"input shape {'x'.join(map(str, DEFAULT_INPUT_SHAPE))} assumed: {note}")
    shape = shape or DEFAULT_INPUT_SHAPE
    example = torch.randn(*shape, device=device) if device == "cpu" else torch.empty(*shape, device=device)
    return Target(spec=spec, model=model, example_input=example, origin=kind, declared_at=declared, notes=notes)


# --- resolving the spec to a factory -------------------------------------------------------------

def _resolve(spec: str, kwargs: dict[str, Any]) -> tuple[str, Callable[..., Any], tuple[int, ...] | None, str]:
    if spec.startswith("torchvision:"):
        return ("torchvision", *_torchvision_factory(spec.split(":", 1)[1]))
    if spec.startswith("timm:"):
        return ("timm", *_timm_factory(spec.split(":", 1)[1]))
    path_part, _, name = _split_spec(spec)
    if path_part.endswith(".py") or os.sep in path_part or "/" in path_part or Path(path_part).is_file():
        module = import_file(path_part)
        origin = "file"
    else:
        module = import_module(path_part)
        origin = "module"
    factory, label = _pick_candidate(module, name, path_part, kwargs)
    return origin, factory, getattr(module, "INPUT_SHAPE", None), label


def target_location(spec: str) -> tuple[Path, str]:
    """For the user's own code: the project folder (a file's folder, or the folder above its package;
    the working directory for a module) and the spec that names the same target from a copy of it."""
    base, submodule = split_submodule(spec)
    tail = SEPARATOR + submodule if submodule else ""
    path_part, sep, name = _split_spec(base)
    if path_part.endswith(".py") or os.sep in path_part or "/" in path_part or Path(path_part).is_file():
        path = Path(path_part).resolve()
        package = package_of(path)
        if package is not None:
            return package[0], str(path.relative_to(package[0])) + sep + name + tail
        return path.parent, path.name + sep + name + tail
    return Path(os.getcwd()).resolve(), spec


def _split_spec(spec: str) -> tuple[str, str, str]:
    # rpartition on ':' but keep Windows drive letters ("C:\\m.py") whole
    head, sep, tail = spec.rpartition(":")
    if not sep or (len(head) == 1 and head.isalpha()) or not tail.isidentifier():
        return spec, "", ""
    return head, sep, tail


def _torchvision_factory(name: str) -> tuple[Callable[..., Any], tuple[int, ...] | None, str]:
    import torchvision.models as tvm

    available = tvm.list_models()
    if name not in available:
        close = _close_names(name, available)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise DropcheckError("load", f"torchvision has no model '{name}'", hint)
    shape = None
    try:  # the default weights' transforms know the crop size; reading them downloads nothing
        crop = tvm.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size")
        if crop:
            shape = (1, 3, int(crop), int(crop))
    except Exception:
        shape = None

    def factory(**kw: Any) -> nn.Module:
        kw.setdefault("weights", None)
        return tvm.get_model(name, **kw)

    return factory, shape, f"torchvision:{name}"


def _close_names(name: str, names: list[str]) -> list[str]:
    """Up to five names near `name`: those it begins (shortest first), then by edit distance (a
    typo), then those that contain it."""
    import difflib

    wanted = name.lower()
    prefix = sorted((n for n in names if n.startswith(wanted)), key=lambda n: (len(n), n))
    near = [n for n in difflib.get_close_matches(wanted, names, n=5, cutoff=0.75) if n not in prefix]
    within = [n for n in names if wanted in n and n not in prefix and n not in near]
    return (prefix + near + within)[:5]


def _timm_factory(name: str) -> tuple[Callable[..., Any], tuple[int, ...] | None, str]:
    import timm

    if not timm.is_model(name):
        close = _close_names(name, timm.list_models())
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models()"
        raise DropcheckError("load", f"timm has no model '{name}'", hint)
    shape = None
    try:
        cfg = timm.get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        if size:
            shape = (1, *size)
    except Exception:
        shape = None

    def factory(**kw: Any) -> nn.Module:
        kw["pretrained"] = False  # never download weights
        return timm.create_model(name, **kw)

    return factory, shape, f"timm:{name}"


def _pick_candidate(module: types.ModuleType, name: str, where: str,
                    kwargs: dict[str, Any]) -> tuple[Callable[..., Any], str]:
    if name:
        obj = getattr(module, name, None)
        if obj is None:
            raise DropcheckError("load", f"{where} has no '{name}'", _listing_hint(_all_candidates(module)))
        if not (_is_module_class(obj) or callable(obj) or isinstance(obj, nn.Module)):
            raise DropcheckError("load", f"{where}:{name} is not an nn.Module class or factory",
                                 "name an nn.Module subclass or a function that returns one")
        return _as_factory(obj), f"{where}:{name}"
    candidates = _all_candidates(module)
    ready = {n: o for n, o in candidates.items() if _callable_with(o, kwargs)}
    if len(ready) == 1:
        (only_name, obj), = ready.items()
        return _as_factory(obj), f"{where}:{only_name}"
    if len(ready) > 1:
        names = ", ".join(sorted(ready))
        raise DropcheckError("load", f"{where} defines several models: {names}",
                             f"pick one with {where}:NAME")
    if len(candidates) == 1:  # one model, but its constructor needs arguments
        (only_name, obj), = candidates.items()
        return _as_factory(obj), f"{where}:{only_name}"
    if candidates:
        raise DropcheckError("load", f"{where}: no model can be built without arguments "
                             f"({', '.join(sorted(candidates))})",
                             f"pick one with {where}:NAME and pass its arguments with -a KEY=VALUE")
    raise DropcheckError("load", f"{where} defines no nn.Module class or zero-argument factory",
                         "define the model class in that file, or name it with :Name")


def _all_candidates(module: types.ModuleType) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, obj in vars(module).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if _is_module_class(obj):
            out[attr] = obj
        elif inspect.isfunction(obj) and attr != "main" and _required_params(obj) == []:
            out[attr] = obj
    return out


def _listing_hint(candidates: dict[str, Any]) -> str:
    return f"candidates: {', '.join(sorted(candidates))}" if candidates else "the file defines no nn.Module class"


def _is_module_class(obj: Any) -> bool:
    return inspect.isclass(obj) and issubclass(obj, nn.Module)


def _required_params(fn: Any) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _callable_with(obj: Any, kwargs: dict[str, Any]) -> bool:
    return all(name in kwargs for name in _required_params(obj))


def _as_factory(obj: Any) -> Callable[..., Any]:
    if isinstance(obj, nn.Module):  # a module-level instance: audit it as it is
        return lambda **kw: obj
    return obj


# --- building ------------------------------------------------------------------------------------

def _build(factory: Callable[..., Any], kwargs: dict[str, Any], label: str,
           devices: tuple[str, ...]) -> tuple[nn.Module, str, dict[str, SourceLocation]]:
    """Build on the meta device (no weights materialised); fall back to CPU where that fails."""
    missing = _required_params(factory) if callable(factory) else []
    missing = [m for m in missing if m not in kwargs and m not in ("weights", "pretrained")]
    if missing:
        raise DropcheckError("load", f"{label}: the constructor needs {', '.join(missing)}",
                             "pass them with -a KEY=VALUE, e.g. -a " + f"{missing[0]}=...")
    first_error: BaseException | None = None
    for device in devices:
        by_id: dict[int, SourceLocation] = {}
        try:
            with _record_declarations(by_id), torch.device(device), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constructors' deprecation chatter is not the user's report
                model = factory(**kwargs)
        except TypeError as exc:
            if "argument" in str(exc):
                raise DropcheckError("load", f"{label}: {first_line(exc)}",
                                     "check the -a KEY=VALUE constructor arguments") from exc
            first_error = first_error or exc
            continue
        except DropcheckError:
            raise
        except Exception as exc:  # e.g. regnet: "Cannot copy out of meta tensor"
            first_error = first_error or exc
            continue
        if not isinstance(model, nn.Module):
            raise DropcheckError("load", f"{label} returned {type(model).__name__}, not an nn.Module",
                                 "name a class or a function that returns the model")
        if len(_devices(model)) > 1 and device != devices[-1]:
            # parameters made from numpy arrays or legacy constructors ignore the default device:
            # half meta, half CPU would clash on the first forward, so build it all on the next device
            continue
        declared = {name: by_id[id(m)] for name, m in model.named_modules() if id(m) in by_id}
        declared = element_lines(model.named_modules(), declared)  # nn.Sequential( ... ) elements: their own lines
        return model, _device_of(model, device), declared
    assert first_error is not None
    where = user_frame(first_error.__traceback__)
    place = f" ({where})" if where else ""
    raise DropcheckError("load", f"{label}: building the model failed{place}: "
                         f"{type(first_error).__name__}: {first_line(first_error)}",
                         "check the constructor arguments (-a KEY=VALUE)") from first_error


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in model.parameters()} | {t.device.type for t in model.buffers()}


def _device_of(model: nn.Module, wanted: str) -> str:
    for tensor in model.parameters():
        return tensor.device.type
    for tensor in model.buffers():
        return tensor.device.type
    return wanted


def _declared_shape(model: nn.Module, origin: str) -> tuple[int, ...] | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) for d in shape):
        return tuple(shape)
    size = getattr(model, "image_size", None)
    if origin == "torchvision" and isinstance(size, int):
        # the size the model was built for beats its weights' crop size, which describes the model
        # built *with* those weights: vit_h_14's default weights make it 518x518, weights=None 224x224
        return (1, 3, size, size)
    return None


@contextmanager
def _record_declarations(by_id: dict[int, SourceLocation]) -> Iterator[None]:
    """Remember the source line where each submodule was registered, keyed by object id."""
    hook_api = getattr(torch.nn.modules.module, "register_module_module_registration_hook", None)
    if hook_api is None:  # older torch: sources fall back to call sites
        yield
        return

    def hook(parent: nn.Module, name: str, sub: Any) -> None:
        if isinstance(sub, nn.Module) and id(sub) not in by_id:
            loc = user_location(sys._getframe(1))
            if loc is not None:
                by_id[id(sub)] = loc

    handle = hook_api(hook)
    try:
        yield
    finally:
        handle.remove()


