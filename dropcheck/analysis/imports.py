"""Importing the user's code for a target: a model file (as its package's module when it is in
one), a module by name, with the project root on the path; and where in the user's code
something happened (source locations, library frames).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..records import DropcheckError, SourceLocation

USER_MODULE_PREFIX = "dropcheck_user_"  # the module name a model file is imported under, then its path
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # dropcheck/


def import_file(path_text: str) -> types.ModuleType:
    path = Path(path_text)
    if not path.is_file():
        raise DropcheckError("load", f"{path_text}: no such file", "check the path, or use package.module:Name")
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise DropcheckError("load", f"{path_text}: cannot read ({exc.strerror})", "check the file's permissions") from exc
    if b"\0" in source:  # compile() refuses NUL bytes anywhere, with no line number
        raise DropcheckError("load", f"{path_text}: not a Python source file (binary)", "give the .py file that defines the model")
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        place = f"{path_text}:{exc.lineno}" if exc.lineno else path_text
        raise DropcheckError("load", f"{place}: syntax error: {exc.msg}",
                             "fix the syntax error; the file must import cleanly") from exc
    package = package_of(path)
    if package is not None:
        module = _import_package_module(path, *package)
        if module is not None:
            return module
    mod_name = USER_MODULE_PREFIX + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
    with _sys_path_front(str(path.resolve().parent)), _sys_path_front(str(project_root(path)), last=True):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's module failed while importing
            sys.modules.pop(mod_name, None)
            raise _import_failure(path, path_text, exc) from exc
    return module


def _import_failure(path: Path, path_text: str, exc: BaseException) -> DropcheckError:
    where = user_frame(exc.__traceback__)
    place = f"{where.file}:{where.line}" if where else path_text
    hint = _import_hint(exc)
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    home = _folder_holding(path, missing.partition(".")[0]) if missing else None
    if home is not None:  # a project's own package, imported from a folder that is not on the path
        dotted = _dotted_from(path, home)
        hint = (f"'{missing}' is in {display_path(str(home))}: run dropcheck from there (or put a pyproject.toml "
                "there)" + (f" and name the target {dotted}:Name" if dotted else ""))
    return DropcheckError("load", f"{place}: importing {path.name} failed: {type(exc).__name__}: {first_line(exc)}",
                          hint)


def _folder_holding(path: Path, top: str) -> Path | None:
    for folder in path.resolve().parents:
        if (folder / top / "__init__.py").is_file() or (folder / f"{top}.py").is_file():
            return folder
    return None


def package_of(path: Path) -> tuple[Path, str] | None:
    """(the folder above the outermost package that holds `path`, its dotted module name), when the
    file's folder is a package (has __init__.py): it then imports as that module, and its relative
    imports work."""
    path = path.resolve()
    parts = [] if path.stem == "__init__" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if path.stem != "__init__" and len(parts) < 2 or not parts or not all(p.isidentifier() for p in parts):
        return None
    return folder, ".".join(parts)


def _import_package_module(path: Path, root: Path, dotted: str) -> types.ModuleType | None:
    """Import a package's file under its own name; None when that name is taken by another package."""
    top = sys.modules.get(dotted.partition(".")[0])
    if top is not None and not str(getattr(top, "__file__", "") or "").startswith(str(root)):
        return None
    with _sys_path_front(str(root)), _sys_path_front(str(project_root(path)), last=True):
        try:
            module = importlib.import_module(dotted)
        except Exception as exc:  # the user's module failed while importing
            raise _import_failure(path, str(path), exc) from exc
    return module if Path(getattr(module, "__file__", "") or "").resolve() == path.resolve() else None


def project_root(path: Path) -> Path:
    """The nearest folder above `path` with a pyproject.toml (or setup.py, .git), else the working
    directory: where a project's absolute imports (`from models.blocks import Block`) resolve."""
    for folder in path.resolve().parents:
        if any((folder / marker).exists() for marker in ("pyproject.toml", "setup.py", "setup.cfg", ".git")):
            return folder
    return Path.cwd().resolve()


def _dotted_from(path: Path, base: Path) -> str | None:
    try:
        relative = path.resolve().relative_to(base.resolve()).with_suffix("")
    except ValueError:
        return None
    parts = relative.parts
    return ".".join(parts) if len(parts) > 1 and all(p.isidentifier() for p in parts) else None


def import_module(name: str) -> types.ModuleType:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise DropcheckError("load", f"'{name}' is neither a file nor a module name",
                             "give path/model.py, package.module:Name, torchvision:NAME or timm:NAME")
    with _sys_path_front(os.getcwd()):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                raise DropcheckError("load", f"no module named '{name}'",
                                     "check the spelling, or give a file path ending in .py") from exc
            raise DropcheckError("load", f"importing {name} failed: {type(exc).__name__}: {first_line(exc)}",
                                 _import_hint(exc)) from exc
        except Exception as exc:
            where = user_frame(exc.__traceback__)
            place = f"{where.file}:{where.line}: " if where else ""
            raise DropcheckError("load", f"{place}importing {name} failed: {type(exc).__name__}: {first_line(exc)}",
                                 _import_hint(exc)) from exc


def _import_hint(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"install '{exc.name}' or fix the import" if exc.name else "fix the import"
    return "the model file must import without errors; run it with python to see the full traceback"


@contextmanager
def _sys_path_front(path: str, last: bool = False) -> Iterator[None]:
    """`path` on sys.path meanwhile: first, or (last=True) after the folders already there for this load."""
    if last and path in sys.path:
        yield
        return
    sys.path.insert(1 if last and sys.path else 0, path)
    try:
        yield
    finally:
        try:
            sys.path.remove(path)
        except ValueError:
            pass


# --- source locations ----------------------------------------------------------------------------

def is_library_frame(filename: str) -> bool:
    """Frames of torch itself or of dropcheck are never 'the user's source'."""
    return filename.startswith(_TORCH_DIR) or filename.startswith(_PACKAGE_DIR) or filename.startswith("<")


def user_location(frame: types.FrameType | None) -> SourceLocation | None:
    """From `frame` outwards, the first frame outside torch and dropcheck: the user's line that made the call."""
    while frame is not None:
        if not is_library_frame(frame.f_code.co_filename):
            return SourceLocation(display_path(frame.f_code.co_filename), frame.f_lineno)
        frame = frame.f_back
    return None


def user_frame(tb: types.TracebackType | None) -> SourceLocation | None:
    """The innermost traceback frame outside torch and dropcheck."""
    found = None
    while tb is not None:
        if not is_library_frame(tb.tb_frame.f_code.co_filename):
            found = SourceLocation(display_path(tb.tb_frame.f_code.co_filename), tb.tb_lineno)
        tb = tb.tb_next
    return found


def display_path(filename: str) -> str:
    """Relative to the working directory when inside it; else from the package root for installed code."""
    path = os.path.abspath(filename)
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in path:  # installed code: timm/models/resnet.py reads better than a venv path
            return path.split(marker, 1)[1]
    cwd = os.getcwd()
    if path.startswith(cwd + os.sep):
        return os.path.relpath(path, cwd)
    return path


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
