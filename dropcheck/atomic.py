"""Writes that never leave half a file: a temporary file beside the target, then os.replace.

Shared by every command that writes (reports, state_dicts, train-compare results, fixed models),
so an interrupted or failing write leaves the user's old file as it was. A directory (fix's
output folder) is filled beside its target the same way, then swapped into place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
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


def write_with(path: Path, write: Callable[[str], None], mode: int | None = None) -> None:
    """Let `write(temp_path)` fill a temporary file, then move it over `path` in one step. The file
    gets `mode` (to keep a user's file's own), else the usual mode under the umask."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror}",
                             "check the directory's permissions") from exc
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~umask() if mode is None else mode)  # mkstemp makes 0600
        os.replace(temp, path)
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror}",
                             "check the path and permissions") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def write_dir_with(path: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill(temp_dir)` fill a temporary directory beside `path`, then swap it into place.

    An existing `path` is moved aside first and put back if the swap fails; it is deleted only
    once the new directory is in place.
    """
    directory = path.resolve().parent
    try:
        temp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{path.name}."))
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror}",
                             "check the directory's permissions") from exc
    try:
        os.chmod(temp, 0o777 & ~umask())  # mkdtemp makes it private; it should look like any other folder
        fill(temp)
        _swap_into_place(temp, path)
    except OSError as exc:
        raise DropcheckError("output", f"cannot write {path}: {exc.strerror or exc}",
                             "check the path and permissions") from exc
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _swap_into_place(temp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(temp, path)
        return
    backup = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.name}.old."))
    backup.rmdir()
    os.rename(path, backup)
    try:
        os.rename(temp, path)
    except OSError:
        os.rename(backup, path)  # put the user's old one back
        raise
    if backup.is_dir():
        shutil.rmtree(backup)
    else:
        backup.unlink()
