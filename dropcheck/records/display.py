"""How a record shows itself in a notebook, a terminal and as JSON, without records knowing how to draw.

Records may not import output (the stages contract: output reads records, never the reverse), yet a
Report alone in a Jupyter cell should draw a table. So records keep a registry, (type, kind) ->
renderer, and the `Displayed` mixin asks it; `output.notebook` registers the "html" and "rich"
renderers when imported, and `import dropcheck` imports it. A record whose renderer is not
registered falls back to its one-line repr (rich) or to nothing (Jupyter then shows the repr).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

REPR_WIDTH = 200  # a repr is one line, never longer than this

_RENDERERS: dict[tuple[type, str], Callable[..., Any]] = {}


def register(cls: type, kind: str, renderer: Callable[..., Any]) -> None:
    """Draw records of type `cls` in `kind` ("html": `renderer(obj) -> str`; "rich":
    `renderer(obj, width) -> a rich renderable`)."""
    _RENDERERS[(cls, kind)] = renderer


def renderer_for(obj: Any, kind: str) -> Callable[..., Any] | None:
    """The renderer registered for `obj`'s type (or the nearest base class), None if none is."""
    for cls in type(obj).__mro__:
        found = _RENDERERS.get((cls, kind))
        if found is not None:
            return found
    return None


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut in the middle to `width` characters ('a/very/lo…/model.py')."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


class Displayed:
    """Mixin of the records a user holds in a notebook: Report, FixResult, Measurement, Reproduction,
    Comparison. A subclass defines `headline()` (one line of plain words) and `to_dict()`; the
    dataclass must be declared with `repr=False`, else its generated repr replaces this one."""

    def headline(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as JSON text: the object the CLI's JSON document holds for this record (which
        document, and where in it, each record's `to_json` says)."""
        return json.dumps(self.to_dict(), indent=indent)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"<{name} {shorten(self.headline(), REPR_WIDTH - len(name) - 3)}>"

    def _repr_html_(self) -> str | None:
        draw = renderer_for(self, "html")
        return draw(self) if draw is not None else None

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        draw = renderer_for(self, "rich")
        yield draw(self, options.max_width) if draw is not None else repr(self)
