"""The project files a target's audit reads that are not modules: an architecture in a JSON file,
weights a fixed model loads from beside itself. Recorded with an audit hook (PEP 578) on `open`
while the target is audited, so a model that reads them is audited afresh when they change.

The hook is installed once per process (audit hooks cannot be removed) and records nothing
outside `recording`. It must never raise: an exception in it would fail the user's own open().
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Recorder:
    def __init__(self) -> None:
        self.found: set[str] | None = None
        self.root = ""
        self.skip: tuple[str, ...] = ()
        self.installed = False

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or self.found is None:
            return
        try:
            self._record(*args[:3])
        except Exception:  # noqa: BLE001 - never the user's open() failing because of us
            pass

    def _record(self, path: Any, mode: Any, flags: Any) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return  # a file descriptor: its path was seen when it was opened
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return
        if mode is None and isinstance(flags, int) and flags & _WRITING:
            return
        absolute = os.path.abspath(path)
        if not absolute.startswith(self.root) or absolute.startswith(self.skip):
            return
        if absolute.endswith(".pyc"):
            try:
                absolute = importlib.util.source_from_cache(absolute)
            except ValueError:
                return
        if os.path.isfile(absolute) and self.found is not None:
            self.found.add(os.path.realpath(absolute))


_RECORDER = _Recorder()


def _installed_code() -> set[str]:
    """Where installed code lives (a project's own .venv is inside the project): never data."""
    paths = sysconfig.get_paths()
    dirs = {sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(os.path.dirname(__file__))}
    dirs.update(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths)
    return {os.path.realpath(d) for d in dirs}


@contextlib.contextmanager
def recording(root: Path, cache: Path) -> Iterator[set[str]]:
    """Inside: the real paths of the files under `root` opened for reading, collected in the yielded
    set; not those of the cache folder `cache`, nor installed code (a virtualenv, dropcheck)."""
    if not _RECORDER.installed:
        sys.addaudithook(_RECORDER.hook)
        _RECORDER.installed = True
    found: set[str] = set()
    top = str(root) + os.sep
    skipped = {str(cache)} | {d for d in _installed_code() if (d + os.sep).startswith(top)}
    _RECORDER.root, _RECORDER.skip = top, tuple(d + os.sep for d in skipped)
    _RECORDER.found = found
    try:
        yield found
    finally:
        _RECORDER.found = None
