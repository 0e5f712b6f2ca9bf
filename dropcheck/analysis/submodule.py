"""Submodule targets: `TARGET::layer1.0` audits one submodule of the built model.

Its example input is what the whole model passes it: one forward of the whole model on its own
example, stopped by a forward pre-hook on the submodule as soon as the submodule is called.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..records import DropcheckError, Target
from .modes import eval_mode

SEPARATOR = "::"


def split_submodule(spec: str) -> tuple[str, str]:
    """`file.py:Net::layer1.0` -> ("file.py:Net", "layer1.0"); no submodule -> (spec, "")."""
    base, sep, sub = spec.partition(SEPARATOR)
    return (base, sub) if sep else (spec, "")


class _Reached(Exception):
    """Raised by the pre-hook: the rest of the whole model's forward is not needed."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.args, self.kwargs = args, kwargs


def submodule_target(whole: Target, qualname: str, spec: str) -> Target:
    """The Target for submodule `qualname` of `whole`, with the input the whole model gives it."""
    model = whole.model
    try:
        sub = model.get_submodule(qualname)
    except AttributeError:
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise DropcheckError("load", f"{whole.spec} has no submodule '{qualname}'",
                             f"name one of its modules after '::', e.g. {whole.spec}::<name>; its children: "
                             f"{children}") from None

    def stop(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise _Reached(args, kwargs)

    handle = sub.register_forward_pre_hook(stop, with_kwargs=True)
    shape = "x".join(str(d) for d in whole.input_shape)
    try:
        with torch.no_grad(), eval_mode(model):
            model(*whole.inputs)
    except _Reached as reached:
        inputs, kwargs = reached.args, reached.kwargs
    except Exception as exc:  # noqa: BLE001 - the whole model's own forward failed: say so, one line
        raise DropcheckError("shape", f"{whole.spec}: running the whole model on {shape} to find the input of "
                             f"'{qualname}' failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}",
                             "pass the whole model's input shape with --input-shape") from exc
    else:
        raise DropcheckError("load", f"{whole.spec}: '{qualname}' is never called in forward on {shape}",
                             "name a submodule the forward uses")
    finally:
        handle.remove()
    if kwargs or not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise DropcheckError("load", f"'{qualname}' is called with arguments other than tensors",
                             "audit a submodule whose forward takes only tensors, or the whole model")
    example = inputs[0] if len(inputs) == 1 else tuple(inputs)
    prefix = qualname + "."
    declared = {name[len(prefix):]: where for name, where in whole.declared_at.items() if name.startswith(prefix)}
    note = (f"submodule {qualname} ({type(sub).__name__}) of {type(model).__name__}, with the input the whole "
            f"model gives it on {shape}")
    return Target(spec=spec, model=sub, example_input=example, origin=whole.origin, declared_at=declared,
                  notes=[*whole.notes, note])
