"""`python -m dropcheck`: the same CLI as the `dropcheck` console script."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
