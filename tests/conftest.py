"""Shared test setup: the repository on sys.path; one torch thread per xdist worker."""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # `make test` runs one worker per core: more threads per worker only fight each other, and tiny
    # convolutions slow down by orders of magnitude when they do
    torch.set_num_threads(1)

# Audits in the suite run afresh: a cached answer would hide a change to the code under test that a
# monkeypatch or an edited fixture makes. tests/test_cache.py and the pre-commit hook test turn it on.
os.environ.setdefault("DROPCHECK_NO_CACHE", "1")
