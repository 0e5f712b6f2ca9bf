"""The user's own source, carried inside a pickled fixed model so it loads in a fresh process.

A model from a file target is built from classes of a module dropcheck made up on import
(`dropcheck_user_<path>`), and a `package.module:Name` target's classes live wherever that
package was found; pickle stores both by reference, so a fresh process could not find them.
A fixed model's pickle therefore starts with `CarriedSources`: the source text of every module
of the user's code the model needs (its classes' modules, the functions its graphs call, what
those modules import of the user's code, their parent packages). Unpickling it installs an import
finder serving those sources before any of the model's children is unpickled (pickle builds a
reduce's arguments in order). Library code (the standard library, site-packages, torch,
dropcheck) stays a reference.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import sysconfig
import types
from collections.abc import Iterable, Sequence
from typing import Any

from ..analysis.load import USER_MODULE_PREFIX

_LIBRARY_TOPS = {"torch", "dropcheck", "timm", "torchvision", "builtins", "__main__"}


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(d + os.sep for d in dirs)


def is_user_module(module: types.ModuleType) -> bool:
    """A module of the user's code: imported from a .py file outside the standard library,
    site-packages and dropcheck's own packages (a file target's made-up module always is)."""
    name = module.__name__
    if name.startswith(USER_MODULE_PREFIX):
        return True
    if name.partition(".")[0] in _LIBRARY_TOPS:
        return False
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py") or not os.path.isfile(file):
        return False
    return not os.path.realpath(file).startswith(_library_dirs())


def user_sources(objects: Iterable[Any]) -> dict[str, tuple[str, str, bool]]:
    """name -> (source, file, is_package) of the user's modules that `objects` (classes, functions,
    modules) come from, closed over what those modules import of the user's code and their parents."""
    pending = [m for m in (_module_of(o) for o in objects) if m is not None]
    found: dict[str, tuple[str, str, bool]] = {}
    while pending:
        module = pending.pop()
        name = module.__name__
        if name in found or not is_user_module(module):
            continue
        try:
            with open(module.__file__, encoding="utf-8") as handle:  # type: ignore[arg-type]
                source = handle.read()
        except OSError:
            continue  # gone since it was imported: it stays a reference
        found[name] = (source, module.__file__, hasattr(module, "__path__"))  # type: ignore[assignment]
        parent = name.rpartition(".")[0]
        if parent and parent in sys.modules:
            pending.append(sys.modules[parent])
        pending.extend(m for m in (_module_of(v) for v in vars(module).values()) if m is not None)
    return found


def _module_of(obj: Any) -> types.ModuleType | None:
    if isinstance(obj, types.ModuleType):
        return obj
    name = getattr(obj, "__module__", None)
    return sys.modules.get(name) if isinstance(name, str) else None


class CarriedSources:
    """Pickles as a call to `install_sources`, so the sources are importable from then on."""

    def __init__(self, sources: dict[str, tuple[str, str, bool]]) -> None:
        self.sources = sources

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return install_sources, (self.sources,)


def install_sources(sources: dict[str, tuple[str, str, bool]]) -> CarriedSources:
    """Serve `sources` to `import` for names no other finder has served yet (a module already
    imported in this process is used as it is)."""
    wanted = {name: entry for name, entry in sources.items() if name not in sys.modules}
    if wanted:
        _FINDER.sources.update(wanted)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
    return CarriedSources(sources)


class _SourceFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, str, bool]] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.sources:
            return None
        _, file, is_package = self.sources[fullname]
        spec = importlib.util.spec_from_loader(fullname, self, origin=file, is_package=is_package)
        if spec is not None:
            spec.has_location = True
            if is_package:
                spec.submodule_search_locations = [os.path.dirname(file)]
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        source, file, _ = self.sources[module.__name__]
        module.__file__ = file
        exec(compile(source, file, "exec"), module.__dict__)  # noqa: S102 - the user's own module, as fixed


_FINDER = _SourceFinder()
