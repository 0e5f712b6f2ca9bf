"""What several commands share: option declarations (one help text each) and the cheap checks that
run before torch loads, so a typo costs no model import."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import parse_input_shape, parse_model_args
from ..measurement.device import DEVICES
from ..records import DropcheckError

NO_TARGET_HINT = "name a model, e.g. dropcheck audit path/model.py, torchvision:resnet18 or timm:resnet18"
_SHAPE_HELP = "Example input shape, e.g. 1,3,224,224 (default: the model's own, else 1,3,224,224)."
_MODEL_ARG_HELP = "Constructor keyword (a Python literal) for every target; repeat for more."


def model_arg_option(help: str = _MODEL_ARG_HELP) -> Any:
    return typer.Option("--model-arg", "-a", metavar="KEY=VALUE", show_default=False, help=help)


def input_shape_option(help: str | None = _SHAPE_HELP) -> Any:
    return typer.Option("--input-shape", metavar="N,C,H,W", show_default=False, help=help)


def format_option(help: str) -> Any:
    return typer.Option("--format", metavar="FORMAT", help=help)


def verbose_option(help: str | None) -> Any:
    return typer.Option("--verbose", "-v", help=help)


def force_option(help: str = "Replace OUT if it exists.") -> Any:
    return typer.Option("--force", help=help)


TargetsArg = Annotated[list[str] | None, typer.Argument(
    metavar="TARGET", show_default=False,
    help="path/model.py, path/model.py:Name, package.module:Name, torchvision:NAME or timm:NAME.")]
ModelArgsOption = Annotated[list[str] | None, model_arg_option()]
InputShapeOption = Annotated[str | None, input_shape_option()]
BasicFormatOption = Annotated[str, format_option("text or json.")]
DeviceOption = Annotated[str, typer.Option("--device", metavar="DEVICE", help=f"{DEVICES}.")]


def model_inputs(model_arg: list[str] | None, input_shape: str | None) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """-a KEY=VALUE pairs and --input-shape, parsed: the constructor keywords and the shape (None: the model's)."""
    return parse_model_args(model_arg or []), parse_input_shape(input_shape) if input_shape is not None else None


def check_targets(targets: list[str] | None, hint: str = NO_TARGET_HINT) -> list[str]:
    if not targets:
        raise DropcheckError("usage", "no targets given", hint)
    return targets


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise DropcheckError("usage", f"unknown --format '{fmt}'", f"choose one of {', '.join(allowed)}")


def check_report_path(path: Path) -> None:
    """A report or plot file can be written there: fail before a long run, not after it."""
    if path.is_dir():
        raise DropcheckError("usage", f"--output {path} is a directory", "give a file name, e.g. -o report.json")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise DropcheckError("usage", f"--output {path}: directory {parent} does not exist", "create it first")

