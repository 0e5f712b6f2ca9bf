"""A failed trace as one line for the user: where in their code, and what to do about it."""
from __future__ import annotations

import linecache

from torch import nn

from ..records import DropcheckError, SourceLocation
from .imports import display_path, is_library_frame


def trace_error(root: nn.Module, exc: BaseException) -> DropcheckError:
    where, raised_by_user = None, False
    tb = exc.__traceback__
    while tb is not None:
        raised_by_user = not is_library_frame(tb.tb_frame.f_code.co_filename)  # true at the end: the user's raise
        if raised_by_user:
            where = SourceLocation(display_path(tb.tb_frame.f_code.co_filename), tb.tb_lineno)
        tb = tb.tb_next
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    place = f"{where}: " if where else ""
    if "control flow" in text or "iterate" in text or "len(" in text:
        hint = ("a branch or loop on tensor values cannot be traced for every input: use torch.where, make that "
                "code a leaf module or a torch.fx.wrap'ed function, or audit a submodule without it (TARGET::name); "
                "sizes, dims and devices are resolved from the example input")
    elif raised_by_user and where is not None and not _raises_itself(_last_line(exc)):
        hint = ("a tracing limit, not a bug in the model: a torch call got a traced value where it needs a plain "
                "number (sizes are resolved from the example, values computed from tensors are not); --verbose "
                "shows the traceback")
    elif raised_by_user:
        hint = "the model's code raised this while torch.fx traced it with proxy inputs; --verbose shows the traceback"
    else:
        hint = "the model must be capturable by torch.fx.symbolic_trace; run with --verbose for the traceback"
    error = DropcheckError("trace", f"{place}cannot trace {type(root).__name__}: {type(exc).__name__}: {text}", hint)
    error.__cause__ = exc  # --verbose prints the cause: the traceback through the user's forward
    return error


def _last_line(exc: BaseException) -> str:
    """The source text of the line the exception was raised at (its last traceback entry)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ""


def _raises_itself(line: str) -> bool:
    return line.strip().startswith(("raise", "assert"))
