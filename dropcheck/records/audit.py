"""Records of the audit: targets, captures, sites, findings, rules and the Report.

Plain frozen dataclasses and string enums: importing this module never imports torch,
so `dropcheck rules` and `dropcheck explain` stay fast. Records other than Target and
Capture hold names, not fx nodes or tensors, so they serialise with one `to_dict()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from .display import Displayed, shorten


class StrEnum(str, Enum):
    """`enum.StrEnum` for Python 3.10 too."""

    def __str__(self) -> str:
        return self.value


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 1, "warning": 2, "error": 3}[self.value]


class SiteKind(StrEnum):
    """Where a dropout sits relative to BatchNorm, residual merges and the head (design §3)."""

    TRUNK_PRE_BN = "trunk.pre_bn"
    BRANCH_PRE_BN = "branch.pre_bn"
    BRANCH_GUIDELINE = "branch.guideline"
    BRANCH_POST_WEIGHT = "branch.post_weight"
    HEAD_PRE_BN = "head.pre_bn"
    HEAD_PRE_GAP = "head.pre_gap"
    # channel-wise dropout (Dropout2d, ...) right before global pooling: each channel's mask survives
    # the average, so it is H5 in effect (Prop. 5); fix makes it element-wise where it is
    HEAD_PRE_GAP_CHANNEL = "head.pre_gap_channel"
    HEAD_POST_GAP = "head.post_gap"
    HEAD_LOGITS = "head.logits"
    OTHER = "other"
    UNUSED = "unused"  # declared but never called in forward (DC007)


class DropcheckError(Exception):
    """A user-facing error: one line of message, one hint, a kind for the JSON `error`."""

    def __init__(self, kind: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class SourceLocation:
    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line}

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Target:
    """A loaded model and the input it is captured with (load -> capture)."""

    spec: str
    model: Any  # torch.nn.Module
    example_input: Any  # torch.Tensor
    origin: str = ""  # "file", "module", "torchvision", "timm", "api"
    declared_at: dict[str, SourceLocation] = field(default_factory=dict)  # module qualname -> line
    notes: list[str] = field(default_factory=list)  # for the report: how the input shape was chosen

    @property
    def inputs(self) -> tuple[Any, ...]:
        """The forward's positional inputs: one tensor, or a tuple of them."""
        x = self.example_input
        return tuple(x) if isinstance(x, (tuple, list)) else (x,)

    @property
    def input_shape(self) -> list[int]:
        first = self.inputs[0] if self.inputs else None
        return list(first.shape) if hasattr(first, "shape") else []


@dataclass(frozen=True)
class Site:
    """One dropout call (module or functional) and where it sits."""

    id: str
    module: str | None  # qualname of the dropout module, or of the module whose forward calls it
    op: str  # class name ("Dropout", "DropBlock2d") or function name ("dropout", "scaled_dot_product_attention")
    p: float
    site: SiteKind
    paper_position: str | None = None  # P0..P7, H1..H7 where the block matches the paper's figures
    active: bool = True  # p > 0 and live in train mode
    always_on: bool = False  # still live in eval mode (DC006)
    reaches: tuple[str, ...] = ()  # BatchNorms reached before any residual merge (DC001)
    merge: str | None = None  # the residual merge that ends this dropout's branch
    opaque: str | None = None  # qualname of an opaque (untraceable) module holding it
    why: str = ""  # one line: why this site has this kind
    source: SourceLocation | None = None
    declared: SourceLocation | None = None
    node: str | None = None  # flow-node name in the train graph (for fix and measure; not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "module": self.module,
            "op": self.op,
            "p": self.p,
            "site": self.site.value,
            "paper_position": self.paper_position,
            "active": self.active,
            "always_on": self.always_on,
            "reaches": list(self.reaches),
            "merge": self.merge,
            "opaque": self.opaque,
            "why": self.why,
            "source": self.source.to_dict() if self.source else None,
            "declared": self.declared.to_dict() if self.declared else None,
        }


