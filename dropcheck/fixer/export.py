"""Write a fixed model: a directory of readable code + weights + change list, or one .pt file.

Writes are atomic (atomic.py: a temporary sibling, renamed into place), an existing OUT is
replaced only with --force, and what was written is loaded back and checked against the fixed
model before it takes OUT's place.
"""
from __future__ import annotations

import importlib.util
import keyword
import json
import sys
from pathlib import Path

import torch
from torch import fx, nn

from ..version import __version__
from ..atomic import write_dir_with, write_with
from ..config import check_output
from ..records import DropcheckError, FixResult
from .carry import CarriedSources, user_sources
from .fixed import import_lines
from .verify import eval_mode, same_outputs

_STANDARD = "torch.nn."
_CONTAINERS = ("torch.nn.Module()", "torch.nn.Sequential()", "torch.nn.ModuleList()", "torch.nn.ModuleDict()")


def write_output(result: FixResult, out: Path, force: bool) -> list[Path]:
    """A directory (module.py, state_dict.pt, changes.json), or one pickled model if OUT ends in .pt."""
    check_output(out, force)  # the writers of atomic.py turn any later OSError into a DropcheckError
    if out.suffix == ".pt":
        return [_write_pt(result, out)]
    return _write_folder(result, out)


# --- .pt -----------------------------------------------------------------------------------------

def _write_pt(result: FixResult, out: Path) -> Path:
    def write(temp: str) -> None:
        torch.save(result.model, temp)
        _check_same(result, torch.load(temp, weights_only=False), "the .pt file")

    write_with(out, write)
    return out


# --- directory -----------------------------------------------------------------------------------

def _write_folder(result: FixResult, out: Path) -> list[Path]:
    names: list[str] = []

    def fill(folder: Path) -> None:
        names.extend(_write_files(result, folder))
        _check_same(result, _import_folder(folder), "the written module.py")

    write_dir_with(out, fill)
    return [out / n for n in names]


def _write_files(result: FixResult, folder: Path) -> list[str]:
    model = result.model
    (folder / "modules").mkdir()
    code, pickled = module_source(result)
    for qual, module in pickled.items():  # with the user's sources its classes need (carry.py)
        sources = CarriedSources(user_sources({cls for m in module.modules() for cls in type(m).__mro__}))
        torch.save({"sources": sources, "module": module}, folder / "modules" / f"{qual}.pt")
    if not pickled:
        (folder / "modules").rmdir()
    sources = graph_sources(model)
    if sources:
        torch.save(CarriedSources(sources), folder / "sources.pt")
    torch.save(model.state_dict(), folder / "state_dict.pt")
    torch.save(_extra_tensors(model), folder / "buffers.pt")
    (folder / "module.py").write_text(code)
    changes = {"schema": 1, "dropcheck_version": __version__, **result.to_dict(),
               "files": ["module.py", "state_dict.pt", "buffers.pt", "changes.json"]
               + [f"modules/{q}.pt" for q in pickled] + (["sources.pt"] if sources else [])}
    (folder / "changes.json").write_text(json.dumps(changes, indent=2) + "\n")
    return changes["files"]


