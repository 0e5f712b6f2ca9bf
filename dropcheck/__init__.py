"""dropcheck: audit PyTorch models for dropout placed where it hurts BatchNorm (Kim et al.).

Public API: `audit(model, example_input) -> Report`, `fix(model, example_input) -> FixResult`,
`measure(model, example_input) -> Report` (with measurements). Importing this package does not import
torch; the pipeline is loaded on first use so the CLI's `rules` and `explain` stay fast.

In a notebook the records draw themselves: a short `repr`, `_repr_html_` (tables of the verdicts, Δ,
accuracies) and a rich renderable, registered by `output.notebook` on import; `to_dict()` and
`to_json()` give the objects the CLI's `--format json` prints.
"""
from __future__ import annotations

from typing import Any

from .output import notebook as _notebook  # noqa: F401  registers the HTML and rich views of the records
from .records import (Comparison, DropcheckError, Finding, FixResult, Measurement, Report, Reproduction, Severity,
                      Site, SiteKind)

from .version import __version__
__all__ = ["audit", "fix", "measure", "Report", "FixResult", "Measurement", "Reproduction", "Comparison", "Site",
           "SiteKind", "Finding", "Severity", "DropcheckError", "__version__"]


def audit(model: Any, example_input: Any) -> Report:
    """Audit `model` (an nn.Module) traced with `example_input`; returns the same content as the JSON."""
    from .analysis.pipeline import audit as _audit

    return _audit(model, example_input)


def fix(model: Any, example_input: Any, p: float | None = None, add: float | None = None,
        remove: bool = False) -> FixResult:
    """Move `model`'s dropout to where Guidelines 1 and 2 put it; returns the fixed model (a new
    module), every change, and the verification checks. `model` is left as it was. `remove`: a
    dropout with no residual merge downstream that reaches a BatchNorm is removed, not moved."""
    from .fixer.pipeline import fix as _fix

    return _fix(model, example_input, p, add, remove)


def measure(model: Any, example_input: Any, **options: Any) -> Report:
    """Audit `model` and measure the inconsistency ratio Δ = Var_test / Var_train at every BatchNorm
    input and residual-merge output (`report.measurements`). Options: batches, batch_size, data
    ("normal", "digits", "imagefolder:PATH"), device ("auto", "cpu", "cuda"), pretrained, seed."""
    from .measurement.pipeline import measure as _measure

    return _measure(model, example_input, **options)
