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
