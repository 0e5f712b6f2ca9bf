"""Command-line and configuration values -> plain Python values. Never imports torch.

`[tool.dropcheck]` in the nearest pyproject.toml (from the working directory upward) is read
here too: `load_config` checks every key and value and turns a mistake into one "config" error
that names the file and the key; `plan_targets` lays the command line over it.
"""
from __future__ import annotations

import ast
import difflib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import DropcheckError


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """`-a KEY=VALUE` pairs -> constructor keywords; values are Python literals, else strings."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DropcheckError("usage", f"bad --model-arg '{pair}'", "write KEY=VALUE, e.g. -a drop_rate=0.2")
        try:
            kwargs[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = raw
    return kwargs


def parse_input_shape(text: str) -> tuple[int, ...]:
    parts = re.split(r"[,x]", text.replace(" ", ""))
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:  # includes empty parts: "1,,3" or "1,x,3"
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise DropcheckError("usage", f"bad --input-shape '{text}'", "give positive sizes, e.g. 1,3,224,224")
    return shape


def check_output(out: Path, force: bool) -> None:
    """Cheap checks before any model loads."""
    if out.exists() and not force:
        raise DropcheckError("output", f"{out} exists", "pass --force to replace it, or choose another -o")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise DropcheckError("output", f"{out}: directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK):
        raise DropcheckError("output", f"{out}: {parent} is not writable", "choose a writable -o")


# --- [tool.dropcheck] in pyproject.toml -----------------------------------------------------------

CONFIG_KEYS = ("targets", "input-shape", "model-args", "select", "ignore", "fail-on")
TARGET_KEYS = ("target", "model-args", "input-shape")
FAIL_ON_LEVELS = ("error", "warning", "info", "never")
_SECTION = "[tool.dropcheck]"


@dataclass(frozen=True)
class TargetConfig:
    """One target to audit, with the constructor keywords and input shape it gets."""

    spec: str
    model_args: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Config:
    """`[tool.dropcheck]` as read; `path` is None when there is none."""

    path: Path | None = None
    targets: tuple[TargetConfig, ...] = ()
    input_shape: tuple[int, ...] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    fail_on: str | None = None


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in `start` (default: the working directory) or above it."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None, start: Path | None = None) -> Config:
    """Read `[tool.dropcheck]` from `path`, or from the nearest pyproject.toml when `path` is None.

    A pyproject.toml without the section is no config. An explicit `path` must exist.
    """
    explicit = path is not None
    if path is None:
        path = find_pyproject(start)
        if path is None:
            return Config()
    name = _display(path)
    if explicit and not path.is_file():
        raise DropcheckError("config", f"--config {name}: no such file", "name an existing pyproject.toml")
    data = _read_toml(path, name)
    section = data.get("tool", {}).get("dropcheck") if isinstance(data.get("tool"), dict) else None
    if section is None:
        return Config(path=path)
    if not isinstance(section, dict):
        raise _config_error(name, "", f"must be a table, not {_toml_type(section)}", "write [tool.dropcheck]")
    _check_keys(name, "", section, CONFIG_KEYS)
    base = path.resolve().parent
    return Config(
        path=path,
        targets=tuple(_targets(name, section["targets"], base)) if "targets" in section else (),
        input_shape=_shape(name, "input-shape", section["input-shape"]) if "input-shape" in section else None,
        model_args=_model_args(name, "model-args", section["model-args"]) if "model-args" in section else {},
        select=_selectors(name, "select", section["select"]) if "select" in section else None,
        ignore=_selectors(name, "ignore", section["ignore"]) if "ignore" in section else None,
        fail_on=_fail_on(name, section["fail-on"]) if "fail-on" in section else None,
    )


def plan_targets(config: Config, targets: Sequence[str] | None, model_args: dict[str, Any],
                 input_shape: tuple[int, ...] | None) -> list[TargetConfig]:
    """What to audit: the command line's targets replace the configured ones; `-a` merges over
    the file's model-args (global, then per target); `--input-shape` replaces the file's."""
    if targets:
        chosen = [TargetConfig(spec) for spec in targets]
    else:
        chosen = list(config.targets)
    return [TargetConfig(spec=t.spec, model_args={**config.model_args, **t.model_args, **model_args},
                         input_shape=input_shape or t.input_shape or config.input_shape) for t in chosen]


def _read_toml(path: Path, name: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise DropcheckError("config", f"{name}: reading it needs tomli on Python 3.10",
                                 "pip install tomli, or use Python 3.11+") from None
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise DropcheckError("config", f"{name}: cannot be read ({exc.strerror})", "check the file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DropcheckError("config", f"{name}: invalid TOML: {exc}", "fix the TOML syntax") from exc


def _display(path: Path) -> str:
    """Relative to the working directory when inside it, else absolute."""
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    return os.path.relpath(absolute, cwd) if absolute.startswith(cwd + os.sep) else absolute


def _config_error(name: str, key: str, problem: str, hint: str) -> DropcheckError:
    where = f"{_SECTION} {key}" if key else _SECTION
    return DropcheckError("config", f"{name}: {where} {problem}", hint)


def _check_keys(name: str, where: str, table: dict[str, Any], valid: Sequence[str]) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + f"valid keys: {', '.join(valid)}"
            problem = f"unknown key '{key}'" if not where else f"has an unknown key '{key}'"
            raise _config_error(name, where, problem, hint)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _targets(name: str, value: Any, base: Path) -> list[TargetConfig]:
    hint = 'write targets = ["models/net.py", {target = "timm:resnet18", input-shape = [1, 3, 224, 224]}]'
    if not isinstance(value, list):
        raise _config_error(name, "targets", f"must be an array, not {_toml_type(value)}", hint)
    out: list[TargetConfig] = []
    for index, item in enumerate(value):
        where = f"targets[{index}]"
        if isinstance(item, str):
            out.append(TargetConfig(_spec(name, where, item, base)))
            continue
        if not isinstance(item, dict):
            raise _config_error(name, where, f"must be a string or a table, not {_toml_type(item)}", hint)
        _check_keys(name, where, item, TARGET_KEYS)
        if "target" not in item:
            raise _config_error(name, where, "has no 'target' key", hint)
        out.append(TargetConfig(
            spec=_spec(name, f"{where}.target", item["target"], base),
            model_args=_model_args(name, f"{where}.model-args", item["model-args"]) if "model-args" in item else {},
            input_shape=_shape(name, f"{where}.input-shape", item["input-shape"]) if "input-shape" in item else None,
        ))
    return out


def _spec(name: str, where: str, value: Any, base: Path) -> str:
    """A configured target; a relative file path is taken from the pyproject.toml's directory."""
    if not isinstance(value, str) or not value.strip():
        raise _config_error(name, where, f"must be a non-empty string, not {_toml_type(value)!s}",
                            "e.g. models/net.py, models/net.py:Net, pkg.module:Net or timm:resnet18")
    spec = value.strip()
    if spec.startswith(("torchvision:", "timm:")):
        return spec
    head, sep, tail = spec.rpartition(":")
    path_part, suffix = (head, sep + tail) if sep and tail.isidentifier() and len(head) > 1 else (spec, "")
    is_path = path_part.endswith(".py") or "/" in path_part or os.sep in path_part or (base / path_part).is_file()
    if not is_path or os.path.isabs(path_part):
        return spec
    return _display(base / path_part) + suffix