def _extra_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors forward needs that the state_dict does not hold: non-persistent buffers, tracer constants."""
    extra = {}
    for qual, module in model.named_modules():
        for name in getattr(module, "_non_persistent_buffers_set", ()):
            buf = module._buffers.get(name)
            if buf is not None:
                extra[f"{qual}.{name}" if qual else name] = buf
    extra.update(getattr(model, "_constants", {}))
    return extra


# --- readable code -------------------------------------------------------------------------------

def module_source(result: FixResult) -> tuple[str, dict[str, nn.Module]]:
    """module.py's text, and the modules it loads pickled (those with no readable constructor)."""
    model = result.model
    called = _called_modules(model.train_graph) | _called_modules(model.eval_graph)
    lines, pickled = _tree_lines(model, called)
    imports = [line for line in import_lines(model.globals) if line != "import torch"]
    params = _signature(model.train_graph)
    args = ", ".join(p.split("=")[0] for p in params)
    train_src, eval_src, wraps = _split_wraps(model.train_src, model.eval_src)
    one_body = _same_body(train_src, eval_src)
    changes = "\n".join(f"  {c.action} {c.dropout or '(new)'} -> {c.to or 'removed'} ({c.rule or 'fix'}, p={c.p:g})"
                        for c in result.changes) or "  (none)"
    kept = _not_reset(model)
    header = (f'"""{result.target} with its dropout placed by dropcheck {__version__} (Guidelines 1 and 2).\n\n'
              f"Changes:\n{changes}\n\n"
              "Use it: sys.path.insert(0, this folder); from module import FixedModel\n"
              "  FixedModel()               the fixed weights, from state_dict.pt beside this file (a checkpoint of\n"
              "                             the original model loads too: load_state_dict(..., strict=True))\n"
              "  FixedModel(weights=False)  fresh weights: every submodule's own reset_parameters(), drawn from\n"
              "                             torch's RNG (torch.manual_seed picks them); PyTorch's default\n"
              "                             initialisation per layer type, not a custom one the original's\n"
              "                             constructor applied\n"
              + (f"  ({len(kept)} tensor(s) no reset_parameters() covers keep the saved values: "
                 f"{', '.join(kept[:8])}{', ...' if len(kept) > 8 else ''})\n" if kept else "")
              + "The module tree is the original's (model.layer1[0] works where the original had a Sequential).\n"
              + ("forward is the traced body (the same in train and eval mode).\n" if one_body else
                 "forward dispatches on self.training to two traced bodies (train and eval differ).\n")
              + '"""\n')
    if one_body:
        forward = [f"    def forward(self, {', '.join(params)}):",
                   f"        return self._forward({args})", "",
                   _indent(train_src.replace("def _forward_train(", "def _forward(", 1))]
    else:
        forward = [f"    def forward(self, {', '.join(params)}):",
                   "        if self.training:",
                   f"            return self._forward_train({args})",
                   f"        return self._forward_eval({args})", "",
                   _indent(train_src), "", _indent(eval_src)]
    body = "\n".join([
        "import os", "", "import torch", "", '_HERE = os.path.dirname(os.path.abspath(__file__))',
        *(["torch.load(os.path.join(_HERE, 'sources.pt'), weights_only=False)  # makes the user's modules "
           "named below importable"] if graph_sources(model) else []),
        *imports, *wraps, "", "",
        "def _load(name):",
        "    obj = torch.load(os.path.join(_HERE, name), weights_only=name.endswith(('state_dict.pt', 'buffers.pt')))",
        "    return obj['module'] if isinstance(obj, dict) and 'module' in obj else obj  # modules/: with its sources",
        "", "",
        "class FixedModel(torch.nn.Module):",
        "    def __init__(self, weights=True):",
        "        super().__init__()",
        *[f"        {line}" for line in lines],
        "        self.load_state_dict(_load('state_dict.pt'))",
        "        for name, value in _load('buffers.pt').items():",
        "            owner, _, attr = name.rpartition('.')",
        "            module = self.get_submodule(owner) if owner else self",
        "            if attr in module._buffers:",
        "                module._buffers[attr] = value",
        "            else:",
        "                setattr(module, attr, value)",
        "        if not weights:",
        "            for module in self.modules():",
        "                if callable(getattr(module, 'reset_parameters', None)):",
        "                    module.reset_parameters()",
        "",
        *forward,
    ])
    return header + body.rstrip() + "\n", pickled


def graph_sources(model: nn.Module) -> dict[str, tuple[str, str, bool]]:
    """The user's modules that the traced code imports from (a torch.fx.wrap'ed function of theirs)."""
    return user_sources(getattr(model, "globals", {}).values())


def _split_wraps(train_src: str, eval_src: str) -> tuple[str, str, list[str]]:
    """fx puts `torch.fx._symbolic_trace.wrap(...)` lines before the body; they belong at module level."""
    wraps: list[str] = []
    kept = []
    for src in (train_src, eval_src):
        lines = src.splitlines()
        wraps.extend(line for line in lines if line.startswith("torch.fx._symbolic_trace.wrap(") and line not in wraps)
        kept.append("\n".join(line for line in lines if not line.startswith("torch.fx._symbolic_trace.wrap(")))
    return kept[0], kept[1], wraps


def _same_body(train_src: str, eval_src: str) -> bool:
    train = train_src.replace("def _forward_train(", "def _f(", 1)
    return train == eval_src.replace("def _forward_eval(", "def _f(", 1)