@dataclass(frozen=True)
class StochasticDepthSite:
    """DropPath / StochasticDepth: reported, but not dropout in the paper's sense."""

    id: str
    module: str | None
    op: str
    p: float
    merge: str | None
    source: SourceLocation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "module": self.module,
            "op": self.op,
            "p": self.p,
            "merge": self.merge,
            "source": self.source.to_dict() if self.source else None,
        }


@dataclass(frozen=True)
class OpaqueRegion:
    """A leaf module the tracer could not look into, with what it hides."""

    module: str
    type: str
    batchnorms: tuple[str, ...]
    dropouts: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "type": self.type,
            "batchnorms": list(self.batchnorms),
            "dropouts": list(self.dropouts),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Finding:
    rule: str
    name: str
    severity: Severity
    dropout: str  # Site.id
    message: str
    fix: str
    reaches: tuple[str, ...] = ()
    source: SourceLocation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "name": self.name,
            "severity": self.severity.value,
            "dropout": self.dropout,
            "message": self.message,
            "fix": self.fix,
            "reaches": list(self.reaches),
            "source": self.source.to_dict() if self.source else None,
        }


@dataclass(frozen=True)
class Rule:
    """One entry of the rule catalogue (rules/*.md): the page's front matter is the rule's definition.

    The engine fires it on a site whose kind is in `sites` (or on any kind, `sites` being
    ("any",)) when its condition `fires_when` holds; `message` and the advice are templates
    over the site's fields (analysis.check.MESSAGE_FIELDS).
    """

    ANY: ClassVar[str] = "any"  # `sites: any` / `fix-moves: any`: whatever the site kind

    code: str
    name: str
    severity: Severity
    summary: str
    sites: tuple[str, ...]  # site kinds it fires on, or ("any",)
    paper: str
    path: str
    body: str  # the Markdown after the front matter
    example_bad: str = ""  # code of the "Example" section
    example_good: str = ""  # code of the "Use instead" section
    example_dropout: str = ""  # site id the bad example must be flagged on
    fires_when: str = "site-kind"  # a condition of analysis.check.CONDITIONS
    message: str = ""  # template of the finding's message
    fix: str = ""  # template of the finding's fix advice
    fix_by_site: tuple[tuple[str, str], ...] = ()  # (site kind, advice) where it differs from `fix`
    fix_action: str = "none"  # what `dropcheck fix` does with a dropout it flags: move, convert or none
    fix_moves: tuple[str, ...] = ()  # with move: the site kinds it is moved from (a move's credit), or ("any",)
    fix_verifies: bool = False  # fix checks that a re-audit of the fixed model shows none of it

    def fires_on(self, kind: str) -> bool:
        """Whether the page lists this site kind (a SiteKind or its value)."""
        return self.ANY in self.sites or str(kind) in self.sites

    def advice(self, kind: str, position: str | None = None) -> str:
        """The fix advice template for a site of this kind (and paper position, where the page has one)."""
        by_site = dict(self.fix_by_site)
        return by_site.get(f"{kind}@{position}") or by_site.get(str(kind), self.fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "severity": self.severity.value,
            "summary": self.summary,
            "sites": list(self.sites),
            "paper": self.paper,
        }


@dataclass(frozen=True)
class Analysis:
    """What sites finds in a capture (sites -> check, report, fix, measure)."""

    sites: list[Site]
    stochastic_depth: list[StochasticDepthSite]
    has_batchnorm: bool
    notes: list[str]


@dataclass(frozen=True)
class CaptureInfo:
    """How the model was captured, for the report."""

    method: str  # "symbolic_trace" or "zoo-aware"
    nodes: int
    device: str  # "meta" or "cpu"
    has_batchnorm: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "nodes": self.nodes,
            "device": self.device,
            "has_batchnorm": self.has_batchnorm,
        }