def _shape(name: str, key: str, value: Any) -> tuple[int, ...]:
    hint = "give positive sizes, e.g. input-shape = [1, 3, 224, 224]"
    if isinstance(value, str):
        try:
            return parse_input_shape(value)
        except DropcheckError:
            raise _config_error(name, key, f"'{value}' is not a shape", hint) from None
    if (not isinstance(value, list) or not value
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)):
        raise _config_error(name, key, f"must be an array of positive integers, not {value!r}", hint)
    return tuple(value)


def _model_args(name: str, key: str, value: Any) -> dict[str, Any]:
    hint = 'write it as a table, e.g. model-args = {drop_rate = 0.2, position = "P6"}'
    if not isinstance(value, dict):
        raise _config_error(name, key, f"must be a table, not {_toml_type(value)}", hint)
    for arg in value:
        if not arg.isidentifier():
            raise _config_error(name, key, f"key '{arg}' is not a Python keyword name", hint)
    return dict(value)


def _selectors(name: str, key: str, value: Any) -> tuple[str, ...]:
    from .analysis.catalog import resolve_selection  # reads rules/ only: no torch

    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise _config_error(name, key, f"must be an array of strings, not {_toml_type(value)}",
                            f'e.g. {key} = ["DC001", "DC00", "dropout-before-batchnorm"]')
    try:
        resolve_selection(items, None)
    except DropcheckError as exc:
        raise _config_error(name, key, f"has an {exc.message}", exc.hint) from None
    return tuple(items)


def _fail_on(name: str, value: Any) -> str:
    hint = f"choose one of {', '.join(FAIL_ON_LEVELS)}"
    if not isinstance(value, str) or value.lower() not in FAIL_ON_LEVELS:
        shown = f"'{value}'" if isinstance(value, str) else _toml_type(value)
        raise _config_error(name, "fail-on", f"has an unknown level {shown}", hint)
    return value.lower()
