"""Keys, lookups and writes of the audit cache. Never imports torch.

One entry per target and key: `.dropcheck_cache/audit/<hash of the key>.json` holding the key
itself (a hash collision or an entry of another layout is a miss), the content hash of every
file the target depends on, and the report's JSON. Anything unreadable, truncated or foreign is
a miss and is overwritten by the fresh audit's entry; a cache that cannot be written is no
cache, never an error. Entries are written atomically, so concurrent runs see whole entries only.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..analysis.catalog import rules_dir
from ..atomic import write_atomic
from ..config import find_pyproject
from ..records import DropcheckError, Report
from ..version import __version__
from .reports import report_from_dict

CACHE_DIR_NAME = ".dropcheck_cache"
DISABLE_ENV = "DROPCHECK_NO_CACHE"  # set to 1: every audit is fresh (the test-suite sets it)
ENTRY_FORMAT = "dropcheck-audit-cache/1"
_LIBRARIES = ("torch", "torchvision", "timm")


def cache_root(config_path: Path | None) -> Path:
    """The project folder the cache lives in: the config's pyproject.toml's, else the nearest
    pyproject.toml's (also under --no-config), else the working directory."""
    found = config_path or find_pyproject()
    return found.resolve().parent if found is not None else Path.cwd().resolve()


def cache_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def clear_cache(root: Path) -> int | None:
    """Delete `root`'s cache folder: the number of entries it held, None when there was none."""
    folder = root / CACHE_DIR_NAME
    if folder.is_symlink() or not folder.is_dir():
        return None
    count = sum(1 for _ in (folder / "audit").glob("*.json")) if (folder / "audit").is_dir() else 0
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise DropcheckError("output", f"cannot remove {folder}: {exc.strerror}", "check its permissions") from exc
    return count


def file_digest(path: str) -> str | None:
    """sha256 of a file's bytes; None when it cannot be read (a dependency gone is a miss)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


class AuditCache:
    """The cache of one project folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / CACHE_DIR_NAME
        self.entries = self.folder / "audit"

    def key(self, spec: str, model_args: Mapping[str, Any], input_shape: Sequence[int] | None,
            enabled: frozenset[str]) -> dict[str, Any]:
        """Everything but the files that decides a target's audit, as plain JSON values. The config
        reaches the audit only through these (targets, merged model-args, input-shape, the rules
        select/ignore enable); fail-on and the format act on the report, so they are not in it."""
        return {
            "spec": spec,
            # repr keeps (1, 2) apart from [1, 2]: the model is built with what -a gave it
            "model_args": repr(sorted(model_args.items())),
            "input_shape": list(input_shape) if input_shape else None,
            "enabled": sorted(enabled),
            "cwd": os.getcwd(),
            "sys_path": list(sys.path),
            "environment": environment(),
        }

    def lookup(self, key: dict[str, Any]) -> Report | None:
        """The cached report for `key` when every file it depends on is unchanged, else None."""
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != ENTRY_FORMAT or data.get("key") != key:
                return None
            deps = data["deps"]
            if not isinstance(deps, dict) or any(file_digest(f) != d for f, d in deps.items()):
                return None
            return report_from_dict(data["report"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable, truncated or foreign: audit afresh and overwrite it

    def store(self, key: dict[str, Any], deps: Mapping[str, str], report: Report) -> None:
        """Keep an ok report with the digests of the files it depends on (best effort)."""
        if report.status != "ok":
            return  # a failure is audited again: the fix may be outside what the key covers
        entry = {"format": ENTRY_FORMAT, "key": key, "deps": dict(deps), "report": report.to_dict()}
        try:
            self._prepare()
            write_atomic(self._path(key), json.dumps(entry, sort_keys=True))
        except (OSError, DropcheckError):
            pass  # a read-only project still gets its answer

    def _path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()
        return self.entries / f"{digest[:40]}.json"

    def _prepare(self) -> None:
        self.entries.mkdir(parents=True, exist_ok=True)
        ignore = self.folder / ".gitignore"
        if not ignore.exists():  # the folder keeps itself out of git, as .ruff_cache does
            write_atomic(ignore, "# Automatically created by dropcheck.\n*\n")
        tag = self.folder / "CACHEDIR.TAG"
        if not tag.exists():  # backup tools skip it
            write_atomic(tag, "Signature: 8a477f597d28d172789f06886806bc55\n"
                              "# This file is a cache directory tag created by dropcheck.\n")


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """What the audit runs on: Python, the model libraries' versions (read from their metadata,
    not by importing them), and dropcheck's version and code (a development checkout changes
    without a new version)."""
    versions: dict[str, Any] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version, "executable": sys.executable, "dropcheck": __version__,
            "dropcheck_code": _code_fingerprint(), **versions}


def _code_fingerprint() -> str:
    """Size and modification time of every module and rule page of dropcheck: stat only, no reads."""
    package = Path(__file__).resolve().parents[1]
    files = sorted({*package.rglob("*.py"), *rules_dir().glob("*.md")})
    digest = hashlib.sha256()
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