@dataclass(repr=False)
class Report(Displayed):
    """The audit of one target: the `results[i]` object of JSON schema 1. `to_json()` equals that
    object of `dropcheck audit --format json` (of `dropcheck measure --format json` when measured)."""

    target: str
    status: str = "ok"  # "ok" or "error"
    error: DropcheckError | None = None
    model: str | None = None
    input_shape: list[int] | None = None
    capture: CaptureInfo | None = None
    dropouts: list[Site] = field(default_factory=list)
    stochastic_depth: list[StochasticDepthSite] = field(default_factory=list)
    opaque_regions: list[OpaqueRegion] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    measurements: list[Any] | None = None  # Measurement records, when measured
    measure_settings: dict[str, Any] | None = None
    suppressed: list[Finding] = field(default_factory=list)  # silenced by `# dropcheck: ignore` comments
    unused_ignores: list[Any] | None = None  # suppress.UnusedIgnore, when --show-unused-ignores asked

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "error": self.error.to_dict() if self.error else None,
            "model": self.model,
            "input_shape": self.input_shape,
            "capture": self.capture.to_dict() if self.capture else None,
            "dropouts": [s.to_dict() for s in self.dropouts],
            "stochastic_depth": [s.to_dict() for s in self.stochastic_depth],
            "opaque_regions": [o.to_dict() for o in self.opaque_regions],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "measurements": [m.to_dict() for m in self.measurements] if self.measurements is not None else None,
            "measure_settings": self.measure_settings,
            "suppressed": [f.to_dict() for f in self.suppressed],
            "unused_ignores": [u.to_dict() for u in self.unused_ignores] if self.unused_ignores is not None else None,
        }

    @property
    def worst(self) -> Severity | None:
        """The highest severity among the findings, None when there are none."""
        ranked = sorted((f.severity for f in self.findings), key=lambda s: s.rank)
        return ranked[-1] if ranked else None

    def rule_counts(self) -> dict[str, int]:
        """Findings per rule code, in the order the codes first appear."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.rule] = counts.get(finding.rule, 0) + 1
        return counts

    def headline(self) -> str:
        """One line: 'model.py: ResNet, 9 dropouts, 9 findings (DC001 x8, DC002 x1), worst error'."""
        target = shorten(self.target, 60)
        if self.status == "error":
            error = self.error
            what = f"error ({error.kind}): {shorten(error.message, 80)}" if error else "error"
            return f"{target}: {what}"
        rules = ", ".join(f"{code} x{n}" for code, n in self.rule_counts().items())
        count = len(self.findings)
        line = (f"{target}: {self.model or '?'}, {len(self.dropouts)} dropout{'' if len(self.dropouts) == 1 else 's'}, "
                f"{count} finding{'' if count == 1 else 's'}" + (f" ({rules})" if rules else ""))
        line += f", worst {self.worst.value}" if self.worst else ""
        if self.measurements:
            line += f", Δ measured at {len(self.measurements)} (lowest {min(m.delta_mean for m in self.measurements):.3f})"
        return line


@dataclass
class FlowNode:
    """One node of the analysed data-flow graph (fx node, possibly inlined from an opaque leaf)."""

    name: str
    op: str  # fx op: placeholder, get_attr, call_module, call_function, call_method, output, alias
    target: Any  # qualname for call_module/get_attr, callable or method name otherwise
    module: Any = None  # the nn.Module for call_module nodes
    inputs: list[str] = field(default_factory=list)  # nodes whose values flow into this one
    users: list[str] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    owner: str = ""  # qualname of the module whose forward created the node
    source: SourceLocation | None = None
    args: tuple[Any, ...] = ()  # fx args with nodes replaced by their names
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Capture:
    """The captured model (capture -> sites, fix, measure)."""

    root: Any  # the nn.Module that was traced
    graph_module: Any  # train-mode fx.GraphModule
    eval_graph_module: Any | None  # eval-mode fx.GraphModule (None if that trace failed)
    nodes: dict[str, FlowNode]  # topological order
    outputs: list[str]  # nodes that feed the model's output
    eval_live_dropouts: list[tuple[str, str, int, float]]  # (owner, op, occurrence in owner, p) live in eval
    method: str
    device: str
    opaque: list[OpaqueRegion] = field(default_factory=list)
    declared: dict[str, SourceLocation] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)  # train fx node name -> owning module
    eval_owners: dict[str, str] = field(default_factory=dict)  # eval fx node name -> owning module
