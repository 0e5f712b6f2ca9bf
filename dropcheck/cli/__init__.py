"""The `dropcheck` command line: parse flags, call the stages, render, pick the exit code.

The only package that imports typer; no analysis happens here. One module per command (audit, fix,
measure, recalibrate, reproduce, train_compare, rules for rules and explain), and one place for
what they share: options (declarations and cheap checks), errors, interrupts, streams. The app and
`main` (the console script, `dropcheck.cli:main`) are in program. Torch is imported inside the command
functions only, so `--help`, `rules` and `explain` start fast.
Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage/config/load/trace error, 130 Ctrl-C.
"""
from __future__ import annotations

from .program import app, main
from .audit import FAIL_ON, exit_code
from .errors import EXIT_CLEAN, EXIT_ERROR, EXIT_FINDINGS

__all__ = ["app", "main", "FAIL_ON", "exit_code", "EXIT_CLEAN", "EXIT_FINDINGS", "EXIT_ERROR"]
