"""Kept for files that dropcheck 0.1.0 wrote: their pickles name `dropcheck.fixed._rebuild`."""
from .fixer.fixed import FixedModel, rebuild  # noqa: F401

_rebuild = rebuild
