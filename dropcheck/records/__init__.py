"""Records that cross stage boundaries, one module per stage that makes them.

Plain dataclasses and string enums: importing this package never imports torch, so
`dropcheck rules` and `dropcheck explain` stay fast. Records other than Target and Capture
hold names, not fx nodes or tensors, so they serialise with one `to_dict()`. The paired
statistics a Comparison reports live beside it (`statistics`), since output reads them too.
"""
from .audit import (Analysis, Capture, CaptureInfo, DropcheckError, Finding, FlowNode, OpaqueRegion, Report, Rule,
                    Severity, Site, SiteKind, SourceLocation, StochasticDepthSite, StrEnum, Target)
from .display import Displayed
from .fix import Change, Check, FixResult, NotInSource, SourceFix, SourceNote
from .measure import Measurement, Reproduction
from .training import Comparison, Listener, RunResult, check_pairing

__all__ = ["Analysis", "Capture", "CaptureInfo", "Change", "Check", "Comparison", "Displayed", "DropcheckError", "Finding",
           "FixResult", "FlowNode", "Listener", "Measurement", "NotInSource", "OpaqueRegion", "Report",
           "Reproduction", "Rule", "RunResult", "Severity", "Site", "SiteKind", "SourceFix", "SourceLocation",
           "SourceNote", "StochasticDepthSite", "StrEnum", "Target", "check_pairing"]
