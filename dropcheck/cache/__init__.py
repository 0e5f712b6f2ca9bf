"""The incremental audit cache (`.dropcheck_cache/` beside pyproject.toml, like `.ruff_cache`).

A target's cached report is reused only when everything it depends on is unchanged: its spec,
constructor keywords, input shape and enabled rules, the working directory and sys.path, the
versions of Python, torch, torchvision and timm, dropcheck's version and code, and the content of
every project file the model's classes come from or import. `store` (keys, lookup, writes) and
`reports` (a Report back from its JSON) never import torch, so a run where nothing changed never
loads it; `sources` records a fresh audit's files, after torch is loaded anyway.
"""
from __future__ import annotations

from .store import CACHE_DIR_NAME, DISABLE_ENV, AuditCache, cache_disabled, cache_root, clear_cache

__all__ = ["AuditCache", "CACHE_DIR_NAME", "DISABLE_ENV", "cache_disabled", "cache_root", "clear_cache"]
