"""Writes that never leave half a file: a temporary file beside the target, then os.replace.

Shared by every command that writes (reports, state_dicts, train-compare results), so an
interrupted or failing write leaves the user's old file as it was.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .records import DropcheckError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and os.replace."""

    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    write_with(path, write)


def write_with(path: Path, write: Callable[[str], None]) -> None:
    """Let `write(temp_path)` fill a temporary file, then move it over `path` in one step."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror}",
                             "check the directory's permissions") from exc
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~umask())  # mkstemp makes 0600; give the file a normal mode
        os.replace(temp, path)
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror}",
                             "check the path and permissions") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
