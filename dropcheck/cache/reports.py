"""A Report back from its JSON (`Report.to_dict()`): what the cache stores for each target.

The report is stored, not its rendering, so one entry answers every format (text, json, sarif,
github, markdown), --show-unused-ignores and a mix of cached and fresh targets, through the same
renderers as a fresh audit. Every field the JSON holds comes back as it was; the JSON leaves
out only what no renderer reads (a site's flow-node name, an error's traceback) and the cache
holds ok reports only. Never imports torch.
"""
from __future__ import annotations

from typing import Any

from ..records import (CaptureInfo, Finding, OpaqueRegion, Report, Severity, Site, SiteKind, SourceLocation,
                       StochasticDepthSite)


def report_from_dict(data: dict[str, Any]) -> Report:
    """The inverse of `Report.to_dict()` for an audit (status ok, not measured). Raises KeyError,
    TypeError or ValueError on anything else, including a report that would not give back the same
    JSON (a field added since), which the cache takes as a miss."""
    if data["status"] != "ok" or data["error"] is not None or data["measurements"] is not None:
        raise ValueError("only ok, unmeasured reports are cached")
    capture = data["capture"]
    report = Report(
        target=_text(data["target"]),
        status="ok",
        model=data["model"],
        input_shape=[int(d) for d in data["input_shape"]] if data["input_shape"] is not None else None,
        capture=CaptureInfo(method=capture["method"], nodes=int(capture["nodes"]), device=capture["device"],
                            has_batchnorm=bool(capture["has_batchnorm"])) if capture is not None else None,
        dropouts=[_site(s) for s in data["dropouts"]],
        stochastic_depth=[StochasticDepthSite(id=s["id"], module=s["module"], op=s["op"], p=s["p"],
                                              merge=s["merge"], source=_location(s["source"]))
                          for s in data["stochastic_depth"]],
        opaque_regions=[OpaqueRegion(module=o["module"], type=o["type"], batchnorms=tuple(o["batchnorms"]),
                                     dropouts=tuple(o["dropouts"]), reason=o["reason"])
                        for o in data["opaque_regions"]],
        findings=[_finding(f) for f in data["findings"]],
        notes=[_text(n) for n in data["notes"]],
        seconds=float(data["seconds"]),
        measure_settings=data["measure_settings"],
        suppressed=[_finding(f) for f in data["suppressed"]],
    )
    if report.to_dict() != data:  # a field this reader does not know yet: audit afresh
        raise ValueError("the cached report does not round-trip")
    return report


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _location(data: dict[str, Any] | None) -> SourceLocation | None:
    return SourceLocation(file=_text(data["file"]), line=int(data["line"])) if data is not None else None


def _site(data: dict[str, Any]) -> Site:
    return Site(id=_text(data["id"]), module=data["module"], op=data["op"], p=data["p"], site=SiteKind(data["site"]),
                paper_position=data["paper_position"], active=bool(data["active"]),
                always_on=bool(data["always_on"]), reaches=tuple(data["reaches"]), merge=data["merge"],
                opaque=data["opaque"], why=data["why"], source=_location(data["source"]),
                declared=_location(data["declared"]))


def _finding(data: dict[str, Any]) -> Finding:
    return Finding(rule=_text(data["rule"]), name=data["name"], severity=Severity(data["severity"]),
                   dropout=_text(data["dropout"]), message=data["message"], fix=data["fix"],
                   reaches=tuple(data["reaches"]), source=_location(data["source"]))
