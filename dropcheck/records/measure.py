"""Records of measure and reproduce: Δ at one node, and one reproduced figure of the paper."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .display import Displayed

# The paper writes p for the probability a unit is KEPT (Definition 1); PyTorch's nn.Dropout(p) and the rest
# of dropcheck take the probability it is DROPPED. Every table and figure of `reproduce` names which one it means.
KEEP_PROBABILITY = "keep probability (the paper's p)"
DROP_PROBABILITY = "drop probability (nn.Dropout's p)"


@dataclass(frozen=True, repr=False)
class Measurement(Displayed):
    """Δ at one BatchNorm input or residual-merge output (measure -> report). `to_json()` equals one
    entry of a result's "measurements" in `dropcheck measure --format json`."""

    node: str
    module: str | None  # None for functional BatchNorm and merges
    kind: str  # "batchnorm" or "merge"
    delta_mean: float
    delta_min: float
    symmetric_mean: float  # Li et al.'s max(r, 1/r), for comparison with their figures
    reached_by: tuple[str, ...]
    flagged: bool  # on a DC001 dropout's path before its next residual merge
    flagged_by: tuple[str, ...] = ()  # those dropouts (site ids)

    def headline(self) -> str:
        """One line: 'layer1.0.bn2 (batchnorm): Δ mean 0.9123, min 0.8512, flagged by layer1.0.drop'."""
        line = f"{self.module or self.node} ({self.kind}): Δ mean {self.delta_mean:.4f}, min {self.delta_min:.4f}"
        return line + (f", flagged by {', '.join(self.flagged_by) or 'DC001'}" if self.flagged else "")

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "module": self.module, "kind": self.kind, "delta_mean": self.delta_mean,
                "delta_min": self.delta_min, "symmetric_mean": self.symmetric_mean,
                "reached_by": list(self.reached_by), "flagged": self.flagged, "flagged_by": list(self.flagged_by)}


@dataclass(frozen=True)
class ClosedCurve:
    """A closed form drawn as a line beside the measured points it predicts: `ys` over `xs`, for the rows
    whose `group_key` equals `group` (e.g. one keep probability); `measured` names the rows' key it predicts."""

    label: str  # "eq. (31)"
    measured: str  # the row key of the measured values, e.g. "delta_res"
    group_key: str
    group: Any
    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "measured": self.measured, "group_key": self.group_key, "group": self.group,
                "xs": list(self.xs), "ys": list(self.ys)}


@dataclass(frozen=True, repr=False)
class Reproduction(Displayed):
    """One figure's rows: measured values, closed forms, and whether the paper's ordering holds.
    `to_json()` equals the "reproduce" object of `dropcheck reproduce --format json`."""

    figure: str
    title: str
    setup: str
    claim: str
    columns: tuple[tuple[str, str], ...]  # (row key, header)
    rows: tuple[dict[str, Any], ...]  # each has "holds": True, False or None (claim not tested)
    closed_pairs: tuple[tuple[str, str], ...]  # (measured key, closed-form key)
    notes: tuple[str, ...] = ()
    curves: tuple[ClosedCurve, ...] = ()  # closed forms on a fine grid, for the figure

    @property
    def tested(self) -> int:
        return sum(row["holds"] is not None for row in self.rows)

    @property
    def held(self) -> int:
        return sum(row["holds"] is True for row in self.rows)

    @property
    def max_rel_error(self) -> float:
        """Largest |measured / closed form - 1| over every row and pair."""
        return max((abs(row[m] / row[c] - 1.0) for row in self.rows for m, c in self.closed_pairs), default=0.0)

    def headline(self) -> str:
        """One line: 'fig3: claim holds in 5/5 rows, max relative error 0.8%'."""
        return (f"{self.figure}: claim holds in {self.held}/{self.tested} rows, max relative error "
                f"{self.max_rel_error:.1%}")

    def to_dict(self) -> dict[str, Any]:
        return {"figure": self.figure, "title": self.title, "setup": self.setup, "claim": self.claim,
                "claim_holds": self.held, "claim_tested": self.tested, "max_rel_error": self.max_rel_error,
                "closed_pairs": [list(pair) for pair in self.closed_pairs], "notes": list(self.notes),
                "rows": [dict(row) for row in self.rows], "closed_curves": [c.to_dict() for c in self.curves]}
