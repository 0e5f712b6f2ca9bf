"""The version, in a module of its own so that output and the stages can read it without importing
the package root (whose API functions load every stage)."""
__version__ = "0.1.0"
