"""Which project files a freshly audited target depends on, recorded in the process that just
imported its model (torch is loaded by then; a cache lookup never imports this module).

The files are the user's modules the model's classes and functions come from (fixer.carry's
`user_sources`), closed over every module those files import by name: the attributes a module
holds miss `from settings import WIDTH` (an int has no module), its import statements do not.
A module imported by an earlier target in the same run is found the same way, through sys.modules.
"""
from __future__ import annotations

import ast
import os
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator

from ..analysis.load import USER_MODULE_PREFIX
from ..fixer.carry import is_user_module, user_sources
from .store import file_digest

_ZOO = ("torchvision:", "timm:")
_LIBRARY = tuple({os.path.realpath(path) + os.sep for key, path in sysconfig.get_paths().items()
                  if key in ("stdlib", "platstdlib", "purelib", "platlib")})  # as carry.is_user_module has them


def target_dependencies(spec: str, before: set[str], read: Iterable[str], started_ns: int) -> dict[str, str] | None:
    """Real path -> sha256 of every project file the target `spec` depends on; `before` is
    sys.modules' names before its audit, `read` the project files its audit opened (cache.reads),
    `started_ns` when the audit started (time.time_ns()). For a zoo model, the files read only (its
    library's version is in the key). None when it cannot be cached: a module target from installed
    code, a file gone meanwhile or changed since the audit started (the digest would not be of
    what was audited)."""
    if spec.startswith(_ZOO):
        return _digests(set(read), started_ns)
    file, module_name = _spec_parts(spec)
    roots = [m for m in (sys.modules.get(n) for n in set(sys.modules) - before) if m is not None and _maybe_user(m)]
    files: set[str] = set()
    if file is not None:
        files.add(os.path.realpath(file))
        # audited before in this run (the same file with other arguments): its module is not new
        roots.extend(m for name, m in list(sys.modules.items()) if name.startswith(USER_MODULE_PREFIX)
                     and os.path.realpath(getattr(m, "__file__", None) or "") == os.path.realpath(file))
    else:
        root = sys.modules.get(module_name)
        if root is None or not is_user_module(root):
            return None
        roots.append(root)
    files.update(_closure([m for m in roots if is_user_module(m)]))
    return _digests(files | set(read), started_ns)


def _digests(files: set[str], started_ns: int) -> dict[str, str] | None:
    try:
        if any(os.stat(path).st_mtime_ns >= started_ns for path in files):
            return None
    except OSError:
        return None
    digests = {path: file_digest(path) for path in sorted(files)}
    if any(d is None for d in digests.values()):
        return None
    return digests  # type: ignore[return-value]


def _maybe_user(module: types.ModuleType) -> bool:
    """A cheap first filter, never stricter than carry's exact test (which reads sysconfig on every
    call): the modules torch imports during a first audit are thousands, all installed code."""
    file = getattr(module, "__file__", None) or ""
    return module.__name__.startswith(USER_MODULE_PREFIX) or (
        file.endswith(".py") and not os.path.realpath(file).startswith(_LIBRARY))


def _spec_parts(spec: str) -> tuple[str | None, str]:
    """(the model file, None) for a file target, else (None, the module's name); as load reads specs."""
    head, sep, tail = spec.rpartition(":")
    path_part = head if sep and tail.isidentifier() and not (len(head) == 1 and head.isalpha()) else spec
    if path_part.endswith(".py") or os.sep in path_part or "/" in path_part or os.path.isfile(path_part):
        return path_part, ""
    return None, path_part


def _closure(roots: list[types.ModuleType]) -> set[str]:
    """The files of the user's modules reachable from `roots` by attributes or import statements."""
    found: dict[str, str] = {}
    pending = roots
    while pending:
        sources = user_sources(pending)
        pending = []
        for name, (source, file, is_package) in sources.items():
            if name in found:
                continue
            found[name] = os.path.realpath(file)
            for imported in _imported_names(name, source, is_package):
                module = sys.modules.get(imported)
                if module is not None and imported not in found:
                    pending.append(module)
    return set(found.values())


def _imported_names(name: str, source: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement of this module may load (anywhere in the file: an
    import inside forward ran during the trace)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base:
                continue
            parts = base.split(".")
            yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))
            yield from (f"{base}.{alias.name}" for alias in node.names)