def _not_reset(model: nn.Module) -> list[str]:
    """Parameters of modules without reset_parameters: a fresh FixedModel keeps their saved values."""
    return [f"{qual}.{name}" if qual else name for qual, module in model.named_modules()
            if not callable(getattr(module, "reset_parameters", None))
            for name, _ in module.named_parameters(recurse=False)]


def _called_modules(graph: fx.Graph) -> set[str]:
    return {str(n.target) for n in graph.nodes if n.op == "call_module"}


def _tree_lines(model: nn.Module, called: set[str]) -> tuple[list[str], dict[str, nn.Module]]:
    lines: list[str] = []
    pickled: dict[str, nn.Module] = {}

    def visit(module: nn.Module, qual: str, expr: str) -> None:
        lines.extend(_own_tensors(module, expr))
        for name, child in module.named_children():
            child_qual = f"{qual}.{name}" if qual else name
            ctor = _constructor(child, child_qual in called)
            if ctor is None:
                pickled[child_qual] = child
                ctor = f"_load('modules/{child_qual}.pt')"
            lines.append(f"{expr}.add_module({name!r}, {ctor})")
            if ctor in _CONTAINERS:
                visit(child, child_qual, _child_expr(module, expr, name))

    visit(model, "", "self")
    return lines, pickled


def _constructor(module: nn.Module, called: bool) -> str | None:
    """torch.nn.X(...) from the repr where that rebuilds it; torch.nn.Module() for a container."""
    has_children = next(iter(module.children()), None) is not None
    if has_children and not called:  # the same container type, so indexing and iteration work as before
        return next((f"torch.nn.{kind.__name__}()" for kind in (nn.Sequential, nn.ModuleList, nn.ModuleDict)
                     if isinstance(module, kind)), "torch.nn.Module()")
    cls = type(module)
    text = repr(module)
    if not has_children and getattr(nn, cls.__name__, None) is cls and "\n" not in text:
        return _STANDARD + text
    return None


def _own_tensors(module: nn.Module, expr: str) -> list[str]:
    lines = []
    for name, p in module.named_parameters(recurse=False):
        lines.append(f"{expr}.register_parameter({name!r}, torch.nn.Parameter(torch.empty({tuple(p.shape)}, "
                     f"dtype={p.dtype}), requires_grad={p.requires_grad}))")
    for name, b in module.named_buffers(recurse=False):
        persistent = name not in module._non_persistent_buffers_set
        lines.append(f"{expr}.register_buffer({name!r}, torch.empty({tuple(b.shape)}, dtype={b.dtype}), "
                     f"persistent={persistent})")
    return lines


def _child_expr(parent: nn.Module, expr: str, name: str) -> str:
    """How module.py names a child: self.layer1[0].conv1, as one would write it by hand."""
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        return f"{expr}[{name}]"
    if isinstance(parent, nn.ModuleDict):
        return f"{expr}[{name!r}]"
    if name.isidentifier() and not keyword.iskeyword(name):
        return f"{expr}.{name}"
    return f"{expr}.get_submodule({name!r})"


def _signature(graph: fx.Graph) -> list[str]:
    return [f"{n.target}={n.args[0]!r}" if n.args else str(n.target) for n in graph.nodes if n.op == "placeholder"]


def _indent(src: str) -> str:
    return "\n".join(("    " + line) if line.strip() else "" for line in src.strip("\n").splitlines())


# --- reading it back -----------------------------------------------------------------------------

def _import_folder(folder: Path) -> nn.Module:
    name = f"dropcheck_export_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, folder / "module.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        return module.FixedModel()
    finally:
        sys.modules.pop(name, None)


def _check_same(result: FixResult, loaded: nn.Module, what: str) -> None:
    """What was written must compute what the fixed model computes (eval mode)."""
    if not result.input_shape:
        return
    x = torch.randn(*result.input_shape, generator=torch.Generator().manual_seed(0))
    with eval_mode(result.model), eval_mode(loaded), torch.no_grad():
        same = same_outputs(result.model(x), loaded(x))
    if not same:
        raise DropcheckError("output", f"{what} does not reproduce the fixed model", "please report this; -o x.pt "
                             "writes the model as one pickled file instead")
